//! `sluice-pktgen`: the traffic generator. Two engines, as fast as they go or at a target rate,
//! for a duration, with a JSON result at the end:
//! - `live`: an XDP program run by BPF_PROG_RUN in live-frames mode (kernel 5.18+, what
//!   xdp-trafficgen does) transmits copies of the template out of the interface, giving each
//!   packet its flow in the kernel. No socket and no ring: faster than the device under test.
//! - `afxdp`: templates through an AF_XDP socket's TX ring (copy mode on veth, zero-copy on NICs
//!   that have it); also sends the malformed corpus.
//! - `afxdp-fwd`: not a generator but the I/O ceiling a datapath on AF_XDP has: every IPv4
//!   packet arriving on `--iface` is steered into an AF_XDP socket and sent out of `--out-iface`
//!   to `--dst-mac`, nothing else done (run it where the device under test would run).
//! - `sink`: counts and drops (XDP) every IP frame arriving on `--iface` (ARP passes), writing the count to
//!   `--counter-file` every 100 ms: the receiving end of a forwarding measurement, at no cost
//!   to the datapath under test.
//! - `xdp-fwd`: the kernel-XDP baseline: an XDP program forwarding every IPv4 packet from
//!   `--iface` to `--out-iface` (bpf_redirect; XDP_TX when they are the same), for `--duration`.
//! - `latency`: UDP requests through the device under test to an echo server (the lab backends'
//!   `udp.py serve`), each stamped with its send time; the round trips' p50/p90/p99/p99.9 from an
//!   HDR histogram. Run it against the kernel path and against sluiced: the difference is what
//!   the datapath adds.
//!
//! Templates: UDP, or TCP SYNs (a SYN flood: every flow a new connection), over up to millions
//! of flows (source port, then source address).

use clap::Parser;
use sluice_dataplane::io::afxdp::{AfXdpConfig, AfXdpIo, ZeroCopy};
use sluice_dataplane::io::PacketIo;
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::build::{PacketSpec, L4};
use sluice_dataplane::wire::ethernet::parse_mac;
use sluice_dataplane::{Batch, Verdict, MAX_BATCH};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "sluice-pktgen",
    about = "sluice packet generator (live BPF_PROG_RUN and AF_XDP engines)"
)]
struct Args {
    /// live (BPF_PROG_RUN live frames: fastest; udp and syn), afxdp (AF_XDP TX ring), or
    /// latency (UDP round trips to an echo server at --dst-ip:--dst-port, at --rate).
    #[arg(long, default_value = "afxdp")]
    engine: String,
    /// Generator threads (live engine).
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// CPUs to pin the live engine's threads to, in order (e.g. 1 or 2,3); empty: not pinned.
    /// Keep them off the device under test's cores: the frames are sent, and on veth also
    /// received, on the generator's CPU.
    #[arg(long, value_delimiter = ',')]
    cpus: Vec<usize>,
    /// Interface to transmit on (live and afxdp engines; afxdp-fwd: to receive on).
    #[arg(long, default_value = "")]
    iface: String,
    /// afxdp-fwd: the interface to forward out of.
    #[arg(long, default_value = "")]
    out_iface: String,
    /// sink: where to keep the count of frames received (rewritten every 100 ms).
    #[arg(long)]
    counter_file: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 0)]
    queue: u32,
    /// Destination MAC (the next hop: the device under test; live and afxdp engines).
    #[arg(long, default_value = "")]
    dst_mac: String,
    #[arg(long, default_value = "02:00:00:00:00:01")]
    src_mac: String,
    /// Source and destination addresses of the generated frames (latency: the echo server's).
    #[arg(long, default_value = "")]
    src_ip: String,
    #[arg(long, default_value = "")]
    dst_ip: String,
    #[arg(long, default_value_t = 9)]
    dst_port: u16,
    /// Distinct flows: source ports 1024..61023, then the next source address.
    #[arg(long, default_value_t = 64)]
    flows: u32,
    /// udp, syn (TCP SYNs: a SYN flood), or malformed (a corpus of broken frames toward
    /// --dst-ip: truncated headers, bad lengths, bad checksums, IP options, fragments, TTL 1,
    /// unknown EtherTypes, tunnel packets with garbage inside).
    #[arg(long, default_value = "udp")]
    proto: String,
    /// Frame size in bytes (without FCS), 60..=1514, or imix: 64, 576 and 1500 bytes, 7:4:1.
    /// With --encap, the size of the inner frame.
    #[arg(long, default_value = "64")]
    size: String,
    /// Encapsulate every frame: vxlan or geneve (the generated frame is the inner Ethernet
    /// frame; flows also vary the outer UDP source port, as a VTEP's entropy does).
    #[arg(long)]
    encap: Option<String>,
    #[arg(long, default_value_t = 5001)]
    vni: u32,
    /// Outer source and destination addresses (with --encap): the sending and receiving VTEP.
    #[arg(long)]
    outer_src: Option<String>,
    #[arg(long)]
    outer_dst: Option<String>,
    /// Outer UDP destination port; default 8472 (Linux vxlan) or 6081 (geneve).
    #[arg(long)]
    outer_port: Option<u16>,
    /// Seconds to run.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Target packets per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
}

