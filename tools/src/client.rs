//! A small blocking HTTP/1.1 client for the control API, over the unix socket (how `sluice` on
//! the host reaches a daemon inside a namespace) or TCP. One request per connection.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

/// Generous: a full-state apply of 10,000 services is compiled before the answer.
const TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Unix(PathBuf),
    Tcp(String),
}

impl Endpoint {
    /// `unix:/run/sluice/api.sock`, `/run/sluice/api.sock`, or `http://127.0.0.1:9800`.
    pub fn parse(s: &str) -> Result<Endpoint> {
        if let Some(p) = s.strip_prefix("unix:") {
            return Ok(Endpoint::Unix(p.into()));
        }
        if s.starts_with('/') {
            return Ok(Endpoint::Unix(s.into()));
        }
        if let Some(hp) = s.strip_prefix("http://") {
            return Ok(Endpoint::Tcp(hp.trim_end_matches('/').into()));
        }
        bail!("--server {s:?}: use unix:/path/to/api.sock or http://HOST:PORT")
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "http://{a}"),
        }
    }
}

pub struct Client {
    pub endpoint: Endpoint,
    pub token: Option<String>,
}

/// An answer: status code and body.
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn json(&self) -> Result<Value> {
        serde_json::from_slice(&self.body).with_context(|| {
            format!(
                "the API answered {} with a body that is not JSON",
                self.status
            )
        })
    }
    /// The `error` member of an error answer, or the raw body.
    pub fn error_text(&self) -> String {
        serde_json::from_slice::<Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_string())
    }
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// A connection read without the request timeout: a follower waits on a quiet stream. Reads
/// that time out are retried.
struct NoTimeout(Box<dyn Stream>);
impl Read for NoTimeout {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                r => return r,
            }
        }
    }
}

impl Client {
    fn connect(&self) -> Result<Box<dyn Stream>> {
        let hint = |e: std::io::Error| {
            anyhow!(
                "cannot reach sluiced at {} ({e}); is it running? (--server selects another)",
                self.endpoint
            )
        };
        Ok(match &self.endpoint {
            Endpoint::Unix(p) => {
                let s = std::os::unix::net::UnixStream::connect(p).map_err(hint)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.set_write_timeout(Some(TIMEOUT))?;
                Box::new(s)
            }
            Endpoint::Tcp(a) => {
                let s = std::net::TcpStream::connect(a).map_err(hint)?;
                s.set_read_timeout(Some(TIMEOUT))?;
                s.set_write_timeout(Some(TIMEOUT))?;
                Box::new(s)
            }
        })
    }

    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer> {
        let mut s = self.connect()?;
        let payload = body
            .map(serde_json::to_vec)
            .transpose()?
            .unwrap_or_default();
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\nAccept: application/json\r\n");
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if body.is_some() {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                payload.len()
            ));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.write_all(&payload)?;
        s.flush()?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .context("reading the API's answer")?;
        parse_response(&raw)
    }

    /// GETs `path` and hands each line of the body to `each` as it arrives (NDJSON streams such
    /// as `/v1/flows?follow=true`), until the body ends or `each` returns false.
    pub fn get_lines(&self, path: &str, mut each: impl FnMut(&[u8]) -> Result<bool>) -> Result<()> {
        let mut pending: Vec<u8> = Vec::new();
        self.get_chunks(path, |data| {
            pending.extend_from_slice(data);
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                if !each(&line[..line.len() - 1])? {
                    return Ok(false);
                }
            }
            Ok(true)
        })
    }

    /// GETs `path` and hands the body to `each` piece by piece as it arrives, until it ends or
    /// `each` returns false. No read timeout: a follower waits as long as nothing happens.
    pub fn get_chunks(
        &self,
        path: &str,
        mut each: impl FnMut(&[u8]) -> Result<bool>,
    ) -> Result<()> {
        use std::io::BufRead;
        let mut s = self.connect()?;
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: sluice\r\nConnection: close\r\n");
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes())?;
        s.flush()?;
        let mut r = std::io::BufReader::new(NoTimeout(s));
        let mut status_line = String::new();
        r.read_line(&mut status_line)?;
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("malformed HTTP status line"))?;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            let h = h.to_ascii_lowercase();
            chunked |= h.starts_with("transfer-encoding:") && h.contains("chunked");
        }
        if !(200..300).contains(&status) {
            let mut body = Vec::new();
            r.read_to_end(&mut body)?;
            let body = if chunked {
                dechunk(&body).unwrap_or(body)
            } else {
                body
            };
            bail!("{}", explain(&Answer { status, body }));
        }
        if !chunked {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 || !each(&buf[..n])? {
                    return Ok(());
                }
            }
        }
        loop {
            let mut size = String::new();
            if r.read_line(&mut size)? == 0 {
                return Ok(());
            }
            let n = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .context("bad chunk size")?;
            if n == 0 {
                return Ok(());
            }
            let mut data = vec![0; n + 2];
            r.read_exact(&mut data)?;
            if !each(&data[..n])? {
                return Ok(());
            }
        }
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        let a = self.request("GET", path, None)?;
        if !a.ok() {
            bail!("{}", explain(&a));
        }
        a.json()
    }
}

/// A message for a failed answer, with the fix for the usual causes.
pub fn explain(a: &Answer) -> String {
    match a.status {
        401 => format!(
            "the API refused the token: {} (check --token-file / SLUICE_TOKEN_FILE)",
            a.error_text()
        ),
        403 => format!("forbidden: {}", a.error_text()),
        _ => format!("{} ({})", a.error_text(), a.status),
    }
}

fn parse_response(raw: &[u8]) -> Result<Answer> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP answer (no header end)"))?;
    let head = std::str::from_utf8(&raw[..split]).context("HTTP header is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("malformed HTTP status line"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let rest = &raw[split + 4..];
    let body = if chunked {
        dechunk(rest)?
    } else {
        rest.to_vec()
    };
    Ok(Answer { status, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| anyhow!("bad chunk header"))?;
        let size_s = std::str::from_utf8(&b[..eol])?
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        let size = usize::from_str_radix(size_s, 16).context("bad chunk size")?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            bail!("truncated chunk");
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_answers() {
        let a = parse_response(b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((a.status, a.body.as_slice()), (201, &b"{}"[..]));
        let c = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(c.body, b"abcde");
        assert!(parse_response(b"garbage").is_err());
        assert!(
            parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n").is_err()
        );
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            Endpoint::parse("unix:/run/x.sock").unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            Endpoint::parse("/run/x.sock").unwrap(),
            Endpoint::Unix("/run/x.sock".into())
        );
        assert_eq!(
            Endpoint::parse("http://127.0.0.1:9800/").unwrap(),
            Endpoint::Tcp("127.0.0.1:9800".into())
        );
        assert!(Endpoint::parse("ftp://x").is_err());
    }
}
