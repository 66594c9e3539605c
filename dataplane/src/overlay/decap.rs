//! Decapsulation of tunnel traffic addressed to this node (precedence in the module doc).

use super::{ETH, IPV4, UDP};
use crate::drop::DropReason;
use crate::packet::{Batch, Meta, Verdict};
use crate::region::Region;
use crate::state::{OverlayMode, Snapshot};
use crate::stats::WorkerStats;
use crate::wire::geneve::{GenevePacket, OPT_CLASS_SLUICE, OPT_TYPE_CRITICAL};
use crate::wire::parse::{parse, plain_ipv4, Parsed, TunnelKind, TunnelPorts};
use crate::wire::vxlan::VxlanRepr;
use crate::wire::{be16, be32, udp};
use std::net::IpAddr;

/// A tunnel packet addressed to us, as the decapsulation needs it.
#[derive(Debug, PartialEq)]
pub(super) struct Outer {
    src: IpAddr,
    kind: TunnelKind,
    vni: u32,
    /// Offset of the tunnel header (Geneve options are checked from there).
    tunnel_at: usize,
    /// Offset of the inner Ethernet frame.
    inner: usize,
}

/// What a frame is to the decapsulation.
#[derive(Debug, PartialEq)]
pub(super) enum Classified {
    /// Not tunnel traffic to us: the later stages' business.
    NotOurs,
    Tunnel(Outer),
    /// Addressed to our tunnel port but the tunnel header is broken: it must not be routed on.
    Malformed,
}

/// The common case read in place: VXLAN over a plain IPv4 header (see `plain_ipv4`); a plain
/// IPv4 frame that is not UDP to our address and port is not ours either. None: ask `parse`.
#[inline]
pub(super) fn classify_plain_vxlan(frame: &[u8], local: u32, port: u16) -> Option<Classified> {
    let (proto, seg) = plain_ipv4(frame)?;
    const L4: usize = ETH + IPV4;
    if proto != udp::PROTOCOL || be16(frame, L4 + 2) != port || be32(frame, ETH + 16) != local {
        return Some(Classified::NotOurs);
    }
    let ulen = usize::from(be16(frame, L4 + 4));
    let tunnel_at = L4 + UDP;
    let inner = tunnel_at + VxlanRepr::header_len();
    if !(inner - L4..=seg).contains(&ulen) || frame[tunnel_at] & 0x08 == 0 {
        return None; // the slow path names what is wrong
    }
    Some(Classified::Tunnel(Outer {
        src: IpAddr::from(be32(frame, ETH + 12).to_be_bytes()),
        kind: TunnelKind::Vxlan,
        vni: be32(frame, tunnel_at + 4) >> 8,
        tunnel_at,
        inner,
    }))
}

/// Any frame, through the full parser.
pub(super) fn classify(frame: &[u8], local: IpAddr, tp: TunnelPorts) -> Classified {
    let tunnel_port = tp.vxlan.or(tp.geneve);
    let ours = |p: &Parsed| {
        p.dst == local && p.protocol == udp::PROTOCOL && Some(p.dst_port) == tunnel_port
    };
    match parse(frame, tp) {
        Ok(p) if ours(&p) => match p.tunnel {
            Some(t) => Classified::Tunnel(Outer {
                src: p.src,
                kind: t.kind,
                vni: t.vni,
                tunnel_at: p.l4.unwrap_or(0) + UDP,
                inner: t.inner,
            }),
            None => Classified::Malformed,
        },
        Ok(_) => Classified::NotOurs,
        // rare: a frame that does not parse; if it is addressed to our tunnel port, its tunnel
        // header is what is wrong
        Err(_) => match parse(frame, TunnelPorts::NONE) {
            Ok(p) if ours(&p) => Classified::Malformed,
            _ => Classified::NotOurs,
        },
    }
}

/// Decapsulation of tunnel traffic addressed to this node.
pub fn decap(snap: &Snapshot, region: &mut Region, batch: &mut Batch, stats: &WorkerStats) {
    let ov = &*snap.overlay;
    if !matches!(ov.mode, OverlayMode::Vxlan | OverlayMode::Geneve) {
        return;
    }
    let Some(local) = ov.local_ip else { return };
    let tp = super::ports(ov);
    // the in-place read covers VXLAN over IPv4 only
    let fast = match (local, tp.vxlan) {
        (IpAddr::V4(l), Some(port)) => Some((u32::from(l), port)),
        _ => None,
    };
    let mut done = 0;
    for i in 0..batch.len() {
        if batch.verdict(i) != Verdict::Continue {
            continue;
        }
        let mut f = batch.frame(i);
        let Some(pkt) = region.data(&f) else { continue };
        let quick = fast.and_then(|(l, port)| classify_plain_vxlan(pkt, l, port));
        let t = match quick.unwrap_or_else(|| classify(pkt, local, tp)) {
            Classified::NotOurs => continue,
            Classified::Malformed => {
                batch.set_verdict(i, Verdict::Drop(DropReason::Malformed));
                continue;
            }
            Classified::Tunnel(t) => t,
        };
        let verdict = if !snap.cluster.node_ips.contains(&t.src) {
            Some(DropReason::UnknownSender)
        } else if t.vni == 0 {
            Some(DropReason::InvalidVni)
        } else if t.kind == TunnelKind::Geneve && has_unknown_critical_option(&pkt[t.tunnel_at..]) {
            Some(DropReason::InvalidGeneveOption)
        } else {
            None
        };
        if let Some(r) = verdict {
            batch.set_verdict(i, Verdict::Drop(r));
            continue;
        }
        if !region.pull_head(&mut f, t.inner as u32) {
            batch.set_verdict(i, Verdict::Drop(DropReason::Malformed));
            continue;
        }
        *batch.frame_mut(i) = f;
        *batch.meta_mut(i) = Meta {
            src_identity: t.vni,
            decapsulated: true,
            ..Meta::default()
        };
        done += 1;
    }
    stats.decapsulated.add(done);
}

fn has_unknown_critical_option(geneve: &[u8]) -> bool {
    match GenevePacket::new_checked(geneve) {
        Ok(g) => g
            .options()
            .any(|o| o.type_ & OPT_TYPE_CRITICAL != 0 && o.class != OPT_CLASS_SLUICE),
        Err(_) => true,
    }
}
