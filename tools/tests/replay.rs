//! `sluice replay in.pcap out.pcap`: the pipeline offline, checked by reading the output back.

use sluice_dataplane::io::pcap::{PcapReader, PcapWriter};
use sluice_dataplane::wire::build::PacketSpec;
use sluice_dataplane::wire::checksum;
use std::process::Command;

const CONFIG: &str = r#"
[[interface]]
name = "in0"
[[interface]]
name = "out0"
[[route]]
prefix = "10.20.0.0/24"
dev = "out0"
mac = "02:00:00:00:20:01"
"#;

#[test]
fn replay_routes_rewrites_and_counts_drops() {
    let dir = std::env::temp_dir().join(format!("sluice-replay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (input, output, cfg) = (
        dir.join("in.pcap"),
        dir.join("out.pcap"),
        dir.join("c.toml"),
    );
    std::fs::write(&cfg, CONFIG).unwrap();

    let mut w = PcapWriter::new(std::fs::File::create(&input).unwrap()).unwrap();
    for i in 0..100u64 {
        let p = PacketSpec::udp("10.10.0.2", "10.20.0.11", 1000 + i as u16, 53, b"q").build();
        w.write_packet(1_000_000_000 + i * 1000, &p).unwrap();
    }
    let mut ttl1 = PacketSpec::udp("10.10.0.2", "10.20.0.11", 1, 2, b"");
    ttl1.ttl = 1;
    w.write_packet(5_000_000_000, &ttl1.build()).unwrap();
    w.write_packet(
        5_000_000_001,
        &PacketSpec::udp("10.10.0.2", "192.0.2.9", 1, 2, b"").build(),
    )
    .unwrap();
    let truncated = PacketSpec::udp("10.10.0.2", "10.20.0.11", 1, 2, b"").build();
    w.write_packet(5_000_000_002, &truncated[..30]).unwrap();
    drop(w);

    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("replay")
        .arg(&input)
        .arg(&output)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        text.contains("replayed 103 packets: 100 transmitted, 3 dropped"),
        "{text}"
    );
    assert!(
        text.contains("TTL_EXCEEDED")
            && text.contains("FIB_LOOKUP_FAILED")
            && text.contains("INVALID_PACKET_DROPPED"),
        "{text}"
    );

    let mut r = PcapReader::new(std::fs::File::open(&output).unwrap()).unwrap();
    let mut n = 0u64;
    while let Some(p) = r.next_packet().unwrap() {
        assert_eq!(
            p.ts_ns,
            1_000_000_000 + n * 1000,
            "timestamps kept in order"
        );
        assert_eq!(p.data[0..6], [2, 0, 0, 0, 0x20, 1], "next-hop MAC");
        assert_eq!(
            p.data[6..12],
            [2, 0, 0, 0, 0, 1],
            "egress port MAC (offline: 02:00:00:00:00:<port>)"
        );
        assert_eq!(p.data[14 + 8], 63, "TTL decremented");
        assert_eq!(
            checksum::sum(&p.data[14..34]),
            0xffff,
            "IPv4 checksum still valid"
        );
        n += 1;
    }
    assert_eq!(n, 100);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn replay_refuses_a_non_pcap_input_clearly() {
    let dir = std::env::temp_dir().join(format!("sluice-replay-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("c.toml"), CONFIG).unwrap();
    std::fs::write(dir.join("in.pcap"), b"this is not a pcap file at all").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("replay")
        .arg(dir.join("in.pcap"))
        .arg(dir.join("out.pcap"))
        .arg("--config")
        .arg(dir.join("c.toml"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a pcap file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
