//! Connection tracking for load-balanced flows: one entry per connection, found from either
//! direction (the client's original tuple and the tuple the backend's replies carry), with the
//! NAT it was given. Per worker, no locks (decision 007).
//!
//! Memory is allocated once, at creation, for the configured bound, in huge pages; the fast path
//! never grows a table. A connection costs its slot (36 bytes for IPv4, 84 for IPv6) and two
//! 8-byte buckets of the index (index.rs) at most half full, plus 4 bytes of free list: 72 bytes
//! for IPv4, 120 for IPv6 (`bytes_per_entry`).

use super::index::Index;
use super::slots::{Adoption, PersistAt, PlainBits, Slots};
use crate::hugepages::HugePages;
use crate::wire::tcp;
use std::hash::Hash;
use std::net::IpAddr;

/// The table's vectors live in huge pages too (see hugepages.rs).
type HugeVec<T> = allocator_api2::vec::Vec<T, HugePages>;

/// An address in the table: `u32` for IPv4, `[u8; 16]` for IPv6.
pub trait Addr: Copy + Eq + Hash + Default + std::fmt::Debug {
    /// 16-bit words in the address (checksum arithmetic).
    const WORDS: u32;
    fn from_ip(a: IpAddr) -> Option<Self>;
    fn ip(self) -> IpAddr;
    /// Sum of the address's 16-bit words, not folded.
    fn word_sum(self) -> u32;
    /// Writes the address in network order at the start of `out`.
    fn write_be(self, out: &mut [u8]);
    /// The address folded to 64 bits (hashing).
    fn fold64(self) -> u64;
}
impl Addr for u32 {
    const WORDS: u32 = 2;
    #[inline]
    fn word_sum(self) -> u32 {
        (self >> 16) + (self & 0xffff)
    }
    #[inline]
    fn write_be(self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.to_be_bytes());
    }
    #[inline]
    fn fold64(self) -> u64 {
        u64::from(self)
    }
    #[inline]
    fn from_ip(a: IpAddr) -> Option<Self> {
        match a {
            IpAddr::V4(v) => Some(u32::from(v)),
            IpAddr::V6(_) => None,
        }
    }
    #[inline]
    fn ip(self) -> IpAddr {
        IpAddr::V4(self.into())
    }
}
impl Addr for [u8; 16] {
    const WORDS: u32 = 8;
    #[inline]
    fn word_sum(self) -> u32 {
        self.chunks_exact(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum()
    }
    #[inline]
    fn write_be(self, out: &mut [u8]) {
        out[..16].copy_from_slice(&self);
    }
    #[inline]
    fn fold64(self) -> u64 {
        let x = u128::from_ne_bytes(self);
        (x as u64) ^ ((x >> 64) as u64).rotate_left(17)
    }
    #[inline]
    fn from_ip(a: IpAddr) -> Option<Self> {
        match a {
            IpAddr::V6(v) => Some(v.octets()),
            IpAddr::V4(_) => None,
        }
    }
    #[inline]
    fn ip(self) -> IpAddr {
        IpAddr::V6(self.into())
    }
}

/// A 5-tuple as it appears on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Tuple<A> {
    pub src: A,
    pub dst: A,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
}

/// An address and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Endpoint<A> {
    pub addr: A,
    pub port: u16,
}

/// What the connection was translated to. Original direction: client -> frontend becomes
/// source -> backend. Reply direction: backend -> source becomes frontend -> client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Nat<A> {
    pub client: Endpoint<A>,
    pub frontend: Endpoint<A>,
    pub backend: Endpoint<A>,
    /// The source the backend sees: the client itself (DNAT only) or the SNAT address and port.
    pub source: Endpoint<A>,
}

impl<A: Addr> Nat<A> {
    pub fn original(&self, proto: u8) -> Tuple<A> {
        Tuple {
            src: self.client.addr,
            dst: self.frontend.addr,
            sport: self.client.port,
            dport: self.frontend.port,
            proto,
        }
    }
    pub fn reply(&self, proto: u8) -> Tuple<A> {
        Tuple {
            src: self.backend.addr,
            dst: self.source.addr,
            sport: self.backend.port,
            dport: self.source.port,
            proto,
        }
    }
}