/// Source ports per source address.
const PORTS: u32 = 60_000;
/// Outer UDP source ports of encapsulated flows (49152..=65535, as VTEPs pick them).
const ENCAP_PORTS: u32 = 16_384;
/// Simple IMIX, frames without FCS: 7 of 64 bytes, 4 of 576, 1 of 1500.
const IMIX: [usize; 12] = [64, 64, 64, 64, 64, 64, 64, 576, 576, 576, 576, 1500];

/// The frame sizes to cycle through: one, or the IMIX. With encapsulation (`encap` bytes of
/// outer headers) the outer frame must fit 1514 bytes: IMIX's largest is cut to fit.
fn sizes_of(size: &str, encap: usize) -> Result<Vec<usize>, String> {
    let max = 1514 - encap;
    if size == "imix" {
        return Ok(IMIX.iter().map(|s| (*s).min(max)).collect());
    }
    let n: usize = size
        .parse()
        .map_err(|_| format!("--size {size:?} is not a number of bytes or imix"))?;
    if !(60..=max).contains(&n) {
        return Err(format!("--size {n} is outside 60..={max}"));
    }
    Ok(vec![n])
}

/// A tunnel around every frame.
struct Encap {
    geneve: bool,
    vni: u32,
    src: String,
    dst: String,
    port: u16,
    /// Bytes of outer headers: Ethernet, IP, UDP, the tunnel header.
    overhead: usize,
}

fn encap_of(a: &Args) -> Result<Option<Encap>, String> {
    let Some(kind) = &a.encap else {
        return Ok(None);
    };
    let geneve = match kind.as_str() {
        "vxlan" => false,
        "geneve" => true,
        o => return Err(format!("--encap {o:?} is not vxlan or geneve")),
    };
    if a.vni > 0x00ff_ffff {
        return Err(format!("--vni {} does not fit 24 bits", a.vni));
    }
    let (Some(src), Some(dst)) = (&a.outer_src, &a.outer_dst) else {
        return Err("--encap needs --outer-src and --outer-dst (the VTEPs)".into());
    };
    let v6 = dst.contains(':');
    if src.parse::<std::net::IpAddr>().is_err()
        || dst.parse::<std::net::IpAddr>().is_err()
        || src.contains(':') != v6
    {
        return Err("--outer-src and --outer-dst must be addresses of one IP family".into());
    }
    Ok(Some(Encap {
        geneve,
        vni: a.vni,
        src: src.clone(),
        dst: dst.clone(),
        port: a.outer_port.unwrap_or(if geneve { 6081 } else { 8472 }),
        overhead: if v6 { 70 } else { 50 },
    }))
}

impl Encap {
    /// `inner` in the tunnel, flow `f` in the outer source port.
    fn wrap(&self, inner: &[u8], f: u32, src_mac: [u8; 6], dst_mac: [u8; 6]) -> Vec<u8> {
        let vni = self.vni.to_be_bytes();
        let mut payload = if self.geneve {
            // version 0, no options; protocol: transparent Ethernet bridging
            vec![0, 0, 0x65, 0x58, vni[1], vni[2], vni[3], 0]
        } else {
            // flags: VNI valid
            vec![0x08, 0, 0, 0, vni[1], vni[2], vni[3], 0]
        };
        payload.extend_from_slice(inner);
        let sport = 49152 + (f % ENCAP_PORTS) as u16;
        let mut s = PacketSpec::udp(&self.src, &self.dst, sport, self.port, &payload);
        s.src_mac = src_mac;
        s.dst_mac = dst_mac;
        s.build()
    }
}

/// Frames per BPF_PROG_RUN call at full rate: ~10-20 ms of work at this machine's rates, so
/// the duration is kept to within that and progress is smooth.
const LIVE_CHUNK: u32 = 1 << 16;
/// At a target rate, each thread sends what is due, then sleeps this long: bursts of a
/// millisecond's packets (100 at 100 kpps), close to what a paced NIC delivers. Longer slices
/// make bursts that overflow a receiver's ring at rates it sustains when paced.
const LIVE_SLICE: Duration = Duration::from_millis(1);

