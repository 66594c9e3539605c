//! Network policy at scale (issue 6 targets): 1,000 identities and 10,000 rules.
//! - compiling 1,000 CiliumNetworkPolicies (read + compile against the identities): target
//!   under 100 ms;
//! - the datapath's verdict lookup (egress of the source, ingress of the destination): target
//!   under 20 ns.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use serde_json::json;
use sluice_control::identity::{endpoint_labels, Labels};
use sluice_control::policy::compile::compile;
use sluice_control::policy::rules::{cilium_policy, Rule};
use std::collections::BTreeMap;

const IDENTITIES: u32 = 1000;
/// 1,000 policies x 10 ingress rules = 10,000 rules.
const POLICIES: u32 = 1000;
const RULES_PER_POLICY: u32 = 10;

fn identities() -> BTreeMap<u32, Labels> {
    (0..IDENTITIES)
        .map(|i| {
            let l = endpoint_labels(
                &[
                    ("app".to_string(), format!("app{i}")),
                    ("tier".to_string(), format!("t{}", i % 4)),
                ]
                .into(),
                &format!("ns{}", i % 10),
                &[("team".to_string(), format!("team{}", i % 3))].into(),
            );
            (256 + i, l)
        })
        .collect()
}

/// Policy `i`: app{i} admits 10 other apps of its namespace, each on its own port range.
fn policies() -> Vec<(String, String, serde_json::Value)> {
    (0..POLICIES)
        .map(|i| {
            let ingress: Vec<_> = (0..RULES_PER_POLICY)
                .map(|k| {
                    let peer = (i + 10 * (k + 1)) % IDENTITIES;
                    json!({"fromEndpoints": [{"matchLabels": {"app": format!("app{peer}")}}],
                           "toPorts": [{"ports": [{"port": format!("{}", 8000 + k * 10), "endPort": 8005 + k * 10, "protocol": "TCP"}]}]})
                })
                .collect();
            (
                format!("p{i}"),
                format!("ns{}", i % 10),
                json!({"spec": {"endpointSelector": {"matchLabels": {"app": format!("app{i}")}},
                                "ingress": ingress}}),
            )
        })
        .collect()
}

fn read(ps: &[(String, String, serde_json::Value)]) -> Vec<Rule> {
    ps.iter()
        .flat_map(|(n, ns, v)| cilium_policy(n, ns, v).expect("policy"))
        .collect()
}

fn policy(c: &mut Criterion) {
    let ids = identities();
    let ps = policies();
    let rules = read(&ps);
    assert_eq!(rules.len() as u32, POLICIES * RULES_PER_POLICY);
    let mut g = c.benchmark_group("policy");
    g.sample_size(10);
    g.bench_function(
        "compile 1,000 policies (10,000 rules, 1,000 identities)",
        |b| b.iter(|| compile(&read(std::hint::black_box(&ps)), &ids)),
    );
    let tables = compile(&rules, &ids).tables;
    // lookups: half allowed (a peer and port the policy names), half default-denied
    let probes: Vec<(u32, u32, u16)> = (0..4096u32)
        .map(|k| {
            let dst = k % IDENTITIES;
            let r = k % RULES_PER_POLICY;
            let src = if k % 2 == 0 {
                (dst + 10 * (r + 1)) % IDENTITIES
            } else {
                (dst + 1) % IDENTITIES
            };
            (256 + src, 256 + dst, (8000 + r * 10 + k % 6) as u16)
        })
        .collect();
    let allowed = probes
        .iter()
        .filter(|(s, d, p)| {
            matches!(
                tables.verdict(*s, *d, 6, *p),
                sluice_dataplane::policy::Decision::Allow(_)
            )
        })
        .count();
    assert_eq!(
        allowed,
        probes.len() / 2,
        "the probes hit what they mean to"
    );
    g.sample_size(50);
    g.throughput(Throughput::Elements(probes.len() as u64));
    g.bench_function("verdict lookup, 1,000 identities x 10,000 rules", |b| {
        b.iter(|| {
            let mut n = 0;
            for (s, d, p) in &probes {
                n += matches!(
                    tables.verdict(*s, *d, 6, *p),
                    sluice_dataplane::policy::Decision::Allow(_)
                ) as u32;
            }
            n
        })
    });
    g.finish();
}

/// L7: judging HTTP/1.1 requests on a keep-alive connection (head collection, parsing, body
/// framing, matching 10 HTTP rules), each request arriving in two segments.
fn l7(c: &mut Criterion) {
    use sluice_dataplane::l7::rules::{HeaderRule, HttpRule, Pattern};
    use sluice_dataplane::l7::stream::{Fed, HttpStream};
    let rule = |m: &str, p: &str| HttpRule {
        method: Some(Pattern::new(m).unwrap()),
        path: Some(Pattern::new(p).unwrap()),
        ..Default::default()
    };
    let mut rules: Vec<HttpRule> = (0..8)
        .map(|i| rule("GET|HEAD", &format!("/v{i}/items/[0-9]+")))
        .collect();
    rules.push(rule("POST", "/api/login"));
    rules.push(HttpRule {
        headers: vec![HeaderRule::parse("X-Api-Key: k").unwrap()],
        ..rule("GET", "/api/users/.*")
    });
    let reqs: Vec<Vec<u8>> = [
        "GET /api/users/42 HTTP/1.1\r\nHost: api\r\nUser-Agent: curl/8\r\nAccept: */*\r\nX-Api-Key: k\r\n\r\n",
        "POST /api/login HTTP/1.1\r\nHost: api\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 13\r\n\r\nuser=a&pw=b12",
        "GET /v7/items/123 HTTP/1.1\r\nHost: api\r\nAccept: */*\r\n\r\n",
    ]
    .iter()
    .map(|r| r.as_bytes().to_vec())
    .collect();
    let mut g = c.benchmark_group("l7");
    g.throughput(Throughput::Elements(reqs.len() as u64));
    g.bench_function(
        "3 keep-alive requests in 2 segments each, 10 HTTP rules",
        |b| {
            let mut st = HttpStream::default();
            b.iter(|| {
                for r in &reqs {
                    let (a, z) = r.split_at(r.len() / 2);
                    for part in [a, z] {
                        let fed = st.feed(part, |q| rules.iter().any(|x| x.matches(q)));
                        assert_eq!(fed, Fed::Pass);
                    }
                }
            })
        },
    );
    g.finish();
}

criterion_group!(benches, policy, l7);
criterion_main!(benches);