/// Connection state (TCP; other protocols are `Open` once created).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// Only the original direction seen yet: embryonic, first to be evicted when full.
    Embryonic,
    /// Both directions seen.
    Established,
    /// FIN or RST seen: kept for the closing timeout so the last segments still translate.
    Closing,
}

impl State {
    /// The state of a byte read back from a table file (slots.rs), if it is one.
    pub fn from_u8(b: u8) -> Option<State> {
        match b {
            0 => Some(State::Embryonic),
            1 => Some(State::Established),
            2 => Some(State::Closing),
            _ => None,
        }
    }
}

/// Which way a packet travels on its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Original,
    Reply,
}

/// Timeouts in seconds, Cilium's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub syn: u32,
    pub established: u32,
    pub closing: u32,
    pub other: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            syn: 60,
            established: 6 * 3600,
            closing: 10,
            other: 60,
        }
    }
}

/// A tracked connection. The NAT is stored as address and port arrays (client, frontend,
/// backend, source), not as four padded `Endpoint`s: 24 bytes instead of 32 for IPv4.
///
/// `#[repr(C)]` without padding, and all zero bits for a free slot: tables may live in a file
/// the next process adopts (slots.rs), so this layout is versioned there (`LAYOUT_VERSION`).
#[derive(Debug, Clone, Copy)]
#[repr(C)]
pub struct Entry<A> {
    pub(super) addrs: [A; 4],
    pub(super) ports: [u16; 4],
    pub proto: u8,
    pub state: State,
    /// FLAG_* bits.
    pub(super) flags: u8,
    pub(super) _reserved: u8,
    /// CLOCK_MONOTONIC second at which the entry expires.
    pub expires: u32,
    /// With FLAG_ALLOWED: the (low 32 bits of the) snapshot generation under which policy last
    /// allowed the original direction (see `Entry::allowed_at`).
    pub(super) allowed_gen: u32,
}

/// The slot holds a connection.
pub(super) const FLAG_USED: u8 = 1;
/// Direct server return (see `Entry::dsr`).
pub(super) const FLAG_DSR: u8 = 2;
/// The reply direction has been seen.
pub(super) const FLAG_REPLIED: u8 = 4;
/// `allowed_gen` holds a policy verdict (an allow of the original direction).
pub(super) const FLAG_ALLOWED: u8 = 8;
pub(super) const FLAG_KNOWN: u8 = FLAG_USED | FLAG_DSR | FLAG_REPLIED | FLAG_ALLOWED;

// The table file layout (slots.rs) relies on these sizes: no padding anywhere.
const _: () = assert!(std::mem::size_of::<Entry<u32>>() == 36);
const _: () = assert!(std::mem::size_of::<Entry<[u8; 16]>>() == 84);

impl<A: Copy + Default> Entry<A> {
    /// A free slot: all zero bits.
    pub fn free() -> Self {
        Entry {
            addrs: [A::default(); 4],
            ports: [0; 4],
            proto: 0,
            state: State::Embryonic,
            flags: 0,
            _reserved: 0,
            expires: 0,
            allowed_gen: 0,
        }
    }
}

impl<A> Entry<A> {
    #[inline]
    pub fn used(&self) -> bool {
        self.flags & FLAG_USED != 0
    }
    /// Direct server return: the backend answers the client itself, so only the original
    /// direction is tracked (and `source` is the client: nothing is masqueraded).
    #[inline]
    pub fn dsr(&self) -> bool {
        self.flags & FLAG_DSR != 0
    }
    /// The reply direction has been seen (a SYN-ACK, for TCP).
    #[inline]
    pub fn replied(&self) -> bool {
        self.flags & FLAG_REPLIED != 0
    }
    /// Whether policy allowed the original direction under snapshot generation `generation`,
    /// for a packet whose source identity is `src_identity` (cached by
    /// `Table::set_allowed_at`).
    /// - Policy and the ipcache change only with a new snapshot, so while the generation is the
    ///   same the verdict is too.
    /// - Generation 0 (a snapshot never published, as in tests that edit one in place) is never
    ///   cached, nor is a verdict on an identity the tunnel carried (`src_identity` not 0): that
    ///   is the packet's, not the connection's.
    /// - The stamp is the generation's low 32 bits: a stale allow would need a connection that
    ///   sent nothing through exactly a multiple of 2^32 publishes, and its idle timeout (6 h)
    ///   ends it long before that many (one publish per millisecond would take 49 days).
    #[inline]
    pub fn allowed_at(&self, generation: u64, src_identity: u32) -> bool {
        self.flags & FLAG_ALLOWED != 0
            && generation != 0
            && src_identity == 0
            && self.allowed_gen == generation as u32
    }
}

