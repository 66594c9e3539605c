//! The conntrack slot array, in memory that may outlive the process (decision 013).
//!
//! - Anonymous: huge pages, gone with the process (tests, benches, persistence off).
//! - A file under the runtime directory (tmpfs), mapped shared: every write a worker makes to an
//!   entry is in the file at once, with no syscall and no copy on the fast path, so the next
//!   `sluiced` finds the connections as this one left them, after a stop or a crash. This is
//!   what Cilium gets from keeping conntrack in BPF maps.
//!
//! Only the slots are kept. The index and the free list are derived from them and rebuilt when
//! a table is adopted, so a table is never read half-updated: at worst one entry being written
//! when a process crashed is torn, and every entry is validated before it is used.
//!
//! File layout, version [`LAYOUT_VERSION`]: a 4 KiB [`Header`], then `capacity` entries of
//! `size_of::<Entry<A>>()` bytes (36 for IPv4, 84 for IPv6), `#[repr(C)]`.
//!
//! Version 2 added the policy verdict stamp (`allowed_gen`) to the entry.

use super::conntrack::{Entry, State, FLAG_KNOWN, FLAG_USED};
use crate::hugepages::HugePages;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::ptr::NonNull;

type HugeVec<T> = allocator_api2::vec::Vec<T, HugePages>;

/// "SLUICECT": a conntrack table file.
pub const MAGIC: [u8; 8] = *b"SLUICECT";
/// Bumped whenever the header, `Entry`'s layout or the meaning of a field changes: a file of
/// another version is discarded, never misread.
pub const LAYOUT_VERSION: u32 = 2;
/// The header's room: one page, so the entries start page aligned.
const HEADER_LEN: usize = 4096;

/// Types whose every bit pattern is a valid value (entries are read back from files).
///
/// # Safety
/// Implement only for types without padding, invalid bit patterns or pointers.
pub unsafe trait PlainBits: Copy {}
// SAFETY: integers and byte arrays: every bit pattern is a value, no padding.
unsafe impl PlainBits for u32 {}
// SAFETY: as above.
unsafe impl PlainBits for [u8; 16] {}

/// The file header: integers only, so any bytes read back are a value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    magic: [u8; 8],
    version: u32,
    entry_size: u32,
    addr_size: u32,
    worker: u16,
    workers: u16,
    capacity: u64,
    /// The kernel's boot id: entry expiry is in CLOCK_MONOTONIC seconds, which mean nothing
    /// after a reboot (tmpfs is emptied then anyway; this guards runtime dirs on disk).
    boot_id: [u8; 16],
    /// 1 once the process that wrote the table closed it in order; 0 while in use (or crashed).
    clean: u32,
    pid: u32,
}

/// Whose table a file is: checked on adoption.
#[derive(Debug, Clone)]
pub struct PersistAt {
    pub path: PathBuf,
    pub worker: u16,
    pub workers: u16,
}

/// What adopting a table file found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Adoption {
    pub path: PathBuf,
    /// Entries taken over.
    pub adopted: usize,
    /// Entries past their expiry, or not valid (torn or corrupt), left behind.
    pub expired: usize,
    pub invalid: usize,
    /// Taken over although its writer did not close it in order (crash, kill -9).
    pub unclean: bool,
    /// Why the whole file was set aside, if it was.
    pub discarded: Option<String>,
    /// Entries that did not fit (the new table is smaller) or collided.
    pub dropped: usize,
}

