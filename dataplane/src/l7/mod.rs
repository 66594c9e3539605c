//! L7 (HTTP) policy, inspected in line (decision 010): on a port where a policy has HTTP
//! rules, the worker follows each connection's client-to-server byte stream by TCP sequence
//! number, cuts it into requests (`stream`) and judges each complete request head against the
//! rules (`rules`). Segments pass as they come; the segment that completes a refused head is
//! held back, so the server never receives a whole refused request. The client is answered
//! `403 Forbidden` / `Access denied` with FIN on the server's behalf, and the server gets a RST.
//!
//! A segment beyond the next expected byte (a hole before it) is dropped: the client resends the
//! hole and then the segment, in order. Retransmissions of bytes already judged pass unchanged.

pub mod inspect;
pub mod rules;
pub mod stream;

use crate::packet::Port;
use crate::wire::tcp::flags::{ACK, FIN, PSH, SYN};
use arrayvec::ArrayVec;
use std::net::IpAddr;
use stream::{Fed, HttpStream, Refusal};

/// The answer to a refused request (Cilium's proxy answers the same status and body).
pub const FORBIDDEN: &[u8] = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 13\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nAccess denied";

/// `a` is before `b` in sequence space (RFC 1982 arithmetic).
#[inline]
fn before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// A TCP segment of an inspected connection, as the stage sees it.
#[derive(Debug, Clone, Copy)]
pub struct Segment<'a> {
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    pub payload: &'a [u8],
}

impl Segment<'_> {
    /// Sequence space the segment occupies (SYN and FIN count one each).
    fn span(&self) -> u32 {
        self.payload.len() as u32
            + u32::from(self.flags & SYN != 0)
            + u32::from(self.flags & FIN != 0)
    }
}

/// What happens to a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pass,
    /// A refused request completed in this client segment: drop it, answer 403 to the client
    /// and reset the server (`Refused::reply`).
    Refuse(Refusal),
    /// Beyond a hole in the client's stream: dropped until the hole is filled.
    OutOfOrder,
    /// A segment of a connection already refused: dropped (the client's FIN is answered).
    Closed,
}

/// The per-connection state.
#[derive(Default)]
pub struct HttpConn {
    pub stream: HttpStream,
    /// The client's next byte the inspector expects (valid once `client_known`).
    client_next: u32,
    client_known: bool,
    /// The server's next sequence number, from its segments.
    server_next: u32,
    server_known: bool,
    refused: bool,
}

/// The two packets that end a refused request, to be written by `Refused::write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// 403 + FIN to the client, from the server: seq, ack.
    pub reply_seq: u32,
    pub reply_ack: u32,
    /// RST to the server, from the client: seq (the server's next expected byte).
    pub reset_seq: u32,
}

impl HttpConn {
    /// Starts over for a new connection on the same tuple.
    pub(crate) fn restart(&mut self) {
        self.stream.reset();
        self.client_known = false;
        self.server_known = false;
        self.refused = false;
    }

    /// A segment from the server: its sequence numbers are what the 403 continues.
    pub fn from_server(&mut self, s: &Segment<'_>) -> Action {
        if self.refused {
            return Action::Closed;
        }
        let end = s.seq.wrapping_add(s.span());
        if !self.server_known || before(self.server_next, end) {
            self.server_next = end;
            self.server_known = true;
        }
        Action::Pass
    }

