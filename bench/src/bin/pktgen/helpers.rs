//! The measuring helpers: the bare AF_XDP forwarder, the XDP sink and the XDP forwarder.

use super::Args;
use sluice_dataplane::io::afxdp::{AfXdpConfig, AfXdpIo, ZeroCopy};
use sluice_dataplane::io::PacketIo;
use sluice_dataplane::stats::WorkerStats;
use sluice_dataplane::wire::ethernet::parse_mac;
use sluice_dataplane::{Batch, Verdict, MAX_BATCH};
use std::time::{Duration, Instant};

/// The MACs a forwarder (afxdp-fwd, xdp-fwd) writes: `--out-iface`'s own and `--dst-mac`.
pub(crate) fn forward_macs(a: &Args) -> Result<([u8; 6], [u8; 6]), String> {
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
pub(crate) fn afxdp_forward(a: &Args) -> Result<(), String> {
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
pub(crate) fn sink(a: &Args) -> Result<(), String> {
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
pub(crate) fn xdp_forward(a: &Args) -> Result<(), String> {
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
