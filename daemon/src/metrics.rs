//! `GET /metrics`: the counters in Prometheus' text format (version 0.0.4), read live from the
//! workers' counters. Labels are bounded: worker, drop reason, policy, interface; never an
//! address. The batch time histogram's quantiles are computed with `hdrhistogram` for the stats
//! document.

use sluice_dataplane::flow::FlowRing;
use sluice_dataplane::state::Snapshot;
use sluice_dataplane::stats::{WorkerStats, BATCH_BUCKETS, BATCH_NS_FIRST};
use sluice_dataplane::DropReason;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Prometheus text, family by family.
struct Prom(String);

impl Prom {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
    }
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                // label values escape \, " and newline
                let val = val
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.0, "{k}=\"{val}\"");
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {v}");
    }
    /// One sample per worker of a counter read with `f`.
    fn per_worker(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        workers: &[Arc<WorkerStats>],
        f: impl Fn(&WorkerStats) -> u64,
    ) {
        self.family(name, kind, help);
        for (i, w) in workers.iter().enumerate() {
            self.sample(name, &[("worker", &i.to_string())], f(w));
        }
    }
}

/// Upper bounds of the batch time buckets, in seconds (the last is +Inf).
fn bucket_le(i: usize) -> String {
    if i + 1 == BATCH_BUCKETS {
        "+Inf".into()
    } else {
        format!("{}", (BATCH_NS_FIRST << i) as f64 / 1e9)
    }
}

/// p50 / p90 / p99 / max of all workers' batch times, in ns, through an HdrHistogram (each
/// bucket recorded at its upper bound: the quantiles are bucket bounds, never optimistic).
pub fn batch_quantiles(workers: &[Arc<WorkerStats>]) -> Option<[u64; 4]> {
    let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 1 << 40, 2).ok()?;
    for w in workers {
        for (i, c) in w.batch_ns.iter().enumerate() {
            let n = c.get();
            if n > 0 {
                let upper = BATCH_NS_FIRST << i.min(BATCH_BUCKETS - 2);
                let upper = if i + 1 == BATCH_BUCKETS {
                    upper * 2
                } else {
                    upper
                };
                h.record_n(upper, n).ok()?;
            }
        }
    }
    (!h.is_empty()).then(|| {
        [
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max(),
        ]
    })
}

