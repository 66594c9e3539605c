//! Label selectors (`matchLabels`, `matchExpressions`) against a label set, with Cilium's key
//! rules: a key with a source (`k8s:app`) matches that source's label; a key without one (`app`)
//! matches the label from any source, as Cilium's `any:` source does.

use crate::identity::Labels;
use serde_json::Value;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    DoesNotExist,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
}

/// A selector: every requirement must hold. The empty selector selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    pub reqs: Vec<Requirement>,
}

/// Why a selector could not be read: the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectorError {
    pub field: String,
    pub reason: String,
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> SelectorError {
    SelectorError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A selector key split into its source (`k8s`, `any`; None: any source) and the label key.
pub fn split_key(key: &str) -> (Option<&str>, &str) {
    match key.split_once(':') {
        Some((s, k)) if !s.is_empty() && !s.contains('.') && !s.contains('/') => (Some(s), k),
        _ => (None, key),
    }
}

/// The value of label `key` in `labels` (`source:key=value` strings), if present.
fn value_of<'l>(labels: &'l Labels, key: &str) -> Option<&'l str> {
    let (source, bare) = split_key(key);
    labels.iter().find_map(|l| {
        let (src, kv) = l.split_once(':')?;
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == bare && source.is_none_or(|s| s == src || s == "any")).then_some(v)
    })
}

impl Selector {
    /// `matchLabels` as requirements (a selector of labels only).
    pub fn from_labels(m: &BTreeMap<String, String>) -> Selector {
        Selector {
            reqs: m
                .iter()
                .map(|(k, v)| Requirement {
                    key: k.clone(),
                    op: Op::In(vec![v.clone()]),
                })
                .collect(),
        }
    }

    /// Reads a Kubernetes LabelSelector at `field` (null or absent: the empty selector).
    pub fn parse(v: Option<&Value>, field: &str) -> Result<Selector, SelectorError> {
        let mut s = Selector::default();
        let Some(v) = v.filter(|v| !v.is_null()) else {
            return Ok(s);
        };
        let o = v
            .as_object()
            .ok_or_else(|| err(field, "must be an object"))?;
        if let Some(m) = o.get("matchLabels").filter(|m| !m.is_null()) {
            let m = m
                .as_object()
                .ok_or_else(|| err(format!("{field}.matchLabels"), "must be an object"))?;
            for (k, val) in m {
                let val = val
                    .as_str()
                    .ok_or_else(|| err(format!("{field}.matchLabels.{k}"), "must be a string"))?;
                s.reqs.push(Requirement {
                    key: k.clone(),
                    op: Op::In(vec![val.to_string()]),
                });
            }
        }
        if let Some(e) = o.get("matchExpressions").filter(|e| !e.is_null()) {
            let e = e
                .as_array()
                .ok_or_else(|| err(format!("{field}.matchExpressions"), "must be a list"))?;
            for (i, x) in e.iter().enumerate() {
                let f = format!("{field}.matchExpressions[{i}]");
                let key = x
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or_else(|| err(format!("{f}.key"), "is required"))?;
                let values: Vec<String> = match x.get("values").filter(|v| !v.is_null()) {
                    None => Vec::new(),
                    Some(v) => v
                        .as_array()
                        .ok_or_else(|| err(format!("{f}.values"), "must be a list"))?
                        .iter()
                        .map(|s| {
                            s.as_str()
                                .map(String::from)
                                .ok_or_else(|| err(format!("{f}.values"), "must be strings"))
                        })
                        .collect::<Result<_, _>>()?,
                };
                let op = match x.get("operator").and_then(Value::as_str) {
                    Some("In") if !values.is_empty() => Op::In(values),
                    Some("NotIn") if !values.is_empty() => Op::NotIn(values),
                    Some("In" | "NotIn") => {
                        return Err(err(format!("{f}.values"), "must not be empty for In/NotIn"))
                    }
                    Some("Exists") if values.is_empty() => Op::Exists,
                    Some("DoesNotExist") if values.is_empty() => Op::DoesNotExist,
                    Some("Exists" | "DoesNotExist") => {
                        return Err(err(
                            format!("{f}.values"),
                            "must be empty for Exists/DoesNotExist",
                        ))
                    }
                    Some(o) => {
                        return Err(err(
                            format!("{f}.operator"),
                            format!("{o:?} is not In, NotIn, Exists or DoesNotExist"),
                        ))
                    }
                    None => return Err(err(format!("{f}.operator"), "is required")),
                };
                s.reqs.push(Requirement {
                    key: key.to_string(),
                    op,
                });
            }
        }
        Ok(s)
    }

