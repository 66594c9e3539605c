//! The `live` engine's program (`xdp-redirect/bpf/trafficgen.bpf.c`), run by BPF_PROG_RUN
//! without live frames so the rewritten frame comes back: every packet gets its own flow
//! (source port, then source address), with valid IPv4 and TCP/UDP checksums, for IPv4 and
//! IPv6 templates, also when the frame it is given already carries an earlier rewrite and what
//! the kernel's forwarding wrote into it (live frames are recycled unrewritten).

use sluice_dataplane::wire::build::{PacketSpec, L4};
use sluice_dataplane::wire::parse::{parse, TunnelPorts};
use sluice_dataplane::wire::tcp::TcpPacket;
use sluice_dataplane::wire::udp::UdpPacket;
use sluice_xdp::trafficgen::{GenConfig, TrafficGen};
use std::collections::HashSet;
use std::net::IpAddr;

/// Why this cannot run here, if it cannot: loading BPF needs root (CAP_BPF).
fn skip() -> Option<&'static str> {
    // SAFETY: geteuid has no preconditions.
    (unsafe { libc::geteuid() } != 0).then_some("loading BPF programs needs root; CI runs as root")
}

/// (source address, source port) of a frame whose checksums all verify.
fn checked(frame: &[u8]) -> (IpAddr, u16) {
    let p = parse(frame, TunnelPorts::NONE).expect("the rewritten frame parses");
    if p.src.is_ipv4() {
        let ip = sluice_dataplane::wire::ipv4::Ipv4Packet::new_checked(&frame[p.l3..]).unwrap();
        assert!(ip.verify_checksum(), "IPv4 header checksum");
    }
    let l4 = &frame[p.l4.unwrap()..p.l3 + p.ip_len];
    let sport = if p.protocol == 6 {
        let t = TcpPacket::new_checked(l4).unwrap();
        assert!(t.verify_checksum(p.src, p.dst), "TCP checksum");
        t.src_port()
    } else {
        let u = UdpPacket::new_checked(l4).unwrap();
        assert!(
            u.checksum() == 0 || u.verify_checksum(p.src, p.dst),
            "UDP checksum"
        );
        u.src_port()
    };
    (p.src, sport)
}

fn template(src: &str, dst: &str, syn: bool) -> Vec<u8> {
    let mut s = PacketSpec::udp(src, dst, 1024, 80, &[7u8; 18]);
    if syn {
        s.l4 = L4::TcpSeq {
            flags: 0x02,
            seq: 12345,
            ack: 0,
        };
        s.payload.clear();
    }
    s.build()
}

#[test]
fn every_packet_gets_its_flow_with_valid_checksums() {
    if let Some(why) = skip() {
        eprintln!("SKIPPED every_packet_gets_its_flow_with_valid_checksums: {why}");
        return;
    }
    // the program's packet counter is per CPU: stay on one, so 30 runs are flows 0..9 three times
    // SAFETY: a zeroed cpu_set_t with CPU 0 added; applies to this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set),
            0
        );
    }
    for (src, dst, syn) in [
        ("198.18.0.1", "192.0.2.80", false),
        ("198.18.0.1", "192.0.2.80", true),
        ("2001:db8::1", "2001:db8:1::80", false),
        ("2001:db8::1", "2001:db8:1::80", true),
    ] {
        let t = template(src, dst, syn);
        // 10 flows: 4 source ports per address, so addresses .1, .2 and .3
        let c = GenConfig::for_frame(&t, 10, 4, 1).unwrap();
        let g = TrafficGen::load(&c).expect("loading the generator program");
        let mut seen = HashSet::new();
        let mut previous = t.clone();
        for i in 0..30 {
            // every other run on the previous output as forwarding left it (the next hop's
            // MACs over the Ethernet header, the TTL or hop limit decremented): what a
            // recycled live frame looks like
            let input = if i % 2 == 0 {
                t.clone()
            } else {
                let mut f = previous.clone();
                f[..12]
                    .copy_from_slice(&[0x3e, 0xef, 0x23, 0x36, 0x7e, 0xbb, 0x8a, 0xbc, 0, 0, 0, 1]);
                let ttl = if src.contains(':') { 14 + 7 } else { 14 + 8 };
                f[ttl] -= 1;
                f
            };
            let out = g.rewrite_once(&input).expect("run");
            assert_eq!(out[..12], t[..12], "the template's MACs");
            let ttl = if src.contains(':') { 14 + 7 } else { 14 + 8 };
            assert_eq!(out[ttl], t[ttl], "the template's TTL");
            seen.insert(checked(&out));
            previous = out;
        }
        assert_eq!(seen.len(), 10, "{src} syn={syn}: {seen:?}");
        let ports: HashSet<u16> = seen.iter().map(|(_, p)| *p).collect();
        assert_eq!(ports, (1024..1028).collect(), "{src}");
        let addrs: HashSet<IpAddr> = seen.iter().map(|(a, _)| *a).collect();
        assert_eq!(addrs.len(), 3, "{src}: {addrs:?}");
    }
}

/// Brings up the loopback of the calling thread's network namespace.
fn loopback_up() {
    // SAFETY: a plain datagram socket for the two interface ioctls; the ifreq is zeroed, then
    // given the name and the flags the kernel returned; the fd is closed before returning.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "socket");
        let mut ifr: libc::ifreq = std::mem::zeroed();
        ifr.ifr_name[0] = b'l' as libc::c_char;
        ifr.ifr_name[1] = b'o' as libc::c_char;
        assert_eq!(
            libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr),
            0,
            "SIOCGIFFLAGS"
        );
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr), 0, "SIOCSIFFLAGS");
        libc::close(fd);
    }
}

/// While the generator runs, its program is also attached to the loopback (`anchor`: it keeps
/// the program in the kernel's XDP dispatcher, so that paced runs are smooth). Real frames there
/// carry no generator metadata: they must pass untouched, and the generator still rewrites its
/// own. In a network namespace of this test thread's own, gone when the thread ends.
#[test]
fn anchored_on_the_loopback_it_lets_real_traffic_through() {
    if let Some(why) = skip() {
        eprintln!("SKIPPED anchored_on_the_loopback_it_lets_real_traffic_through: {why}");
        return;
    }
    std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread into a new network namespace.
        assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare");
        loopback_up();
        let t = template("198.18.0.1", "192.0.2.80", false);
        let g = TrafficGen::load(&GenConfig::for_frame(&t, 10, 4, 1).unwrap()).unwrap();
        let lo = sluice_xdp::ifindex_of("lo").unwrap();
        let anchor = g
            .anchor(lo)
            .expect("attaching the generator to the loopback");
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for i in 0..20u8 {
            s.send_to(&[i; 32], s.local_addr().unwrap()).unwrap();
            let mut buf = [0u8; 64];
            let n = s
                .recv(&mut buf)
                .expect("a datagram over the anchored loopback arrives");
            assert_eq!(&buf[..n], &[i; 32][..]);
        }
        let out = g.rewrite_once(&t).expect("the generator's own run");
        checked(&out);
        drop(anchor);
    })
    .join()
    .expect("the test thread");
}
