//! Pipeline fixture table: {description, state, input packet, expected verdict, expected output},
//! run on the `mem` backend (no NIC needed).

use sluice_dataplane::io::mem::{MemIo, TxSink};
use sluice_dataplane::pipeline::{NeighborRequests, Pipeline};
use sluice_dataplane::state::HashMap;
use sluice_dataplane::state::{PortInfo, Publisher, Route, RouteTable, Snapshot};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::build::PacketSpec;
use sluice_dataplane::wire::checksum;
use sluice_dataplane::worker::process_batch;
use sluice_dataplane::{Batch, DropReason};
use std::net::IpAddr;
use std::sync::Arc;

const MAC_P0: [u8; 6] = [2, 0, 0, 0, 1, 0];
const MAC_P1: [u8; 6] = [2, 0, 0, 0, 1, 1];
const MAC_BE1: [u8; 6] = [2, 0, 0, 0, 0x20, 0x11];
const MAC_GW6: [u8; 6] = [2, 0, 0, 0, 0x66, 0x01];

fn snapshot() -> Snapshot {
    let route = |p: &str, len, port, via: Option<&str>, mac| Route {
        prefix: p.parse().unwrap(),
        prefix_len: len,
        port,
        via: via.map(|v| v.parse().unwrap()),
        mac,
    };
    let mut neighbors = HashMap::new();
    neighbors.insert((1, "10.20.0.11".parse::<IpAddr>().unwrap()), MAC_BE1);
    Snapshot {
        generation: 0,
        ports: Arc::new(vec![
            PortInfo {
                name: "p0".into(),
                mac: MAC_P0,
            },
            PortInfo {
                name: "p1".into(),
                mac: MAC_P1,
            },
        ]),
        routes: Arc::new(RouteTable::new(vec![
            route("10.20.0.0", 24, 1, None, None),
            route("10.10.0.0", 24, 0, None, None),
            route("fd00:20::", 64, 1, Some("fd00:20::1"), Some(MAC_GW6)),
        ])),
        neighbors: Arc::new(neighbors),
        ..Snapshot::default()
    }
}

#[derive(Default)]
struct Requests(Vec<(u16, IpAddr)>);
impl NeighborRequests for Requests {
    fn request(&mut self, port: u16, ip: IpAddr) {
        self.0.push((port, ip));
    }
}

enum Expect {
    Tx {
        port: u16,
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        ttl: u8,
    },
    Drop(DropReason),
}

struct Case {
    what: &'static str,
    input: Vec<u8>,
    expect: Expect,
}

fn udp(src: &str, dst: &str) -> PacketSpec {
    PacketSpec::udp(src, dst, 40000, 9000, b"payload")
}

fn cases() -> Vec<Case> {
    let mut ttl1 = udp("10.10.0.2", "10.20.0.11");
    ttl1.ttl = 1;
    let mut vlan = udp("10.10.0.2", "10.20.0.11");
    vlan.vlan = Some(100);
    let mut hop1 = udp("fd00:10::2", "fd00:20::11");
    hop1.ttl = 1;
    let good4 = udp("10.10.0.2", "10.20.0.11").build();
    let mut bad_ihl = good4.clone();
    bad_ihl[14] = 0x44;
    let mut long_total = good4.clone();
    long_total[16..18].copy_from_slice(&1500u16.to_be_bytes());
    let mut arp = good4.clone();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    vec![
        Case {
            what: "IPv4 to a resolved neighbour is forwarded with TTL-1 and rewritten MACs",
            input: good4.clone(),
            expect: Expect::Tx {
                port: 1,
                dst_mac: MAC_BE1,
                src_mac: MAC_P1,
                ttl: 63,
            },
        },
        Case {
            what: "802.1Q-tagged IPv4 is routed like untagged",
            input: vlan.build(),
            expect: Expect::Tx {
                port: 1,
                dst_mac: MAC_BE1,
                src_mac: MAC_P1,
                ttl: 63,
            },
        },
        Case {
            what: "IPv6 via a gateway with a static MAC",
            input: udp("fd00:10::2", "fd00:20::11").build(),
            expect: Expect::Tx {
                port: 1,
                dst_mac: MAC_GW6,
                src_mac: MAC_P1,
                ttl: 63,
            },
        },
        Case {
            what: "TTL 1 is dropped as TTL_EXCEEDED",
            input: ttl1.build(),
            expect: Expect::Drop(DropReason::TtlExceeded),
        },
        Case {
            what: "hop limit 1 is dropped as TTL_EXCEEDED",
            input: hop1.build(),
            expect: Expect::Drop(DropReason::TtlExceeded),
        },
        Case {
            what: "no route",
            input: udp("10.10.0.2", "192.0.2.1").build(),
            expect: Expect::Drop(DropReason::NoRoute),
        },
        Case {
            what: "connected destination without a neighbour entry asks for resolution",
            input: udp("10.20.0.11", "10.10.0.2").build(),
            expect: Expect::Drop(DropReason::NoNeighbor),
        },
        Case {
            what: "IPv4 header length below 20",
            input: bad_ihl,
            expect: Expect::Drop(DropReason::Malformed),
        },
        Case {
            what: "IPv4 total length beyond the frame",
            input: long_total,
            expect: Expect::Drop(DropReason::Malformed),
        },
        Case {
            what: "runt frame shorter than an Ethernet header",
            input: vec![0u8; 10],
            expect: Expect::Drop(DropReason::Malformed),
        },
        Case {
            what: "ARP is not ours to route",
            input: arp,
            expect: Expect::Drop(DropReason::UnsupportedL3),
        },
        Case {
            what: "truncated IPv6 header",
            input: udp("fd00:10::2", "fd00:20::11").build()[..40].to_vec(),
            expect: Expect::Drop(DropReason::Malformed),
        },
    ]
}