/// Keeps the first generator program in the kernel's XDP dispatcher for the run (attached to
/// the loopback, see `TrafficGen::anchor`), so that a run at a target rate is smooth: only one
/// program can be (the loopback takes one), so with several threads or sizes the others still
/// pay ~20 ms per BPF_PROG_RUN call and send in bursts. Failing that, the run goes on unanchored.
fn anchor_first(gens: &[sluice_xdp::trafficgen::TrafficGen]) -> Option<std::os::fd::OwnedFd> {
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
fn live(a: &Args, mix: &[(Vec<u8>, u32)], encap: bool) -> Result<(), String> {
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

/// The MACs a forwarder (afxdp-fwd, xdp-fwd) writes: `--out-iface`'s own and `--dst-mac`.
fn forward_macs(a: &Args) -> Result<([u8; 6], [u8; 6]), String> {
    if a.iface.is_empty() || a.out_iface.is_empty() || a.dst_mac.is_empty() {
        return Err(format!(
            "--engine {} needs --iface, --out-iface and --dst-mac",
            a.engine
        ));
    }
    let dst_mac =
        parse_mac(&a.dst_mac).ok_or_else(|| format!("--dst-mac {:?} is not a MAC", a.dst_mac))?;
    let src_mac = std::fs::read_to_string(format!("/sys/class/net/{}/address", a.out_iface))
        .ok()
        .and_then(|m| parse_mac(m.trim()))
        .ok_or_else(|| format!("reading the MAC of {}", a.out_iface))?;
    Ok((src_mac, dst_mac))
}

/// The bare AF_XDP forwarder (the I/O ceiling of an AF_XDP datapath on these interfaces): XDP
/// steers every IPv4 packet into the sockets, and each one received on the first interface
/// leaves by the second with its destination MAC set, in batches, busy polling. Nothing else:
/// no parsing, no tables.
fn afxdp_forward(a: &Args) -> Result<(), String> {
    use sluice_xdp::{Steering, XdpMode};
    let (src_mac, dst_mac) = forward_macs(a)?;
    let ifaces = [a.iface.clone(), a.out_iface.clone()];
    let mut steering = Steering::new();
    for i in &ifaces {
        steering
            .attach(i, XdpMode::Native, true)
            .map_err(|e| e.to_string())?;
    }
    // every IPv4 destination (IPv4 is kept as mapped IPv6: ::ffff:0.0.0.0/96)
    steering
        .own_prefix(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0)
        .map_err(|e| e.to_string())?;
    let cfg = AfXdpConfig {
        zero_copy: ZeroCopy::Auto,
        ..AfXdpConfig::default()
    };
    let mut io = AfXdpIo::open(&ifaces, a.queue, &cfg).map_err(|e| e.to_string())?;
    for (ifname, fd) in io.socket_fds() {
        steering
            .register_socket(&ifname, a.queue, fd)
            .map_err(|e| e.to_string())?;
    }
    let stats = WorkerStats::default();
    let mut batch = Batch::new(MAX_BATCH);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    while Instant::now() < end {
        io.service(&stats);
        if io.rx_burst(&mut batch, &stats) == 0 {
            continue;
        }
        for i in 0..batch.len() {
            let f = batch.frame(i);
            let out = f.port == 0;
            if let Some(d) = io
                .region_mut()
                .data_mut(&f)
                .filter(|d| d.len() >= 12 && out)
            {
                d[..6].copy_from_slice(&dst_mac);
                d[6..12].copy_from_slice(&src_mac);
                batch.set_verdict(i, Verdict::Tx(1));
            }
        }
        io.tx_burst(&mut batch, &stats);
        io.recycle(&mut batch);
    }
    let secs = start.elapsed().as_secs_f64();
    let result = serde_json::json!({
        "engine": "afxdp-fwd",
        "in": a.iface, "out": a.out_iface,
        "zero_copy": io.is_zero_copy(),
        "seconds": secs,
        "received": stats.rx_packets.get(),
        "forwarded": stats.tx_packets.get(),
        "pps": stats.tx_packets.get() as f64 / secs,
    });
    println!("{result}");
    Ok(())
}

/// The sink: an XDP program counting and dropping what arrives on `--iface`, for the duration.
fn sink(a: &Args) -> Result<(), String> {
    if a.iface.is_empty() {
        return Err("--engine sink needs --iface".into());
    }
    let ifindex = sluice_xdp::ifindex_of(&a.iface).map_err(|e| e.to_string())?;
    let s = sluice_xdp::trafficgen::XdpSink::attach(ifindex).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(a.duration);
    while Instant::now() < end {
        // the interface went away (its namespace torn down): nothing more can arrive
        if sluice_xdp::ifindex_of(&a.iface).ok() != Some(ifindex) {
            break;
        }
        if let Some(f) = &a.counter_file {
            // written whole then renamed: a reader never sees half a number
            let tmp = f.with_extension("tmp");
            std::fs::write(&tmp, s.count().to_string())
                .and_then(|()| std::fs::rename(&tmp, f))
                .map_err(|e| format!("{}: {e}", f.display()))?;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let secs = start.elapsed().as_secs_f64();
    let n = s.count();
    let result = serde_json::json!({
        "engine": "sink", "iface": a.iface, "seconds": secs, "received": n, "pps": n as f64 / secs,
    });
    println!("{result}");
    Ok(())
}

/// The kernel-XDP forwarding baseline: `bpf/xdpfwd.bpf.c` on `--iface` for the duration.
fn xdp_forward(a: &Args) -> Result<(), String> {
    let (src_mac, dst_mac) = forward_macs(a)?;
    let index = |i: &str| sluice_xdp::ifindex_of(i).map_err(|e| e.to_string());
    let fwd = sluice_xdp::trafficgen::XdpForward::attach(
        index(&a.iface)?,
        index(&a.out_iface)?,
        src_mac,
        dst_mac,
    )
    .map_err(|e| e.to_string())?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(a.duration));
    let secs = start.elapsed().as_secs_f64();
    let n = fwd.forwarded();
    let result = serde_json::json!({
        "engine": "xdp-fwd", "in": a.iface, "out": a.out_iface,
        "seconds": secs, "forwarded": n, "pps": n as f64 / secs,
    });
    println!("{result}");
    Ok(())
}

/// The latency engine: `--rate` UDP requests a second (1,000 by default) to the echo server,
/// each carrying its sequence number and send time; a receiver thread records each answer's
/// round trip. Answers later than a second count as lost.
fn latency(a: &Args) -> Result<(), String> {
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

fn main() {
    let a = Args::parse();
    if let Err(e) = run(&a) {
        eprintln!("sluice-pktgen: {e}");
        std::process::exit(1);
    }
}

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

fn run(a: &Args) -> Result<(), String> {
    if a.engine == "latency" {
        return latency(a);
    }
    if a.engine == "afxdp-fwd" {
        return afxdp_forward(a);
    }
    if a.engine == "xdp-fwd" {
        return xdp_forward(a);
    }
    if a.engine == "sink" {
        return sink(a);
    }
    if a.iface.is_empty() || a.dst_mac.is_empty() {
        return Err(format!("--engine {} needs --iface and --dst-mac", a.engine));
    }
    let encap = encap_of(a)?;
    let sizes = sizes_of(&a.size, encap.as_ref().map_or(0, |e| e.overhead))?;
    if a.flows == 0 || a.flows > 4_000_000 {
        return Err("--flows must be 1..=4,000,000".into());
    }
    let (syn, malformed) = match a.proto.as_str() {
        "udp" => (false, false),
        "syn" => (true, false),
        "malformed" => (false, true),
        o => return Err(format!("--proto {o:?} is not udp, syn or malformed")),
    };
    let dst_mac =
        parse_mac(&a.dst_mac).ok_or_else(|| format!("--dst-mac {:?} is not a MAC", a.dst_mac))?;
    let src_mac =
        parse_mac(&a.src_mac).ok_or_else(|| format!("--src-mac {:?} is not a MAC", a.src_mac))?;
    let mut families = Vec::new();
    for (flag, ip) in [("--src-ip", &a.src_ip), ("--dst-ip", &a.dst_ip)] {
        let parsed = ip
            .parse::<std::net::IpAddr>()
            .map_err(|_| format!("{flag} {ip:?} is not an IP address"))?;
        families.push(parsed.is_ipv6());
    }
    if families[0] != families[1] {
        return Err("--src-ip and --dst-ip must be of the same IP family".into());
    }
    // Ethernet + IPv6/IPv4 + UDP headers
    let overhead = if a.dst_ip.contains(':') { 62 } else { 42 };
    let base: std::net::IpAddr = a.src_ip.parse().map_err(|_| "--src-ip".to_string())?;
    // the live engine rewrites flow 0's template in the kernel: one per size is enough; the
    // AF_XDP engine sends them all, every size over the flows
    let n_sizes = sizes.len() as u32;
    let built = if a.engine == "live" {
        n_sizes
    } else {
        // a whole number of size cycles, so the mix holds over the templates
        a.flows.div_ceil(n_sizes) * n_sizes
    };
    let templates: Vec<Vec<u8>> = (0..built)
        .map(|i| {
            let f = if a.engine == "live" { 0 } else { i % a.flows };
            let payload = vec![0u8; sizes[i as usize % sizes.len()].saturating_sub(overhead)];
            let src = match base {
                std::net::IpAddr::V4(v) => {
                    std::net::IpAddr::V4((u32::from(v).wrapping_add(f / PORTS)).into())
                }
                std::net::IpAddr::V6(v) => {
                    std::net::IpAddr::V6((u128::from(v).wrapping_add(u128::from(f / PORTS))).into())
                }
            };
            let sport = 1024 + (f % PORTS) as u16;
            let mut s = PacketSpec::udp(&src.to_string(), &a.dst_ip, sport, a.dst_port, &payload);
            if syn {
                s.l4 = L4::TcpSeq {
                    flags: 0x02,
                    seq: f.wrapping_mul(2_654_435_761),
                    ack: 0,
                };
                // SYNs carry no payload
                s.payload.clear();
            }
            s.src_mac = src_mac;
            s.dst_mac = dst_mac;
            match &encap {
                Some(e) => e.wrap(&s.build(), f, src_mac, dst_mac),
                None => s.build(),
            }
        })
        .collect();
    if a.engine == "live" {
        if malformed {
            return Err("--proto malformed needs --engine afxdp (a corpus of frames)".into());
        }
        if encap.is_some() && a.flows > ENCAP_PORTS {
            return Err(format!(
                "--engine live with --encap varies the outer source port only: --flows at most {ENCAP_PORTS}"
            ));
        }
        // each size in its IMIX share: the live engine runs one template per size
        let mix: Vec<(Vec<u8>, u32)> = templates
            .iter()
            .enumerate()
            .map(|(k, t)| {
                let n = sizes.iter().filter(|s| **s == sizes[k]).count() as u32;
                (t.clone(), n)
            })
            .filter(|(t, _)| !t.is_empty())
            .collect();
        let mut distinct: Vec<(Vec<u8>, u32)> = Vec::new();
        for (t, w) in mix {
            if !distinct.iter().any(|(d, _)| d.len() == t.len()) {
                distinct.push((t, w));
            }
        }
        return live(a, &distinct, encap.is_some());
    }
    if a.engine != "afxdp" {
        return Err(format!("--engine {:?} is not live or afxdp", a.engine));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dataplane::wire::parse::{parse, TunnelKind, TunnelPorts};

    fn encap(geneve: bool) -> Encap {
        Encap {
            geneve,
            vni: 5001,
            src: "10.20.0.21".into(),
            dst: "10.20.0.1".into(),
            port: if geneve { 6081 } else { 8472 },
            overhead: 50,
        }
    }

    #[test]
    fn encapsulated_templates_parse_as_tunnels_with_the_inner_frame_whole() {
        let inner = PacketSpec::udp("10.244.2.5", "10.10.0.2", 9000, 1024, &[0; 22]).build();
        for (geneve, kind) in [(false, TunnelKind::Vxlan), (true, TunnelKind::Geneve)] {
            let f = encap(geneve).wrap(&inner, 7, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
            assert_eq!(f.len(), inner.len() + 50);
            let p = parse(&f, TunnelPorts::DEFAULT).expect("outer parses");
            let t = p.tunnel.expect("a tunnel");
            assert_eq!((t.kind, t.vni), (kind, 5001));
            assert_eq!(&f[t.inner..], &inner[..]);
            assert_eq!(p.src_port, 49152 + 7, "the flow in the outer source port");
        }
    }

    #[test]
    fn imix_is_seven_four_one_and_fits_the_tunnel() {
        let s = sizes_of("imix", 0).unwrap();
        assert_eq!(s.iter().filter(|n| **n == 64).count(), 7);
        assert_eq!(s.iter().filter(|n| **n == 576).count(), 4);
        assert_eq!(s.iter().filter(|n| **n == 1500).count(), 1);
        assert_eq!(sizes_of("imix", 50).unwrap().iter().max(), Some(&1464));
        assert!(sizes_of("1500", 50).is_err());
        assert!(sizes_of("big", 0).is_err());
        assert_eq!(sizes_of("128", 0).unwrap(), vec![128]);
    }
}
