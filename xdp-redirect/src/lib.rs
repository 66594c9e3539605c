//! `sluice-xdp`: the XDP steering program and its loader.
//!
//! One program instance is loaded per interface (each has its own XSKMAP, because the map is
//! indexed by `rx_queue_index` and queue 0 of `eth0` is another socket than queue 0 of `eth1`);
//! all instances share one `owned` map, so a steering change is one map update for the appliance.
//!
//! Two ways to attach (decision 013):
//! - through a bpf_link, a file descriptor owned by this process: when `sluiced` exits, or
//!   crashes, the kernel detaches the program and the interface falls back to the kernel
//!   datapath at once;
//! - through netlink, for restarts that keep connections: the program outlives the process and
//!   holds the owned traffic of its queues (drops it, counted) until the hold time the process
//!   last wrote, so the next `sluiced` (which replaces the program atomically and adopts the
//!   connection table) carries on where this one stopped. After the hold, the kernel path takes
//!   over. Only an earlier sluice program is ever replaced; anybody else's is refused.

mod decap;
mod owned;
pub mod trafficgen;

pub use decap::{Decap, DecapCounters};
pub use owned::{OwnedKey, IPPROTO_TCP, IPPROTO_UDP};

use std::{
    ffi::CString,
    net::IpAddr,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use libbpf_rs::{MapCore, MapFlags, MapHandle, Object, ObjectBuilder};

/// The compiled steering program (see `bpf/steer.bpf.c`).
static STEER_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/steer.bpf.o"));

/// Must match `MAX_QUEUES` in steer.bpf.c.
pub const MAX_QUEUES: u32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("loading the XDP steering program: {0}")]
    Load(String),
    #[error("interface {ifname:?}: {what}")]
    Iface { ifname: String, what: String },
    #[error("attaching XDP to {ifname:?} in {mode} mode failed: {source}")]
    Attach {
        ifname: String,
        mode: &'static str,
        source: std::io::Error,
    },
    #[error("updating BPF map {map}: {reason}")]
    Map { map: &'static str, reason: String },
}

type Result<T> = std::result::Result<T, XdpError>;

/// How the program is attached to an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// Driver (native) mode; the fast one. veth, mlx5, ice, i40e... support it.
    Native,
    /// Generic (skb) mode: works on every device, after the kernel allocated an skb.
    Generic,
}

impl XdpMode {
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
    fn flags(self) -> u32 {
        match self {
            XdpMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
        }
    }
}

/// Per-interface counters summed over CPUs. Slots match the enum in steer.bpf.c.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SteerCounters {
    /// Redirected into an AF_XDP socket.
    pub steered: u64,
    /// Not owned: handed to the kernel.
    pub passed: u64,
    /// Owned, but no socket was bound on the receiving queue: handed to the kernel.
    pub no_socket: u64,
    /// Owned, no socket, and the queue held (a restart): dropped.
    pub held: u64,
    /// New TCP connections (SYN) dropped while their queue's worker was overloaded.
    pub syn_shed: u64,
}

const CNT_STEERED: u32 = 0;
const CNT_PASSED: u32 = 1;
const CNT_NO_SOCKET: u32 = 2;
const CNT_HELD: u32 = 3;
const CNT_SYN_SHED: u32 = 4;

/// The program's name, as the kernel reports it (an earlier sluiced's is replaced, nobody
/// else's).
const PROG_NAME: &str = "sluice_steer";

