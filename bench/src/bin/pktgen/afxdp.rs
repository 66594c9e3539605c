//! The `afxdp` engine: templates, or the malformed corpus, through an AF_XDP TX ring.

use super::Args;
use sluice_dataplane::io::afxdp::{AfXdpConfig, AfXdpIo, ZeroCopy};
use sluice_dataplane::io::PacketIo;
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::build::{PacketSpec, L4};
use sluice_dataplane::{Batch, Verdict, MAX_BATCH};
use std::time::{Duration, Instant};

/// Broken variants of a valid UDP/IPv4 frame `good` (and a few built afresh): what a router
/// must survive. Each is a distinct kind; the corpus cycles through them.
fn malformed_corpus(
    good: &[u8],
    src: &str,
    dst: &str,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut p = good.to_vec();
        f(&mut p);
        p
    };
    out.push(good[..10].to_vec()); // shorter than an Ethernet header
    out.push(good[..14 + 10].to_vec()); // half an IPv4 header
    out.push(with(&|p| p[14] = 0x44)); // IHL 4 (< 5)
    out.push(with(&|p| p[14] = 0x4f)); // IHL 15: options longer than the packet
    out.push(with(&|p| p[16..18].copy_from_slice(&9000u16.to_be_bytes()))); // total length > frame
    out.push(with(&|p| p[16..18].copy_from_slice(&10u16.to_be_bytes()))); // total length < header
    out.push(with(&|p| p[24] ^= 0xff)); // bad IPv4 header checksum
    out.push(with(&|p| p[14 + 20 + 6] ^= 0xff)); // bad UDP checksum
    out.push(with(&|p| {
        p[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&3u16.to_be_bytes())
    })); // UDP length < 8
    out.push(with(&|p| p[14 + 8] = 1)); // TTL 1
    out.push(with(&|p| p[14 + 6] = 0x20)); // a first fragment (MF)
    out.push(with(&|p| {
        p[14 + 6..14 + 8].copy_from_slice(&0x0010u16.to_be_bytes())
    })); // a later fragment
    out.push(with(&|p| {
        p[12..14].copy_from_slice(&0x88b5u16.to_be_bytes())
    })); // unknown EtherType
    out.push(with(&|p| p[14] = 0x60)); // says IPv6, carries IPv4
    out.push(with(&|p| p[14 + 9] = 253)); // an experimental protocol
                                          // IPv4 with a 4-byte option (NOP x4): valid, forwarded as a router would
    out.push({
        let mut p = good[..14].to_vec();
        let mut ip = good[14..34].to_vec();
        ip[0] = 0x46;
        let total = u16::from_be_bytes([ip[2], ip[3]]) + 4;
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[10..12].copy_from_slice(&[0, 0]);
        ip.extend_from_slice(&[1, 1, 1, 1]);
        let c = sluice_dataplane::wire::checksum::checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        p.extend_from_slice(&ip);
        p.extend_from_slice(&good[34..]);
        p
    });
    // VXLAN and Geneve to the appliance with garbage inside
    for port in [8472u16, 6081] {
        let mut s = PacketSpec::udp(src, dst, 40000, port, &[0xde; 40]);
        s.src_mac = src_mac;
        s.dst_mac = dst_mac;
        out.push(s.build());
    }
    // TCP with a data offset beyond the segment
    out.push({
        let mut s = PacketSpec::udp(src, dst, 40001, 80, b"");
        s.l4 = L4::Tcp(0x02);
        s.src_mac = src_mac;
        s.dst_mac = dst_mac;
        let mut p = s.build();
        p[14 + 20 + 12] = 0xf0;
        p
    });
    out
}

/// The `afxdp` engine: `templates` (or, for `--proto malformed`, the corpus made from the first)
/// through an AF_XDP socket's TX ring, at `--rate` or as fast as it goes.
pub(crate) fn send(
    a: &Args,
    templates: Vec<Vec<u8>>,
    malformed: bool,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
) -> Result<(), String> {
    let templates = if malformed {
        malformed_corpus(&templates[0], &a.src_ip, &a.dst_ip, src_mac, dst_mac)
    } else {
        templates
    };
    let cfg = AfXdpConfig {
        zero_copy: ZeroCopy::Auto,
        ..AfXdpConfig::default()
    };
    let mut io =
        AfXdpIo::open(std::slice::from_ref(&a.iface), a.queue, &cfg).map_err(|e| e.to_string())?;
    let stats = WorkerStats::default();
    let mut batch = Batch::new(MAX_BATCH);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let mut next = 0usize;
    let mut sent: u64 = 0;
    let mut last_report = start;
    while Instant::now() < end {
        io.service(&stats);
        if a.rate > 0 {
            let due = (start.elapsed().as_secs_f64() * a.rate as f64) as u64;
            if sent >= due {
                std::hint::spin_loop();
                continue;
            }
        }
        while batch.room() > 0 {
            let Some(chunk) = io.alloc_chunk() else { break };
            let t = &templates[next % templates.len()];
            next += 1;
            let f = io
                .region_mut()
                .write_packet(chunk, 0, t)
                .ok_or("template larger than a UMEM frame")?;
            batch.push(f);
            let last = batch.len() - 1;
            batch.set_verdict(last, Verdict::Tx(0));
        }
        sent += io.tx_burst(&mut batch, &stats) as u64;
        io.recycle(&mut batch);
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let t = start.elapsed().as_secs_f64();
            eprintln!(
                "  {t:>6.1}s  sent {sent:>10}  {:>8.3} Mpps",
                sent as f64 / t / 1e6
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let result = serde_json::json!({
        "engine": "afxdp",
        "iface": a.iface,
        "zero_copy": io.is_zero_copy(),
        "size": a.size,
        "encap": a.encap,
        "flows": a.flows,
        "proto": a.proto,
        "kinds": templates.len(),
        "seconds": secs,
        "sent": sent,
        "pps": sent as f64 / secs,
        "wakeups": stats.wakeups.get(),
    });
    println!("{result}");
    Ok(())
}