enum Backing<A> {
    Anon(#[allow(dead_code)] HugeVec<Entry<A>>),
    File {
        base: NonNull<u8>,
        map_len: usize,
        _file: File,
    },
}

/// A fixed array of entries (free ones all zero bits).
pub struct Slots<A> {
    ptr: NonNull<Entry<A>>,
    len: usize,
    backing: Backing<A>,
}

// SAFETY: the slots are plain memory owned by this value (a heap block or a private mapping of
// the file), used by the one worker that owns the table.
unsafe impl<A: Send> Send for Slots<A> {}

impl<A: Copy + Default> Slots<A> {
    /// `len` free slots in anonymous (huge-page) memory.
    pub fn anon(len: usize) -> Self {
        let mut v = HugeVec::with_capacity_in(len, HugePages);
        v.resize(len, Entry::free());
        let ptr = NonNull::new(v.as_mut_ptr()).unwrap_or(NonNull::dangling());
        Slots {
            ptr,
            len,
            backing: Backing::Anon(v),
        }
    }
}

impl<A> Slots<A> {
    #[inline]
    pub fn as_slice(&self) -> &[Entry<A>] {
        // SAFETY: ptr..ptr+len is this value's memory, initialized (zero bits are a free
        // entry, and only valid entries are written), and lives as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Entry<A>] {
        // SAFETY: as in as_slice; &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
    pub fn is_persistent(&self) -> bool {
        matches!(self.backing, Backing::File { .. })
    }
}

impl<A> Drop for Slots<A> {
    fn drop(&mut self) {
        if let Backing::File { base, map_len, .. } = self.backing {
            // SAFETY: base is the start of our live mapping, which begins with the header.
            unsafe {
                let h = base.as_ptr().cast::<Header>();
                std::ptr::write_volatile(std::ptr::addr_of_mut!((*h).clean), 1);
                libc::munmap(base.as_ptr().cast(), map_len);
            }
        }
    }
}

/// Seconds of CLOCK_MONOTONIC: the conntrack clock. System-wide, so a table adopted by the next
/// process keeps its expiry times.
pub fn clock_secs() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u32
}

/// The running kernel's boot id (zeros where /proc does not say).
fn boot_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: Vec<u8> = text
        .bytes()
        .filter(u8::is_ascii_hexdigit)
        .map(|c| (c as char).to_digit(16).unwrap_or(0) as u8)
        .collect();
    for (i, pair) in hex.chunks_exact(2).take(16).enumerate() {
        id[i] = pair[0] << 4 | pair[1];
    }
    id
}

fn header_for<A>(at: &PersistAt, capacity: usize) -> Header {
    Header {
        magic: MAGIC,
        version: LAYOUT_VERSION,
        entry_size: std::mem::size_of::<Entry<A>>() as u32,
        addr_size: std::mem::size_of::<A>() as u32,
        worker: at.worker,
        workers: at.workers,
        capacity: capacity as u64,
        boot_id: boot_id(),
        clean: 0,
        pid: std::process::id(),
    }
}

