//! `sluice-bench`: benchmarks and traffic templates. The criterion benches live in `benches/`;
//! the packet generator is `sluice-pktgen`.

pub mod overlay;

use sluice_dataplane::io::mem::{MemIo, TxSink};
use sluice_dataplane::pipeline::{NoNeighborRequests, Pipeline};
use sluice_dataplane::state::HashMap;
use sluice_dataplane::state::{PortInfo, Publisher, Route, RouteTable, Snapshot};
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::build::PacketSpec;
use sluice_dataplane::worker::process_batch;
use sluice_dataplane::{Batch, MAX_BATCH};
use std::net::IpAddr;
use std::sync::Arc;

/// One worker on the `mem` backend (1,024 buffers of 2 KiB, transmitted frames discarded): what
/// `process_batch` works with.
pub struct MemWorker {
    pub publisher: Publisher,
    pub io: MemIo,
    pub stats: WorkerStats,
    pub batch: Batch,
    pub pipeline: Pipeline,
}

impl MemWorker {
    pub fn new(snap: Snapshot, pipeline: Pipeline) -> Self {
        MemWorker {
            publisher: Publisher::new(snap),
            io: MemIo::new(1024, 2048, TxSink::Discard),
            stats: WorkerStats::default(),
            batch: Batch::new(MAX_BATCH),
            pipeline,
        }
    }

    /// One batch of what was injected into `io`: received, through every stage, sent.
    pub fn step(&mut self) -> usize {
        process_batch(
            &mut self.io,
            &mut self.pipeline,
            &self.publisher,
            &mut self.batch,
            &self.stats,
            &mut NoNeighborRequests,
        )
    }
}

/// A two-port routing snapshot like the lab's: client segment on port 0, servers on port 1,
/// `neighbors` resolved hosts on the server segment.
pub fn lab_like_snapshot(neighbors: u32) -> Snapshot {
    let mut n = HashMap::new();
    for i in 1..=neighbors {
        let ip: IpAddr = std::net::Ipv4Addr::from(u32::from_be_bytes([10, 20, 0, 0]) + i).into();
        n.insert((1u16, ip), [2, 0, 0, 0, (i >> 8) as u8, i as u8]);
    }
    n.insert(
        (0u16, "10.10.0.2".parse().expect("ip")),
        [2, 0, 0, 0, 0x10, 2],
    );
    Snapshot {
        generation: 1,
        ports: Arc::new(vec![
            PortInfo {
                name: "eth-cli".into(),
                mac: [2, 0, 0, 0, 1, 0],
            },
            PortInfo {
                name: "eth-srv".into(),
                mac: [2, 0, 0, 0, 1, 1],
            },
        ]),
        routes: Arc::new(RouteTable::new(vec![
            Route {
                prefix: "10.10.0.0".parse().expect("ip"),
                prefix_len: 24,
                port: 0,
                via: None,
                mac: None,
            },
            Route {
                prefix: "10.20.0.0".parse().expect("ip"),
                prefix_len: 16,
                port: 1,
                via: None,
                mac: None,
            },
        ])),
        neighbors: Arc::new(n),
        ..Snapshot::default()
    }
}

/// `count` 64-byte UDP frames from the client to distinct server-segment hosts.
pub fn udp_templates(count: u32, size: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|i| {
            let dst = std::net::Ipv4Addr::from(u32::from_be_bytes([10, 20, 0, 0]) + (i % 250) + 1);
            // Ethernet 14 + IPv4 20 + UDP 8 = 42 header bytes; pad to the frame size asked for.
            let payload = vec![0u8; size.saturating_sub(42)];
            PacketSpec::udp(
                "10.10.0.2",
                &dst.to_string(),
                10000 + (i % 5000) as u16,
                9000,
                &payload,
            )
            .build()
        })
        .collect()
}
