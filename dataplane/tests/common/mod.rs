//! The test harness the datapath fixture tests share: one worker's pipeline on the `mem`
//! backend, kept across calls (its conntrack and flow tables are the point).
// each test binary uses its own part of the harness
#![allow(dead_code)]

use sluice_dataplane::fixtures::{MAC_CLIENT, MAC_CLI_PORT};
use sluice_dataplane::handoff::Handoff;
use sluice_dataplane::io::mem::{MemIo, TxSink};
use sluice_dataplane::lb::{CtLimits, LbState};
use sluice_dataplane::pipeline::{NoNeighborRequests, Pipeline};
use sluice_dataplane::state::{Publisher, Snapshot};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::build::{PacketSpec, L4};
use sluice_dataplane::wire::checksum;
use sluice_dataplane::wire::icmp::IcmpPacket;
use sluice_dataplane::wire::parse::{parse, Parsed, TunnelPorts};
use sluice_dataplane::worker::process_batch;
use sluice_dataplane::Batch;
use std::net::IpAddr;
use std::sync::Arc;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// An ICMP message sluice sent: the frame parsed, and the message, with the outer IPv4 header
/// checksum and the ICMP checksum (ICMPv6: with its pseudo-header) checked.
pub fn icmp_of(out: &[u8]) -> (Parsed, IcmpPacket<&[u8]>) {
    let p = parse(out, TunnelPorts::NONE).unwrap();
    let v6 = p.src.is_ipv6();
    if !v6 {
        assert_eq!(
            checksum::sum(&out[p.l3..p.l3 + 20]),
            0xffff,
            "outer IPv4 checksum"
        );
    }
    let msg = IcmpPacket::new_checked(&out[p.l4.unwrap()..p.l3 + p.ip_len]).unwrap();
    assert!(
        msg.verify_checksum(v6.then_some((p.src, p.dst))),
        "ICMP checksum"
    );
    (p, msg)
}

/// A TCP segment with an HTTP request's bytes from the client's side (client MAC to the
/// appliance's client port).
pub fn tcp(src: &str, dst: &str, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut s = PacketSpec::udp(src, dst, sport, dport, b"GET / HTTP/1.1\r\n\r\n");
    s.l4 = L4::Tcp(flags);
    s.dst_mac = MAC_CLI_PORT;
    s.src_mac = MAC_CLIENT;
    s.build()
}

/// One worker's pipeline kept across calls (its conntrack is the point).
pub struct Lb {
    pub publisher: Publisher,
    pub pipeline: Pipeline,
    pub stats: WorkerStats,
}

impl Lb {
    pub fn new(snap: Snapshot) -> Self {
        Lb {
            publisher: Publisher::new(snap),
            pipeline: Pipeline::new(),
            stats: WorkerStats::default(),
        }
    }

    /// Worker `worker` of `workers`, its hand-off end on `handoff`.
    pub fn worker(snap: Snapshot, worker: u16, workers: u16, handoff: &Arc<Handoff>) -> Self {
        let limits = CtLimits {
            tcp_max: 4096,
            other_max: 4096,
            ..Default::default()
        };
        let mut pipeline = Pipeline::with_lb(LbState::new(&limits, worker, workers));
        pipeline.handoff = Some(handoff.port(usize::from(worker)));
        Lb {
            publisher: Publisher::new(snap),
            pipeline,
            stats: WorkerStats::default(),
        }
    }

    /// Sends one frame in on `port`; what came out (port, bytes).
    pub fn send(&mut self, port: u16, frame: &[u8]) -> Option<(u16, Vec<u8>)> {
        self.run(Some((port, frame)))
    }

    /// Runs one batch: `frame` received on its port, if any, plus what other workers handed
    /// over; what came out.
    pub fn run(&mut self, frame: Option<(u16, &[u8])>) -> Option<(u16, Vec<u8>)> {
        self.batch(frame.as_slice()).into_iter().next()
    }

    /// Runs one batch of these frames (port, bytes); everything that came out.
    pub fn batch(&mut self, frames: &[(u16, &[u8])]) -> Vec<(u16, Vec<u8>)> {
        let mut io = MemIo::new(8, 4096, TxSink::Capture);
        for (port, frame) in frames {
            assert!(io.inject(*port, frame));
        }
        let mut batch = Batch::new(64);
        process_batch(
            &mut io,
            &mut self.pipeline,
            &self.publisher,
            &mut batch,
            &self.stats,
            &mut NoNeighborRequests,
        );
        assert_eq!(io.free_frames(), 8, "frame leaked");
        io.take_sent()
    }
}
