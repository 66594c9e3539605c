//! The DSR decapsulation program for backends (`bpf/decap.bpf.c`) and its loader.
//!
//! Attached through a bpf_link like the steering program: it stays while the process holding
//! [`Decap`] lives (`sluice decap` runs in the foreground, e.g. as a systemd service on the
//! backend), and the interface is back to plain kernel receive when it exits.

use super::{ifindex_of, link_xdp, map_handle, percpu_sum, Result, XdpError, XdpMode};
use libbpf_rs::{MapCore, MapFlags, MapHandle, Object, ObjectBuilder};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// The compiled decapsulation program.
static DECAP_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/decap.bpf.o"));

/// Counter slots of decap.bpf.c.
const CNT_DECAPSULATED: u32 = 0;
const CNT_PASSED: u32 = 1;
const CNT_REFUSED: u32 = 2;

/// What the program counted, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecapCounters {
    /// Tunnelled packets stripped and handed to the kernel.
    pub decapsulated: u64,
    /// Other traffic, untouched.
    pub passed: u64,
    /// Tunnels from a source not in the allowed list: dropped.
    pub refused: u64,
}

/// The program attached to one interface.
pub struct Decap {
    counters: MapHandle,
    // drop order: the link first, then the object holding the program
    _link: OwnedFd,
    _obj: Object,
}

impl Decap {
    /// Loads the program and attaches it to `ifname`. `geneve_port`: also strip Geneve to this
    /// UDP port. `allowed`: the load balancers' addresses tunnels may come from (empty: any).
    pub fn attach(
        ifname: &str,
        mode: XdpMode,
        geneve_port: Option<u16>,
        allowed: &[IpAddr],
    ) -> Result<Decap> {
        let ifindex = ifindex_of(ifname)?;
        let obj = ObjectBuilder::default()
            .open_memory(DECAP_OBJ)
            .and_then(|o| o.load())
            .map_err(|e| XdpError::Load(e.to_string()))?;
        let config = map_handle(&obj, "config")?;
        let allowed_map = map_handle(&obj, "allowed")?;
        let map_err = |map: &'static str| {
            move |e: libbpf_rs::Error| XdpError::Map {
                map,
                reason: e.to_string(),
            }
        };
        for a in allowed {
            let key = match a {
                IpAddr::V4(v) => v.to_ipv6_mapped().octets(),
                IpAddr::V6(v) => v.octets(),
            };
            allowed_map
                .update(&key, &[1u8], MapFlags::ANY)
                .map_err(map_err("allowed"))?;
        }
        // struct decap_config { u16 geneve_port; u8 check_source; u8 pad; }
        let port = geneve_port.unwrap_or(0).to_ne_bytes();
        let cfg = [port[0], port[1], u8::from(!allowed.is_empty()), 0];
        config
            .update(&0u32.to_ne_bytes(), &cfg, MapFlags::ANY)
            .map_err(map_err("config"))?;
        let prog = obj
            .progs()
            .find(|p| p.name() == "sluice_decap")
            .ok_or_else(|| XdpError::Load("program sluice_decap missing from object".into()))?;
        let link = link_xdp(prog.as_fd().as_raw_fd(), ifindex, mode).map_err(|source| {
            XdpError::Attach {
                ifname: ifname.into(),
                mode: mode.as_str(),
                source,
            }
        })?;
        Ok(Decap {
            counters: map_handle(&obj, "decap_counters")?,
            _link: link,
            _obj: obj,
        })
    }

    pub fn counters(&self) -> Result<DecapCounters> {
        let read = |slot| percpu_sum(&self.counters, "decap_counters", slot);
        Ok(DecapCounters {
            decapsulated: read(CNT_DECAPSULATED)?,
            passed: read(CNT_PASSED)?,
            refused: read(CNT_REFUSED)?,
        })
    }
}