/// The exposition.
pub fn render(
    appliance: &str,
    workers: &[Arc<WorkerStats>],
    rings: &[Arc<FlowRing>],
    snap: &Snapshot,
    steered_generation: u64,
    interfaces: &serde_json::Value,
) -> String {
    let mut p = Prom(String::with_capacity(16 << 10));
    p.family("sluice_info", "gauge", "The appliance (value 1).");
    p.sample("sluice_info", &[("appliance", appliance)], 1);
    p.family(
        "sluice_snapshot_generation",
        "gauge",
        "Generation of the cluster state published to the workers.",
    );
    p.sample("sluice_snapshot_generation", &[], snap.generation);
    p.per_worker(
        "sluice_worker_snapshot_generation",
        "gauge",
        "The generation each worker last ran.",
        workers,
        |w| w.generation.get(),
    );
    p.family(
        "sluice_steered_generation",
        "gauge",
        "The generation the XDP steering map follows.",
    );
    p.sample("sluice_steered_generation", &[], steered_generation);
    for (name, help, f) in [
        (
            "sluice_worker_rx_packets_total",
            "Packets received.",
            (|w: &WorkerStats| w.rx_packets.get()) as fn(&WorkerStats) -> u64,
        ),
        ("sluice_worker_rx_bytes_total", "Bytes received.", |w| {
            w.rx_bytes.get()
        }),
        (
            "sluice_worker_tx_packets_total",
            "Packets transmitted (forwarded).",
            |w| w.tx_packets.get(),
        ),
        (
            "sluice_worker_tx_bytes_total",
            "Bytes transmitted (forwarded).",
            |w| w.tx_bytes.get(),
        ),
        ("sluice_worker_batches_total", "Batches processed.", |w| {
            w.batches.get()
        }),
        (
            "sluice_worker_wakeups_total",
            "Kernel wakeups (sendto) for transmission.",
            |w| w.wakeups.get(),
        ),
        (
            "sluice_worker_sleeps_total",
            "Idle sleeps of an adaptive worker.",
            |w| w.sleeps.get(),
        ),
        (
            "sluice_worker_fill_starved_total",
            "Times the fill ring could not be refilled.",
            |w| w.fill_starved.get(),
        ),
        (
            "sluice_worker_xsk_rx_ring_full_total",
            "Packets the kernel dropped: AF_XDP RX ring full.",
            |w| w.xsk_rx_ring_full.get(),
        ),
        (
            "sluice_worker_xsk_fill_ring_empty_total",
            "Times the kernel found the fill ring empty.",
            |w| w.xsk_fill_ring_empty.get(),
        ),
        (
            "sluice_worker_overloads_total",
            "Times the receive rings backed up past half full (new TCP connections shed at XDP).",
            |w| w.overloads.get(),
        ),
        (
            "sluice_worker_xsk_rx_dropped_total",
            "Packets the kernel dropped for the socket (other reasons).",
            |w| w.xsk_rx_dropped.get(),
        ),
        (
            "sluice_worker_decapsulated_total",
            "Tunnel packets decapsulated.",
            |w| w.decapsulated.get(),
        ),
        (
            "sluice_worker_encapsulated_total",
            "Packets encapsulated toward remote nodes.",
            |w| w.encapsulated.get(),
        ),
        (
            "sluice_worker_icmp_errors_sent_total",
            "ICMP errors sent as a router: time exceeded, fragmentation needed / packet too big.",
            |w| w.icmp_errors.get(),
        ),
        (
            "sluice_worker_handoff_out_total",
            "Packets handed to another worker (its connection).",
            |w| w.handoff_out.get(),
        ),
        (
            "sluice_worker_handoff_in_total",
            "Packets taken over from another worker.",
            |w| w.handoff_in.get(),
        ),
        (
            "sluice_lb_new_connections_total",
            "New load-balanced connections.",
            |w| w.lb_new_connections.get(),
        ),
        (
            "sluice_lb_icmp_translated_total",
            "ICMP errors about load-balanced connections, translated along them.",
            |w| w.lb_icmp_translated.get(),
        ),
        (
            "sluice_conntrack_gc_freed_total",
            "Conntrack entries the garbage collector freed.",
            |w| w.ct_gc_freed.get(),
        ),
        (
            "sluice_conntrack_evicted_total",
            "Embryonic conntrack entries evicted to admit new connections (tables full).",
            |w| w.ct_evicted.get(),
        ),
        (
            "sluice_policy_allowed_connections_total",
            "New connections allowed by policy.",
            |w| w.policy_allowed.get(),
        ),
        (
            "sluice_l7_requests_total",
            "HTTP requests judged on L7-inspected connections.",
            |w| w.l7_requests.get(),
        ),
        (
            "sluice_l7_refused_total",
            "HTTP requests refused (403) by L7 policy.",
            |w| w.l7_refused.get(),
        ),
    ] {
        p.per_worker(name, "counter", help, workers, f);
    }
    p.per_worker(
        "sluice_conntrack_entries",
        "gauge",
        "Tracked load-balanced connections.",
        workers,
        |w| w.ct_entries.get(),
    );
    p.per_worker(
        "sluice_conntrack_capacity",
        "gauge",
        "The conntrack bound (entries).",
        workers,
        |w| w.ct_capacity.get(),
    );
    p.per_worker(
        "sluice_nat_connections",
        "gauge",
        "Load-balanced connections holding a SNAT source port.",
        workers,
        |w| w.snat_connections.get(),
    );
    p.per_worker(
        "sluice_nat_ports_per_backend",
        "gauge",
        "SNAT source ports the worker may use toward one backend.",
        workers,
        |w| w.snat_ports_per_backend.get(),
    );
    p.family(
        "sluice_xdp_packets_total",
        "counter",
        "What the XDP steering program did with packets, per interface: steered (into the \
         workers), passed (not owned: the kernel's), no_socket (owned, no socket on the queue: \
         the kernel's), held (owned, no socket, during a restart hold: dropped), syn_shed (a new \
         TCP connection while the queue's worker was overloaded: dropped). As of the last stats \
         interval.",
    );
    for i in interfaces.as_array().into_iter().flatten() {
        let name = i["name"].as_str().unwrap_or("?");
        for (result, key) in [
            ("steered", "xdp_steered"),
            ("passed", "xdp_passed"),
            ("no_socket", "xdp_no_socket"),
            ("held", "xdp_held"),
            ("syn_shed", "xdp_syn_shed"),
        ] {
            p.sample(
                "sluice_xdp_packets_total",
                &[("interface", name), ("result", result)],
                i[key].as_u64().unwrap_or(0),
            );
        }
    }
    p.family(
        "sluice_drops_total",
        "counter",
        "Packets dropped, by reason (Cilium's codes and Hubble's names where they exist) and \
         direction: for policy drops, whether the sender's egress or the receiver's ingress \
         policy decided; unknown for the rest.",
    );
    for r in DropReason::ALL {
        let n: u64 = workers.iter().map(|w| w.drops(*r)).sum();
        let code = r.code().to_string();
        let egress_of = match r {
            DropReason::PolicyDenied => Some(0),
            DropReason::PolicyDeny => Some(1),
            _ => None,
        };
        match egress_of {
            Some(i) => {
                let eg: u64 = workers.iter().map(|w| w.policy_drops_egress[i].get()).sum();
                for (dir, v) in [("egress", eg), ("ingress", n.saturating_sub(eg))] {
                    p.sample(
                        "sluice_drops_total",
                        &[("reason", r.name()), ("code", &code), ("direction", dir)],
                        v,
                    );
                }
            }
            None => p.sample(
                "sluice_drops_total",
                &[
                    ("reason", r.name()),
                    ("code", &code),
                    ("direction", "unknown"),
                ],
                n,
            ),
        }
    }
    p.family(
        "sluice_policy_drops_total",
        "counter",
        "Packets dropped by network policy, by the policy that decided.",
    );
    let mut policies: Vec<(&str, u16)> = snap
        .cluster
        .policy
        .slots
        .iter()
        .map(|(n, s)| (&**n, *s))
        .collect();
    policies.sort();
    for (name, slot) in policies {
        let n: u64 = workers
            .iter()
            .filter_map(|w| w.policy_drops.get(usize::from(slot)))
            .map(|c| c.get())
            .sum();
        p.sample("sluice_policy_drops_total", &[("policy", name)], n);
    }
    p.family(
        "sluice_flow_events_total",
        "counter",
        "Flow events the workers emitted into their rings.",
    );
    for (i, r) in rings.iter().enumerate() {
        p.sample(
            "sluice_flow_events_total",
            &[("worker", &i.to_string())],
            r.emitted.load(Ordering::Relaxed),
        );
    }
    p.family(
        "sluice_flow_events_lost_total",
        "counter",
        "Flow events lost to a full ring.",
    );
    for (i, r) in rings.iter().enumerate() {
        p.sample(
            "sluice_flow_events_lost_total",
            &[("worker", &i.to_string())],
            r.lost.load(Ordering::Relaxed),
        );
    }
    let name = "sluice_batch_duration_seconds";
    p.family(
        name,
        "histogram",
        "Time to process one batch, from receive to transmit.",
    );
    for (i, w) in workers.iter().enumerate() {
        let worker = i.to_string();
        let mut cum = 0u64;
        let mut sum_ns = 0f64;
        for (b, c) in w.batch_ns.iter().enumerate() {
            let n = c.get();
            cum += n;
            // the sum from bucket midpoints: the histogram keeps no exact sum
            sum_ns += n as f64 * (BATCH_NS_FIRST << b) as f64 * 0.75;
            p.sample(
                &format!("{name}_bucket"),
                &[("worker", &worker), ("le", &bucket_le(b))],
                cum,
            );
        }
        p.sample(&format!("{name}_sum"), &[("worker", &worker)], sum_ns / 1e9);
        p.sample(&format!("{name}_count"), &[("worker", &worker)], cum);
    }
    p.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_bucket_bounds() {
        let w = Arc::new(WorkerStats::default());
        for _ in 0..90 {
            w.batch_took(300); // <= 512
        }
        for _ in 0..10 {
            w.batch_took(5000); // <= 8192
        }
        let [p50, p90, p99, max] = batch_quantiles(&[w]).unwrap();
        assert!((512..520).contains(&p50), "{p50}");
        assert!((512..520).contains(&p90), "{p90}");
        assert!((8192..8300).contains(&p99), "{p99}");
        assert!((8192..8300).contains(&max), "{max}");
        assert!(batch_quantiles(&[Arc::new(WorkerStats::default())]).is_none());
    }
}
