//! AF_XDP backend (xdpilone; see docs/decisions/001-xdpilone.md).
//!
//! One `AfXdpIo` per worker: it serves queue `q` of every interface, with one UMEM shared by all
//! of its sockets (XDP_SHARED_UMEM across devices), so a frame received on one interface is
//! transmitted on another without a copy. Each socket has its own fill and completion ring; the
//! worker's free list feeds all fill rings and every completion ring returns into it.

use super::{KernelDrops, PacketIo};
use crate::packet::{Batch, Frame, Port, Verdict};
use crate::region::Region;
use crate::stats::WorkerStats;
use core::num::NonZeroU32;
use core::ptr::NonNull;
use std::ffi::CString;
use std::os::fd::RawFd;
use xdpilone::xdp::XdpDesc;
use xdpilone::{DeviceQueue, IfInfo, RingRx, RingTx, Socket, SocketConfig, Umem, UmemConfig, User};

/// Zero-copy policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroCopy {
    /// Try zero-copy, fall back to copy mode when the driver has none (veth, most virtual NICs).
    Auto,
    /// Zero-copy or fail.
    On,
    /// Copy mode only.
    Off,
}

#[derive(Debug, Clone)]
pub struct AfXdpConfig {
    /// Chunk size; a power of two. 4096 holds a 3.5 KiB frame after the kernel's 256-byte
    /// XDP_PACKET_HEADROOM and ours, the most a veth with XDP takes.
    pub frame_size: u32,
    /// Descriptors per ring (rx, tx, fill, completion); a power of two. 2048 is libxdp's default:
    /// about 30 batches of slack before a burst overflows.
    pub ring_size: u32,
    /// Extra headroom we reserve in each chunk on top of the kernel's XDP_PACKET_HEADROOM (256),
    /// for encapsulation headers pushed in front of received packets.
    pub headroom: u32,
    pub zero_copy: ZeroCopy,
}

impl Default for AfXdpConfig {
    fn default() -> Self {
        AfXdpConfig {
            frame_size: 4096,
            ring_size: 2048,
            headroom: 0,
            zero_copy: ZeroCopy::Auto,
        }
    }
}

/// The kernel's XDP_PACKET_HEADROOM: received data starts this far (plus our headroom) into a chunk.
const XDP_PACKET_HEADROOM: u32 = 256;
/// In copy mode one sendto() transmits at most 32 descriptors (the kernel's TX batch budget), so
/// a full batch of 64 can need a second kick; more than 4 means the device is backed up.
const MAX_TX_KICKS: u32 = 4;
/// xdpilone reserves ring slots against its cached copy of the kernel's consumer index, and
/// reads that index again only when the copy shows no room at all (the receive ring likewise
/// against its cached producer index, re-read only when the copy shows it empty). A reservation
/// that crosses that point comes back short although the ring has room: a batch of 49 once got
/// 26 slots of a ring with 2,048 free, and the other 23 packets were dropped as TX_RING_FULL.
/// The second reservation starts from the index re-read; a ring still full then is full.
const RESERVE_ATTEMPTS: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum AfXdpError {
    #[error("AF_XDP on {ifname} queue {queue}: {step} failed: {reason}")]
    Setup {
        ifname: String,
        queue: u32,
        step: &'static str,
        reason: String,
    },
    #[error("mmap of {bytes} bytes of UMEM failed: {0}", bytes = .1)]
    Mmap(std::io::Error, usize),
    #[error("bad AF_XDP config: {0}")]
    Config(String),
}

struct PortSocket {
    ifname: String,
    fq_cq: DeviceQueue,
    rx: RingRx,
    tx: RingTx,
    user: User,
}