/// How an instance is attached.
enum How {
    /// A bpf_link: detached when the fd closes (with the process).
    Link(#[allow(dead_code)] OwnedFd), // held for its drop: closing the fd detaches
    /// Netlink, with these mode flags: stays until detached.
    Netlink(u32),
}

/// One program instance on one interface.
struct Attached {
    ifname: String,
    ifindex: u32,
    /// None until attached.
    mode: Option<XdpMode>,
    xsks: MapHandle,
    counters: MapHandle,
    prog_fd: RawFd,
    // Field order matters for drop: the link goes first, then the object that holds the program.
    how: Option<How>,
    _obj: Object,
}

impl Drop for Attached {
    fn drop(&mut self) {
        // a netlink attachment left by an error path goes too, unless `release` kept it; only
        // while it is still ours (REPLACE with our fd: a successor's program is not touched)
        if let Some(How::Netlink(flags)) = self.how.take() {
            netlink_detach(self.ifindex, flags, self.prog_fd);
        }
    }
}

/// The steering programs of this appliance.
pub struct Steering {
    /// The `owned` map of the first instance; later instances reuse its fd.
    owned: Option<MapHandle>,
    /// The `owned_prefixes` LPM trie, shared the same way.
    prefixes: Option<MapHandle>,
    /// The per-queue restart hold, shared the same way.
    hold: Option<MapHandle>,
    /// The per-queue overload flags, shared the same way.
    pressure: Option<MapHandle>,
    attached: Vec<Attached>,
}

impl Default for Steering {
    fn default() -> Self {
        Self::new()
    }
}

impl Steering {
    pub fn new() -> Self {
        Steering {
            owned: None,
            prefixes: None,
            hold: None,
            pressure: None,
            attached: Vec::new(),
        }
    }

    /// Loads a program instance and attaches it to `ifname` through a bpf_link (detached when
    /// the process exits) in `mode`; when that fails and `fallback_generic` is set, tries
    /// generic mode. Returns the mode it runs in.
    pub fn attach(
        &mut self,
        ifname: &str,
        mode: XdpMode,
        fallback_generic: bool,
    ) -> Result<XdpMode> {
        self.load(ifname)?;
        self.attach_loaded(mode, fallback_generic, false)?;
        self.mode(ifname)
            .ok_or_else(|| XdpError::Load("attached instance missing".into()))
    }

    /// Loads a program instance for `ifname` without attaching it: its maps (shared by all
    /// instances) can be filled first, so the program steers everything from its first packet.
    pub fn load(&mut self, ifname: &str) -> Result<()> {
        let ifindex = ifindex_of(ifname)?;
        let obj = self.load_instance()?;
        let prog = obj
            .progs()
            .find(|p| p.name() == PROG_NAME)
            .ok_or_else(|| XdpError::Load(format!("program {PROG_NAME} missing from object")))?;
        let prog_fd = prog.as_fd().as_raw_fd();
        let xsks = map_handle(&obj, "xsks")?;
        let counters = map_handle(&obj, "counters")?;
        if self.owned.is_none() {
            self.owned = Some(map_handle(&obj, "owned")?);
            self.prefixes = Some(map_handle(&obj, "owned_prefixes")?);
            self.hold = Some(map_handle(&obj, "hold")?);
            self.pressure = Some(map_handle(&obj, "pressure")?);
        }
        self.attached.push(Attached {
            ifname: ifname.into(),
            ifindex,
            mode: None,
            xsks,
            counters,
            prog_fd,
            how: None,
            _obj: obj,
        });
        Ok(())
    }

    /// Attaches every loaded instance not attached yet, in `mode` (generic when native fails
    /// and `fallback_generic`). `keep`: through netlink, so the program outlives the process
    /// (restart hold), replacing an earlier sluiced's program on the interface; otherwise
    /// through a bpf_link.
    pub fn attach_loaded(
        &mut self,
        mode: XdpMode,
        fallback_generic: bool,
        keep: bool,
    ) -> Result<()> {
        for a in self.attached.iter_mut().filter(|a| a.how.is_none()) {
            let try_mode = |m: XdpMode| {
                if keep {
                    netlink_attach(a.prog_fd, a.ifindex, m).map(|()| How::Netlink(m.flags()))
                } else {
                    link_xdp(a.prog_fd, a.ifindex, m).map(How::Link)
                }
            };
            let (how, m) = match try_mode(mode) {
                Ok(h) => (h, mode),
                Err(e) if fallback_generic && mode == XdpMode::Native => {
                    tracing::warn!(ifname = %a.ifname, error = %e, "native XDP attach failed, falling back to generic mode");
                    let h = try_mode(XdpMode::Generic).map_err(|source| XdpError::Attach {
                        ifname: a.ifname.clone(),
                        mode: XdpMode::Generic.as_str(),
                        source,
                    })?;
                    (h, XdpMode::Generic)
                }
                Err(source) => {
                    return Err(XdpError::Attach {
                        ifname: a.ifname.clone(),
                        mode: mode.as_str(),
                        source,
                    })
                }
            };
            a.how = Some(how);
            a.mode = Some(m);
        }
        Ok(())
    }

