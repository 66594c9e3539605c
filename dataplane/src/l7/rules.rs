//! HTTP rules of an L7 policy (`toPorts[].rules.http`), as Cilium reads them: `method`, `path`
//! and `host` are regular expressions matched against the whole field (anchored), `headers` are
//! `Name` (present) or `Name: value` (present with exactly that value, name case-insensitive).
//! A request is allowed when every field a rule names matches; a rule naming nothing allows all.
//!
//! The regexes are compiled once, when the policy is applied, into dense DFAs: matching is a walk
//! over the bytes with no cache, no lock and no allocation, and cannot fail on a valid DFA.

use regex_automata::dfa::{dense, Automaton};
use regex_automata::{nfa::thompson, util::syntax, Input};

/// Largest DFA one pattern may compile to. Method, path and host patterns of real policies are
/// a few KiB; a pattern that blows up past this is refused when the policy is applied.
const DFA_LIMIT: usize = 1 << 20;

/// One anchored regular expression.
pub struct Pattern {
    text: String,
    dfa: dense::DFA<Vec<u32>>,
}

impl Pattern {
    /// Compiles `text` to match whole fields only (Cilium anchors its HTTP regexes).
    pub fn new(text: &str) -> Result<Pattern, String> {
        let dfa = dense::Builder::new()
            .syntax(syntax::Config::new().unicode(false).utf8(false))
            .thompson(thompson::Config::new().utf8(false))
            .configure(
                dense::Config::new()
                    .dfa_size_limit(Some(DFA_LIMIT))
                    .determinize_size_limit(Some(DFA_LIMIT)),
            )
            .build(&format!("^(?:{text})$"))
            .map_err(|e| format!("regular expression {text:?}: {e}"))?;
        Ok(Pattern {
            text: text.to_string(),
            dfa,
        })
    }

    #[inline]
    pub fn matches(&self, field: &[u8]) -> bool {
        // an error (a quit byte; none are configured) counts as no match: the request is denied
        matches!(
            self.dfa.try_search_fwd(&Input::new(field).earliest(true)),
            Ok(Some(_))
        )
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

/// Two patterns are the same when their texts are (what a re-applied policy compares).
impl PartialEq for Pattern {
    fn eq(&self, o: &Self) -> bool {
        self.text == o.text
    }
}
impl Eq for Pattern {}

impl std::fmt::Debug for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

/// A header a rule requires: present, or present with this exact value.
#[derive(Debug, PartialEq, Eq)]
pub struct HeaderRule {
    pub name: String,
    pub value: Option<String>,
}

impl HeaderRule {
    /// Reads Cilium's `Name` / `Name: value` form.
    pub fn parse(s: &str) -> Result<HeaderRule, String> {
        let (name, value) = match s.split_once(':') {
            Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
            None => (s.trim(), None),
        };
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(format!("header {s:?}: not a valid header name"));
        }
        Ok(HeaderRule {
            name: name.to_string(),
            value,
        })
    }
}

/// RFC 9110 token characters (header names, methods).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// One entry of `rules.http`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HttpRule {
    pub method: Option<Pattern>,
    pub path: Option<Pattern>,
    pub host: Option<Pattern>,
    pub headers: Vec<HeaderRule>,
}

/// The parts of a request head that rules look at.
pub struct Request<'a> {
    pub method: &'a [u8],
    /// The request target as sent (path and query).
    pub path: &'a [u8],
    pub headers: &'a [httparse::Header<'a>],
}

impl Request<'_> {
    /// The first header of that name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

impl HttpRule {
    pub fn matches(&self, r: &Request<'_>) -> bool {
        let field = |p: &Option<Pattern>, v: &[u8]| p.as_ref().is_none_or(|p| p.matches(v));
        field(&self.method, r.method)
            && field(&self.path, r.path)
            && self
                .host
                .as_ref()
                .is_none_or(|p| r.header("host").is_some_and(|h| p.matches(h)))
            && self.headers.iter().all(|h| {
                r.headers.iter().any(|x| {
                    x.name.eq_ignore_ascii_case(&h.name)
                        && h.value.as_ref().is_none_or(|v| x.value == v.as_bytes())
                })
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req<'a>(method: &'a str, path: &'a str, headers: &'a [httparse::Header<'a>]) -> Request<'a> {
        Request {
            method: method.as_bytes(),
            path: path.as_bytes(),
            headers,
        }
    }

    #[test]
    fn patterns_are_anchored() {
        let p = Pattern::new("/api/users/.*").unwrap();
        assert!(p.matches(b"/api/users/42"));
        assert!(p.matches(b"/api/users/"));
        assert!(!p.matches(b"/v2/api/users/42"), "anchored at the start");
        let m = Pattern::new("GET").unwrap();
        assert!(m.matches(b"GET"));
        assert!(!m.matches(b"GETX"), "anchored at the end");
        assert!(!m.matches(b"get"));
        let alt = Pattern::new("GET|HEAD").unwrap();
        assert!(alt.matches(b"HEAD") && !alt.matches(b"POST"));
        // bytes that are not UTF-8 are matched, not refused
        assert!(p.matches(b"/api/users/\xff"));
    }

    #[test]
    fn bad_patterns_and_headers_are_refused() {
        assert!(Pattern::new("(unclosed").unwrap_err().contains("(unclosed"));
        assert!(HeaderRule::parse("Bad Name: x").is_err());
        assert!(HeaderRule::parse("").is_err());
        let h = HeaderRule::parse("X-Token: abc ").unwrap();
        assert_eq!(
            (h.name.as_str(), h.value.as_deref()),
            ("X-Token", Some("abc"))
        );
    }

    #[test]
    fn a_rule_needs_every_field_it_names() {
        let rule = HttpRule {
            method: Some(Pattern::new("POST").unwrap()),
            path: Some(Pattern::new("/api/login").unwrap()),
            host: Some(Pattern::new(r"api\.example\.com(:[0-9]+)?").unwrap()),
            headers: vec![HeaderRule::parse("x-token").unwrap()],
        };
        let good = [
            httparse::Header {
                name: "Host",
                value: b"api.example.com:8080",
            },
            httparse::Header {
                name: "X-Token",
                value: b"1",
            },
        ];
        assert!(rule.matches(&req("POST", "/api/login", &good)));
        assert!(!rule.matches(&req("GET", "/api/login", &good)));
        assert!(!rule.matches(&req("POST", "/api/login?x=1", &good)));
        assert!(
            !rule.matches(&req("POST", "/api/login", &good[..1])),
            "header"
        );
        assert!(
            !rule.matches(&req("POST", "/api/login", &good[1..])),
            "host"
        );
        let valued = HttpRule {
            headers: vec![HeaderRule::parse("X-Token: 2").unwrap()],
            ..Default::default()
        };
        assert!(!valued.matches(&req("GET", "/", &good)));
        assert!(HttpRule::default().matches(&req("DELETE", "/anything", &[])));
    }
}
