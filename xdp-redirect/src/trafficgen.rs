//! The `live` engine of `sluice-pktgen`: `bpf/trafficgen.bpf.c` run by BPF_PROG_RUN in
//! live-frames mode (kernel 5.18 and later, what xdp-trafficgen does). Each repetition
//! transmits a copy of the template frame, given its flow by the program, out of the interface.

use crate::XdpError;
use libbpf_rs::{MapCore, MapFlags, Object, ObjectBuilder};
use std::os::fd::{AsFd, AsRawFd, RawFd};

static GEN_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/trafficgen.bpf.o"));

/// BPF_F_TEST_XDP_LIVE_FRAMES (uapi/linux/bpf.h).
const LIVE_FRAMES: u32 = 1 << 1;
/// Frames the kernel sends per batch of a run: its maximum (the NAPI-like batch of the live
/// mode is 64 by default, 256 at most).
pub const MAX_BATCH: u32 = 256;

/// The 4 bytes of XDP metadata every run passes in front of the frame (`GEN_MAGIC` in
/// trafficgen.bpf.c): frames without them pass the program untouched.
const GEN_MAGIC: [u8; 4] = 0x6e65_6773u32.to_ne_bytes();

/// `frame` behind the generator's metadata, and the `struct xdp_md` that says where the frame
/// starts (data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex).
fn with_meta(frame: &[u8], ifindex: u32) -> (Vec<u8>, [u32; 6]) {
    let mut data = Vec::with_capacity(GEN_MAGIC.len() + frame.len());
    data.extend_from_slice(&GEN_MAGIC);
    data.extend_from_slice(frame);
    let meta = GEN_MAGIC.len() as u32;
    (data, [meta, meta + frame.len() as u32, 0, ifindex, 0, 0])
}

/// Loads the object `bytes` and finds its program `name`: the object (which keeps the program
/// alive) and the program's fd.
fn load(bytes: &[u8], name: &str) -> Result<(Object, RawFd), XdpError> {
    let obj = ObjectBuilder::default()
        .open_memory(bytes)
        .and_then(|open| open.load())
        .map_err(|e| XdpError::Load(e.to_string()))?;
    let fd = obj
        .progs()
        .find(|p| p.name() == name)
        .ok_or_else(|| XdpError::Load(format!("program {name} missing")))?
        .as_fd()
        .as_raw_fd();
    Ok((obj, fd))
}

/// Attaches `prog_fd` to `ifindex` in native mode through a bpf_link (detached with the fd).
fn link(prog_fd: RawFd, ifindex: u32) -> Result<std::os::fd::OwnedFd, XdpError> {
    crate::link_xdp(prog_fd, ifindex, crate::XdpMode::Native).map_err(|source| XdpError::Attach {
        ifname: format!("ifindex {ifindex}"),
        mode: "native",
        source,
    })
}

/// How the program rewrites the template (mirrors `struct gen_cfg` in trafficgen.bpf.c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GenConfig {
    pub flows: u32,
    pub ports: u32,
    pub cpus: u32,
    saddr_last: u32,
    pub sport_base: u16,
    l3_off: u16,
    l4_off: u16,
    l4_csum_off: u16,
    saddr_off: u16,
    ip_csum: u16,
    l4_csum: u16,
    ipv4: bool,
    /// The template's first bytes, restored in every frame (see trafficgen.bpf.c).
    hdr: [u64; HDR_WORDS],
    hdr_words: u32,
    tail: u64,
    tail_off: u32,
}

/// Must match HDR_WORDS in trafficgen.bpf.c: 96 bytes cover Ethernet, IPv6 and the TCP header
/// up to its checksum.
const HDR_WORDS: usize = 12;