/// A shared read-write (or private read-only) mapping of a whole file.
fn map(file: &File, len: usize, write: bool) -> io::Result<NonNull<u8>> {
    let prot = if write {
        libc::PROT_READ | libc::PROT_WRITE
    } else {
        libc::PROT_READ
    };
    let flags = if write {
        // populated up front: the fast path never takes a page fault on the table
        libc::MAP_SHARED | libc::MAP_POPULATE
    } else {
        libc::MAP_PRIVATE
    };
    // SAFETY: a new mapping of `len` bytes of an open file; no existing memory is affected.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, file.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    if write {
        // SAFETY: advice on the range just mapped. Where tmpfs huge pages are off
        // (transparent_hugepage/shmem_enabled = never) it is ignored: correct, only more TLB
        // misses (measured in decision 013).
        unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Checks an entry read back from a file: only valid `State` and flag values, in use.
fn decode<A: PlainBits>(bytes: &[u8]) -> Option<Entry<A>> {
    if bytes.len() != std::mem::size_of::<Entry<A>>() {
        return None;
    }
    let state = bytes[std::mem::offset_of!(Entry<A>, state)];
    let flags = bytes[std::mem::offset_of!(Entry<A>, flags)];
    if State::from_u8(state).is_none() || flags & !FLAG_KNOWN != 0 || flags & FLAG_USED == 0 {
        return None;
    }
    // SAFETY: `Entry<A>` is `#[repr(C)]` without padding (asserted in conntrack.rs) of `A:
    // PlainBits`, integers, and `State` (repr(u8)), whose byte was checked just above: every
    // byte pattern that reaches here is a valid value. The length was checked too.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Entry<A>>()) })
}

/// Reads the entries of a table file left by an earlier process, if there is one and it is
/// ours to take: `None` with no file; `Err(reason)` when the whole file must be set aside.
fn read_previous<A: PlainBits>(
    at: &PersistAt,
    now: u32,
    report: &mut Adoption,
) -> Result<Option<Vec<Entry<A>>>, String> {
    let file = match File::open(&at.path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open it: {e}")),
    };
    let len = file
        .metadata()
        .map_err(|e| format!("cannot stat it: {e}"))?
        .len() as usize;
    if len < HEADER_LEN {
        return Err(format!("{len} bytes, shorter than its header"));
    }
    let base = map(&file, len, false).map_err(|e| format!("cannot map it: {e}"))?;
    struct Unmap(NonNull<u8>, usize);
    impl Drop for Unmap {
        fn drop(&mut self) {
            // SAFETY: the read-only mapping made just above, no longer referenced.
            unsafe { libc::munmap(self.0.as_ptr().cast(), self.1) };
        }
    }
    let _unmap = Unmap(base, len);
    // SAFETY: the mapping is at least HEADER_LEN bytes; Header is integers only (any bytes are
    // a value) and the mapping is page aligned.
    let h: Header = unsafe { std::ptr::read(base.as_ptr().cast::<Header>()) };
    let want = header_for::<A>(at, 0);
    if h.magic != MAGIC {
        return Err("not a sluice conntrack table (bad magic)".into());
    }
    if h.version != LAYOUT_VERSION {
        return Err(format!(
            "layout version {}, this sluiced reads version {LAYOUT_VERSION}",
            h.version
        ));
    }
    if (h.entry_size, h.addr_size) != (want.entry_size, want.addr_size) {
        return Err(format!(
            "entries of {} bytes with {}-byte addresses, expected {} and {}",
            h.entry_size, h.addr_size, want.entry_size, want.addr_size
        ));
    }
    if h.boot_id != want.boot_id {
        return Err("written before the last reboot".into());
    }
    if (h.worker, h.workers) != (at.worker, at.workers) {
        // flows are spread over workers by queue: another worker count puts them elsewhere
        return Err(format!(
            "worker {} of {}, now worker {} of {}",
            h.worker, h.workers, at.worker, at.workers
        ));
    }
    let size = h.entry_size as usize;
    let cap = h.capacity as usize;
    if cap
        .checked_mul(size)
        .and_then(|b| b.checked_add(HEADER_LEN))
        != Some(len)
    {
        return Err(format!(
            "{len} bytes do not hold {cap} entries of {size} bytes"
        ));
    }
    report.unclean = h.clean != 1;
    // SAFETY: HEADER_LEN + cap * size == len bytes are mapped (checked above).
    let body = unsafe { std::slice::from_raw_parts(base.as_ptr().add(HEADER_LEN), cap * size) };
    let mut out = Vec::new();
    for raw in body.chunks_exact(size) {
        if raw.iter().all(|b| *b == 0) {
            continue; // a free slot
        }
        match decode::<A>(raw) {
            Some(e) if super::conntrack::expired(&e, now) => report.expired += 1,
            Some(e) => out.push(e),
            None => report.invalid += 1,
        }
    }
    Ok(Some(out))
}

impl<A: PlainBits + Default> Slots<A> {
    /// `len` free slots in the file `at.path` (created, or truncated), and the entries a
    /// previous process left in it, when the file was its and of this layout. A file that is
    /// not is set aside, and the report says why.
    pub fn persistent(
        at: &PersistAt,
        len: usize,
        now: u32,
    ) -> io::Result<(Self, Vec<Entry<A>>, Adoption)> {
        let mut report = Adoption {
            path: at.path.clone(),
            ..Adoption::default()
        };
        let previous = match read_previous::<A>(at, now, &mut report) {
            Ok(p) => p.unwrap_or_default(),
            Err(why) => {
                report.discarded = Some(why);
                Vec::new()
            }
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&at.path)?;
        let map_len = HEADER_LEN + len.max(1) * std::mem::size_of::<Entry<A>>();
        file.set_len(map_len as u64)?;
        let base = map(&file, map_len, true)?;
        // SAFETY: the fresh mapping starts page aligned with HEADER_LEN >= size_of::<Header>()
        // writable bytes.
        unsafe { std::ptr::write(base.as_ptr().cast::<Header>(), header_for::<A>(at, len)) };
        // SAFETY: HEADER_LEN is a multiple of Entry's alignment; the file was just truncated
        // and extended, so the entries are zero bits: free entries.
        let ptr =
            unsafe { NonNull::new_unchecked(base.as_ptr().add(HEADER_LEN).cast::<Entry<A>>()) };
        Ok((
            Slots {
                ptr,
                len,
                backing: Backing::File {
                    base,
                    map_len,
                    _file: file,
                },
            },
            previous,
            report,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lb::conntrack::tests::nat;
    use crate::lb::conntrack::{Dir, Table, Timeouts};
    use crate::wire::tcp::flags::{ACK, SYN};
    use crate::wire::{tcp, udp};

    /// A directory of its own per test, removed at the end.
    struct TmpDir(PathBuf);
    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn dir(tag: &str) -> TmpDir {
        let d = std::env::temp_dir().join(format!("sluice-slots-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TmpDir(d)
    }
    fn at(d: &TmpDir, worker: u16, workers: u16) -> PersistAt {
        PersistAt {
            path: d.0.join("t.ct"),
            worker,
            workers,
        }
    }
    fn open(at: &PersistAt, max: usize, now: u32) -> (Table<u32>, Adoption) {
        Table::persistent(max, Timeouts::default(), at, now).expect("table file")
    }
    /// Three connections: TCP established, TCP embryonic (60 s), UDP (60 s).
    fn three(t: &mut Table<u32>, now: u32) {
        let est = t.insert(nat(1), tcp::PROTOCOL, SYN, now).unwrap();
        t.seen(est, Dir::Reply, SYN | ACK, now);
        t.seen(est, Dir::Original, ACK, now);
        t.insert(nat(2), tcp::PROTOCOL, SYN, now).unwrap();
        t.insert(nat(3), udp::PROTOCOL, 0, now).unwrap();
    }

    #[test]
    fn a_closed_table_is_adopted_whole_by_the_next_process() {
        let d = dir("whole");
        let now = clock_secs();
        let (mut t, r) = open(&at(&d, 0, 1), 64, now);
        assert_eq!(r.adopted + r.expired + r.invalid, 0);
        assert!(r.discarded.is_none());
        three(&mut t, now);
        // a cached policy verdict: generations are the process's, so the next one drops it
        let est = t.lookup(&nat(1).original(tcp::PROTOCOL)).unwrap().0;
        t.set_allowed_at(est, 1, 0);
        assert!(t.get(est).unwrap().allowed_at(1, 0));
        drop(t);

        let (t, r) = open(&at(&d, 0, 1), 64, now);
        assert_eq!((r.adopted, r.expired, r.invalid), (3, 0, 0), "{r:?}");
        assert!(!r.unclean);
        assert_eq!(t.len(), 3);
        for port in 1..=3 {
            let n = nat(port);
            let proto = if port == 3 {
                udp::PROTOCOL
            } else {
                tcp::PROTOCOL
            };
            let (slot, dir) = t.lookup(&n.original(proto)).expect("original tuple");
            assert_eq!(dir, Dir::Original);
            assert_eq!(t.get(slot).unwrap().nat(), n, "the translation survives");
            assert_eq!(t.lookup(&n.reply(proto)), Some((slot, Dir::Reply)));
        }
        let s = t.lookup(&nat(1).original(tcp::PROTOCOL)).unwrap().0;
        assert_eq!(t.get(s).unwrap().state, State::Established);
        assert!(!t.get(s).unwrap().allowed_at(1, 0), "verdict left behind");
    }

    #[test]
    fn expired_connections_are_left_behind() {
        let d = dir("expiry");
        let now = clock_secs();
        let (mut t, _) = open(&at(&d, 0, 1), 64, now);
        three(&mut t, now);
        drop(t);
        // 61 s later the embryonic and UDP ones (60 s) are over, the established one is not
        let (t, r) = open(&at(&d, 0, 1), 64, now + 61);
        assert_eq!((r.adopted, r.expired), (1, 2), "{r:?}");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn a_crashed_writer_is_reported_and_its_table_still_adopted() {
        let d = dir("crash");
        let now = clock_secs();
        let (mut t, _) = open(&at(&d, 0, 1), 64, now);
        three(&mut t, now);
        // no orderly close: the header still says the table is in use (the mapping leaks)
        std::mem::forget(t);
        let (t, r) = open(&at(&d, 0, 1), 64, now);
        assert!(r.unclean, "{r:?}");
        assert_eq!(t.len(), 3);
    }

    /// Writes the file's byte at `off`.
    fn poke(at: &PersistAt, off: usize, b: u8) {
        let mut bytes = std::fs::read(&at.path).unwrap();
        bytes[off] = b;
        std::fs::write(&at.path, bytes).unwrap();
    }

    #[test]
    fn another_layout_version_or_worker_count_is_discarded_never_misread() {
        let d = dir("version");
        let now = clock_secs();
        for (what, poke_it, why) in [
            ("version", Some((8usize, 3u8)), "layout version 3"),
            ("magic", Some((0, b'X')), "bad magic"),
            ("workers", None, "worker 0 of 1, now worker 0 of 2"),
        ] {
            let (mut t, _) = open(&at(&d, 0, 1), 64, now);
            three(&mut t, now);
            drop(t);
            let reopen = match poke_it {
                Some((off, b)) => {
                    poke(&at(&d, 0, 1), off, b);
                    at(&d, 0, 1)
                }
                None => at(&d, 0, 2),
            };
            let (t, r) = open(&reopen, 64, now);
            let reason = r.discarded.clone().unwrap_or_default();
            assert!(reason.contains(why), "{what}: {r:?}");
            assert_eq!((t.len(), r.adopted), (0, 0), "{what}");
            // the file was replaced by a valid, empty one of the new owner
            drop(t);
            let (_, r) = open(&reopen, 64, now);
            assert!(r.discarded.is_none(), "{what}: {r:?}");
        }
        // a file too short for its header
        std::fs::write(&at(&d, 0, 1).path, b"short").unwrap();
        let (_, r) = open(&at(&d, 0, 1), 64, now);
        assert!(r.discarded.unwrap().contains("shorter than its header"));
    }

    #[test]
    fn corrupt_entries_are_counted_and_skipped() {
        let d = dir("corrupt");
        let now = clock_secs();
        let (mut t, _) = open(&at(&d, 0, 1), 64, now);
        three(&mut t, now);
        let slot = t.lookup(&nat(2).original(tcp::PROTOCOL)).unwrap().0 as usize;
        drop(t);
        let entry = HEADER_LEN + slot * std::mem::size_of::<Entry<u32>>();
        // a state byte no State has
        poke(
            &at(&d, 0, 1),
            entry + std::mem::offset_of!(Entry<u32>, state),
            9,
        );
        let (t, r) = open(&at(&d, 0, 1), 64, now);
        assert_eq!((r.adopted, r.invalid), (2, 1), "{r:?}");
        assert!(t.lookup(&nat(2).original(tcp::PROTOCOL)).is_none());
        // unknown flag bits
        let slot = t.lookup(&nat(1).original(tcp::PROTOCOL)).unwrap().0 as usize;
        drop(t);
        let entry = HEADER_LEN + slot * std::mem::size_of::<Entry<u32>>();
        poke(
            &at(&d, 0, 1),
            entry + std::mem::offset_of!(Entry<u32>, flags),
            0x80 | FLAG_USED,
        );
        let (_, r) = open(&at(&d, 0, 1), 64, now);
        assert_eq!((r.adopted, r.invalid), (1, 1), "{r:?}");
    }

    #[test]
    fn a_smaller_table_takes_what_fits() {
        let d = dir("smaller");
        let now = clock_secs();
        let (mut t, _) = open(&at(&d, 0, 1), 64, now);
        three(&mut t, now);
        drop(t);
        let (t, r) = open(&at(&d, 0, 1), 2, now);
        assert_eq!((r.adopted, r.dropped), (2, 1), "{r:?}");
        assert_eq!(t.len(), 2);
    }
}
