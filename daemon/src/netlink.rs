//! The kernel's neighbour table over rtnetlink: dump it, and ask the kernel to resolve next hops.
//!
//! Like Cilium, sluice does not run ARP/ND itself: it installs "managed" neighbour entries
//! (NTF_EXT_MANAGED, Linux >= 5.16) for next hops it needs, and the kernel resolves them and keeps
//! them fresh. The datapath reads the resulting MACs from its snapshot.

use std::io;
use std::net::IpAddr;

const NETLINK_ROUTE: i32 = 0;
const RTM_NEWNEIGH: u16 = 28;
const RTM_GETNEIGH: u16 = 30;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;
const NDA_FLAGS_EXT: u16 = 15;
const NTF_EXT_MANAGED: u32 = 1;
// NUD states with a usable link-layer address.
const NUD_REACHABLE: u16 = 0x02;
const NUD_STALE: u16 = 0x04;
const NUD_DELAY: u16 = 0x08;
const NUD_PROBE: u16 = 0x10;
const NUD_NOARP: u16 = 0x40;
const NUD_PERMANENT: u16 = 0x80;
const NUD_USABLE: u16 =
    NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_NOARP | NUD_PERMANENT;

const NLMSG_HDRLEN: usize = 16;
const NDMSG_LEN: usize = 12;
/// Receive buffer for dump replies: the kernel sends at most a page-sized batch per message
/// group; 64 KiB holds many.
const RECV_BUF: usize = 65536;

/// A resolved neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Neighbor {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

struct NlSocket {
    fd: std::os::fd::OwnedFd,
    seq: u32,
}

impl NlSocket {
    fn open() -> io::Result<NlSocket> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // A reply that never comes must not hang the control loop.
        let tv = libc::timeval {
            tv_sec: 1,
            tv_usec: 0,
        };
        // SAFETY: valid fd, option pointer and length for SO_RCVTIMEO.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(NlSocket { fd, seq: 1 })
    }

    fn send(&mut self, msg_type: u16, flags: u16, body: &[u8]) -> io::Result<u32> {
        use std::os::fd::AsRawFd;
        self.seq = self.seq.wrapping_add(1);
        let len = NLMSG_HDRLEN + body.len();
        let mut m = Vec::with_capacity(len);
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&msg_type.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        // SAFETY: m is a valid buffer of m.len() bytes; the kernel is the default destination.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Receives messages of sequence `seq` until DONE or an ACK/error; calls `f` on each other one.
    fn recv_until_done(&mut self, seq: u32, mut f: impl FnMut(u16, &[u8])) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            // SAFETY: buf is valid for RECV_BUF bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut off = 0usize;
            let n = n as usize;
            while off + NLMSG_HDRLEN <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                let mseq =
                    u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap_or_default());
                if len < NLMSG_HDRLEN || off + len > n {
                    return Err(io::Error::other("truncated netlink message"));
                }
                let body = &buf[off + NLMSG_HDRLEN..off + len];
                if mseq == seq {
                    match ty {
                        NLMSG_DONE => return Ok(()),
                        NLMSG_ERROR => {
                            let code = body
                                .get(..4)
                                .map(|b| i32::from_ne_bytes(b.try_into().unwrap_or_default()))
                                .unwrap_or(0);
                            return if code == 0 {
                                Ok(())
                            } else {
                                Err(io::Error::from_raw_os_error(-code))
                            };
                        }
                        _ => f(ty, body),
                    }
                }
                off += (len + 3) & !3;
            }
        }
    }
}