impl<A: Addr> Entry<A> {
    #[inline]
    pub fn nat(&self) -> Nat<A> {
        let ep = |i: usize| Endpoint {
            addr: self.addrs[i],
            port: self.ports[i],
        };
        Nat {
            client: ep(0),
            frontend: ep(1),
            backend: ep(2),
            source: ep(3),
        }
    }
}

/// Why an insert failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// Full, and nothing expired or embryonic within the eviction scan.
    Full,
    /// One of the two tuples is already tracked (e.g. the chosen SNAT port was taken meanwhile).
    Exists,
}

/// How far an insert into a full table looks for an evictable entry, and how many slots one GC
/// step examines: small enough to bound the time per packet / per batch.
pub const SCAN: usize = 64;
/// How far past an eviction the next victim is looked for, to prefetch its index buckets: in a
/// flood nearly every entry is embryonic, so the next one is almost always within a few slots.
const VICTIM_LOOKAHEAD: usize = 8;

/// A bounded connection table.
pub struct Table<A> {
    /// Original and reply tuple -> slot index << 1 | direction (1 = reply).
    index: Index,
    slots: Slots<A>,
    free: HugeVec<u32>,
    max: usize,
    len: usize,
    /// Of `len`, the direct-server-return connections (no SNAT port).
    dsr_len: usize,
    cursor: usize,
    pub timeouts: Timeouts,
    /// Entries freed by GC / by eviction, for metrics.
    pub expired: u64,
    pub evicted: u64,
}

impl<A: Addr> Table<A> {
    /// A table for at most `max` connections; all memory is allocated here.
    pub fn new(max: usize, timeouts: Timeouts) -> Self {
        Self::with_slots(Slots::anon(max), max, timeouts)
    }

    /// A table for at most `max` connections whose slots live in the file `at` (slots.rs),
    /// holding the connections an earlier process left there, when they are its to take.
    pub fn persistent(
        max: usize,
        timeouts: Timeouts,
        at: &PersistAt,
        now: u32,
    ) -> std::io::Result<(Self, Adoption)>
    where
        A: PlainBits,
    {
        let (slots, previous, mut report) = Slots::persistent(at, max, now)?;
        let mut t = Self::with_slots(slots, max, timeouts);
        for e in previous {
            if t.adopt(e) {
                report.adopted += 1;
            } else {
                report.dropped += 1;
            }
        }
        Ok((t, report))
    }

