//! The filters of `GET /v1/flows` (Hubble's, as query parameters) and the RFC 3339 times
//! flows carry.

use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;

/// RFC 3339 UTC with nanoseconds, from ns since the epoch.
pub fn rfc3339(ns: u64) -> String {
    let secs = ns / 1_000_000_000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil from days (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ns % 1_000_000_000
    )
}

/// ns since the epoch from RFC 3339 (`2026-12-01T10:00:00Z`, fraction and offset allowed).
pub fn parse_rfc3339(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut i = 19;
    let mut frac_ns = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        let digits = s.get(start..i.min(start + 9))?;
        frac_ns = digits.parse::<i64>().ok()? * 10i64.pow(9 - digits.len() as u32);
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        o if o.len() == 6 && (o.starts_with('+') || o.starts_with('-')) => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            sign * (o.get(1..3)?.parse::<i64>().ok()? * 3600
                + o.get(4..6)?.parse::<i64>().ok()? * 60)
        }
        _ => return None,
    };
    // days from civil
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if mo > 2 { mo - 3 } else { mo + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    u64::try_from(secs)
        .ok()
        .map(|s| s * 1_000_000_000 + frac_ns as u64)
}

/// Filters of `GET /v1/flows`, as query parameters (Hubble's flags by the same names).
#[derive(Debug, Default, Clone)]
pub struct FlowFilter {
    /// Either end in this namespace.
    namespace: Option<String>,
    /// Either end this pod ("name" or "namespace/name"); `from_pod` / `to_pod` for one end.
    pod: Option<String>,
    from_pod: Option<String>,
    to_pod: Option<String>,
    identity: Option<u64>,
    /// Either end inside this address or CIDR; `from_ip` / `to_ip` for one end.
    ip: Option<(IpAddr, u8)>,
    from_ip: Option<(IpAddr, u8)>,
    to_ip: Option<(IpAddr, u8)>,
    port: Option<u64>,
    protocol: Option<String>,
    verdict: Option<String>,
    drop_reason: Option<String>,
    http_method: Option<String>,
    /// A regular expression the request path must match (unanchored, as Hubble's).
    http_path: Option<regex::Regex>,
    /// An exact code ("403") or a class ("4+").
    http_status: Option<String>,
    reply: Option<bool>,
    /// Only flows at or after this time (ns since the epoch).
    since: Option<u64>,
    policy: Option<String>,
}

/// An address (a host prefix) or a CIDR, as filters take them.
pub(crate) fn cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (a, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let a: IpAddr = a
        .parse()
        .map_err(|_| format!("{s:?} is not an IP or CIDR"))?;
    let max = if a.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("{s:?}: bad prefix length"))?,
        None => max,
    };
    Ok((a, len))
}

/// Whether `a` is inside `net/len` (families must match).
pub(crate) fn in_cidr(a: IpAddr, (net, len): (IpAddr, u8)) -> bool {
    match (a, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            u32::from(a) & m == u32::from(n) & m
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            u128::from(a) & m == u128::from(n) & m
        }
        _ => false,
    }
}

/// "30s", "5m", "2h" -> seconds.
fn duration_s(s: &str) -> Option<u64> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    })
}