/// Anonymous mapping backing a UMEM; unmapped on drop (after the UMEM and sockets).
struct Mmap {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mmap {
    fn new(len: usize) -> Result<Mmap, AfXdpError> {
        // SAFETY: anonymous private mapping, no file; the result is checked below.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(AfXdpError::Mmap(std::io::Error::last_os_error(), len));
        }
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| AfXdpError::Mmap(std::io::Error::other("mmap returned NULL"), len))?;
        Ok(Mmap { ptr, len })
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing references the area any more
        // (fields of AfXdpIo holding sockets and the UMEM are dropped before this one).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

pub struct AfXdpIo {
    // Drop order: sockets, then the UMEM registration, then the memory.
    ports: Vec<PortSocket>,
    _umem: Umem,
    region: Region,
    free: Vec<u64>,
    ring_size: u32,
    rx_cursor: usize,
    zero_copy: bool,
    /// Told when the receive rings back up and when they drain (see `set_overload_signal`).
    overload: Option<OverloadSignal>,
    overloaded: bool,
    _mem: Mmap,
}

/// Called with true when this worker's receive rings back up (over half full), false when they
/// have drained (under an eighth): the XDP program sheds new TCP connections meanwhile. The
/// gap between the two marks keeps it from flapping batch by batch.
pub type OverloadSignal = Box<dyn FnMut(bool) + Send>;

// SAFETY: the raw pointers inside (UMEM mapping, rings) are only used by the thread that owns the
// AfXdpIo; it is moved to its worker thread once, after setup.
unsafe impl Send for AfXdpIo {}

impl AfXdpIo {
    /// Opens one socket per interface on `queue`, all sharing one UMEM.
    pub fn open(ifnames: &[String], queue: u32, cfg: &AfXdpConfig) -> Result<AfXdpIo, AfXdpError> {
        match cfg.zero_copy {
            ZeroCopy::On => Self::open_mode(ifnames, queue, cfg, true),
            ZeroCopy::Off => Self::open_mode(ifnames, queue, cfg, false),
            ZeroCopy::Auto => Self::open_mode(ifnames, queue, cfg, true).or_else(|e| {
                tracing::info!(queue, error = %e, "zero-copy unavailable, using copy mode");
                Self::open_mode(ifnames, queue, cfg, false)
            }),
        }
    }

    fn open_mode(
        ifnames: &[String],
        queue: u32,
        cfg: &AfXdpConfig,
        zero_copy: bool,
    ) -> Result<AfXdpIo, AfXdpError> {
        if !cfg.frame_size.is_power_of_two() || !(2048..=65536).contains(&cfg.frame_size) {
            return Err(AfXdpError::Config(format!(
                "frame_size {} must be a power of two in 2048..=65536",
                cfg.frame_size
            )));
        }
        if !cfg.ring_size.is_power_of_two() || !(64..=32768).contains(&cfg.ring_size) {
            return Err(AfXdpError::Config(format!(
                "ring_size {} must be a power of two in 64..=32768",
                cfg.ring_size
            )));
        }
        if ifnames.is_empty() {
            return Err(AfXdpError::Config("no interfaces".into()));
        }
        // Per port: a full fill ring plus a full tx ring of frames in flight.
        let frames = ifnames.len() as u32 * cfg.ring_size * 2;
        let bytes = frames as usize * cfg.frame_size as usize;
        let mem = Mmap::new(bytes)?;
        let area = NonNull::slice_from_raw_parts(mem.ptr, bytes);
        let umem_cfg = UmemConfig {
            fill_size: cfg.ring_size,
            complete_size: cfg.ring_size,
            frame_size: cfg.frame_size,
            headroom: cfg.headroom,
            flags: 0,
        };
        let err = |ifname: &str, step: &'static str, reason: String| AfXdpError::Setup {
            ifname: ifname.into(),
            queue,
            step,
            reason,
        };
        // SAFETY: `area` is a fresh page-aligned anonymous mapping of `bytes` bytes that lives in
        // the returned AfXdpIo (field `_mem`) longer than the Umem (dropped before it).
        let umem = unsafe { Umem::new(umem_cfg, area) }
            .map_err(|e| err(&ifnames[0], "UMEM registration", errno(e)))?;
        let mode = if zero_copy {
            SocketConfig::XDP_BIND_ZEROCOPY
        } else {
            SocketConfig::XDP_BIND_COPY
        };
        // The kernel refuses mode flags on an XDP_SHARED_UMEM bind (EINVAL): sockets sharing the
        // UMEM inherit copy/zero-copy and need_wakeup from its owner, the first socket.
        let owner_cfg = SocketConfig {
            rx_size: NonZeroU32::new(cfg.ring_size),
            tx_size: NonZeroU32::new(cfg.ring_size),
            bind_flags: mode | SocketConfig::XDP_BIND_NEED_WAKEUP,
        };
        let shared_cfg = SocketConfig {
            bind_flags: 0,
            ..owner_cfg.clone()
        };