    fn with_slots(slots: Slots<A>, max: usize, timeouts: Timeouts) -> Self {
        Table {
            index: Index::new(2 * max),
            slots,
            free: {
                let mut v = HugeVec::with_capacity_in(max, HugePages);
                v.extend((0..max as u32).rev());
                v
            },
            max,
            len: 0,
            dsr_len: 0,
            cursor: 0,
            timeouts,
            expired: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Connections that are not direct server return (each holds a SNAT source port, or is a
    /// flow of the policy stage).
    pub fn translated_len(&self) -> usize {
        self.len - self.dsr_len
    }
    pub fn capacity(&self) -> usize {
        self.max
    }

    /// Memory per tracked connection of this table (allocated bytes / capacity).
    pub fn bytes_per_entry(&self) -> usize {
        let index = self.index.capacity() * 8;
        let slots = self.max * (std::mem::size_of::<Entry<A>>() + 4); // + free list
        (index + slots) / self.max.max(1)
    }

    /// The hash a tuple is indexed by (for `prefetch_bucket` / `lookup_hashed`).
    #[inline]
    pub fn hash(&self, t: &Tuple<A>) -> u64 {
        self.index.hash(t)
    }

    /// Asks the CPU for the index bucket of hash `h` (a hint).
    #[inline]
    pub fn prefetch_bucket(&self, h: u64) {
        self.index.prefetch(h)
    }

    /// The connection a packet belongs to, and its direction.
    #[inline]
    pub fn lookup(&self, t: &Tuple<A>) -> Option<(u32, Dir)> {
        self.lookup_hashed(self.index.hash(t), t)
    }

    /// `lookup` with the tuple's hash already computed.
    #[inline]
    pub fn lookup_hashed(&self, h: u64, t: &Tuple<A>) -> Option<(u32, Dir)> {
        self.index
            .find(h, |v| {
                let (slot, dir) = unpack(v);
                self.holds(slot, dir, t)
            })
            .map(unpack)
    }

    /// The first slot the index holds under hash `h`, and its direction: the connection of a
    /// tuple with this hash, unless the hashes of two tuples collide, so the caller confirms it
    /// with `holds` before use. Reads only the index, not the entry.
    #[inline]
    pub fn candidate(&self, h: u64) -> Option<(u32, Dir)> {
        self.index.find(h, |_| true).map(unpack)
    }

    /// Whether a tuple is tracked (in either direction).
    #[inline]
    pub fn contains(&self, t: &Tuple<A>) -> bool {
        self.lookup(t).is_some()
    }

    /// Whether `slot` still holds the connection of `t` in direction `dir`.
    #[inline]
    pub fn holds(&self, slot: u32, dir: Dir, t: &Tuple<A>) -> bool {
        self.get(slot).is_some_and(|e| {
            let nat = e.nat();
            match dir {
                Dir::Original => nat.original(e.proto) == *t,
                Dir::Reply => !e.dsr() && nat.reply(e.proto) == *t,
            }
        })
    }

    /// Asks the CPU to bring `slot`'s entry into the cache (a hint: no effect on correctness).
    #[inline]
    pub fn prefetch(&self, slot: u32) {
        if let Some(e) = self.slots.as_slice().get(slot as usize) {
            crate::prefetch::read(e);
        }
    }

    pub fn get(&self, slot: u32) -> Option<&Entry<A>> {
        self.slots
            .as_slice()
            .get(slot as usize)
            .filter(|e| e.used())
    }

    /// Tracks a new connection. When full, an expired or embryonic entry near the scan cursor
    /// makes room; established connections are never evicted.
    pub fn insert(
        &mut self,
        nat: Nat<A>,
        proto: u8,
        tcp_flags: u8,
        now: u32,
    ) -> Result<u32, InsertError> {
        self.insert_as(nat, proto, tcp_flags, now, false)
    }

    /// Tracks a new direct-server-return connection: its original direction only (replies
    /// bypass the appliance; two of them may even share a reply tuple, through two frontends).
    pub fn insert_dsr(
        &mut self,
        nat: Nat<A>,
        proto: u8,
        tcp_flags: u8,
        now: u32,
    ) -> Result<u32, InsertError> {
        self.insert_as(nat, proto, tcp_flags, now, true)
    }

    fn insert_as(
        &mut self,
        nat: Nat<A>,
        proto: u8,
        tcp_flags: u8,
        now: u32,
        dsr: bool,
    ) -> Result<u32, InsertError> {
        let (orig, reply) = (nat.original(proto), nat.reply(proto));
        if self.contains(&orig) || (!dsr && self.contains(&reply)) {
            return Err(InsertError::Exists);
        }
        if self.free.is_empty() && !self.evict_one(now) {
            return Err(InsertError::Full);
        }
        let Some(slot) = self.free.pop() else {
            return Err(InsertError::Full);
        };
        let mut e = Entry {
            addrs: [
                nat.client.addr,
                nat.frontend.addr,
                nat.backend.addr,
                nat.source.addr,
            ],
            ports: [
                nat.client.port,
                nat.frontend.port,
                nat.backend.port,
                nat.source.port,
            ],
            proto,
            state: State::Embryonic,
            flags: FLAG_USED | if dsr { FLAG_DSR } else { 0 },
            _reserved: 0,
            expires: 0,
            allowed_gen: 0,
        };
        advance(&mut e, Dir::Original, tcp_flags, now, &self.timeouts);
        self.place(slot, e);
        Ok(slot)
    }

    /// Puts `e` in the free `slot` and indexes its tuples.
    fn place(&mut self, slot: u32, e: Entry<A>) {
        let nat = e.nat();
        self.slots.as_mut_slice()[slot as usize] = e;
        self.index
            .insert(self.index.hash(&nat.original(e.proto)), slot << 1);
        if !e.dsr() {
            self.index
                .insert(self.index.hash(&nat.reply(e.proto)), slot << 1 | 1);
        }
        self.len += 1;
        self.dsr_len += usize::from(e.dsr());
    }

    /// Takes over a connection as an earlier process left it (state, expiry, translation);
    /// false when it collides with one already taken over, or the table is full.
    fn adopt(&mut self, mut e: Entry<A>) -> bool {
        // generations are this process's: a verdict cached by the earlier one means nothing
        e.flags &= !FLAG_ALLOWED;
        let nat = e.nat();
        if self.contains(&nat.original(e.proto)) || (!e.dsr() && self.contains(&nat.reply(e.proto)))
        {
            return false;
        }
        let Some(slot) = self.free.pop() else {
            return false;
        };
        self.place(slot, e);
        true
    }

    /// Whether this packet starts a new connection over a finished one with the same tuple: a
    /// client SYN (no ACK) on a closing or expired TCP entry. The caller removes the old entry
    /// and balances the SYN afresh, as the kernel's conntrack does on a SYN in TIME_WAIT.
    #[inline]
    pub fn reopens(&self, slot: u32, dir: Dir, tcp_flags: u8, now: u32) -> bool {
        use tcp::flags::{ACK, SYN};
        dir == Dir::Original
            && tcp_flags & (SYN | ACK) == SYN
            && matches!(self.get(slot), Some(e) if e.proto == tcp::PROTOCOL
                && (e.state == State::Closing || expired(e, now)))
    }

    /// Records a packet of a tracked connection: state and expiry.
    #[inline]
    pub fn seen(&mut self, slot: u32, dir: Dir, tcp_flags: u8, now: u32) -> Option<&Entry<A>> {
        let t = self.timeouts;
        let e = self
            .slots
            .as_mut_slice()
            .get_mut(slot as usize)
            .filter(|e| e.used())?;
        advance(e, dir, tcp_flags, now, &t);
        Some(e)
    }

    /// Caches that policy allowed `slot`'s original direction under snapshot generation
    /// `generation`, for a packet of source identity `src_identity` (see `Entry::allowed_at`:
    /// only identity 0 is cached).
    #[inline]
    pub fn set_allowed_at(&mut self, slot: u32, generation: u64, src_identity: u32) {
        if src_identity != 0 {
            return;
        }
        if let Some(e) = self
            .slots
            .as_mut_slice()
            .get_mut(slot as usize)
            .filter(|e| e.used())
        {
            e.allowed_gen = generation as u32;
            e.flags |= FLAG_ALLOWED;
        }
    }

    /// The policy verdict of a packet in `slot`'s original direction: the entry's own while it
    /// holds an allow of this snapshot (`Ok(u16::MAX)`: no policy looked at), else `check`'s,
    /// cached in the entry when it allows. `fresh` looks again whatever the entry holds.
    #[inline]
    pub fn policy_verdict<E>(
        &mut self,
        slot: u32,
        generation: u64,
        src_identity: u32,
        fresh: bool,
        check: impl FnOnce() -> Result<u16, E>,
    ) -> Result<u16, E> {
        if !fresh
            && self
                .get(slot)
                .is_some_and(|e| e.allowed_at(generation, src_identity))
        {
            return Ok(u16::MAX);
        }
        let allowed_by = check()?;
        self.set_allowed_at(slot, generation, src_identity);
        Ok(allowed_by)
    }

    pub fn remove(&mut self, slot: u32) {
        let Some(e) = self.get(slot).copied() else {
            return;
        };
        self.slots.as_mut_slice()[slot as usize] = Entry::free();
        let nat = e.nat();
        let (orig, reply) = (nat.original(e.proto), nat.reply(e.proto));
        self.index.remove(self.index.hash(&orig), slot << 1);
        if !e.dsr() {
            self.index.remove(self.index.hash(&reply), slot << 1 | 1);
        }
        self.free.push(slot);
        self.len -= 1;
        self.dsr_len -= usize::from(e.dsr());
    }

    /// Examines up to `budget` slots from the GC cursor and frees the expired ones. Returns how
    /// many were freed.
    pub fn gc_step(&mut self, now: u32, budget: usize) -> usize {
        // an empty table has nothing to free: no reason to read its slots (a worker has four
        // tables, and one family often carries nothing)
        if self.len == 0 {
            return 0;
        }
        let mut freed = 0;
        for _ in 0..budget.min(self.max) {
            let slot = self.cursor;
            self.cursor = (self.cursor + 1) % self.max;
            if matches!(self.get(slot as u32), Some(e) if expired(e, now)) {
                self.remove(slot as u32);
                freed += 1;
            }
        }
        self.expired += freed as u64;
        freed
    }

    fn evict_one(&mut self, now: u32) -> bool {
        for _ in 0..SCAN.min(self.max) {
            let slot = self.cursor;
            self.cursor = (self.cursor + 1) % self.max;
            let Some(e) = self.get(slot as u32).filter(|e| evictable(e, now)) else {
                continue;
            };
            if expired(e, now) {
                self.expired += 1;
            } else {
                self.evicted += 1;
            }
            self.remove(slot as u32);
            self.prefetch_next_victim(now);
            return true;
        }
        false
    }

    /// A full table evicts again at the next new connection, most likely the next evictable
    /// entry from the cursor: its two index buckets, at random places, are asked for now, so
    /// that removing it does not wait for them. Looks at most `VICTIM_LOOKAHEAD` slots ahead
    /// (sequential reads); nothing is changed, the next eviction checks again.
    fn prefetch_next_victim(&self, now: u32) {
        let mut slot = self.cursor;
        for _ in 0..VICTIM_LOOKAHEAD.min(self.max) {
            if let Some(e) = self.get(slot as u32).filter(|e| evictable(e, now)) {
                let nat = e.nat();
                self.index.prefetch(self.index.hash(&nat.original(e.proto)));
                if !e.dsr() {
                    self.index.prefetch(self.index.hash(&nat.reply(e.proto)));
                }
                return;
            }
            slot = (slot + 1) % self.max;
        }
    }
}

/// An index value: slot << 1 | direction (1 = reply).
#[inline]
fn unpack(v: u32) -> (u32, Dir) {
    let dir = if v & 1 == 1 {
        Dir::Reply
    } else {
        Dir::Original
    };
    (v >> 1, dir)
}

#[inline]
pub(super) fn expired<A>(e: &Entry<A>, now: u32) -> bool {
    // wrapping: CLOCK_MONOTONIC seconds, as u32
    (now.wrapping_sub(e.expires) as i32) >= 0
}

/// Whether `e` may give up its slot (or its SNAT port) to a new connection: expired, or still
/// embryonic (established connections never do).
#[inline]
pub(super) fn evictable<A>(e: &Entry<A>, now: u32) -> bool {
    e.state == State::Embryonic || expired(e, now)
}

/// The state machine: TCP SYN/established/closing, others open while traffic flows.
#[inline]
fn advance<A>(e: &mut Entry<A>, dir: Dir, flags: u8, now: u32, t: &Timeouts) {
    if e.proto != tcp::PROTOCOL {
        if dir == Dir::Reply {
            e.state = State::Established;
        }
        e.expires = now.wrapping_add(t.other);
        return;
    }
    if dir == Dir::Reply {
        e.flags |= FLAG_REPLIED;
    }
    // the client's ACK completes the handshake: after the server's SYN-ACK was seen, or, with
    // DSR (replies bypass the appliance), on its own. A SYN answered by the server but never
    // acknowledged (a spoofed SYN flood) stays embryonic: first to be evicted, short-lived.
    let client_ack =
        dir == Dir::Original && flags & (tcp::flags::SYN | tcp::flags::ACK) == tcp::flags::ACK;
    let handshake_done = client_ack && (e.dsr() || e.replied());
    if flags & (tcp::flags::FIN | tcp::flags::RST) != 0 {
        e.state = State::Closing;
    } else if handshake_done && e.state == State::Embryonic {
        e.state = State::Established;
    }
    let timeout = match e.state {
        State::Embryonic => t.syn,
        State::Established => t.established,
        State::Closing => t.closing,
    };
    e.expires = now.wrapping_add(timeout);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::wire::tcp::flags::{ACK, FIN, SYN};

    pub(crate) fn nat(client_port: u16) -> Nat<u32> {
        Nat {
            client: Endpoint {
                addr: 0x0a0a_0002,
                port: client_port,
            },
            frontend: Endpoint {
                addr: 0x0a60_0050,
                port: 80,
            },
            backend: Endpoint {
                addr: 0x0a14_000b,
                port: 8080,
            },
            source: Endpoint {
                addr: 0x0a14_0001,
                port: 61000 + client_port,
            },
        }
    }

    #[test]
    fn both_directions_find_the_connection() {
        let mut t = Table::new(4, Timeouts::default());
        let n = nat(1000);
        let s = t.insert(n, 6, SYN, 0).unwrap();
        assert_eq!(t.lookup(&n.original(6)), Some((s, Dir::Original)));
        assert_eq!(t.lookup(&n.reply(6)), Some((s, Dir::Reply)));
        assert_eq!(t.lookup(&n.original(17)), None);
        assert_eq!(t.insert(n, 6, SYN, 0), Err(InsertError::Exists));
    }

    #[test]
    fn a_cached_verdict_holds_for_its_generation_only() {
        let mut t = Table::new(4, Timeouts::default());
        let s = t.insert(nat(1), 6, SYN, 0).unwrap();
        let at = |t: &Table<u32>, generation, id| t.get(s).unwrap().allowed_at(generation, id);
        assert!(!at(&t, 5, 0), "nothing cached yet");
        t.set_allowed_at(s, 5, 0);
        assert!(at(&t, 5, 0));
        assert!(!at(&t, 6, 0), "the next snapshot");
        assert!(
            !at(&t, 5, 300),
            "an identity the tunnel carried is checked every time"
        );
        t.set_allowed_at(s, 0, 0);
        assert!(!at(&t, 0, 0), "a snapshot never published");
        t.set_allowed_at(s, 7, 300);
        assert!(!at(&t, 7, 0), "not cached for a tunnel identity");
        // the slot's next connection starts without one
        t.set_allowed_at(s, 8, 0);
        t.remove(s);
        let s2 = t.insert(nat(2), 6, SYN, 0).unwrap();
        assert!(!t.get(s2).unwrap().allowed_at(8, 0));
    }

    #[test]
    fn tcp_states_and_timeouts() {
        let to = Timeouts::default();
        let mut t = Table::new(4, to);
        let s = t.insert(nat(1), 6, SYN, 100).unwrap();
        let e = t.get(s).unwrap();
        assert_eq!((e.state, e.expires), (State::Embryonic, 100 + to.syn));
        // the server's SYN-ACK alone does not establish it (a spoofed SYN's would)
        let e = t.seen(s, Dir::Reply, SYN | ACK, 101).unwrap();
        assert_eq!((e.state, e.expires), (State::Embryonic, 101 + to.syn));
        // the client's ACK of it does
        let e = t.seen(s, Dir::Original, ACK, 101).unwrap();
        assert_eq!(
            (e.state, e.expires),
            (State::Established, 101 + to.established)
        );
        let e = t.seen(s, Dir::Original, FIN | ACK, 200).unwrap();
        assert_eq!((e.state, e.expires), (State::Closing, 200 + to.closing));
        // expired after the closing timeout, not before
        assert_eq!(t.gc_step(200 + to.closing - 1, 4), 0);
        assert_eq!(t.gc_step(200 + to.closing, 4), 1);
        assert!(t.is_empty());
        assert_eq!(t.lookup(&nat(1).original(6)), None);
        assert_eq!(t.lookup(&nat(1).reply(6)), None);
    }

    #[test]
    fn dsr_connections_track_the_original_direction_only() {
        let to = Timeouts::default();
        let mut t = Table::new(4, to);
        let mut n = nat(1);
        n.source = n.client;
        let s = t.insert_dsr(n, 6, SYN, 0).unwrap();
        assert!(t.get(s).unwrap().dsr());
        assert_eq!(t.lookup(&n.original(6)), Some((s, Dir::Original)));
        assert_eq!(t.lookup(&n.reply(6)), None, "replies bypass the appliance");
        // another frontend to the same backend from the same client port: same reply tuple
        let mut other = n;
        other.frontend.addr += 1;
        let s2 = t.insert_dsr(other, 6, SYN, 0).unwrap();
        // the client's ACK completes the handshake (the SYN-ACK is never seen)
        let e = t.seen(s, Dir::Original, ACK, 1).unwrap();
        assert_eq!(e.state, State::Established);
        let translated = t.insert(nat(9), 6, SYN, 0).unwrap();
        assert_eq!(
            (t.len(), t.translated_len()),
            (3, 1),
            "DSR holds no SNAT port"
        );
        t.remove(s);
        t.remove(translated);
        assert_eq!(t.lookup(&other.original(6)), Some((s2, Dir::Original)));
        assert_eq!((t.len(), t.translated_len()), (1, 0));
    }

    #[test]
    fn udp_stays_open_while_traffic_flows() {
        let mut t = Table::new(2, Timeouts::default());
        let s = t.insert(nat(7), 17, 0, 0).unwrap();
        t.seen(s, Dir::Reply, 0, 50);
        assert_eq!(t.gc_step(100, 2), 0, "refreshed at 50: expires at 110");
        assert_eq!(t.gc_step(110, 2), 1);
    }

    #[test]
    fn an_ack_without_a_syn_ack_before_it_establishes_nothing() {
        let mut t = Table::new(2, Timeouts::default());
        let s = t.insert(nat(1), 6, SYN, 0).unwrap();
        // an ACK flood: the server never answered
        t.seen(s, Dir::Original, ACK, 1);
        assert_eq!(t.get(s).unwrap().state, State::Embryonic);
    }

    #[test]
    fn full_table_evicts_embryonic_never_established() {
        let mut t = Table::new(4, Timeouts::default());
        for p in 0..4 {
            let s = t.insert(nat(p), 6, SYN, 0).unwrap();
            t.seen(s, Dir::Reply, SYN | ACK, 0);
            t.seen(s, Dir::Original, ACK, 0);
        }
        // all established: a new flow is refused, nothing is touched
        assert_eq!(t.insert(nat(10), 6, SYN, 1), Err(InsertError::Full));
        for p in 0..4 {
            assert!(t.lookup(&nat(p).original(6)).is_some());
        }
        // one embryonic among them: it is the one that goes
        let s3 = t.lookup(&nat(3).original(6)).unwrap().0;
        t.remove(s3);
        t.insert(nat(3), 6, SYN, 1).unwrap();
        t.insert(nat(11), 6, SYN, 2).unwrap();
        assert!(t.lookup(&nat(3).original(6)).is_none(), "embryonic evicted");
        assert_eq!(t.evicted, 1);
        for p in 0..3 {
            assert!(t.lookup(&nat(p).original(6)).is_some(), "established kept");
        }
    }

    #[test]
    fn memory_per_connection_is_bounded() {
        let t4: Table<u32> = Table::new(1 << 16, Timeouts::default());
        let t6: Table<[u8; 16]> = Table::new(1 << 16, Timeouts::default());
        eprintln!(
            "bytes per connection: IPv4 {}, IPv6 {}",
            t4.bytes_per_entry(),
            t6.bytes_per_entry()
        );
        assert!(
            t4.bytes_per_entry() <= 128,
            "{} bytes",
            t4.bytes_per_entry()
        );
        assert!(
            t6.bytes_per_entry() <= 128,
            "{} bytes",
            t6.bytes_per_entry()
        );
    }
}
