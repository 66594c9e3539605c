//! Interface facts read from the kernel.

use std::io;

/// The MAC address of `ifname` in this network namespace (SIOCGIFHWADDR).
pub fn mac_of(ifname: &str) -> io::Result<[u8; 6]> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other("interface name too long"));
    }
    // struct ifreq: 16 bytes of name, then the union; for SIOCGIFHWADDR a sockaddr whose
    // sa_data (offset 2 in it) holds the MAC. 40 bytes covers the whole struct on Linux.
    let mut req = [0u8; 40];
    req[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: plain socket(2); result checked.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: req is a writable buffer at least as large as struct ifreq.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, req.as_mut_ptr()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&req[18..24]);
    Ok(mac)
}