impl GenConfig {
    /// For a template frame: Ethernet, IPv4 or IPv6 (no extension headers), TCP or UDP. The
    /// flows take `ports` source ports from the template's, then the next source address.
    pub fn for_frame(frame: &[u8], flows: u32, ports: u32, cpus: u32) -> Result<Self, String> {
        let word = |off: usize| -> Result<u16, String> {
            frame
                .get(off..off + 2)
                .map(|b| u16::from_ne_bytes([b[0], b[1]]))
                .ok_or_else(|| "template frame too short".to_string())
        };
        let l3 = 14usize;
        let ethertype = u16::from_be(word(12)?);
        let (ipv4, proto, l4, saddr_off) = match ethertype {
            0x0800 => {
                let ihl = usize::from(frame.get(l3).ok_or("short")? & 0x0f) * 4;
                (true, frame.get(l3 + 9).copied(), l3 + ihl, l3 + 12)
            }
            0x86dd => (false, frame.get(l3 + 6).copied(), l3 + 40, l3 + 8 + 12),
            t => return Err(format!("template EtherType {t:#06x} is not IPv4 or IPv6")),
        };
        let l4_csum_off = match proto {
            Some(6) => 16,
            Some(17) => 6,
            p => return Err(format!("template L4 protocol {p:?} is not TCP or UDP")),
        };
        let saddr = frame
            .get(saddr_off..saddr_off + 4)
            .ok_or("template frame too short")?;
        // restored: the headers up to the end of the L4 checksum (whole words, then the last
        // word ending exactly there)
        let hdr_len = l4 + usize::from(l4_csum_off) + 2;
        if hdr_len > 8 * HDR_WORDS || frame.len() < hdr_len {
            return Err("template headers longer than the generator restores".into());
        }
        let word64 = |off: usize| {
            let b = &frame[off..off + 8];
            u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
        };
        let hdr_words = hdr_len / 8;
        let mut hdr = [0u64; HDR_WORDS];
        for (i, w) in hdr.iter_mut().enumerate().take(hdr_words) {
            *w = word64(i * 8);
        }
        Ok(GenConfig {
            flows: flows.max(1),
            ports: ports.max(1),
            cpus: cpus.max(1),
            saddr_last: u32::from_ne_bytes([saddr[0], saddr[1], saddr[2], saddr[3]]),
            sport_base: u16::from_be(word(l4)?),
            l3_off: l3 as u16,
            l4_off: l4 as u16,
            l4_csum_off,
            saddr_off: saddr_off as u16,
            ip_csum: if ipv4 { word(l3 + 10)? } else { 0 },
            l4_csum: word(l4 + usize::from(l4_csum_off))?,
            ipv4,
            hdr,
            hdr_words: hdr_words as u32,
            tail: word64(hdr_len - 8),
            tail_off: (hdr_len - 8) as u32,
        })
    }

    /// The bytes of `struct gen_cfg`.
    fn to_bytes(self) -> [u8; 48 + 8 * HDR_WORDS] {
        let mut b = [0u8; 48 + 8 * HDR_WORDS];
        b[0..4].copy_from_slice(&self.flows.to_ne_bytes());
        b[4..8].copy_from_slice(&self.ports.to_ne_bytes());
        b[8..12].copy_from_slice(&self.cpus.to_ne_bytes());
        b[12..16].copy_from_slice(&self.saddr_last.to_ne_bytes());
        for (i, v) in [
            self.sport_base,
            self.l3_off,
            self.l4_off,
            self.l4_csum_off,
            self.saddr_off,
        ]
        .into_iter()
        .enumerate()
        {
            b[16 + 2 * i..18 + 2 * i].copy_from_slice(&v.to_ne_bytes());
        }
        // the checksums are raw frame words already
        b[26..28].copy_from_slice(&self.ip_csum.to_ne_bytes());
        b[28..30].copy_from_slice(&self.l4_csum.to_ne_bytes());
        b[30] = u8::from(self.ipv4);
        b[32..36].copy_from_slice(&self.hdr_words.to_ne_bytes());
        b[36..40].copy_from_slice(&self.tail_off.to_ne_bytes());
        b[40..48].copy_from_slice(&self.tail.to_ne_bytes());
        for (i, w) in self.hdr.iter().enumerate() {
            b[48 + 8 * i..56 + 8 * i].copy_from_slice(&w.to_ne_bytes());
        }
        b
    }
}

/// The loaded generator program.
pub struct TrafficGen {
    prog_fd: RawFd,
    _obj: Object,
}

impl TrafficGen {
    pub fn load(c: &GenConfig) -> Result<Self, XdpError> {
        let (obj, prog_fd) = load(GEN_OBJ, "sluice_trafficgen")?;
        let cfg = crate::map_handle(&obj, "cfg")?;
        cfg.update(&0u32.to_ne_bytes(), &c.to_bytes(), MapFlags::ANY)
            .map_err(|e| XdpError::Map {
                map: "cfg",
                reason: e.to_string(),
            })?;
        Ok(TrafficGen { prog_fd, _obj: obj })
    }

