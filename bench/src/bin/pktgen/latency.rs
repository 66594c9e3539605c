//! The `latency` engine: UDP round trips into an HDR histogram.

use super::Args;
use std::time::{Duration, Instant};

/// The latency engine: `--rate` UDP requests a second (1,000 by default) to the echo server,
/// each carrying its sequence number and send time; a receiver thread records each answer's
/// round trip. Answers later than a second count as lost.
pub(crate) fn latency(a: &Args) -> Result<(), String> {
    use std::net::{IpAddr, SocketAddr, UdpSocket};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dst_ip: IpAddr = a
        .dst_ip
        .parse()
        .map_err(|_| format!("--dst-ip {:?} is not an IP address", a.dst_ip))?;
    let bind = if dst_ip.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("UDP socket: {e}"))?;
    sock.connect(SocketAddr::new(dst_ip, a.dst_port))
        .map_err(|e| format!("connect {dst_ip}:{}: {e}", a.dst_port))?;
    // the receiver wakes at least this often to see whether it should stop
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(|e| e.to_string())?;
    let rx = sock.try_clone().map_err(|e| e.to_string())?;
    let rate = if a.rate == 0 { 1000 } else { a.rate };
    let start = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let receiver = {
        let done = done.clone();
        std::thread::spawn(move || {
            // 1 µs to 60 s, 3 significant digits
            let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .expect("histogram bounds");
            let mut buf = [0u8; 2048];
            while !done.load(Ordering::Relaxed) {
                let Ok(n) = rx.recv(&mut buf) else { continue };
                // the echo prefixes its name: the request's 16 bytes end the answer
                let Some(tail) = n.checked_sub(16).map(|k| &buf[k..n]) else {
                    continue;
                };
                let sent_ns = u64::from_be_bytes(tail[8..16].try_into().unwrap_or_default());
                let rtt_us = (start.elapsed().as_nanos() as u64).saturating_sub(sent_ns) / 1000;
                if rtt_us <= 1_000_000 {
                    let _ = h.record(rtt_us.max(1));
                }
            }
            h
        })
    };
    let end = start + Duration::from_secs_f64(a.duration);
    let mut sent = 0u64;
    while Instant::now() < end {
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        if sent >= due {
            std::thread::sleep(Duration::from_micros(50));
            continue;
        }
        let mut req = [0u8; 16];
        req[..8].copy_from_slice(&sent.to_be_bytes());
        req[8..].copy_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
        // a refused send (ICMP unreachable from an earlier one) is a lost request
        let _ = sock.send(&req);
        sent += 1;
    }
    std::thread::sleep(Duration::from_secs(1)); // the last answers
    done.store(true, Ordering::Relaxed);
    let h = receiver
        .join()
        .map_err(|_| "the receiver thread panicked".to_string())?;
    let q = |p: f64| h.value_at_quantile(p);
    let result = serde_json::json!({
        "engine": "latency",
        "dst": format!("{dst_ip}:{}", a.dst_port),
        "rate": rate,
        "sent": sent,
        "answered": h.len(),
        "lost": sent.saturating_sub(h.len()),
        "rtt_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p99_9": q(0.999), "max": h.max()},
    });
    println!("{result}");
    Ok(())
}
