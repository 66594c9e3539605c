//! `GET /v1/capture`: a live capture of what the workers see, as pcapng (issue 7), with a
//! small tcpdump-style filter: terms joined by `and`, each optionally negated with `not`:
//! `host A`, `src host A`, `dst host A`, `net CIDR`, `port N`, `src port N`, `dst port N`,
//! `tcp`, `udp`, `icmp`, `icmp6`, `ip`, `ip6`. Terms look at the outer headers.

use crate::flows::in_cidr;
use sluice_dataplane::wire::parse::{parse, Parsed, TunnelPorts};
use std::net::IpAddr;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Host(IpAddr),
    SrcHost(IpAddr),
    DstHost(IpAddr),
    Net(IpAddr, u8),
    Port(u16),
    SrcPort(u16),
    DstPort(u16),
    Proto(u8),
    V4,
    V6,
}

/// A parsed filter: every (negated?, term) must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter(Vec<(bool, Term)>);

impl Filter {
    /// Reads an expression; an error names the word it could not use.
    pub fn parse(expr: &str) -> Result<Filter, String> {
        let words: Vec<&str> = expr.split_whitespace().collect();
        let mut out = Vec::new();
        let mut i = 0;
        let addr = |w: Option<&&str>| -> Result<IpAddr, String> {
            let w = w.ok_or("an address is missing at the end")?;
            w.parse().map_err(|_| format!("{w:?} is not an IP address"))
        };
        let port = |w: Option<&&str>| -> Result<u16, String> {
            let w = w.ok_or("a port is missing at the end")?;
            w.parse().map_err(|_| format!("{w:?} is not a port"))
        };
        while i < words.len() {
            let mut neg = false;
            while words.get(i) == Some(&"not") {
                neg = !neg;
                i += 1;
            }
            let (term, used) = match (words.get(i).copied(), words.get(i + 1).copied()) {
                (Some("host"), _) => (Term::Host(addr(words.get(i + 1))?), 2),
                (Some("src"), Some("host")) => (Term::SrcHost(addr(words.get(i + 2))?), 3),
                (Some("dst"), Some("host")) => (Term::DstHost(addr(words.get(i + 2))?), 3),
                (Some("port"), _) => (Term::Port(port(words.get(i + 1))?), 2),
                (Some("src"), Some("port")) => (Term::SrcPort(port(words.get(i + 2))?), 3),
                (Some("dst"), Some("port")) => (Term::DstPort(port(words.get(i + 2))?), 3),
                (Some("net"), Some(c)) if c.contains('/') => {
                    let (a, l) = crate::flows::cidr(c)?;
                    (Term::Net(a, l), 2)
                }
                (Some("net"), Some(c)) => return Err(format!("{c:?} is not a CIDR")),
                (Some("tcp"), _) => (Term::Proto(6), 1),
                (Some("udp"), _) => (Term::Proto(17), 1),
                (Some("icmp"), _) => (Term::Proto(1), 1),
                (Some("icmp6"), _) => (Term::Proto(58), 1),
                (Some("ip"), _) => (Term::V4, 1),
                (Some("ip6"), _) => (Term::V6, 1),
                (Some(w), _) => return Err(format!("{w:?} is not a filter term sluice knows")),
                (None, _) => return Err("the filter ends with \"not\"".into()),
            };
            out.push((neg, term));
            i += used;
            match words.get(i) {
                Some(&"and") if i + 1 < words.len() => i += 1,
                Some(&"and") => return Err("the filter ends with \"and\"".into()),
                Some(w) if *w == "or" => {
                    return Err("\"or\" is not supported: terms are joined by \"and\"".into())
                }
                Some(w) => return Err(format!("expected \"and\" before {w:?}")),
                None => {}
            }
        }
        Ok(Filter(out))
    }

    fn term(t: &Term, p: &Parsed) -> bool {
        let ports = p.l4.is_some();
        match *t {
            Term::Host(a) => p.src == a || p.dst == a,
            Term::SrcHost(a) => p.src == a,
            Term::DstHost(a) => p.dst == a,
            Term::Net(a, l) => in_cidr(p.src, (a, l)) || in_cidr(p.dst, (a, l)),
            Term::Port(n) => ports && (p.src_port == n || p.dst_port == n),
            Term::SrcPort(n) => ports && p.src_port == n,
            Term::DstPort(n) => ports && p.dst_port == n,
            Term::Proto(x) => p.protocol == x,
            Term::V4 => p.src.is_ipv4(),
            Term::V6 => p.src.is_ipv6(),
        }
    }

    /// Whether a frame passes (an empty filter passes everything; a frame that does not parse
    /// passes only an empty filter).
    pub fn matches(&self, frame: &[u8]) -> bool {
        if self.0.is_empty() {
            return true;
        }
        match parse(frame, TunnelPorts::NONE) {
            Ok(p) => self.0.iter().all(|(neg, t)| Self::term(t, &p) != *neg),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_dataplane::wire::build::{PacketSpec, L4};

    #[test]
    fn tcpdump_style_terms() {
        let mut s = PacketSpec::udp("10.10.0.2", "10.20.0.11", 40000, 80, b"x");
        s.l4 = L4::Tcp(2);
        let f = s.build();
        for (expr, want) in [
            ("", true),
            ("tcp and port 80", true),
            ("udp", false),
            ("host 10.20.0.11 and src port 40000", true),
            ("dst host 10.10.0.2", false),
            ("net 10.20.0.0/24 and not port 443", true),
            ("not not tcp", true),
            ("ip6", false),
            ("ip and dst port 80", true),
        ] {
            assert_eq!(Filter::parse(expr).unwrap().matches(&f), want, "{expr}");
        }
        for bad in [
            "port",
            "host x",
            "tcp or udp",
            "tcp and",
            "net 10.0.0.0/40",
            "bogus",
            "tcp udp",
        ] {
            assert!(Filter::parse(bad).is_err(), "{bad}");
        }
    }
}