    /// Transmits `repeat` frames made from `frame` out of interface `ifindex`, `batch` (1..=256)
    /// at a time. Frames the driver refuses are not reported here (the kernel's xdp tracepoints
    /// see them): count what arrives at the other end.
    pub fn run(&self, frame: &[u8], ifindex: u32, repeat: u32, batch: u32) -> std::io::Result<()> {
        // the frame "arrives" on ifindex, so XDP_TX leaves by it
        let (data, ctx) = with_meta(frame, ifindex);
        let mut opts = libbpf_sys::bpf_test_run_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
            data_in: data.as_ptr().cast(),
            data_size_in: data.len() as u32,
            ctx_in: ctx.as_ptr().cast(),
            ctx_size_in: std::mem::size_of_val(&ctx) as u32,
            repeat: repeat as i32,
            flags: LIVE_FRAMES,
            batch_size: batch.clamp(1, MAX_BATCH),
            ..Default::default()
        };
        // SAFETY: prog_fd is the loaded program `_obj` keeps alive; data_in and ctx_in point to
        // live buffers of the sizes given, for the duration of the call; no output buffers.
        let r = unsafe { libbpf_sys::bpf_prog_test_run_opts(self.prog_fd, &mut opts) };
        if r < 0 {
            return Err(std::io::Error::from_raw_os_error(-r));
        }
        Ok(())
    }

    /// Keeps the program in the kernel's XDP dispatcher while the returned link lives, by
    /// attaching it in generic mode to `ifindex` (the loopback: frames arriving there carry no
    /// generator metadata and pass). Without it every `run` adds the program to the dispatcher
    /// and removes it again, two synchronize_rcu() that cost ~20 ms per call on this machine:
    /// at a target rate, the packets of those 20 ms then leave as one burst.
    pub fn anchor(&self, ifindex: u32) -> Result<std::os::fd::OwnedFd, XdpError> {
        crate::link_xdp(self.prog_fd, ifindex, crate::XdpMode::Generic).map_err(|source| {
            XdpError::Attach {
                ifname: format!("ifindex {ifindex}"),
                mode: "generic",
                source,
            }
        })
    }

    /// Runs the program once on `frame`, not live: the frame as it would have been sent
    /// (tests check the rewrite and the checksums with it).
    pub fn rewrite_once(&self, frame: &[u8]) -> std::io::Result<Vec<u8>> {
        let (data, ctx) = with_meta(frame, 0);
        let mut out = vec![0u8; data.len()];
        let mut opts = libbpf_sys::bpf_test_run_opts {
            sz: std::mem::size_of::<libbpf_sys::bpf_test_run_opts>() as _,
            data_in: data.as_ptr().cast(),
            data_size_in: data.len() as u32,
            data_out: out.as_mut_ptr().cast(),
            data_size_out: out.len() as u32,
            // ingress ifindex 0: no device
            ctx_in: ctx.as_ptr().cast(),
            ctx_size_in: std::mem::size_of_val(&ctx) as u32,
            repeat: 1,
            ..Default::default()
        };
        // SAFETY: as in run; data_out is a live buffer of data_size_out bytes.
        let r = unsafe { libbpf_sys::bpf_prog_test_run_opts(self.prog_fd, &mut opts) };
        if r < 0 {
            return Err(std::io::Error::from_raw_os_error(-r));
        }
        if opts.retval != 3 {
            // XDP_TX
            return Err(std::io::Error::other(format!(
                "the program returned {} instead of XDP_TX",
                opts.retval
            )));
        }
        // the output starts with the metadata
        out.truncate(opts.data_size_out as usize);
        out.drain(..GEN_MAGIC.len().min(out.len()));
        Ok(out)
    }
}

static FWD_OBJ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/xdpfwd.bpf.o"));

/// The kernel-XDP forwarding baseline (`bpf/xdpfwd.bpf.c`), attached to one interface for as
/// long as this value lives (a bpf_link).
pub struct XdpForward {
    forwarded: libbpf_rs::MapHandle,
    _link: std::os::fd::OwnedFd,
    _obj: Object,
}

