//! `sluice-xdp`: the XDP steering program and its loader.
//!
//! One program instance is loaded per interface (each has its own XSKMAP, because the map is
//! indexed by `rx_queue_index` and queue 0 of `eth0` is another socket than queue 0 of `eth1`);
//! all instances share one `owned` map, so a steering change is one map update for the appliance.
//!
//! Programs are attached through a bpf_link: the link is a file descriptor owned by this process,
//! so when `sluiced` exits, or crashes, the kernel detaches the program and the interface falls
//! back to the kernel datapath instead of steering into sockets nobody reads.

mod decap;
mod owned;

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
}

const CNT_STEERED: u32 = 0;
const CNT_PASSED: u32 = 1;
const CNT_NO_SOCKET: u32 = 2;

/// One attached program instance.
struct Attached {
    ifname: String,
    ifindex: u32,
    mode: XdpMode,
    xsks: MapHandle,
    counters: MapHandle,
    // Field order matters for drop: the link goes first, then the object that holds the program.
    _link: OwnedFd,
    _obj: Object,
}

/// The steering programs of this appliance.
pub struct Steering {
    /// The `owned` map of the first instance; later instances reuse its fd.
    owned: Option<MapHandle>,
    /// The `owned_prefixes` LPM trie, shared the same way.
    prefixes: Option<MapHandle>,
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
            attached: Vec::new(),
        }
    }

    /// Loads a program instance and attaches it to `ifname` in `mode`; when that fails and
    /// `fallback_generic` is set, tries generic mode. Returns the mode it runs in.
    pub fn attach(
        &mut self,
        ifname: &str,
        mode: XdpMode,
        fallback_generic: bool,
    ) -> Result<XdpMode> {
        let ifindex = ifindex_of(ifname)?;
        let obj = self.load_instance()?;
        let prog = obj
            .progs()
            .find(|p| p.name() == "sluice_steer")
            .ok_or_else(|| XdpError::Load("program sluice_steer missing from object".into()))?;
        let prog_fd = prog.as_fd().as_raw_fd();

        let (link, mode) = match link_xdp(prog_fd, ifindex, mode) {
            Ok(l) => (l, mode),
            Err(e) if fallback_generic && mode == XdpMode::Native => {
                tracing::warn!(ifname, error = %e, "native XDP attach failed, falling back to generic mode");
                let l = link_xdp(prog_fd, ifindex, XdpMode::Generic).map_err(|source| {
                    XdpError::Attach {
                        ifname: ifname.into(),
                        mode: XdpMode::Generic.as_str(),
                        source,
                    }
                })?;
                (l, XdpMode::Generic)
            }
            Err(source) => {
                return Err(XdpError::Attach {
                    ifname: ifname.into(),
                    mode: mode.as_str(),
                    source,
                })
            }
        };
        let xsks = map_handle(&obj, "xsks")?;
        let counters = map_handle(&obj, "counters")?;
        if self.owned.is_none() {
            self.owned = Some(map_handle(&obj, "owned")?);
            self.prefixes = Some(map_handle(&obj, "owned_prefixes")?);
        }
        self.attached.push(Attached {
            ifname: ifname.into(),
            ifindex,
            mode,
            xsks,
            counters,
            _link: link,
            _obj: obj,
        });
        Ok(mode)
    }

    fn load_instance(&self) -> Result<Object> {
        let mut open = ObjectBuilder::default()
            .open_memory(STEER_OBJ)
            .map_err(|e| XdpError::Load(e.to_string()))?;
        for (name, shared) in [("owned", &self.owned), ("owned_prefixes", &self.prefixes)] {
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
        self.find(ifname).ok().map(|a| a.mode)
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
        })
    }

    /// Interfaces with a program, with their ifindex and mode.
    pub fn interfaces(&self) -> impl Iterator<Item = (&str, u32, XdpMode)> {
        self.attached
            .iter()
            .map(|a| (a.ifname.as_str(), a.ifindex, a.mode))
    }

    /// Detaches every program now (dropping `Steering` does the same).
    pub fn detach_all(&mut self) {
        self.attached.clear();
    }
}

/// A per-CPU u64 counter slot, summed over CPUs.
fn percpu_sum(map: &MapHandle, name: &'static str, slot: u32) -> Result<u64> {
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

fn map_handle(obj: &Object, name: &'static str) -> Result<MapHandle> {
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
fn link_xdp(prog_fd: RawFd, ifindex: u32, mode: XdpMode) -> std::io::Result<OwnedFd> {
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
