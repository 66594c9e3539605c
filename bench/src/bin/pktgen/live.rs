//! The `live` engine: BPF_PROG_RUN in live-frames mode.

use super::templates::{ENCAP_PORTS, PORTS};
use super::Args;
use std::time::{Duration, Instant};

/// Frames per BPF_PROG_RUN call at full rate: ~10-20 ms of work at this machine's rates, so
/// the duration is kept to within that and progress is smooth.
pub(crate) const LIVE_CHUNK: u32 = 1 << 16;
/// At a target rate, each thread sends what is due, then sleeps this long: bursts of a
/// millisecond's packets (100 at 100 kpps), close to what a paced NIC delivers. Longer slices
/// make bursts that overflow a receiver's ring at rates it sustains when paced.
pub(crate) const LIVE_SLICE: Duration = Duration::from_millis(1);

/// Keeps the first generator program in the kernel's XDP dispatcher for the run (attached to
/// the loopback, see `TrafficGen::anchor`), so that a run at a target rate is smooth: only one
/// program can be (the loopback takes one), so with several threads or sizes the others still
/// pay ~20 ms per BPF_PROG_RUN call and send in bursts. Failing that, the run goes on unanchored.
pub(crate) fn anchor_first(
    gens: &[sluice_xdp::trafficgen::TrafficGen],
) -> Option<std::os::fd::OwnedFd> {
    let lo = match sluice_xdp::ifindex_of("lo") {
        Ok(i) => i,
        Err(e) => {
            eprintln!("  no loopback to anchor the generator on ({e}): paced runs will be bursty");
            return None;
        }
    };
    match gens.first()?.anchor(lo) {
        Ok(fd) => Some(fd),
        Err(e) => {
            eprintln!(
                "  could not anchor the generator on the loopback ({e}): paced runs will be bursty"
            );
            None
        }
    }
}

/// The live engine: `threads` threads (pinned to `--cpus` when given), each running the
/// generator program over `template` until the duration is over.
pub(crate) fn live(a: &Args, mix: &[(Vec<u8>, u32)], encap: bool) -> Result<(), String> {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let threads = a.threads.max(1);
    let ifindex = sluice_xdp::ifindex_of(&a.iface).map_err(|e| e.to_string())?;
    let ports = if encap { ENCAP_PORTS } else { PORTS };
    let cfgs = mix
        .iter()
        .map(|(t, _)| sluice_xdp::trafficgen::GenConfig::for_frame(t, a.flows, ports, threads))
        .collect::<Result<Vec<_>, _>>()?;
    let weight: u32 = mix.iter().map(|(_, w)| w).sum();
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    let per_thread_rate = a.rate as f64 / f64::from(threads);
    let mut handles = Vec::new();
    // held until every thread is done (see TrafficGen::anchor)
    let mut anchor = None;
    for t in 0..threads {
        let gens = cfgs
            .iter()
            .map(sluice_xdp::trafficgen::TrafficGen::load)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        if t == 0 {
            anchor = anchor_first(&gens);
        }
        let core = a
            .cpus
            .get(t as usize)
            .map(|&id| core_affinity::CoreId { id });
        let (sent, mix) = (sent.clone(), mix.to_vec());
        handles.push(std::thread::spawn(move || -> Result<(), String> {
            if let Some(c) = core {
                core_affinity::set_for_current(c);
            }
            let mut mine = 0u64;
            while Instant::now() < end {
                let n = if per_thread_rate > 0.0 {
                    let due = (start.elapsed().as_secs_f64() * per_thread_rate) as u64;
                    if mine >= due {
                        std::thread::sleep(LIVE_SLICE);
                        continue;
                    }
                    (due - mine).min(u64::from(LIVE_CHUNK)) as u32
                } else {
                    LIVE_CHUNK
                };
                // the chunk split over the sizes by their share (IMIX), the remainder to the first
                let mut left = n;
                for (k, (gen, (frame, w))) in gens.iter().zip(&mix).enumerate().rev() {
                    let part = if k == 0 { left } else { n / weight * w };
                    if part == 0 {
                        continue;
                    }
                    gen.run(frame, ifindex, part, 64).map_err(|e| {
                        format!("BPF_PROG_RUN (live frames) on ifindex {ifindex}: {e}")
                    })?;
                    left -= part;
                }
                mine += u64::from(n);
                sent.fetch_add(u64::from(n), Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    let mut last = 0;
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let secs = start.elapsed().as_secs_f64();
        if secs as u64 > last {
            last = secs as u64;
            let n = sent.load(Ordering::Relaxed);
            eprintln!(
                "  {secs:>6.1}s  sent {n:>10}  {:>8.3} Mpps",
                n as f64 / secs / 1e6
            );
        }
    }
    for h in handles {
        h.join()
            .map_err(|_| "a generator thread panicked".to_string())??;
    }
    let secs = start.elapsed().as_secs_f64();
    let anchored = anchor.is_some();
    drop(anchor);
    let n = sent.load(Ordering::Relaxed);
    let result = serde_json::json!({
        "engine": "live",
        "anchored": anchored,
        "iface": a.iface,
        "threads": threads,
        "size": a.size,
        "encap": a.encap,
        "flows": a.flows,
        "proto": a.proto,
        "seconds": secs,
        "sent": n,
        "pps": n as f64 / secs,
    });
    println!("{result}");
    Ok(())
}
