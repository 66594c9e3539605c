//! `sluice apply / delete / get / status`: Kubernetes manifests in, kubectl-like tables out.

use crate::client::{explain, Client};
use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use serde_json::Value;
use std::fmt::Write as _;
use std::io::Read;
use std::path::Path;

/// Every object in `source` (a file, a directory of .yaml/.yml/.json files, or "-" for stdin):
/// multi-document YAML or JSON, with `List` objects flattened, as kubectl reads them.
pub fn read_manifests(source: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading stdin")?;
        parse_documents(&text, "stdin", &mut out)?;
        return Ok(out);
    }
    let path = Path::new(source);
    if path.is_dir() {
        let mut files: Vec<_> = std::fs::read_dir(path)
            .with_context(|| format!("reading directory {source}"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            })
            .collect();
        files.sort();
        for f in files {
            let text =
                std::fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
            parse_documents(&text, &f.display().to_string(), &mut out)?;
        }
    } else {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {source}"))?;
        parse_documents(&text, source, &mut out)?;
    }
    Ok(out)
}

/// Parses YAML (JSON is YAML) documents; empty documents are skipped, Lists flattened.
pub fn parse_documents(text: &str, origin: &str, out: &mut Vec<Value>) -> Result<()> {
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v =
            Value::deserialize(doc).map_err(|e| anyhow!("{origin}: document {}: {e}", i + 1))?;
        match v {
            Value::Null => {}
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                for item in o
                    .get("items")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    out.push(item.clone());
                }
            }
            Value::Object(_) => out.push(v),
            _ => bail!("{origin}: document {} is not an object", i + 1),
        }
    }
    Ok(())
}

/// Plural resource and namespace for an object (namespace "default" when namespaced and absent).
fn route_of(v: &Value) -> Result<(String, String)> {
    let kind = v
        .get("kind")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("an object without kind"))?;
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow!("a {kind} without metadata.name"))?;
    let (plural, namespaced) = match kind {
        "Service" => ("services", true),
        "EndpointSlice" => ("endpointslices", true),
        "Pod" => ("pods", true),
        "NetworkPolicy" => ("networkpolicies", true),
        "CiliumNetworkPolicy" => ("ciliumnetworkpolicies", true),
        "Namespace" => ("namespaces", false),
        "Node" => ("nodes", false),
        other => bail!("{other} {name}: sluice does not take this kind"),
    };
    let path = if namespaced {
        let ns = v
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or("default");
        format!("/v1/{plural}/{ns}/{name}")
    } else {
        format!("/v1/{plural}/{name}")
    };
    Ok((path, format!("{}/{name}", kind.to_ascii_lowercase())))
}

/// Applies or deletes every object; prints one line each like kubectl; fails if any failed.
pub fn apply_or_delete(client: &Client, objects: &[Value], delete: bool) -> Result<()> {
    if objects.is_empty() {
        bail!("no objects found");
    }
    let mut failed = 0;
    for v in objects {
        let (path, label) = match route_of(v) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
                continue;
            }
        };
        let a = if delete {
            client.request("DELETE", &path, None)?
        } else {
            client.request("PUT", &path, Some(v))?
        };
        if a.ok() {
            let result = a
                .json()
                .ok()
                .and_then(|j| j.get("result").and_then(Value::as_str).map(str::to_string))
                .unwrap_or_default();
            println!("{label} {result}");
        } else {
            eprintln!("error: {label}: {}", explain(&a));
            failed += 1;
            if a.status == 401 || a.status == 403 {
                break; // the same for every object
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} objects failed", objects.len());
    }
    Ok(())
}

fn s<'a>(v: &'a Value, p: &str) -> &'a str {
    v.pointer(p).and_then(Value::as_str).unwrap_or("")
}

fn table(rows: Vec<Vec<String>>) -> String {
    let mut widths = Vec::new();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            if widths.len() <= i {
                widths.push(0);
            }
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}

