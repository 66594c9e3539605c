//! The client-to-server byte stream of one HTTP/1.x connection, cut into requests: each request
//! head is collected (it may arrive in many segments), parsed and judged; its body is counted
//! through (Content-Length, or chunked framing decoded) so the next request on a keep-alive
//! connection is found where it starts.
//!
//! Fail closed: whatever is not clearly a well-framed HTTP/1.x request (an unparseable head, a
//! head over `HEAD_MAX`, both Content-Length and Transfer-Encoding, a bad chunk) is a denial,
//! never passed through uninspected.

use super::rules::Request;

/// Longest request head (request line and headers) inspected: nginx's default large header
/// buffer. A longer head is denied.
pub const HEAD_MAX: usize = 8192;
/// Most headers in one request (a fixed array: parsing allocates nothing).
const MAX_HEADERS: usize = 64;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The rules do not allow it.
    Policy,
    /// Not a well-framed HTTP/1.x request.
    Malformed,
    /// The head exceeds `HEAD_MAX`.
    TooLarge,
}

/// What became of the bytes given to `feed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fed {
    /// All of them may go on (any request completed in them was allowed).
    Pass,
    /// A request completed in them was refused: nothing of these bytes may go on.
    Refuse(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size (`digits` read so far).
    Size {
        n: u64,
        digits: u8,
    },
    /// Skipping a chunk extension up to the end of the size line.
    Ext {
        n: u64,
    },
    /// After the size line's CR.
    SizeLf {
        n: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerEndLf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Between requests: bytes are a request head.
    None,
    Length(u64),
    Chunked(Chunk),
    /// After an allowed upgrade (WebSocket) or CONNECT: no longer HTTP.
    Tunnel,
}

/// One connection's request stream.
pub struct HttpStream {
    head: Box<[u8]>,
    len: usize,
    body: Body,
    /// Requests judged so far on this connection.
    pub requests: u32,
}

impl Default for HttpStream {
    fn default() -> Self {
        HttpStream {
            head: vec![0; HEAD_MAX].into_boxed_slice(),
            len: 0,
            body: Body::None,
            requests: 0,
        }
    }
}

/// Where the head in `buf` ends (just past its empty line), looking from `from`. Bare LF line
/// ends count too: servers accept them, so the inspector must not see a head end later.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let nl = i + p;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => i = nl + 1,
        }
    }
    None
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

impl Chunk {
    /// Consumes from `d`: bytes used, and whether the chunked body ended.
    fn advance(&mut self, d: &[u8]) -> Result<(usize, bool), Refusal> {
        let mut i = 0;
        while i < d.len() {
            let b = d[i];
            *self = match *self {
                Chunk::Data(n) => {
                    let k = (n as usize).min(d.len() - i);
                    i += k;
                    let left = n - k as u64;
                    *self = if left == 0 {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left)
                    };
                    continue;
                }
                Chunk::Size { n, digits } => match (b, hex(b)) {
                    // 15 hex digits: 2^60 bytes; more is an overflow attempt
                    (_, Some(v)) if digits < 15 => Chunk::Size {
                        n: n << 4 | v,
                        digits: digits + 1,
                    },
                    (b';' | b' ' | b'\t', _) if digits > 0 => Chunk::Ext { n },
                    (b'\r', _) if digits > 0 => Chunk::SizeLf { n },
                    (b'\n', _) if digits > 0 => Self::after_size(n),
                    _ => return Err(Refusal::Malformed),
                },
                Chunk::Ext { n } => match b {
                    b'\n' => Self::after_size(n),
                    _ => Chunk::Ext { n },
                },
                Chunk::SizeLf { n } => match b {
                    b'\n' => Self::after_size(n),
                    _ => return Err(Refusal::Malformed),
                },
                Chunk::DataCr => match b {
                    b'\r' => Chunk::DataLf,
                    b'\n' => Chunk::Size { n: 0, digits: 0 },
                    _ => return Err(Refusal::Malformed),
                },
                Chunk::DataLf => match b {
                    b'\n' => Chunk::Size { n: 0, digits: 0 },
                    _ => return Err(Refusal::Malformed),
                },
                Chunk::TrailerStart => match b {
                    b'\r' => Chunk::TrailerEndLf,
                    b'\n' => return Ok((i + 1, true)),
                    _ => Chunk::TrailerLine,
                },
                Chunk::TrailerLine => match b {
                    b'\n' => Chunk::TrailerStart,
                    _ => Chunk::TrailerLine,
                },
                Chunk::TrailerEndLf => match b {
                    b'\n' => return Ok((i + 1, true)),
                    _ => return Err(Refusal::Malformed),
                },
            };
            i += 1;
        }
        Ok((i, false))
    }

    fn after_size(n: u64) -> Chunk {
        if n == 0 {
            Chunk::TrailerStart
        } else {
            Chunk::Data(n)
        }
    }
}