    /// A segment from the client; `allow` judges each complete request head. On a refusal, the
    /// sequence numbers of the two packets to send come with it.
    pub fn from_client(
        &mut self,
        s: &Segment<'_>,
        allow: impl FnMut(&rules::Request<'_>) -> bool,
    ) -> (Action, Option<Refused>) {
        if s.flags & (SYN | ACK) == SYN {
            // a new connection (possibly over a closed one with the same tuple)
            self.restart();
            self.client_next = s.seq.wrapping_add(1);
            self.client_known = true;
            return (Action::Pass, None);
        }
        if self.refused {
            return (Action::Closed, None);
        }
        if !self.client_known {
            // picked up mid-connection (no SYN seen): inspection starts at this segment
            self.client_next = s.seq;
            self.client_known = true;
        }
        let end = s.seq.wrapping_add(s.span());
        if before(self.client_next, s.seq) {
            return (Action::OutOfOrder, None);
        }
        if !before(self.client_next, end) {
            // nothing new: a retransmission or a pure ACK
            return (Action::Pass, None);
        }
        // the new bytes start where the inspector left off
        let skip = (self.client_next.wrapping_sub(s.seq) as usize).min(s.payload.len());
        match self.stream.feed(&s.payload[skip..], allow) {
            Fed::Pass => {
                self.client_next = end;
                (Action::Pass, None)
            }
            Fed::Refuse(r) => {
                self.refused = true;
                let refused = Refused {
                    reply_seq: if self.server_known {
                        self.server_next
                    } else {
                        s.ack
                    },
                    reply_ack: end,
                    reset_seq: self.client_next,
                };
                (Action::Refuse(r), Some(refused))
            }
        }
    }

    /// After a refusal: the ACK that answers the client's FIN (seq, ack), if `s` is one.
    pub fn fin_answer(&self, s: &Segment<'_>) -> Option<(u32, u32)> {
        (self.refused && s.flags & FIN != 0).then(|| {
            (
                s.ack,
                s.seq.wrapping_add(s.payload.len() as u32).wrapping_add(1),
            )
        })
    }
}

/// Addresses and ports of a connection, client side first.
#[derive(Debug, Clone, Copy)]
pub struct Ends {
    pub client: (IpAddr, u16),
    pub server: (IpAddr, u16),
}

/// Largest packet the stage generates: Ethernet + IPv6 + TCP + the 403.
pub const GENERATED_MAX: usize = 14 + 40 + 20 + FORBIDDEN.len();
/// Packets generated per batch before the worker sends them: one per refused request or
/// answered FIN, at most one per frame of the batch (twice that: room to spare).
pub const OUTBOX_PACKETS: usize = 2 * crate::packet::MAX_BATCH;

/// What the stages produce besides verdicts: packets they generate while processing a batch
/// (the 403 answers), sent by the worker through the route stage after the batch (fixed
/// capacity, allocated once), and flow events.
pub struct Outbox {
    pub events: crate::flow::EventSink,
    bytes: Box<[[u8; GENERATED_MAX]]>,
    lens: ArrayVec<(usize, Port), OUTBOX_PACKETS>,
    /// The next packet `next` returns.
    sent: usize,
    /// Packets that found the outbox full (lost).
    pub overflow: u64,
}

impl Default for Outbox {
    fn default() -> Self {
        Outbox {
            events: Default::default(),
            bytes: vec![[0u8; GENERATED_MAX]; OUTBOX_PACKETS].into_boxed_slice(),
            lens: ArrayVec::new(),
            sent: 0,
            overflow: 0,
        }
    }
}

impl Outbox {
    /// No packet waiting to be sent.
    pub fn is_empty(&self) -> bool {
        self.sent == self.lens.len()
    }

    /// The next packet in order (bytes, port it is sent as if received on); the box is empty
    /// again once all were taken.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Option<(&[u8], Port)> {
        if self.is_empty() {
            self.lens.clear();
            self.sent = 0;
            return None;
        }
        let (len, port) = self.lens[self.sent];
        self.sent += 1;
        Some((&self.bytes[self.sent - 1][..len], port))
    }

    /// Writes a TCP segment (addresses of one family) with an Ethernet header whose MACs the
    /// route stage fills in. False when the box is full.
    #[allow(clippy::too_many_arguments)]
    pub fn tcp(
        &mut self,
        port: Port,
        from: (IpAddr, u16),
        to: (IpAddr, u16),
        seq: u32,
        ack: u32,
        flags: u8,
        payload: &[u8],
    ) -> bool {
        use crate::overlay::{write_ip_header, ETH, IPV4, IPV6};
        use crate::wire::{ethernet::ethertype, set_be16, tcp::TcpPacket};
        if self.is_empty() {
            // everything was sent: start from the front again
            self.lens.clear();
            self.sent = 0;
        }
        let i = self.lens.len();
        if i == OUTBOX_PACKETS || payload.len() > FORBIDDEN.len() {
            self.overflow += 1;
            return false;
        }
        let v6 = from.0.is_ipv6();
        let ip = if v6 { IPV6 } else { IPV4 };
        let total = ETH + ip + 20 + payload.len();
        let b = &mut self.bytes[i][..total];
        b[..12].fill(0);
        set_be16(b, 12, if v6 { ethertype::IPV6 } else { ethertype::IPV4 });
        write_ip_header(
            &mut b[ETH..ETH + ip],
            6,
            from.0,
            to.0,
            20 + payload.len(),
            true,
        );
        let t = &mut b[ETH + ip..];
        t[..20].fill(0);
        set_be16(t, 0, from.1);
        set_be16(t, 2, to.1);
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        // a window of 64 KiB: the peer may send its last ACK and FIN
        set_be16(t, 14, u16::MAX);
        t[20..].copy_from_slice(payload);
        // cannot fail: the header is 20 bytes with data offset 5
        if let Ok(mut p) = TcpPacket::new_checked(&mut *t) {
            p.fill_checksum(from.0, to.0);
        }
        self.lens.push((total, port));
        true
    }

    /// The answer to a refused request: 403 + FIN to the client (the server gets the RST the
    /// refused segment is turned into).
    pub fn forbidden(&mut self, port: Port, e: &Ends, r: &Refused) {
        self.tcp(
            port,
            e.server,
            e.client,
            r.reply_seq,
            r.reply_ack,
            ACK | PSH | FIN,
            FORBIDDEN,
        );
    }