impl FlowFilter {
    /// Reads the query parameters; an unknown or malformed one is an error naming it. Returns
    /// the filter, `last` and `follow`.
    pub fn from_query(
        q: &HashMap<String, String>,
    ) -> Result<(FlowFilter, Option<usize>, bool), String> {
        let mut f = FlowFilter::default();
        let (mut last, mut follow) = (None, false);
        let num = |k: &str, v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{k}: {v:?} is not a number"))
        };
        let boolean = |k: &str, v: &str| match v {
            "true" | "1" | "" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(format!("{k}: {v:?} is not true or false")),
        };
        for (k, v) in q {
            let v = v.trim();
            match k.as_str() {
                "namespace" => f.namespace = Some(v.into()),
                "pod" => f.pod = Some(v.into()),
                "from_pod" => f.from_pod = Some(v.into()),
                "to_pod" => f.to_pod = Some(v.into()),
                "identity" => f.identity = Some(num(k, v)?),
                "ip" => f.ip = Some(cidr(v)?),
                "from_ip" => f.from_ip = Some(cidr(v)?),
                "to_ip" => f.to_ip = Some(cidr(v)?),
                "port" => f.port = Some(num(k, v)?),
                "protocol" => f.protocol = Some(v.to_ascii_uppercase()),
                "verdict" => {
                    let v = v.to_ascii_uppercase();
                    if !["FORWARDED", "DROPPED", "TRANSLATED", "ERROR"].contains(&v.as_str()) {
                        return Err(format!(
                            "verdict: {v:?} is not FORWARDED, DROPPED, TRANSLATED or ERROR"
                        ));
                    }
                    f.verdict = Some(v);
                }
                "drop_reason" => f.drop_reason = Some(v.to_ascii_uppercase()),
                "http_method" => f.http_method = Some(v.to_ascii_uppercase()),
                "http_path" => {
                    f.http_path = Some(regex::Regex::new(v).map_err(|e| format!("http_path: {e}"))?)
                }
                "http_status" => {
                    let ok = v.len() == 3 && v.bytes().all(|b| b.is_ascii_digit())
                        || v.len() == 2 && v.as_bytes()[0].is_ascii_digit() && v.ends_with('+');
                    if !ok {
                        return Err(format!(
                            "http_status: {v:?} is not a code (403) or class (4+)"
                        ));
                    }
                    f.http_status = Some(v.into());
                }
                "reply" => f.reply = Some(boolean(k, v)?),
                "since" => {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64);
                    f.since = Some(match duration_s(v) {
                        Some(s) => now.saturating_sub(s * 1_000_000_000),
                        None => parse_rfc3339(v).ok_or_else(|| {
                            format!("since: {v:?} is not a duration (30s, 5m, 2h) or RFC 3339 time")
                        })?,
                    });
                }
                "policy" => f.policy = Some(v.into()),
                "last" => last = Some(num(k, v)? as usize),
                "follow" => follow = boolean(k, v)?,
                other => return Err(format!("unknown filter {other:?}")),
            }
        }
        Ok((f, last, follow))
    }

    /// Whether flow `f` passes every filter given.
    pub fn matches(&self, f: &Value) -> bool {
        let s = |p: &str| f.pointer(p).and_then(Value::as_str);
        let ep_pod = |side: &str, want: &str| {
            let ns = s(&format!("/{side}/namespace")).unwrap_or("");
            let name = s(&format!("/{side}/pod_name")).unwrap_or("");
            !name.is_empty()
                && match want.split_once('/') {
                    Some((wn, wp)) => wn == ns && wp == name,
                    None => want == name,
                }
        };
        let ip_of = |p: &str| s(p).and_then(|a| a.parse::<IpAddr>().ok());
        let ip_in = |p: &str, c: (IpAddr, u8)| ip_of(p).is_some_and(|a| in_cidr(a, c));
        let l4 = f.get("l4").and_then(Value::as_object);
        let proto = l4.and_then(|m| m.keys().next()).map(String::as_str);
        let port_of = |k: &str| {
            l4.and_then(|m| m.values().next())
                .and_then(|v| v.get(k))
                .and_then(Value::as_u64)
        };
        self.namespace.as_ref().is_none_or(|n| {
            s("/source/namespace") == Some(n) || s("/destination/namespace") == Some(n)
        }) && self
            .pod
            .as_ref()
            .is_none_or(|p| ep_pod("source", p) || ep_pod("destination", p))
            && self.from_pod.as_ref().is_none_or(|p| ep_pod("source", p))
            && self
                .to_pod
                .as_ref()
                .is_none_or(|p| ep_pod("destination", p))
            && self.identity.is_none_or(|id| {
                f.pointer("/source/identity").and_then(Value::as_u64) == Some(id)
                    || f.pointer("/destination/identity").and_then(Value::as_u64) == Some(id)
            })
            && self
                .ip
                .is_none_or(|c| ip_in("/IP/source", c) || ip_in("/IP/destination", c))
            && self.from_ip.is_none_or(|c| ip_in("/IP/source", c))
            && self.to_ip.is_none_or(|c| ip_in("/IP/destination", c))
            && self.port.is_none_or(|p| {
                port_of("source_port") == Some(p) || port_of("destination_port") == Some(p)
            })
            && self
                .protocol
                .as_ref()
                .is_none_or(|p| proto.is_some_and(|x| x.eq_ignore_ascii_case(p)))
            && self
                .verdict
                .as_ref()
                .is_none_or(|v| s("/verdict") == Some(v))
            && self
                .drop_reason
                .as_ref()
                .is_none_or(|r| s("/drop_reason_desc") == Some(r))
            && self
                .http_method
                .as_ref()
                .is_none_or(|m| s("/l7/http/method") == Some(m))
            && self.http_path.as_ref().is_none_or(|re| {
                s("/l7/http/url")
                    .map(|u| u.split_once("://").map_or(u, |(_, r)| r))
                    .map(|r| r.find('/').map_or("/", |i| &r[i..]))
                    .is_some_and(|p| re.is_match(p))
            })
            && self.http_status.as_ref().is_none_or(|want| {
                let code = f.pointer("/l7/http/code").and_then(Value::as_u64);
                match (want.strip_suffix('+'), code) {
                    (Some(class), Some(c)) => (c / 100).to_string() == class,
                    (None, Some(c)) => c.to_string() == *want,
                    (_, None) => false,
                }
            })
            && self
                .reply
                .is_none_or(|r| f.get("is_reply").and_then(Value::as_bool) == Some(r))
            && self
                .since
                .is_none_or(|t| s("/time").and_then(parse_rfc3339).is_some_and(|ft| ft >= t))
            && self.policy.as_ref().is_none_or(|p| s("/policy") == Some(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_round_trip_through_rfc3339() {
        for ns in [0u64, 1_764_590_400_123_456_789, 951_782_400_000_000_001] {
            assert_eq!(parse_rfc3339(&rfc3339(ns)), Some(ns), "{}", rfc3339(ns));
        }
        assert_eq!(
            rfc3339(1_764_590_400_000_000_000),
            "2025-12-01T12:00:00.000000000Z"
        );
        assert_eq!(
            parse_rfc3339("2000-02-29T00:00:00+01:00"),
            Some(951_778_800_000_000_000)
        );
        assert_eq!(parse_rfc3339("2000-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    fn q(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_match_hubble_fields_and_bad_ones_are_named() {
        let flow = json!({
            "time": "2026-12-01T10:00:00.000000000Z",
            "verdict": "DROPPED", "drop_reason_desc": "POLICY_DENIED", "is_reply": false,
            "IP": {"source": "10.10.0.2", "destination": "10.20.0.11"},
            "l4": {"TCP": {"source_port": 40000, "destination_port": 80}},
            "source": {"identity": 300, "namespace": "lab", "pod_name": "client"},
            "destination": {"identity": 301, "namespace": "lab", "pod_name": "be1"},
            "l7": {"http": {"method": "POST", "url": "http://10.20.0.11/admin/delete", "code": 403}},
            "policy": "lab/web-l7",
        });
        let yes = [
            vec![("verdict", "dropped"), ("drop_reason", "policy_denied")],
            vec![
                ("namespace", "lab"),
                ("pod", "lab/be1"),
                ("from_pod", "client"),
            ],
            vec![
                ("ip", "10.20.0.0/24"),
                ("to_ip", "10.20.0.11"),
                ("port", "80"),
            ],
            vec![("protocol", "tcp"), ("identity", "300"), ("reply", "false")],
            vec![
                ("http_method", "post"),
                ("http_path", "^/admin/"),
                ("http_status", "4+"),
            ],
            vec![("since", "2026-12-01T09:59:59Z"), ("policy", "lab/web-l7")],
        ];
        for kv in yes {
            let (f, _, _) = FlowFilter::from_query(&q(&kv)).unwrap();
            assert!(f.matches(&flow), "{kv:?}");
        }
        let no = [
            vec![("verdict", "FORWARDED")],
            vec![("to_pod", "client")],
            vec![("from_ip", "10.20.0.0/24")],
            vec![("port", "81")],
            vec![("protocol", "udp")],
            vec![("http_status", "200")],
            vec![("http_path", "^/api")],
            vec![("since", "1m")],
            vec![("reply", "true")],
        ];
        for kv in no {
            let (f, _, _) = FlowFilter::from_query(&q(&kv)).unwrap();
            assert!(!f.matches(&flow), "{kv:?}");
        }
        for (k, v) in [
            ("verdict", "MAYBE"),
            ("ip", "10.0.0.0/33"),
            ("port", "x"),
            ("http_status", "4xx"),
            ("since", "soon"),
            ("colour", "red"),
        ] {
            let e = FlowFilter::from_query(&q(&[(k, v)])).unwrap_err();
            assert!(e.contains(k) || e.contains(v), "{k}={v}: {e}");
        }
        let (_, last, follow) =
            FlowFilter::from_query(&q(&[("last", "5"), ("follow", "true")])).unwrap();
        assert_eq!((last, follow), (Some(5), true));
    }
}