/// How the body of a request with these headers is framed (RFC 9112 section 6), or why the
/// framing is refused.
fn framing(headers: &[httparse::Header<'_>]) -> Result<Body, Refusal> {
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(Refusal::Malformed)?;
            // several Content-Length headers must agree
            if length.is_some_and(|l| l != v) {
                return Err(Refusal::Malformed);
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // a request's transfer coding must end in chunked, or its length is unknowable
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    match (length, chunked) {
        // both: the request smuggling case; refused as Envoy does by default
        (Some(_), Some(_)) | (_, Some(false)) => Err(Refusal::Malformed),
        (_, Some(true)) => Ok(Body::Chunked(Chunk::Size { n: 0, digits: 0 })),
        (Some(0) | None, None) => Ok(Body::None),
        (Some(n), None) => Ok(Body::Length(n)),
    }
}

impl HttpStream {
    /// Forgets everything (a new connection on the same tuple).
    pub fn reset(&mut self) {
        self.len = 0;
        self.body = Body::None;
        self.requests = 0;
    }

    /// Whether a request head is partly collected (the server has seen part of it).
    pub fn mid_head(&self) -> bool {
        self.len > 0
    }

    /// Takes the next bytes of the stream, in order; `allow` judges each complete request head.
    pub fn feed(&mut self, mut d: &[u8], mut allow: impl FnMut(&Request<'_>) -> bool) -> Fed {
        while !d.is_empty() {
            match &mut self.body {
                Body::Tunnel => return Fed::Pass,
                Body::Length(n) => {
                    let k = (*n).min(d.len() as u64);
                    *n -= k;
                    d = &d[k as usize..];
                    if *n == 0 {
                        self.body = Body::None;
                    }
                }
                Body::Chunked(c) => match c.advance(d) {
                    Ok((used, done)) => {
                        d = &d[used..];
                        if done {
                            self.body = Body::None;
                        }
                    }
                    Err(r) => return Fed::Refuse(r),
                },
                Body::None => {
                    let before = self.len;
                    let take = d.len().min(HEAD_MAX - before);
                    self.head[before..before + take].copy_from_slice(&d[..take]);
                    self.len += take;
                    // the end may straddle the old and new bytes
                    let Some(end) = head_end(&self.head[..self.len], before.saturating_sub(2))
                    else {
                        if self.len == HEAD_MAX {
                            return Fed::Refuse(Refusal::TooLarge);
                        }
                        return Fed::Pass;
                    };
                    // the end lies in the new bytes (an end in the old ones was found before)
                    d = d.get(end.saturating_sub(before)..).unwrap_or_default();
                    self.len = 0;
                    self.requests += 1;
                    match self.judge(end, &mut allow) {
                        Ok(body) => self.body = body,
                        Err(r) => return Fed::Refuse(r),
                    }
                }
            }
        }
        Fed::Pass
    }

    /// Parses the head in `head[..end]` and asks `allow`: the framing of its body if allowed.
    fn judge(
        &self,
        end: usize,
        allow: &mut impl FnMut(&Request<'_>) -> bool,
    ) -> Result<Body, Refusal> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.head[..end]) {
            Ok(httparse::Status::Complete(n)) if n == end => {}
            _ => return Err(Refusal::Malformed),
        }
        let (Some(method), Some(path)) = (req.method, req.path) else {
            return Err(Refusal::Malformed);
        };
        let r = Request {
            method: method.as_bytes(),
            path: path.as_bytes(),
            headers: req.headers,
        };
        let body = framing(req.headers)?;
        if !allow(&r) {
            return Err(Refusal::Policy);
        }
        let upgrade = method == "CONNECT" || r.header("upgrade").is_some();
        Ok(if upgrade { Body::Tunnel } else { body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `parts` in order; the paths judged and the outcome of each part.
    fn run(parts: &[&[u8]], deny_prefix: &str) -> (Vec<String>, Vec<Fed>) {
        let mut s = HttpStream::default();
        let mut seen = Vec::new();
        let mut out = Vec::new();
        for p in parts {
            out.push(s.feed(p, |r| {
                let path = String::from_utf8_lossy(r.path).to_string();
                seen.push(format!("{} {path}", String::from_utf8_lossy(r.method)));
                !path.starts_with(deny_prefix)
            }));
        }
        (seen, out)
    }

    #[test]
    fn a_head_split_anywhere_is_judged_once_when_complete() {
        let req = b"GET /api/users/1 HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 1..req.len() {
            let (seen, out) = run(&[&req[..cut], &req[cut..]], "/admin");
            assert_eq!(seen, vec!["GET /api/users/1"], "cut at {cut}");
            assert_eq!(out, vec![Fed::Pass, Fed::Pass]);
        }
        // one byte at a time, and the refusal comes with the byte that completes the head
        let bad = b"POST /admin/delete HTTP/1.1\r\nHost: x\r\n\r\n";
        let parts: Vec<&[u8]> = bad.chunks(1).collect();
        let (seen, out) = run(&parts, "/admin");
        assert_eq!(seen, vec!["POST /admin/delete"]);
        assert!(out[..out.len() - 1].iter().all(|f| *f == Fed::Pass));
        assert_eq!(out.last(), Some(&Fed::Refuse(Refusal::Policy)));
    }

    #[test]
    fn keep_alive_requests_are_found_after_their_bodies() {
        let stream: &[&[u8]] = &[
            b"POST /api/login HTTP/1.1\r\nContent-Length: 11\r\n\r\nuser=a",
            // the body's end and the next head in one segment
            b"&pw=bGET /api/users/2 HTTP/1.1\r\n\r\n",
            b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
            b"lo\r\n3;ext=1\r\nGET\r\n0\r\nTrailer: x\r\n\r\n",
            b"GET /admin HTTP/1.1\r\n\r\n",
        ];
        let (seen, out) = run(stream, "/admin");
        assert_eq!(
            seen,
            vec![
                "POST /api/login",
                "GET /api/users/2",
                "POST /up",
                "GET /admin"
            ],
            "the chunk data 'GET' is body, not a request"
        );
        assert_eq!(out[..4], [Fed::Pass; 4]);
        assert_eq!(out[4], Fed::Refuse(Refusal::Policy));
    }

    #[test]
    fn whatever_is_not_clear_http_is_refused() {
        let cases: &[&[u8]] = &[
            b"garbage\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        ];
        for c in cases {
            let (_, out) = run(&[c], "/never");
            assert_eq!(
                out,
                vec![Fed::Refuse(Refusal::Malformed)],
                "{}",
                String::from_utf8_lossy(c)
            );
        }
        let huge = [b'a'; HEAD_MAX + 1];
        assert_eq!(run(&[&huge], "/").1, vec![Fed::Refuse(Refusal::TooLarge)]);
        // bare LF line ends are a head end, as servers read them
        let (seen, _) = run(&[b"GET /lf HTTP/1.1\nHost: x\n\n"], "/never");
        assert_eq!(seen, vec!["GET /lf"]);
    }

    #[test]
    fn an_allowed_upgrade_leaves_http() {
        let (seen, out) = run(
            &[
                b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                b"\x81\x05hello GET /admin HTTP/1.1\r\n\r\n",
            ],
            "/admin",
        );
        assert_eq!(seen, vec!["GET /ws"]);
        assert_eq!(out, vec![Fed::Pass, Fed::Pass]);
    }
}