impl XdpForward {
    /// Every IPv4 frame arriving on `ifindex` leaves by `out_ifindex` (XDP_TX when the same)
    /// from `src_mac` to `dst_mac`.
    pub fn attach(
        ifindex: u32,
        out_ifindex: u32,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
    ) -> Result<Self, XdpError> {
        let (obj, prog_fd) = load(FWD_OBJ, "sluice_xdp_fwd")?;
        let mut cfg = [0u8; 16];
        cfg[..6].copy_from_slice(&dst_mac);
        cfg[6..12].copy_from_slice(&src_mac);
        cfg[12..].copy_from_slice(&out_ifindex.to_ne_bytes());
        crate::map_handle(&obj, "fwd")?
            .update(&0u32.to_ne_bytes(), &cfg, MapFlags::ANY)
            .map_err(|e| XdpError::Map {
                map: "fwd",
                reason: e.to_string(),
            })?;
        let forwarded = crate::map_handle(&obj, "forwarded")?;
        let link = link(prog_fd, ifindex)?;
        Ok(XdpForward {
            forwarded,
            _link: link,
            _obj: obj,
        })
    }

    /// Frames forwarded so far, summed over CPUs.
    pub fn forwarded(&self) -> u64 {
        crate::percpu_sum(&self.forwarded, "forwarded", 0).unwrap_or(0)
    }
}

/// The sink (`sluice_xdp_sink` in `bpf/xdpfwd.bpf.c`): counts and drops every IPv4/IPv6 frame
/// arriving on one interface while this value lives (ARP and the rest pass).
pub struct XdpSink {
    sunk: libbpf_rs::MapHandle,
    _link: std::os::fd::OwnedFd,
    _obj: Object,
}

impl XdpSink {
    pub fn attach(ifindex: u32) -> Result<Self, XdpError> {
        let (obj, prog_fd) = load(FWD_OBJ, "sluice_xdp_sink")?;
        let sunk = crate::map_handle(&obj, "sunk")?;
        let link = link(prog_fd, ifindex)?;
        Ok(XdpSink {
            sunk,
            _link: link,
            _obj: obj,
        })
    }

    /// Frames counted so far, summed over CPUs.
    pub fn count(&self) -> u64 {
        crate::percpu_sum(&self.sunk, "sunk", 0).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp4() -> Vec<u8> {
        let mut f = vec![0u8; 60];
        f[12] = 0x08; // IPv4
        f[14] = 0x45;
        f[14 + 9] = 17;
        f[14 + 10] = 0xab; // header checksum
        f[14 + 11] = 0xcd;
        f[14 + 12..14 + 16].copy_from_slice(&[198, 18, 0, 1]);
        f[34..36].copy_from_slice(&1024u16.to_be_bytes());
        f[34 + 6] = 0x12; // UDP checksum
        f[34 + 7] = 0x34;
        f
    }

    #[test]
    fn offsets_and_template_values_are_read_from_the_frame() {
        let c = GenConfig::for_frame(&udp4(), 1000, 60000, 2).unwrap();
        assert!(c.ipv4);
        assert_eq!(
            (c.l3_off, c.l4_off, c.l4_csum_off, c.saddr_off),
            (14, 34, 6, 26)
        );
        assert_eq!(c.sport_base, 1024);
        assert_eq!(c.ip_csum, u16::from_ne_bytes([0xab, 0xcd]));
        assert_eq!(c.l4_csum, u16::from_ne_bytes([0x12, 0x34]));
        assert_eq!(c.saddr_last, u32::from_ne_bytes([198, 18, 0, 1]));
        let b = c.to_bytes();
        assert_eq!(&b[16..18], &1024u16.to_ne_bytes());
        assert_eq!(b[30], 1);
    }

    #[test]
    fn frames_that_are_not_tcp_or_udp_over_ip_are_refused() {
        let mut f = udp4();
        f[14 + 9] = 1; // ICMP
        assert!(GenConfig::for_frame(&f, 1, 1, 1).is_err());
        f[12] = 0x08;
        f[13] = 0x06; // ARP
        assert!(GenConfig::for_frame(&f, 1, 1, 1).is_err());
        assert!(GenConfig::for_frame(&f[..10], 1, 1, 1).is_err());
    }
}
