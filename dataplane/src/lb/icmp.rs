//! ICMP errors about load-balanced connections, translated along them as the kernel's NAT does
//! (`nf_nat_icmp_reply_translation`), so that path MTU discovery, port-unreachable and
//! time-exceeded work through the appliance.
//!
//! An error quotes the packet it is about (its IP header and at least 8 bytes after it: the
//! ports), and goes to that packet's source. Two cases, found by the quoted packet's tuple
//! turned around, which is a tuple of the connection:
//! - about a packet the appliance sent a backend (quoted: SNAT address → backend; the error
//!   comes from the backend or a router toward it): it goes to the client, as if about the
//!   client's own packet (quoted: client → frontend), from the frontend;
//! - about a reply the appliance sent a client (quoted: frontend → client; from the client's
//!   side): it goes to the backend, as if about the backend's reply (quoted: backend → SNAT
//!   address), from the SNAT address. With DSR the backend sent that reply itself: the error is
//!   tunnelled to it unchanged, as its packets are (Katran does the same for "too big").
//!
//! The outer and quoted IPv4 header checksums and the quoted TCP/UDP checksum (when the quote
//! holds it) are updated incrementally; the ICMP checksum, which covers the quote, is computed
//! again (errors are rare and at most a few hundred bytes).

use super::conntrack::{Addr, Dir, Endpoint, Table, Tuple};
use super::nat::{rewrite_addresses, rewrite_at};
use super::{dsr, maglev, Family, LbState};
use crate::packet::{Batch, Verdict};
use crate::region::Region;
use crate::state::{Frontend, Snapshot};
use crate::stats::WorkerStats;
use crate::wire::parse::{parse_fast, Parsed, TunnelPorts};
use crate::wire::{be16, checksum, icmp, set_be16, tcp, udp};
use std::net::IpAddr;

/// Where an ICMP error's quoted packet is, and its tuple as quoted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Quote<A> {
    /// Offset of the quoted IP header.
    l3: usize,
    /// Offset of the quoted TCP/UDP header (at least its 8 bytes are in the packet).
    l4: usize,
    /// End of the ICMP message (the outer IP packet's end).
    end: usize,
    tuple: Tuple<A>,
}

/// The quoted packet of an ICMP error (destination unreachable, packet too big, time exceeded,
/// parameter problem) about a TCP or UDP packet; None for anything else (echo, a quote too
/// short, a quoted fragment without ports, IPv6 extension headers).
fn quote<A: Addr>(pkt: &[u8], p: &Parsed) -> Option<Quote<A>> {
    let l4 = p.l4?;
    let end = (p.l3 + p.ip_len).min(pkt.len());
    let msg = pkt.get(l4..end)?;
    let v6 = A::WORDS == 8;
    let error = match (v6, p.protocol) {
        (false, icmp::PROTOCOL_V4) => matches!(msg.first(), Some(3 | 11 | 12)),
        (true, icmp::PROTOCOL_V6) => matches!(msg.first(), Some(1..=4)),
        _ => false,
    };
    if !error {
        return None;
    }
    let l3 = l4 + icmp::field::HEADER_LEN;
    let ip = pkt.get(l3..end)?;
    let (src, dst, proto, header) = if v6 {
        if ip.len() < 40 || ip[0] >> 4 != 6 {
            return None;
        }
        let a = |at: usize| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&ip[at..at + 16]);
            IpAddr::from(o)
        };
        (a(8), a(24), ip[6], 40)
    } else {
        let header = usize::from(ip.first()? & 0x0f) * 4;
        // a later fragment quotes no ports
        if ip.len() < 20 || ip[0] >> 4 != 4 || header < 20 || be16(ip, 6) & 0x1fff != 0 {
            return None;
        }
        let a = |at: usize| IpAddr::from([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]]);
        (a(12), a(16), ip[9], header)
    };
    if !matches!(proto, tcp::PROTOCOL | udp::PROTOCOL) || ip.len() < header + 8 {
        return None;
    }
    let ports = &ip[header..];
    Some(Quote {
        l3,
        l4: l3 + header,
        end,
        tuple: Tuple {
            src: A::from_ip(src)?,
            dst: A::from_ip(dst)?,
            sport: be16(ports, 0),
            dport: be16(ports, 2),
            proto,
        },
    })
}

