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

mod afxdp;
mod helpers;
mod latency;
mod live;
mod templates;

use clap::Parser;
use helpers::{afxdp_forward, sink, xdp_forward};
use latency::latency;
use live::live;
use sluice_dataplane::wire::build::{PacketSpec, L4};
use sluice_dataplane::wire::ethernet::parse_mac;
use templates::{encap_of, sizes_of, ENCAP_PORTS, PORTS};

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

fn main() {
    let a = Args::parse();
    if let Err(e) = run(&a) {
        eprintln!("sluice-pktgen: {e}");
        std::process::exit(1);
    }
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
    afxdp::send(a, templates, malformed, src_mac, dst_mac)
}