/// The resources `sluice get` knows, with kubectl's short names.
pub fn resource_paths(what: &str) -> Result<Vec<&'static str>> {
    Ok(match what {
        "services" | "service" | "svc" => vec!["services"],
        "endpoints" | "endpointslices" | "endpointslice" | "ep" => vec!["endpointslices"],
        "pods" | "pod" | "po" => vec!["pods"],
        "nodes" | "node" | "no" => vec!["nodes"],
        "namespaces" | "namespace" | "ns" => vec!["namespaces"],
        "policies" | "policy" | "netpol" | "networkpolicies" | "cnp" | "ciliumnetworkpolicies" => {
            vec!["networkpolicies", "ciliumnetworkpolicies"]
        }
        "identities" | "identity" | "id" => vec!["identities"],
        other => bail!(
            "unknown resource {other:?}: services, endpoints, pods, nodes, namespaces, policies, identities"
        ),
    })
}

/// Renders objects of one resource as a table.
pub fn render(resource: &str, items: &[Value]) -> String {
    if items.is_empty() {
        return "No resources found.\n".into();
    }
    let mut rows = Vec::new();
    match resource {
        "identities" => {
            rows.push(vec!["ID".into(), "LABELS".into(), "ENDPOINTS".into()]);
            let join = |v: &Value, key: &str| -> String {
                v.get(key)
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            for v in items {
                rows.push(vec![
                    v.get("id").and_then(Value::as_u64).unwrap_or(0).to_string(),
                    join(v, "labels"),
                    join(v, "endpoints"),
                ]);
            }
        }
        "services" => {
            rows.push(
                vec![
                    "NAMESPACE",
                    "NAME",
                    "TYPE",
                    "CLUSTER-IP",
                    "EXTERNAL-IP",
                    "PORT(S)",
                ]
                .into_iter()
                .map(String::from)
                .collect(),
            );
            for v in items {
                let ports: Vec<String> = v
                    .pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        let port = p.get("port").and_then(Value::as_u64).unwrap_or(0);
                        let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
                        match p.get("nodePort").and_then(Value::as_u64) {
                            Some(n) => format!("{port}:{n}/{proto}"),
                            None => format!("{port}/{proto}"),
                        }
                    })
                    .collect();
                let ext: Vec<&str> = v
                    .pointer("/spec/externalIPs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .chain(
                        v.pointer("/status/loadBalancer/ingress")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(|i| i.get("ip")),
                    )
                    .filter_map(Value::as_str)
                    .collect();
                let t = s(v, "/spec/type");
                rows.push(vec![
                    s(v, "/metadata/namespace").into(),
                    s(v, "/metadata/name").into(),
                    if t.is_empty() {
                        "ClusterIP".into()
                    } else {
                        t.into()
                    },
                    s(v, "/spec/clusterIP").into(),
                    if ext.is_empty() {
                        "<none>".into()
                    } else {
                        ext.join(",")
                    },
                    ports.join(","),
                ]);
            }
        }
        "endpointslices" => {
            rows.push(
                vec!["NAMESPACE", "NAME", "SERVICE", "ENDPOINTS", "READY"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            );
            for v in items {
                let eps = v
                    .get("endpoints")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let addrs: Vec<String> = eps
                    .iter()
                    .flat_map(|e| {
                        e.get("addresses")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default()
                    })
                    .filter_map(|a| a.as_str().map(str::to_string))
                    .collect();
                let ready = eps
                    .iter()
                    .filter(|e| {
                        e.pointer("/conditions/ready").and_then(Value::as_bool) != Some(false)
                    })
                    .count();
                let shown = if addrs.len() > 3 {
                    format!("{} + {} more", addrs[..3].join(","), addrs.len() - 3)
                } else {
                    addrs.join(",")
                };
                rows.push(vec![
                    s(v, "/metadata/namespace").into(),
                    s(v, "/metadata/name").into(),
                    s(v, "/metadata/labels/kubernetes.io~1service-name").into(),
                    shown,
                    format!("{ready}/{}", eps.len()),
                ]);
            }
        }
        "pods" => {
            rows.push(
                vec!["NAMESPACE", "NAME", "IP", "NODE"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            );
            for v in items {
                rows.push(vec![
                    s(v, "/metadata/namespace").into(),
                    s(v, "/metadata/name").into(),
                    s(v, "/status/podIP").into(),
                    s(v, "/spec/nodeName").into(),
                ]);
            }
        }
        "nodes" => {
            rows.push(
                vec!["NAME", "ADDRESSES", "POD-CIDRS"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            );
            for v in items {
                let addrs: Vec<&str> = v
                    .pointer("/status/addresses")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.get("address").and_then(Value::as_str))
                    .collect();
                let cidrs: Vec<&str> = v
                    .pointer("/spec/podCIDRs")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                rows.push(vec![
                    s(v, "/metadata/name").into(),
                    addrs.join(","),
                    cidrs.join(","),
                ]);
            }
        }
        _ => {
            rows.push(
                vec!["NAMESPACE", "NAME", "KIND"]
                    .into_iter()
                    .map(String::from)
                    .collect(),
            );
            for v in items {
                rows.push(vec![
                    s(v, "/metadata/namespace").into(),
                    s(v, "/metadata/name").into(),
                    s(v, "/kind").into(),
                ]);
            }
        }
    }
    table(rows)
}

/// `sluice status` as text.
pub fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let gen = v.get("generation").and_then(Value::as_u64).unwrap_or(0);
    let _ = writeln!(
        out,
        "appliance {}  generation {}  {}",
        s(v, "/appliance"),
        gen,
        if v.get("converged").and_then(Value::as_bool) == Some(true) {
            "all workers current"
        } else {
            "workers catching up"
        }
    );
    for w in v
        .get("workers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "  worker {}  generation {}",
            w["worker"], w["generation"]
        );
    }
    let _ = writeln!(
        out,
        "frontends {}  backends {}",
        v.get("frontends").and_then(Value::as_u64).unwrap_or(0),
        v.get("backends").and_then(Value::as_u64).unwrap_or(0)
    );
    if let Some(o) = v.get("objects").and_then(Value::as_object) {
        let parts: Vec<String> = o.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "objects: {}", parts.join(", "));
    }
    if let Some(e) = v.pointer("/persistence/last_error").and_then(Value::as_str) {
        let _ = writeln!(out, "WARNING: saving the state failed: {e}");
    }
    let has_interfaces = |c: &&Value| {
        c.get("interfaces")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    };
    if let Some(c) = v.get("counters").filter(has_interfaces) {
        out.push('\n');
        out.push_str(&crate::stats_table(c));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn multi_document_yaml_lists_and_json() {
        let mut out = Vec::new();
        parse_documents("---\nkind: Service\nmetadata: {name: a}\n---\n\n---\nkind: List\nitems:\n- {kind: Node, metadata: {name: n1}}\n- {kind: Pod, metadata: {name: p, namespace: x}}\n", "t", &mut out).unwrap();
        assert_eq!(out.len(), 3);
        parse_documents(
            r#"{"kind": "Namespace", "metadata": {"name": "z"}}"#,
            "t",
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), 4);
        assert!(parse_documents("- 1\n- 2\n", "t", &mut out).is_err());
        assert!(parse_documents("kind: [unclosed\n", "t", &mut out)
            .unwrap_err()
            .to_string()
            .contains("document 1"));
    }

    #[test]
    fn routes_and_tables() {
        assert_eq!(
            route_of(&json!({"kind": "Service", "metadata": {"name": "a"}}))
                .unwrap()
                .0,
            "/v1/services/default/a"
        );
        assert_eq!(
            route_of(&json!({"kind": "Node", "metadata": {"name": "n"}}))
                .unwrap()
                .0,
            "/v1/nodes/n"
        );
        assert!(route_of(&json!({"kind": "Deployment", "metadata": {"name": "d"}})).is_err());
        let t = render(
            "services",
            &[
                json!({"metadata": {"namespace": "shop", "name": "web"}, "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "ports": [{"port": 80, "nodePort": 30080}]}}),
            ],
        );
        assert!(
            t.contains("shop        web    NodePort   10.96.0.10   <none>        80:30080/TCP"),
            "{t}"
        );
        assert_eq!(render("pods", &[]), "No resources found.\n");
    }
}