    /// Holds queues `0..queues` (see `hold` in steer.bpf.c) until `d` from now: owned traffic
    /// that finds no socket there is dropped meanwhile. `d` zero: released at once.
    pub fn hold(&self, queues: u32, d: std::time::Duration) -> Result<()> {
        let Some(m) = &self.hold else { return Ok(()) };
        let until = if d.is_zero() {
            0
        } else {
            monotonic_ns().saturating_add(d.as_nanos() as u64)
        };
        for q in 0..queues.min(MAX_QUEUES) {
            m.update(&q.to_ne_bytes(), &until.to_ne_bytes(), MapFlags::ANY)
                .map_err(|e| XdpError::Map {
                    map: "hold",
                    reason: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// The overload flag of `queue`, for the worker serving it (see `pressure` in
    /// steer.bpf.c).
    pub fn pressure_flag(&self, queue: u32) -> Result<PressureFlag> {
        let m = self.pressure.as_ref().ok_or(XdpError::Map {
            map: "pressure",
            reason: "no program loaded yet".into(),
        })?;
        if queue >= MAX_QUEUES {
            return Err(XdpError::Map {
                map: "pressure",
                reason: format!("queue {queue} above the supported {MAX_QUEUES}"),
            });
        }
        let map = MapHandle::try_from(m).map_err(|e| XdpError::Map {
            map: "pressure",
            reason: e.to_string(),
        })?;
        Ok(PressureFlag { map, queue })
    }

    /// Lets go of the programs without detaching those attached through netlink: they stay,
    /// holding their queues until the hold written last, for the next sluiced to replace.
    pub fn release(&mut self) {
        for mut a in self.attached.drain(..) {
            if matches!(a.how, Some(How::Netlink(_))) {
                a.how = None;
            }
        }
    }

    fn load_instance(&self) -> Result<Object> {
        let mut open = ObjectBuilder::default()
            .open_memory(STEER_OBJ)
            .map_err(|e| XdpError::Load(e.to_string()))?;
        for (name, shared) in [
            ("owned", &self.owned),
            ("owned_prefixes", &self.prefixes),
            ("hold", &self.hold),
            ("pressure", &self.pressure),
        ] {
            let Some(shared) = shared else { continue };
            let mut m = open
                .maps_mut()
                .find(|m| m.name() == name)
                .ok_or_else(|| XdpError::Load(format!("map {name} missing from object")))?;
            m.reuse_fd(shared.as_fd())
                .map_err(|e| XdpError::Load(format!("sharing the {name} map: {e}")))?;
        }
        open.load().map_err(|e| XdpError::Load(e.to_string()))
    }

    fn find(&self, ifname: &str) -> Result<&Attached> {
        self.attached
            .iter()
            .find(|a| a.ifname == ifname)
            .ok_or_else(|| XdpError::Iface {
                ifname: ifname.into(),
                what: "no steering program attached".into(),
            })
    }

    /// The mode the program on `ifname` runs in.
    pub fn mode(&self, ifname: &str) -> Option<XdpMode> {
        self.find(ifname).ok().and_then(|a| a.mode)
    }

    /// Binds the AF_XDP socket `fd` to queue `queue` of `ifname`: from now on owned packets
    /// received on that queue go to the socket.
    pub fn register_socket(&self, ifname: &str, queue: u32, fd: RawFd) -> Result<()> {
        if queue >= MAX_QUEUES {
            return Err(XdpError::Iface {
                ifname: ifname.into(),
                what: format!("queue {queue} above the supported {MAX_QUEUES}"),
            });
        }
        let a = self.find(ifname)?;
        let v = u32::try_from(fd).map_err(|_| XdpError::Map {
            map: "xsks",
            reason: format!("bad socket fd {fd}"),
        })?;
        a.xsks
            .update(&queue.to_ne_bytes(), &v.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| XdpError::Map {
                map: "xsks",
                reason: e.to_string(),
            })
    }

    /// Marks traffic as owned (steered to the workers).
    pub fn own(&self, key: &OwnedKey) -> Result<()> {
        let Some(m) = &self.owned else {
            return Err(XdpError::Map {
                map: "owned",
                reason: "no program loaded yet".into(),
            });
        };
        m.update(&key.to_bytes(), &0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|e| XdpError::Map {
                map: "owned",
                reason: e.to_string(),
            })
    }

    /// Stops owning traffic; a missing entry is not an error.
    pub fn disown(&self, key: &OwnedKey) -> Result<()> {
        let Some(m) = &self.owned else { return Ok(()) };
        match m.delete(&key.to_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(XdpError::Map {
                map: "owned",
                reason: e.to_string(),
            }),
        }
    }

    /// Owns every destination in `addr/len` (longest match after the exact entries).
    pub fn own_prefix(&self, addr: IpAddr, len: u8) -> Result<()> {
        let m = self.prefixes.as_ref().ok_or(XdpError::Map {
            map: "owned_prefixes",
            reason: "no program loaded yet".into(),
        })?;
        m.update(
            &owned::prefix_key(addr, len),
            &0u32.to_ne_bytes(),
            MapFlags::ANY,
        )
        .map_err(|e| XdpError::Map {
            map: "owned_prefixes",
            reason: e.to_string(),
        })
    }

    /// Stops owning a prefix; a missing entry is not an error.
    pub fn disown_prefix(&self, addr: IpAddr, len: u8) -> Result<()> {
        let Some(m) = &self.prefixes else {
            return Ok(());
        };
        match m.delete(&owned::prefix_key(addr, len)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(XdpError::Map {
                map: "owned_prefixes",
                reason: e.to_string(),
            }),
        }
    }

    /// Counters of the program on `ifname`, summed over CPUs.
    pub fn counters(&self, ifname: &str) -> Result<SteerCounters> {
        let a = self.find(ifname)?;
        let read = |slot| percpu_sum(&a.counters, "counters", slot);
        Ok(SteerCounters {
            steered: read(CNT_STEERED)?,
            passed: read(CNT_PASSED)?,
            no_socket: read(CNT_NO_SOCKET)?,
            held: read(CNT_HELD)?,
            syn_shed: read(CNT_SYN_SHED)?,
        })
    }

    /// Interfaces with a program, with their ifindex and mode.
    pub fn interfaces(&self) -> impl Iterator<Item = (&str, u32, XdpMode)> {
        self.attached
            .iter()
            .filter_map(|a| Some((a.ifname.as_str(), a.ifindex, a.mode?)))
    }

    /// Detaches every program now (dropping `Steering` does the same).
    pub fn detach_all(&mut self) {
        self.attached.clear();
    }
}

/// One queue's overload flag: while set, the programs drop new TCP connections on that queue.
pub struct PressureFlag {
    map: MapHandle,
    queue: u32,
}

impl PressureFlag {
    /// Sets or clears the flag (one map update: a syscall, made only when the state changes).
    pub fn set(&self, on: bool) -> Result<()> {
        self.map
            .update(
                &self.queue.to_ne_bytes(),
                &u32::from(on).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(|e| XdpError::Map {
                map: "pressure",
                reason: e.to_string(),
            })
    }
}

/// A per-CPU u64 counter slot, summed over CPUs.
pub(crate) fn percpu_sum(map: &MapHandle, name: &'static str, slot: u32) -> Result<u64> {
    let per_cpu = map
        .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
        .map_err(|e| XdpError::Map {
            map: name,
            reason: e.to_string(),
        })?
        .unwrap_or_default();
    Ok(per_cpu
        .iter()
        .filter_map(|b| b.get(..8).and_then(|b| b.try_into().ok()))
        .map(u64::from_ne_bytes)
        .sum())
}

pub(crate) fn map_handle(obj: &Object, name: &'static str) -> Result<MapHandle> {
    let map = obj
        .maps()
        .find(|m| m.name() == name)
        .ok_or_else(|| XdpError::Load(format!("map {name} missing from object")))?;
    MapHandle::try_from(&map).map_err(|e| XdpError::Map {
        map: name,
        reason: e.to_string(),
    })
}

/// Creates an XDP bpf_link with explicit mode flags (libbpf's `bpf_program__attach_xdp` takes none).
pub(crate) fn link_xdp(prog_fd: RawFd, ifindex: u32, mode: XdpMode) -> std::io::Result<OwnedFd> {
    // SAFETY: bpf_link_create_opts is a plain C struct for which all-zero is the documented default;
    // `sz` is set as libbpf's OPTS macros do.
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    opts.flags = mode.flags();
    // SAFETY: prog_fd is a loaded program kept alive by the caller's Object; opts outlives the call.
    let fd =
        unsafe { libbpf_sys::bpf_link_create(prog_fd, ifindex as i32, libbpf_sys::BPF_XDP, &opts) };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: a non-negative return of bpf_link_create is a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The program attached to `ifindex` in `mode` through netlink or a link, if any: its fd and
/// name.
fn attached_prog(ifindex: u32, mode: XdpMode) -> Option<(OwnedFd, String)> {
    let mut id = 0u32;
    // SAFETY: writes the id into our u32; ifindex and flags are plain values.
    let r = unsafe { libbpf_sys::bpf_xdp_query_id(ifindex as i32, mode.flags() as i32, &mut id) };
    if r != 0 || id == 0 {
        return None;
    }
    // SAFETY: a plain syscall wrapper; a non-negative result is a new fd we own.
    let fd = unsafe { libbpf_sys::bpf_prog_get_fd_by_id(id) };
    if fd < 0 {
        return None;
    }
    // SAFETY: as above, fd is new and ours.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: bpf_prog_info is a plain C struct (all-zero valid); the kernel fills at most
    // `len` bytes of it.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    // SAFETY: info and len are ours and sized as said.
    let r = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd.as_raw_fd(), &mut info, &mut len) };
    if r != 0 {
        return None;
    }
    let name: Vec<u8> = info
        .name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    Some((fd, String::from_utf8_lossy(&name).into_owned()))
}

/// Attaches through netlink (the program outlives the process). An earlier sluice program on
/// the interface is replaced atomically (XDP_FLAGS_REPLACE: no packet meets no program);
/// anybody else's is left alone and the attach refused.
fn netlink_attach(prog_fd: RawFd, ifindex: u32, mode: XdpMode) -> std::io::Result<()> {
    let old = attached_prog(ifindex, mode);
    if let Some((_, name)) = &old {
        if name != PROG_NAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "another XDP program ({name:?}) is attached; sluiced replaces only its own"
                ),
            ));
        }
    }
    // SAFETY: bpf_xdp_attach_opts is a plain C struct, all-zero its default; sz set as
    // libbpf's OPTS macros do.
    let mut opts: libbpf_sys::bpf_xdp_attach_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_xdp_attach_opts>() as _;
    let mut flags = mode.flags();
    if let Some((fd, _)) = &old {
        opts.old_prog_fd = fd.as_raw_fd();
        flags |= libbpf_sys::XDP_FLAGS_REPLACE;
    }
    // SAFETY: prog_fd is a loaded program kept alive by the caller's Object; opts outlives the
    // call (and `old`'s fd with it).
    let r = unsafe { libbpf_sys::bpf_xdp_attach(ifindex as i32, prog_fd, flags, &opts) };
    if r < 0 {
        return Err(std::io::Error::from_raw_os_error(-r));
    }
    Ok(())
}

/// Detaches our netlink-attached program `prog_fd`, only if it is still the one attached.
fn netlink_detach(ifindex: u32, flags: u32, prog_fd: RawFd) {
    // SAFETY: as in netlink_attach.
    let mut opts: libbpf_sys::bpf_xdp_attach_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_xdp_attach_opts>() as _;
    opts.old_prog_fd = prog_fd;
    // SAFETY: plain values and our opts; detaching with REPLACE fails harmlessly (EEXIST) when
    // another program is attached by now.
    unsafe {
        libbpf_sys::bpf_xdp_detach(ifindex as i32, flags | libbpf_sys::XDP_FLAGS_REPLACE, &opts)
    };
}

/// The interface index of `ifname` in this network namespace.
pub fn ifindex_of(ifname: &str) -> Result<u32> {
    let c = CString::new(ifname).map_err(|_| XdpError::Iface {
        ifname: ifname.into(),
        what: "name contains NUL".into(),
    })?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(XdpError::Iface {
            ifname: ifname.into(),
            what: format!("no such interface ({})", std::io::Error::last_os_error()),
        });
    }
    Ok(idx)
}
