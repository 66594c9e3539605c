//! Network policy as the datapath holds it (compiled by the control plane, control-api's
//! `policy` module).
//!
//! A per-endpoint, per-direction policy map keyed like Cilium's: (peer identity, protocol,
//! destination port with a prefix length). Port ranges (`endPort`) become the fewest
//! (port, prefix) entries that cover them, so a lookup costs one probe per prefix length in use,
//! whatever the number of rules: typically one or two.

use std::sync::Arc;

/// Any peer (`toEntities: all`, or a rule without peers).
pub const ANY_PEER: u32 = 0;
/// Any protocol (`protocol: ANY`, or a rule without ports).
pub const ANY_PROTO: u8 = 0;

/// The (port, prefix length) blocks that cover `lo..=hi` exactly, fewest first-fit.
pub fn port_prefixes(lo: u16, hi: u16) -> Vec<(u16, u8)> {
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(lo), u32::from(hi));
    while lo <= hi {
        // the largest aligned block starting at lo that stays within hi
        let mut size = if lo == 0 {
            1 << 16
        } else {
            1u32 << lo.trailing_zeros()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((lo as u16, 16 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

/// What the map says for a packet (borrowing the policy's name from the map: no reference
/// counting on the fast path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// Allowed by the named policy ("" when no policy applies at all).
    Allow(&'a str),
    /// Denied by an explicit deny rule of the named policy (Cilium's POLICY_DENY).
    Deny(&'a str),
    /// No rule allows it in a direction where the named policy (the first, by name, that
    /// selects the endpoint there) applies (Cilium's POLICY_DENIED).
    DefaultDeny(&'a str),
}

/// The HTTP rules of one `toPorts` entry (shared by its ports and peers).
pub type HttpRules = Arc<[crate::l7::rules::HttpRule]>;

/// One (protocol, port prefix) of a peer, with what it allows and denies.
#[derive(Debug, Clone)]
struct PortEntry {
    proto: u8,
    port: u16,
    plen: u8,
    allow: Option<Arc<str>>,
    deny: Option<Arc<str>>,
    /// Some allow rule for this entry has no HTTP rules: every request is allowed (Cilium
    /// merges an L4-only rule on the same port and peer as "allow all" at L7).
    l4_only: bool,
    /// The HTTP rules of the allow rules that have them, with their policy.
    http: Vec<(HttpRules, Arc<str>)>,
}

impl PortEntry {
    /// Whether the allow of this entry is subject to HTTP rules.
    #[inline]
    fn l7(&self) -> bool {
        self.allow.is_some() && !self.l4_only && !self.http.is_empty()
    }
}

/// The L7 judgement of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpVerdict<'a> {
    /// No HTTP rules apply (L3/L4 policy only).
    NotInspected,
    /// Allowed by the named policy's HTTP rules.
    Allow(&'a str),
    /// No HTTP rule allows it; the named policy holds the rules.
    Deny(&'a str),
}

impl PortEntry {
    #[inline]
    fn covers(&self, proto: u8, port: u16) -> bool {
        let mask = if self.plen == 0 {
            0
        } else {
            u16::MAX << (16 - self.plen)
        };
        (self.proto == proto || self.proto == ANY_PROTO) && port & mask == self.port
    }
}

/// One endpoint's rules in one direction: per peer identity, its port entries. A lookup is one
/// hash probe (the peer) and a scan of its entries and those for any peer, which grow with the
/// distinct ports named for that peer, not with the number of rules or identities.
#[derive(Debug, Clone, Default)]
pub struct PolicyMap {
    /// The first policy (by name) that puts the endpoint under policy in this direction.
    pub enforced_by: Option<Arc<str>>,
    peers: hashbrown::HashMap<u32, Vec<PortEntry>>,
    /// The entries for any peer, apart: no probe for them.
    any: Vec<PortEntry>,
}

impl PolicyMap {
    /// Adds an allow (`deny` false) or deny entry for `peer`, `proto`, ports `lo..=hi`; an
    /// allow may carry HTTP rules.
    #[allow(clippy::too_many_arguments)]
    pub fn add(
        &mut self,
        peer: u32,
        proto: u8,
        lo: u16,
        hi: u16,
        deny: bool,
        http: Option<&HttpRules>,
        policy: &Arc<str>,
    ) {
        let entries = if peer == ANY_PEER {
            &mut self.any
        } else {
            self.peers.entry(peer).or_default()
        };
        for (port, plen) in port_prefixes(lo, hi) {
            let i = match entries
                .iter()
                .position(|e| (e.proto, e.port, e.plen) == (proto, port, plen))
            {
                Some(i) => i,
                None => {
                    entries.push(PortEntry {
                        proto,
                        port,
                        plen,
                        allow: None,
                        deny: None,
                        l4_only: false,
                        http: Vec::new(),
                    });
                    entries.len() - 1
                }
            };
            let e = &mut entries[i];
            let slot = if deny { &mut e.deny } else { &mut e.allow };
            // the first policy named stays: deterministic across rebuilds (policies are
            // compiled in name order)
            slot.get_or_insert_with(|| policy.clone());
            if !deny {
                match http {
                    None => e.l4_only = true,
                    Some(h) => e.http.push((h.clone(), policy.clone())),
                }
            }
        }
    }

    /// The allow entries that cover TCP `port` for `peer`.
    fn covering(&self, peer: u32, port: u16) -> impl Iterator<Item = &PortEntry> {
        let specific = self.peers.get(&peer).map(Vec::as_slice).unwrap_or(&[]);
        specific
            .iter()
            .chain(&self.any)
            .filter(move |e| e.allow.is_some() && e.covers(crate::wire::tcp::PROTOCOL, port))
    }

    /// Whether connections from/to `peer` on TCP `port` are inspected at L7 (some allow entry
    /// covers them and every one that does has HTTP rules): the policy whose rules apply.
    pub fn inspected_by(&self, peer: u32, port: u16) -> Option<&str> {
        let mut by = None;
        for e in self.covering(peer, port) {
            if !e.l7() {
                return None;
            }
            by = by.or(e.http.first().map(|h| &*h.1));
        }
        by
    }

    /// The HTTP judgement of a request from/to `peer` on TCP `port` (already allowed at L4):
    /// one rule of any covering entry must match.
    pub fn http(
        &self,
        peer: u32,
        port: u16,
        req: &crate::l7::rules::Request<'_>,
    ) -> HttpVerdict<'_> {
        let Some(by) = self.inspected_by(peer, port) else {
            return HttpVerdict::NotInspected;
        };
        for e in self.covering(peer, port) {
            for (rules, policy) in &e.http {
                if rules.iter().any(|r| r.matches(req)) {
                    return HttpVerdict::Allow(policy);
                }
            }
        }
        HttpVerdict::Deny(by)
    }

    /// Port entries in the map.
    pub fn len(&self) -> usize {
        self.any.len() + self.peers.values().map(Vec::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.any.is_empty() && self.peers.is_empty()
    }

    /// The decision for a packet from/to `peer` with this protocol and destination port. Deny
    /// entries win over allow entries, whichever is more specific (Cilium's semantics).
    #[inline]
    pub fn lookup(&self, peer: u32, proto: u8, port: u16) -> Decision<'_> {
        let mut allow: Option<&str> = None;
        let specific = self.peers.get(&peer).map(Vec::as_slice).unwrap_or(&[]);
        for e in specific.iter().chain(&self.any) {
            if !e.covers(proto, port) {
                continue;
            }
            if let Some(d) = &e.deny {
                return Decision::Deny(d);
            }
            if allow.is_none() {
                allow = e.allow.as_deref();
            }
        }
        allow.map_or_else(
            || Decision::DefaultDeny(self.enforced_by.as_deref().unwrap_or("")),
            Decision::Allow,
        )
    }
}

/// The compiled policy of one identity.
#[derive(Debug, Clone, Default)]
pub struct EndpointPolicy {
    /// None: no policy selects the identity in that direction (default allow).
    pub ingress: Option<PolicyMap>,
    pub egress: Option<PolicyMap>,
}

/// Per-policy drop counters per worker: slot 0 counts the drops of policies beyond the rest.
pub const POLICY_SLOTS: usize = 4096;

/// Every endpoint's policy, by identity.
#[derive(Debug, Clone, Default)]
pub struct PolicyTables {
    pub endpoints: hashbrown::HashMap<u32, EndpointPolicy>,
    /// Policy name -> its drop counter slot (stable while the policy exists).
    pub slots: hashbrown::HashMap<Arc<str>, u16>,
}

impl PolicyTables {
    /// Policy names by their drop counter slot.
    pub fn names_by_slot(&self) -> std::collections::HashMap<u16, &str> {
        self.slots.iter().map(|(n, s)| (*s, &**n)).collect()
    }
}

impl PolicyTables {
    /// The verdict for a packet from identity `src` to identity `dst`: the sender's egress
    /// policy, then the receiver's ingress policy (each default-allow unless enforced). An
    /// allowed packet names the ingress policy that allowed it, else the egress one, else none
    /// ("": no policy applies).
    #[inline]
    pub fn verdict(&self, src: u32, dst: u32, proto: u8, port: u16) -> Decision<'_> {
        self.verdict_at(src, dst, proto, port).0
    }

    /// `verdict`, and whether the sender's egress policy decided it (else the receiver's
    /// ingress policy, or none).
    #[inline]
    pub fn verdict_at(&self, src: u32, dst: u32, proto: u8, port: u16) -> (Decision<'_>, bool) {
        let eg = self
            .endpoints
            .get(&src)
            .and_then(|e| e.egress.as_ref())
            .map(|m| m.lookup(dst, proto, port));
        if let Some(d @ (Decision::Deny(_) | Decision::DefaultDeny(_))) = eg {
            return (d, true);
        }
        let ing = self
            .endpoints
            .get(&dst)
            .and_then(|e| e.ingress.as_ref())
            .map(|m| m.lookup(src, proto, port));
        match ing {
            Some(d) => (d, false),
            None => (eg.unwrap_or(Decision::Allow("")), eg.is_some()),
        }
    }
}

impl PolicyTables {
    fn maps(&self, src: u32, dst: u32) -> [Option<(&PolicyMap, u32)>; 2] {
        let map = |id: u32, egress: bool| {
            self.endpoints.get(&id).and_then(|e| {
                if egress {
                    e.egress.as_ref()
                } else {
                    e.ingress.as_ref()
                }
            })
        };
        [
            map(src, true).map(|m| (m, dst)),
            map(dst, false).map(|m| (m, src)),
        ]
    }

    /// Whether a TCP connection from identity `src` to `dst` on `port` is inspected at L7 (by
    /// the sender's egress or the receiver's ingress rules): the policy whose rules apply.
    pub fn inspected_by(&self, src: u32, dst: u32, port: u16) -> Option<&str> {
        self.maps(src, dst)
            .into_iter()
            .flatten()
            .find_map(|(m, peer)| m.inspected_by(peer, port))
    }

    /// The HTTP judgement of a request from identity `src` to `dst` on TCP `port`: the sender's
    /// egress rules and the receiver's ingress rules must both allow it.
    pub fn http(
        &self,
        src: u32,
        dst: u32,
        port: u16,
        req: &crate::l7::rules::Request<'_>,
    ) -> HttpVerdict<'_> {
        let mut v = HttpVerdict::NotInspected;
        for (m, peer) in self.maps(src, dst).into_iter().flatten() {
            match m.http(peer, port, req) {
                d @ HttpVerdict::Deny(_) => return d,
                a @ HttpVerdict::Allow(_) => v = a,
                HttpVerdict::NotInspected => {}
            }
        }
        v
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}

/// The identity the ipcache gives an address (world when it knows none).
#[inline]
pub fn identity_of(snap: &crate::state::Snapshot, a: std::net::IpAddr) -> u32 {
    snap.cluster
        .ipcache
        .lookup(a)
        .copied()
        .unwrap_or(crate::identity::WORLD)
}

/// A drop by policy: why, and the drop counter slot of the policy that decided it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PolicyDrop {
    pub reason: crate::DropReason,
    pub slot: u16,
    /// The sender's egress policy decided (else the receiver's ingress policy).
    pub egress: bool,
}

impl PolicyDrop {
    /// Drops packet `i` of `batch` for it: counted on the policy's counter, the slot kept for
    /// the packet's flow event.
    #[inline]
    pub fn apply(
        self,
        batch: &mut crate::packet::Batch,
        i: usize,
        stats: &crate::stats::WorkerStats,
    ) {
        batch.meta_mut(i).policy_slot = self.slot;
        batch.set_verdict(i, crate::packet::Verdict::Drop(self.count(stats)));
    }

    /// Counts it on the worker's per-policy counters; the reason is counted with the verdict.
    #[inline]
    pub fn count(self, stats: &crate::stats::WorkerStats) -> crate::DropReason {
        if let Some(c) = stats.policy_drops.get(usize::from(self.slot)) {
            c.add(1);
        }
        if self.egress {
            let i = usize::from(self.reason == crate::DropReason::PolicyDeny);
            stats.policy_drops_egress[i].add(1);
        }
        self.reason
    }
}

/// The policy check of a packet from `src_identity` (0: by the ipcache of `src`) to `dst`:
/// Ok with the drop counter slot of the policy that allowed it (u16::MAX: no policy applies),
/// or the drop.
#[inline]
pub fn check(
    snap: &crate::state::Snapshot,
    src_identity: u32,
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    proto: u8,
    port: u16,
) -> Result<u16, PolicyDrop> {
    let p = &snap.cluster.policy;
    if p.is_empty() {
        return Ok(u16::MAX);
    }
    let s = if src_identity != 0 {
        src_identity
    } else {
        identity_of(snap, src)
    };
    let slot = |name: &str| p.slots.get(name).copied().unwrap_or(0);
    let (decision, egress) = p.verdict_at(s, identity_of(snap, dst), proto, port);
    match decision {
        Decision::Allow("") => Ok(u16::MAX),
        Decision::Allow(name) => Ok(slot(name)),
        Decision::Deny(name) => Err(PolicyDrop {
            reason: crate::DropReason::PolicyDeny,
            slot: slot(name),
            egress,
        }),
        Decision::DefaultDeny(name) => Err(PolicyDrop {
            reason: crate::DropReason::PolicyDenied,
            slot: slot(name),
            egress,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_become_few_prefixes() {
        assert_eq!(port_prefixes(80, 80), vec![(80, 16)]);
        assert_eq!(port_prefixes(0, 65535), vec![(0, 0)]);
        assert_eq!(port_prefixes(8080, 8081), vec![(8080, 15)]);
        // 8000+64, 8064+128, 8192+512, 8704+256, 8960+32, 8992+8
        assert_eq!(port_prefixes(8000, 8999).len(), 6);
    }

    proptest! {
        #[test]
        fn prefixes_cover_the_range_exactly(lo in any::<u16>(), len in 0u16..3000) {
            let hi = lo.saturating_add(len);
            let blocks = port_prefixes(lo, hi);
            let mut covered = 0u32;
            let mut next = u32::from(lo);
            for (port, plen) in blocks {
                prop_assert_eq!(u32::from(port), next, "contiguous, in order");
                let size = 1u32 << (16 - plen);
                prop_assert_eq!(u32::from(port) % size, 0, "aligned");
                covered += size;
                next += size;
            }
            prop_assert_eq!(covered, u32::from(hi) - u32::from(lo) + 1);
        }
    }

    #[test]
    fn deny_wins_over_allow_and_wildcards_apply() {
        let (a, d): (Arc<str>, Arc<str>) = ("shop/allow-web".into(), "shop/deny-admin".into());
        let mut m = PolicyMap::default();
        m.add(300, 6, 8000, 8999, false, None, &a);
        m.add(ANY_PEER, 6, 8443, 8443, true, None, &d);
        m.add(400, ANY_PROTO, 0, 65535, false, None, &a);
        assert_eq!(m.lookup(300, 6, 8080), Decision::Allow(&a));
        assert_eq!(m.lookup(300, 6, 8443), Decision::Deny(&d), "deny wins");
        assert_eq!(
            m.lookup(400, 6, 8443),
            Decision::Deny(&d),
            "deny of any peer"
        );
        assert_eq!(m.lookup(300, 6, 9000), Decision::DefaultDeny(""));
        assert_eq!(
            m.lookup(300, 17, 8080),
            Decision::DefaultDeny(""),
            "TCP only"
        );
        assert_eq!(
            m.lookup(400, 17, 53),
            Decision::Allow(&a),
            "any protocol, any port"
        );
        assert_eq!(m.lookup(500, 6, 8080), Decision::DefaultDeny(""));
    }
}