        let mut ports = Vec::with_capacity(ifnames.len());
        for (i, ifname) in ifnames.iter().enumerate() {
            let c = CString::new(ifname.as_str())
                .map_err(|_| err(ifname, "interface name", "contains NUL".into()))?;
            let mut info = IfInfo::invalid();
            info.from_name(&c)
                .map_err(|e| err(ifname, "interface lookup", errno(e)))?;
            info.set_queue(queue);
            // The first socket is the UMEM's own fd; the others share the UMEM.
            let sock = if i == 0 {
                Socket::with_shared(&info, &umem)
            } else {
                Socket::new(&info)
            }
            .map_err(|e| err(ifname, "socket", errno(e)))?;
            let fq_cq = umem
                .fq_cq(&sock)
                .map_err(|e| err(ifname, "fill/completion rings", errno(e)))?;
            let user = umem
                .rx_tx(&sock, if i == 0 { &owner_cfg } else { &shared_cfg })
                .map_err(|e| err(ifname, "rx/tx rings", errno(e)))?;
            let rx = user
                .map_rx()
                .map_err(|e| err(ifname, "mmap rx ring", errno(e)))?;
            let tx = user
                .map_tx()
                .map_err(|e| err(ifname, "mmap tx ring", errno(e)))?;
            umem.bind(&user).map_err(|e| {
                err(
                    ifname,
                    if zero_copy {
                        "bind (zero-copy)"
                    } else {
                        "bind (copy mode)"
                    },
                    errno(e),
                )
            })?;
            ports.push(PortSocket {
                ifname: ifname.clone(),
                fq_cq,
                rx,
                tx,
                user,
            });
        }

        // SAFETY: same mapping as the UMEM; only this backend touches it (and the kernel, in
        // chunks we handed it through the fill/tx rings).
        let region = unsafe {
            Region::from_raw(
                mem.ptr,
                bytes,
                cfg.frame_size,
                XDP_PACKET_HEADROOM + cfg.headroom,
            )
        };
        let free = (0..u64::from(frames))
            .rev()
            .map(|i| i * u64::from(cfg.frame_size))
            .collect();
        let mut io = AfXdpIo {
            ports,
            _umem: umem,
            region,
            free,
            ring_size: cfg.ring_size,
            rx_cursor: 0,
            zero_copy,
            overload: None,
            overloaded: false,
            _mem: mem,
        };
        let stats = WorkerStats::default();
        io.service(&stats);
        Ok(io)
    }

    /// (interface, socket fd) pairs, for the XSKMAP.
    pub fn socket_fds(&self) -> Vec<(String, RawFd)> {
        self.ports
            .iter()
            .map(|p| (p.ifname.clone(), p.user.as_raw_fd()))
            .collect()
    }

    pub fn is_zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Who to tell when the receive rings back up and drain.
    pub fn set_overload_signal(&mut self, signal: OverloadSignal) {
        self.overload = Some(signal);
    }

    /// Follows the receive rings' backlog (one load of each ring's producer index, no
    /// syscall) and tells the overload signal when it crosses a mark.
    fn watch_backlog(&mut self, stats: &WorkerStats) {
        let Some(signal) = self.overload.as_mut() else {
            return;
        };
        let backlog = self
            .ports
            .iter()
            .map(|p| p.rx.available())
            .max()
            .unwrap_or(0);
        let flip = if self.overloaded {
            backlog < self.ring_size / 8
        } else {
            backlog > self.ring_size / 2
        };
        if flip {
            self.overloaded = !self.overloaded;
            signal(self.overloaded);
            if self.overloaded {
                stats.overloads.add(1);
            }
        }
    }

    /// Takes a free chunk for a packet the caller builds itself (a generator, an ICMP reply);
    /// it comes back through tx completion or `recycle`.
    pub fn alloc_chunk(&mut self) -> Option<u64> {
        self.free.pop()
    }
}

fn errno(e: xdpilone::Errno) -> String {
    std::io::Error::from_raw_os_error(e.get_raw().abs()).to_string()
}

impl PacketIo for AfXdpIo {
    fn rx_burst(&mut self, batch: &mut Batch, stats: &WorkerStats) -> usize {
        let n_ports = self.ports.len();
        let mut n = 0;
        let limit = self.region.frames() as u64 * u64::from(self.region.frame_size());
        // Round-robin start so one busy interface cannot starve the others.
        for k in 0..n_ports {
            let pi = (self.rx_cursor + k) % n_ports;
            // a short read can be xdpilone's stale view of the ring (`RESERVE_ATTEMPTS`)
            for _ in 0..RESERVE_ATTEMPTS {
                let room = batch.room() as u32;
                if room == 0 {
                    break;
                }
                let mut r = self.ports[pi].rx.receive(room);
                let got = r.capacity();
                while let Some(d) = r.read() {
                    if d.addr >= limit {
                        // A descriptor outside the UMEM cannot come from a sane kernel; never let
                        // it into the free list.
                        stats.drop(crate::drop::DropReason::Malformed, 1);
                        continue;
                    }
                    stats.rx_bytes.add(u64::from(d.len));
                    batch.push(Frame {
                        addr: d.addr,
                        len: d.len,
                        port: pi as Port,
                    });
                    n += 1;
                }
                r.release();
                if got == 0 {
                    break;
                }
            }
        }
        self.rx_cursor = (self.rx_cursor + 1) % n_ports;
        stats.rx_packets.add(n as u64);
        self.watch_backlog(stats);
        n
    }