/// An ICMP packet: if it is an error about a connection, translated along it, tunnelled
/// to its DSR backend, or handed to the worker whose SNAT port it quotes.
pub(super) fn related(
    snap: &Snapshot,
    region: &mut Region,
    batch: &mut Batch,
    i: usize,
    lb: &mut LbState,
    stats: &WorkerStats,
) {
    let f = batch.frame(i);
    let Some(pkt) = region.data_mut(&f) else {
        return;
    };
    let Ok(p) = parse_fast(pkt, TunnelPorts::NONE) else {
        return;
    };
    let p = &p;
    let (related, quoted) = match p.dst {
        IpAddr::V4(_) => relate_in(&lb.v4, pkt, p),
        IpAddr::V6(_) => relate_in(&lb.v6, pkt, p),
    };
    let Some(quoted) = quoted else { return };
    match related {
        Related::Translated => {
            batch.meta_mut(i).lb = true;
            stats.lb_icmp_translated.add(1);
        }
        Related::Dsr(backend) => {
            batch.meta_mut(i).lb = true;
            stats.lb_icmp_translated.add(1);
            // the hash of the connection's own packets (client -> frontend): the same tunnel
            let h = maglev::flow_hash(
                quoted.dst.0,
                quoted.src.0,
                quoted.dst.1,
                quoted.src.1,
                quoted.proto,
                0,
            );
            let mut f = batch.frame(i);
            let v = dsr::dispatch(snap, region, &mut f, p, backend, h, stats);
            *batch.frame_mut(i) = f;
            if v != Verdict::Continue {
                batch.set_verdict(i, v);
            }
        }
        Related::No => {
            let snat = match p.dst {
                IpAddr::V4(_) => snap.lb.snat_v4.map(IpAddr::V4),
                IpAddr::V6(_) => snap.lb.snat_v6.map(IpAddr::V6),
            };
            let frontend = Frontend {
                addr: quoted.src.0,
                proto: quoted.proto,
                port: quoted.src.1,
            };
            let (me, workers) = (lb.ctx.worker, lb.ctx.workers);
            if Some(p.dst) == snat && quoted.src.0 == p.dst {
                // about a packet sent from another worker's SNAT port: that worker has it
                if let Some(w) = lb.ctx.other_owner(snap.lb.snat_ports, quoted.src.1) {
                    batch.set_verdict(i, Verdict::Handoff(w));
                }
            } else if snap.cluster.services.contains_key(&frontend)
                && u16::from(batch.meta(i).hops) + 1 < workers
            {
                // About a reply to a client: the connection is on the worker the client's
                // packets reach, and nothing in the error names it (its queue is not theirs: no
                // ports to hash). Once round the workers, at most.
                batch.set_verdict(i, Verdict::Handoff((me + 1) % workers));
            }
        }
    }
}

/// The quoted packet's ends and protocol, as quoted.
struct Quoted {
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    proto: u8,
}

fn relate_in<A: Addr>(fam: &Family<A>, pkt: &mut [u8], p: &Parsed) -> (Related, Option<Quoted>) {
    let Some(q) = quote::<A>(pkt, p) else {
        return (Related::No, None);
    };
    let t = q.tuple;
    let quoted = Quoted {
        src: (t.src.ip(), t.sport),
        dst: (t.dst.ip(), t.dport),
        proto: t.proto,
    };
    (relate(fam.table_of(&t), pkt, p, &q), Some(quoted))
}

/// What becomes of an ICMP error.
#[derive(Debug, PartialEq, Eq)]
enum Related {
    /// Not about a connection this worker tracks.
    No,
    /// Translated toward the client or the backend: route it.
    Translated,
    /// About a DSR reply: tunnel it, unchanged, to this backend.
    Dsr(IpAddr),
}

/// Translates the ICMP error in `pkt` (quote `q`) along its connection in `tb`, if it is about
/// one and goes to the quoted packet's source (`p.dst`).
fn relate<A: Addr>(tb: &Table<A>, pkt: &mut [u8], p: &Parsed, q: &Quote<A>) -> Related {
    let t = q.tuple;
    if A::from_ip(p.dst) != Some(t.src) {
        return Related::No;
    }
    let turned = Tuple {
        src: t.dst,
        dst: t.src,
        sport: t.dport,
        dport: t.sport,
        proto: t.proto,
    };
    let Some((slot, dir)) = tb.lookup(&turned) else {
        return Related::No;
    };
    let Some(e) = tb.get(slot) else {
        return Related::No;
    };
    let nat = e.nat();
    match (dir, e.dsr()) {
        // the error's source was the backend's or a router's: it comes from the frontend now
        (Dir::Reply, false) => {
            translate(
                pkt,
                p,
                q,
                nat.frontend.addr,
                nat.client.addr,
                nat.client,
                nat.frontend,
            );
            Related::Translated
        }
        (Dir::Original, false) => {
            translate(
                pkt,
                p,
                q,
                nat.source.addr,
                nat.backend.addr,
                nat.backend,
                nat.source,
            );
            Related::Translated
        }
        (Dir::Original, true) => Related::Dsr(nat.backend.addr.ip()),
        // DSR replies never pass the appliance
        (Dir::Reply, true) => Related::No,
    }
}

/// Rewrites the outer addresses to `outer_src` → `outer_dst` and the quote to `src` → `dst`.
#[allow(clippy::too_many_arguments)]
fn translate<A: Addr>(
    pkt: &mut [u8],
    p: &Parsed,
    q: &Quote<A>,
    outer_src: A,
    outer_dst: A,
    src: Endpoint<A>,
    dst: Endpoint<A>,
) {
    let v4 = A::WORDS == 2;
    // the outer header: addresses and (IPv4) its checksum; the outer source was the error's
    // sender, so the delta is computed from what the packet holds
    let old = (
        A::from_ip(p.src).unwrap_or_default(),
        A::from_ip(p.dst).unwrap_or_default(),
    );
    rewrite_addresses(pkt, p.l3, old, outer_src, outer_dst);
    // the quote: addresses, ports, its IPv4 header checksum, its TCP/UDP checksum when quoted
    rewrite_at(pkt, (q.l3, q.l4, q.end), &q.tuple, src, dst);
    // the ICMP checksum over the whole message (ICMPv6: with the new outer addresses)
    let l4 = q.l3 - icmp::field::HEADER_LEN;
    set_be16(pkt, l4 + icmp::field::CHECKSUM, 0);
    let msg = &pkt[l4..q.end];
    let c = if v4 {
        checksum::checksum(msg)
    } else {
        !checksum::pseudo_header_sum(outer_src.ip(), outer_dst.ip(), icmp::PROTOCOL_V6, msg)
    };
    set_be16(pkt, l4 + icmp::field::CHECKSUM, c);
}