    /// The ACK of a refused connection's client FIN (`HttpConn::fin_answer`).
    pub fn fin_ack(&mut self, port: Port, e: &Ends, seq: u32, ack: u32) {
        self.tcp(port, e.server, e.client, seq, ack, ACK, &[]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::tcp::flags::RST;

    fn seg(seq: u32, flags: u8, payload: &[u8]) -> Segment<'_> {
        Segment {
            seq,
            ack: 9000,
            flags,
            payload,
        }
    }

    fn deny_admin(r: &rules::Request<'_>) -> bool {
        !r.path.starts_with(b"/admin")
    }

    #[test]
    fn segments_follow_sequence_numbers() {
        let mut c = HttpConn::default();
        assert_eq!(
            c.from_client(&seg(u32::MAX - 1, SYN, b""), deny_admin).0,
            Action::Pass
        );
        c.from_server(&seg(5000, SYN | ACK, b""));
        // the sequence space wraps inside the request
        let req = b"GET /ok HTTP/1.1\r\n\r\nPOST /admin HTTP/1.1\r\n\r\n";
        let first = u32::MAX;
        let (a, b) = req.split_at(10);
        // the second part before the first: a hole, dropped
        assert_eq!(
            c.from_client(&seg(first.wrapping_add(10), ACK, b), deny_admin)
                .0,
            Action::OutOfOrder
        );
        assert_eq!(
            c.from_client(&seg(first, ACK, a), deny_admin).0,
            Action::Pass
        );
        // the same bytes again: a retransmission, passed without judging twice
        assert_eq!(
            c.from_client(&seg(first, ACK, a), deny_admin).0,
            Action::Pass
        );
        assert_eq!(c.stream.requests, 0);
        // a retransmission overlapping new bytes: only the new ones are judged
        let (act, r) = c.from_client(
            &seg(first.wrapping_add(5), ACK | PSH, &req[5..]),
            deny_admin,
        );
        assert_eq!(act, Action::Refuse(Refusal::Policy));
        assert_eq!(c.stream.requests, 2);
        let r = r.unwrap();
        assert_eq!(r.reply_seq, 5001, "the 403 continues the server's stream");
        assert_eq!(r.reply_ack, first.wrapping_add(req.len() as u32));
        assert_eq!(r.reset_seq, first.wrapping_add(10), "where the server is");
        // afterwards: closed; the client's FIN is answered
        let fin = Segment {
            seq: r.reply_ack,
            ack: r.reply_seq.wrapping_add(FORBIDDEN.len() as u32 + 1),
            flags: FIN | ACK,
            payload: b"",
        };
        assert_eq!(c.from_client(&fin, deny_admin).0, Action::Closed);
        assert_eq!(
            c.fin_answer(&fin),
            Some((fin.ack, r.reply_ack.wrapping_add(1)))
        );
        assert_eq!(c.from_server(&seg(5001, ACK, b"late")), Action::Closed);
        // a new SYN on the tuple starts afresh
        assert_eq!(c.from_client(&seg(7, SYN, b""), deny_admin).0, Action::Pass);
        assert_eq!(
            c.from_client(&seg(8, ACK, b"GET / HTTP/1.1\r\n\r\n"), deny_admin)
                .0,
            Action::Pass
        );
    }

    fn got_ends() -> Ends {
        Ends {
            client: ("10.0.0.1".parse().unwrap(), 1),
            server: ("10.0.0.2".parse().unwrap(), 2),
        }
    }

    #[test]
    fn generated_packets_parse_with_valid_checksums() {
        use crate::wire::parse::{parse, TunnelPorts};
        use crate::wire::tcp::TcpPacket;
        let mut o = Outbox::default();
        for (c, s) in [("10.0.0.1", "10.0.0.2"), ("fd00::1", "fd00::2")] {
            let e = Ends {
                client: (c.parse().unwrap(), 40000),
                server: (s.parse().unwrap(), 80),
            };
            o.forbidden(
                3,
                &e,
                &Refused {
                    reply_seq: 1,
                    reply_ack: 2,
                    reset_seq: 3,
                },
            );
            o.tcp(3, e.client, e.server, 3, 0, RST, &[]);
        }
        let mut got: Vec<(Vec<u8>, Port)> = Vec::new();
        while let Some((b, p)) = o.next() {
            got.push((b.to_vec(), p));
        }
        assert_eq!(got.len(), 4);
        assert!(o.is_empty());
        assert!(
            o.tcp(0, got_ends().server, got_ends().client, 0, 0, RST, &[]),
            "room again"
        );
        for (i, (b, port)) in got.iter().enumerate() {
            assert_eq!(*port, 3);
            let p = parse(b, TunnelPorts::NONE).expect("parses");
            let t = TcpPacket::new_checked(&b[p.l4.unwrap()..p.l3 + p.ip_len]).unwrap();
            assert!(t.verify_checksum(p.src, p.dst), "packet {i}");
            if i % 2 == 0 {
                assert_eq!(
                    (t.src_port(), t.flags() & FIN, t.payload()),
                    (80, FIN, FORBIDDEN)
                );
            } else {
                assert_eq!((t.dst_port(), t.flags(), t.seq()), (80, RST, 3));
            }
        }
    }
}