    fn tx_burst(&mut self, batch: &mut Batch, stats: &WorkerStats) -> usize {
        let mut sent_total = 0;
        for pi in 0..self.ports.len() {
            let want = batch
                .iter()
                .filter(|(_, v)| *v == Verdict::Tx(pi as Port))
                .count();
            if want == 0 {
                continue;
            }
            let sock = &mut self.ports[pi];
            let mut sent = 0u32;
            // Two reservations at most: the first can come back short of a ring with room (see
            // `RESERVE_ATTEMPTS`); the second sees the kernel's consumer as it is.
            for _ in 0..RESERVE_ATTEMPTS {
                let mut w = sock.tx.transmit(want as u32 - sent);
                if w.capacity() == 0 {
                    break;
                }
                batch.retain(|f, v| {
                    if v != Verdict::Tx(pi as Port) {
                        return true;
                    }
                    let desc = XdpDesc {
                        addr: f.addr,
                        len: f.len,
                        options: 0,
                    };
                    if w.insert_once(desc) {
                        stats.tx_bytes.add(u64::from(f.len));
                        sent += 1;
                        false
                    } else {
                        true
                    }
                });
                w.commit();
                if sent as usize == want {
                    break;
                }
            }
            let mut kicks = 0;
            while sock.tx.needs_wakeup() && sock.tx.pending() > 0 && kicks < MAX_TX_KICKS {
                sock.tx.wake();
                kicks += 1;
            }
            stats.wakeups.add(u64::from(kicks));
            sent_total += sent as usize;
        }
        stats.tx_packets.add(sent_total as u64);
        sent_total
    }

    fn recycle(&mut self, batch: &mut Batch) {
        for f in batch.drain() {
            self.free.push(self.region.chunk_of(f.addr));
        }
    }

    fn service(&mut self, stats: &WorkerStats) {
        let frame_size = u64::from(self.region.frame_size());
        for p in &mut self.ports {
            // Completed transmissions return their chunks.
            let done = p.fq_cq.available();
            if done > 0 {
                let mut c = p.fq_cq.complete(done);
                while let Some(addr) = c.read() {
                    self.free.push(addr & !(frame_size - 1));
                }
                c.release();
            }
            // A tx ring still holding descriptors (copy mode sends 32 per kick) gets another kick.
            if p.tx.pending() > 0 && p.tx.needs_wakeup() {
                p.tx.wake();
                stats.wakeups.add(1);
            }
        }
        // Refill every fill ring, sharing the free frames evenly.
        let n_ports = self.ports.len();
        for (i, p) in self.ports.iter_mut().enumerate() {
            let share = (self.free.len() / (n_ports - i)).min(self.ring_size as usize) as u32;
            if share == 0 {
                if p.fq_cq.pending() == 0 {
                    stats.fill_starved.add(1);
                }
                continue;
            }
            let mut filled = 0;
            for _ in 0..RESERVE_ATTEMPTS {
                let mut w = p.fq_cq.fill(share - filled);
                let cap = w.capacity();
                for _ in 0..cap {
                    // cap <= share - filled <= free.len()
                    let Some(chunk) = self.free.pop() else { break };
                    if !w.insert_once(chunk) {
                        self.free.push(chunk);
                        break;
                    }
                    filled += 1;
                }
                w.commit();
                if cap == 0 || filled == share {
                    break;
                }
            }
            if p.fq_cq.needs_wakeup() {
                p.fq_cq.wake();
                stats.wakeups.add(1);
            }
        }
    }

    fn region_mut(&mut self) -> &mut Region {
        &mut self.region
    }

    fn adopt(&mut self, port: crate::packet::Port, bytes: &[u8]) -> Option<crate::packet::Frame> {
        let chunk = self.free.pop()?;
        let f = self.region.write_packet(chunk, port, bytes);
        if f.is_none() {
            self.free.push(chunk);
        }
        f
    }

    fn readiness_fds(&self) -> Vec<RawFd> {
        self.ports.iter().map(|p| p.rx.as_raw_fd()).collect()
    }

    fn kernel_drops(&self) -> Option<KernelDrops> {
        let mut t = KernelDrops::default();
        for p in &self.ports {
            if let Ok(s) = p.user.statistics_v2() {
                t.rx_dropped += s.rx_dropped;
                t.rx_ring_full += s.rx_ring_full;
                t.fill_ring_empty += s.rx_fill_ring_empty_descs;
            }
        }
        Some(t)
    }
}
