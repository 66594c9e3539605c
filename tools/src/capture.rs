//! Reading the pcapng stream of `GET /v1/capture` as it arrives: `sluice capture` without -w
//! prints one line per packet, tcpdump-style.

use sluice_dataplane::wire::parse::{parse, TunnelPorts};

/// A packet of the stream.
pub struct Packet<'a> {
    pub interface: &'a str,
    pub time_ns: u64,
    pub outbound: bool,
    pub len: u32,
    pub data: &'a [u8],
}

/// The blocks of a pcapng stream, taken in pieces.
#[derive(Default)]
pub struct Blocks {
    buf: Vec<u8>,
    interfaces: Vec<String>,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |x| u32::from_le_bytes([x[0], x[1], x[2], x[3]]))
}

impl Blocks {
    /// Takes the next bytes; calls `each` for every complete packet block.
    pub fn feed(&mut self, data: &[u8], mut each: impl FnMut(Packet<'_>)) {
        self.buf.extend_from_slice(data);
        let mut at = 0;
        while self.buf.len() - at >= 12 {
            let kind = u32_at(&self.buf, at);
            let len = u32_at(&self.buf, at + 4) as usize;
            if len < 12 || !len.is_multiple_of(4) {
                // not pcapng as sluice writes it: stop reading
                self.buf.clear();
                return;
            }
            if self.buf.len() - at < len {
                break;
            }
            let b = &self.buf[at..at + len];
            match kind {
                1 => {
                    // IDB: options from byte 16; if_name (2) is the one read
                    let mut o = 16;
                    let mut name = format!("if{}", self.interfaces.len());
                    while o + 4 <= len - 4 {
                        let code = u16::from_le_bytes([b[o], b[o + 1]]);
                        let olen = usize::from(u16::from_le_bytes([b[o + 2], b[o + 3]]));
                        if code == 0 {
                            break;
                        }
                        if code == 2 {
                            if let Some(v) = b.get(o + 4..o + 4 + olen) {
                                name = String::from_utf8_lossy(v).into_owned();
                            }
                        }
                        o += 4 + olen.next_multiple_of(4);
                    }
                    self.interfaces.push(name);
                }
                6 => {
                    let iface = u32_at(b, 8) as usize;
                    let time_ns = (u64::from(u32_at(b, 12)) << 32) | u64::from(u32_at(b, 16));
                    let caplen = u32_at(b, 20) as usize;
                    let orig = u32_at(b, 24);
                    let data_end = (28 + caplen).min(len - 4);
                    // options after the padded data: epb_flags (2), direction in bits 0-1
                    let mut outbound = false;
                    let mut o = 28 + caplen.next_multiple_of(4);
                    while o + 4 <= len - 4 {
                        let code = u16::from_le_bytes([b[o], b[o + 1]]);
                        let olen = usize::from(u16::from_le_bytes([b[o + 2], b[o + 3]]));
                        if code == 0 {
                            break;
                        }
                        if code == 2 && olen == 4 {
                            outbound = u32_at(b, o + 4) & 3 == 2;
                        }
                        o += 4 + olen.next_multiple_of(4);
                    }
                    each(Packet {
                        interface: self.interfaces.get(iface).map_or("?", String::as_str),
                        time_ns,
                        outbound,
                        len: orig,
                        data: &b[28..data_end],
                    });
                }
                _ => {}
            }
            at += len;
        }
        self.buf.drain(..at);
    }
}

/// One line for a packet: time, interface and direction, addresses, protocol, length.
pub fn summary(p: &Packet<'_>) -> String {
    let secs = p.time_ns / 1_000_000_000;
    let t = format!(
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600 % 24,
        secs / 60 % 60,
        secs % 60,
        p.time_ns % 1_000_000_000 / 1000
    );
    let dir = if p.outbound { "Out" } else { "In " };
    let what = match parse(p.data, TunnelPorts::DEFAULT) {
        Ok(x) => {
            let proto = match x.protocol {
                6 => "TCP",
                17 => "UDP",
                1 => "ICMP",
                58 => "ICMP6",
                _ => "IP",
            };
            let end = |a: std::net::IpAddr, port: u16| match (x.l4.is_some() && port != 0, a) {
                (true, std::net::IpAddr::V6(_)) => format!("[{a}]:{port}"),
                (true, _) => format!("{a}:{port}"),
                (false, _) => a.to_string(),
            };
            let tunnel = x
                .tunnel
                .map_or(String::new(), |t| format!(" {:?} vni {}", t.kind, t.vni));
            format!(
                "{} > {} {proto}{tunnel}",
                end(x.src, x.src_port),
                end(x.dst, x.dst_port)
            )
        }
        Err(e) => format!("(not IP: {e:?})"),
    };
    format!("{t} {} {dir} {what}, length {}", p.interface, p.len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dataplane::capture::pcapng;
    use sluice_dataplane::wire::build::PacketSpec;

    #[test]
    fn a_stream_read_in_odd_pieces_gives_every_packet() {
        let mut s = pcapng::header(&["eth-cli", "eth-srv"], 256);
        let f = PacketSpec::udp("10.10.0.2", "10.20.0.11", 1000, 53, b"hello").build();
        pcapng::packet(&mut s, 1, 3_600_000_000_123, f.len() as u32, &f, true);
        pcapng::statistics(&mut s, 0, 1, 0);
        pcapng::packet(&mut s, 0, 3_600_000_000_456, f.len() as u32, &f, false);
        let mut b = Blocks::default();
        let mut lines = Vec::new();
        for piece in s.chunks(7) {
            b.feed(piece, |p| lines.push(summary(&p)));
        }
        assert_eq!(
            lines,
            vec![
                "01:00:00.000000 eth-srv Out 10.10.0.2:1000 > 10.20.0.11:53 UDP, length 47",
                "01:00:00.000000 eth-cli In  10.10.0.2:1000 > 10.20.0.11:53 UDP, length 47",
            ]
        );
    }
}