fn ndmsg(family: u8, ifindex: u32, state: u16) -> Vec<u8> {
    let mut b = vec![0u8; NDMSG_LEN];
    b[0] = family;
    b[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    b[8..10].copy_from_slice(&state.to_ne_bytes());
    b
}

fn push_attr(b: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let len = 4 + data.len();
    b.extend_from_slice(&(len as u16).to_ne_bytes());
    b.extend_from_slice(&ty.to_ne_bytes());
    b.extend_from_slice(data);
    while !b.len().is_multiple_of(4) {
        b.push(0);
    }
}

/// Parses one RTM_NEWNEIGH body; None if it has no usable MAC.
fn parse_neigh(body: &[u8]) -> Option<Neighbor> {
    if body.len() < NDMSG_LEN {
        return None;
    }
    let family = body[0];
    let ifindex = i32::from_ne_bytes(body[4..8].try_into().ok()?) as u32;
    let state = u16::from_ne_bytes([body[8], body[9]]);
    if state & NUD_USABLE == 0 {
        return None;
    }
    let (mut ip, mut mac) = (None, None);
    let mut off = NDMSG_LEN;
    while off + 4 <= body.len() {
        let len = usize::from(u16::from_ne_bytes([body[off], body[off + 1]]));
        let ty = u16::from_ne_bytes([body[off + 2], body[off + 3]]) & 0x3fff;
        if len < 4 || off + len > body.len() {
            break;
        }
        let data = &body[off + 4..off + len];
        match (ty, family as i32, data.len()) {
            (NDA_DST, libc::AF_INET, 4) => ip = Some(IpAddr::from(<[u8; 4]>::try_from(data).ok()?)),
            (NDA_DST, libc::AF_INET6, 16) => {
                ip = Some(IpAddr::from(<[u8; 16]>::try_from(data).ok()?))
            }
            (NDA_LLADDR, _, 6) => mac = <[u8; 6]>::try_from(data).ok(),
            _ => {}
        }
        off += (len + 3) & !3;
    }
    Some(Neighbor {
        ifindex,
        ip: ip?,
        mac: mac?,
    })
}

/// Every neighbour with a usable MAC, IPv4 and IPv6.
pub fn dump_neighbors() -> io::Result<Vec<Neighbor>> {
    let mut s = NlSocket::open()?;
    let seq = s.send(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, &ndmsg(0, 0, 0))?;
    let mut out = Vec::new();
    s.recv_until_done(seq, |ty, body| {
        if ty == RTM_NEWNEIGH {
            if let Some(n) = parse_neigh(body) {
                out.push(n);
            }
        }
    })?;
    Ok(out)
}

/// Asks the kernel to resolve `ip` on `ifindex` and keep it resolved (a managed entry). An entry
/// that already exists is left as it is.
pub fn request_resolution(ifindex: u32, ip: IpAddr) -> io::Result<()> {
    let mut s = NlSocket::open()?;
    let (family, addr): (u8, Vec<u8>) = match ip {
        IpAddr::V4(v) => (libc::AF_INET as u8, v.octets().to_vec()),
        IpAddr::V6(v) => (libc::AF_INET6 as u8, v.octets().to_vec()),
    };
    // state NUD_NONE: the kernel starts resolution itself for managed entries
    let mut body = ndmsg(family, ifindex, 0);
    push_attr(&mut body, NDA_DST, &addr);
    push_attr(&mut body, NDA_FLAGS_EXT, &NTF_EXT_MANAGED.to_ne_bytes());
    let seq = s.send(
        RTM_NEWNEIGH,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE,
        &body,
    )?;
    match s.recv_until_done(seq, |_, _| {}) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_reachable_ipv4_neighbor_and_skips_incomplete_ones() {
        let mut b = ndmsg(libc::AF_INET as u8, 7, NUD_REACHABLE);
        push_attr(&mut b, NDA_DST, &[10, 0, 0, 1]);
        push_attr(&mut b, NDA_LLADDR, &[2, 0, 0, 0, 0, 9]);
        let n = parse_neigh(&b).unwrap();
        assert_eq!(n.ifindex, 7);
        assert_eq!(n.ip, "10.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(n.mac, [2, 0, 0, 0, 0, 9]);

        let mut inc = ndmsg(libc::AF_INET as u8, 7, 0x01); // NUD_INCOMPLETE
        push_attr(&mut inc, NDA_DST, &[10, 0, 0, 1]);
        assert!(parse_neigh(&inc).is_none());
        // attribute claiming more bytes than present: ignored, not a panic
        let mut bad = ndmsg(libc::AF_INET as u8, 7, NUD_REACHABLE);
        bad.extend_from_slice(&[200, 0, 1, 0, 10]);
        assert!(parse_neigh(&bad).is_none());
        assert!(parse_neigh(&[1, 2, 3]).is_none());
    }
}