#[test]
fn fixture_table() {
    let publisher = Publisher::new(snapshot());
    for case in cases() {
        let mut io = MemIo::new(8, 2048, TxSink::Capture);
        let stats = WorkerStats::default();
        let mut req = Requests::default();
        assert!(io.inject(0, &case.input), "{}: inject", case.what);
        let mut batch = Batch::new(64);
        let n = process_batch(
            &mut io,
            &mut Pipeline::new(),
            &publisher,
            &mut batch,
            &stats,
            &mut req,
        );
        assert_eq!(n, 1, "{}", case.what);
        let sent = io.take_sent();
        match case.expect {
            Expect::Tx {
                port,
                dst_mac,
                src_mac,
                ttl,
            } => {
                assert_eq!(sent.len(), 1, "{}: not transmitted", case.what);
                let (p, out) = &sent[0];
                assert_eq!(*p, port, "{}", case.what);
                assert_eq!(out[0..6], dst_mac, "{}: dst mac", case.what);
                assert_eq!(out[6..12], src_mac, "{}: src mac", case.what);
                assert_eq!(out.len(), case.input.len(), "{}: length", case.what);
                let l3 = if out[12..14] == [0x81, 0x00] { 18 } else { 14 };
                if out[l3] >> 4 == 4 {
                    assert_eq!(out[l3 + 8], ttl, "{}: ttl", case.what);
                    assert_eq!(
                        checksum::sum(&out[l3..l3 + 20]),
                        0xffff,
                        "{}: ip checksum",
                        case.what
                    );
                } else {
                    assert_eq!(out[l3 + 7], ttl, "{}: hop limit", case.what);
                }
                // beyond the rewritten fields the packet is untouched
                assert_eq!(
                    out[l3 + 12..],
                    case.input[l3 + 12..],
                    "{}: payload",
                    case.what
                );
            }
            Expect::Drop(reason) => {
                assert!(sent.is_empty(), "{}: transmitted", case.what);
                assert_eq!(
                    stats.drops(reason),
                    1,
                    "{}: expected {:?}",
                    case.what,
                    reason
                );
            }
        }
        // a dropped packet is never lost: its frame went back to the pool
        assert_eq!(io.free_frames(), 8, "{}: frame leaked", case.what);
        if case.what.contains("asks for resolution") {
            assert_eq!(req.0, vec![(0, "10.10.0.2".parse().unwrap())]);
        }
    }
}

#[test]
fn a_full_batch_mixes_verdicts_and_recycles_everything() {
    let publisher = Publisher::new(snapshot());
    let mut io = MemIo::new(128, 2048, TxSink::Capture);
    let stats = WorkerStats::default();
    let all = cases();
    for i in 0..64 {
        assert!(io.inject(0, &all[i % all.len()].input));
    }
    let mut batch = Batch::new(64);
    let mut req = Requests::default();
    assert_eq!(
        process_batch(
            &mut io,
            &mut Pipeline::new(),
            &publisher,
            &mut batch,
            &stats,
            &mut req
        ),
        64
    );
    let dropped: u64 = DropReason::ALL.iter().map(|r| stats.drops(*r)).sum();
    assert_eq!(stats.tx_packets.get() + dropped, 64);
    assert_eq!(io.free_frames(), 128);
}