    /// Adds a requirement (e.g. the policy's namespace for a namespaced selector).
    pub fn and(mut self, key: &str, value: &str) -> Selector {
        self.reqs.push(Requirement {
            key: key.to_string(),
            op: Op::In(vec![value.to_string()]),
        });
        self
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| {
            let v = value_of(labels, &r.key);
            match &r.op {
                Op::In(vals) => v.is_some_and(|v| vals.iter().any(|x| x == v)),
                Op::NotIn(vals) => v.is_none_or(|v| vals.iter().all(|x| x != v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(l: &[&str]) -> Labels {
        l.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn match_labels_and_expressions_with_and_without_source() {
        let fe = labels(&[
            "k8s:app=frontend",
            "k8s:tier=web",
            "k8s:io.kubernetes.pod.namespace=shop",
        ]);
        let api = labels(&["k8s:app=api", "k8s:io.kubernetes.pod.namespace=shop"]);
        let s = Selector::parse(Some(&json!({"matchLabels": {"app": "frontend"}})), "s").unwrap();
        assert!(s.matches(&fe) && !s.matches(&api));
        let s = Selector::parse(Some(&json!({"matchLabels": {"k8s:app": "api"}})), "s").unwrap();
        assert!(s.matches(&api) && !s.matches(&fe));
        let s = Selector::parse(Some(&json!({"matchLabels": {"any:app": "api"}})), "s").unwrap();
        assert!(s.matches(&api));
        let s = Selector::parse(Some(&json!({"matchLabels": {"other:app": "api"}})), "s").unwrap();
        assert!(!s.matches(&api), "another source");
        // a dotted key is a key, not a source
        let s = Selector::parse(
            Some(&json!({"matchLabels": {"io.kubernetes.pod.namespace": "shop"}})),
            "s",
        )
        .unwrap();
        assert!(s.matches(&fe) && s.matches(&api));
        let s = Selector::parse(
            Some(&json!({"matchExpressions": [
                {"key": "app", "operator": "In", "values": ["frontend", "api"]},
                {"key": "tier", "operator": "DoesNotExist"}]})),
            "s",
        )
        .unwrap();
        assert!(s.matches(&api) && !s.matches(&fe));
        let s = Selector::parse(
            Some(&json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["api"]}, {"key": "tier", "operator": "Exists"}]})),
            "s",
        )
        .unwrap();
        assert!(s.matches(&fe) && !s.matches(&api));
        assert!(Selector::parse(Some(&json!({})), "s")
            .unwrap()
            .matches(&api));
        assert!(Selector::parse(None, "s").unwrap().matches(&api));
    }

    #[test]
    fn bad_selectors_name_the_field() {
        for (v, field) in [
            (json!({"matchLabels": {"app": 1}}), "spec.s.matchLabels.app"),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "Near"}]}),
                "spec.s.matchExpressions[0].operator",
            ),
            (
                json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
                "spec.s.matchExpressions[0].values",
            ),
            (
                json!({"matchExpressions": [{"operator": "Exists"}]}),
                "spec.s.matchExpressions[0].key",
            ),
            (json!([]), "spec.s"),
        ] {
            assert_eq!(
                Selector::parse(Some(&v), "spec.s").unwrap_err().field,
                field,
                "{v}"
            );
        }
    }
}
