//! The Kubernetes objects sluice understands, kept as their JSON (unknown fields preserved and
//! ignored; `Object` says in which form), with typed views of the fields the datapath uses. Every
//! check names the object, the field path and why, in the words of the Kubernetes API.

use serde::Serialize;
use serde_json::Value;
use std::fmt;
use std::net::IpAddr;

mod object;
mod views;

pub use object::Object;
pub use views::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    CiliumNetworkPolicy,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Namespace,
        Kind::Node,
        Kind::Pod,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::NetworkPolicy,
        Kind::CiliumNetworkPolicy,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Node => "Node",
            Kind::Pod => "Pod",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::CiliumNetworkPolicy => "CiliumNetworkPolicy",
        }
    }
    /// The URL segment: lowercase plural, as kubectl spells resources.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Node => "nodes",
            Kind::Pod => "pods",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::NetworkPolicy => "networkpolicies",
            Kind::CiliumNetworkPolicy => "ciliumnetworkpolicies",
        }
    }
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Namespace | Kind::Node | Kind::Pod | Kind::Service => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::CiliumNetworkPolicy => "cilium.io/v2",
        }
    }
    pub fn namespaced(self) -> bool {
        !matches!(self, Kind::Namespace | Kind::Node)
    }
    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == s)
    }
    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// Identity of an object: kind, namespace ("" for cluster-scoped kinds), name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind.name(), self.name)
        } else {
            write!(f, "{} {}/{}", self.kind.name(), self.namespace, self.name)
        }
    }
}

/// A rejected object: which, which field, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invalid {
    pub object: String,
    pub field: String,
    pub reason: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.object, self.field, self.reason)
    }
}

pub(crate) type VResult<T> = Result<T, Invalid>;

/// Field access that records where it is, so an error can name the path.
pub(crate) struct At<'a> {
    /// The object's name in errors (written out only for one).
    pub(crate) object: &'a dyn fmt::Display,
}

impl At<'_> {
    pub(crate) fn bad(&self, field: impl Into<String>, reason: impl Into<String>) -> Invalid {
        Invalid {
            object: self.object.to_string(),
            field: field.into(),
            reason: reason.into(),
        }
    }
    pub(crate) fn opt_str<'v>(&self, v: &'v Value, path: &str) -> VResult<Option<&'v str>> {
        match get(v, path) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.bad(path, "must be a string")),
        }
    }
    pub(crate) fn opt_array<'v>(&self, v: &'v Value, path: &str) -> VResult<&'v [Value]> {
        match get(v, path) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(self.bad(path, "must be a list")),
        }
    }
    pub(crate) fn opt_bool(&self, v: &Value, path: &str) -> VResult<Option<bool>> {
        match get(v, path) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.bad(path, "must be true or false")),
        }
    }
    pub(crate) fn opt_int(
        &self,
        v: &Value,
        path: &str,
        range: std::ops::RangeInclusive<i64>,
    ) -> VResult<Option<i64>> {
        match get(v, path) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) if range.contains(&i) => Ok(Some(i)),
                _ => Err(self.bad(
                    path,
                    format!("must be an integer in {}..={}", range.start(), range.end()),
                )),
            },
            Some(_) => Err(self.bad(path, "must be an integer")),
        }
    }
    pub(crate) fn ip(&self, s: &str, path: &str) -> VResult<IpAddr> {
        s.parse()
            .map_err(|_| self.bad(path, format!("{s:?} is not a valid IP address")))
    }
    pub(crate) fn cidr(&self, s: &str, path: &str) -> VResult<(IpAddr, u8)> {
        crate::config::parse_cidr(s).map_err(|e| self.bad(path, e))
    }
}

/// `a.b.c` lookup in a JSON object.
fn get<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(v, |cur, k| cur.get(k))
}

/// DNS-1123 subdomain (object names) or label (namespaces).
fn dns_name_problem(s: &str, max: usize, dots: bool) -> Option<String> {
    if s.is_empty() {
        return Some("must not be empty".into());
    }
    if s.len() > max {
        return Some(format!("must be at most {max} characters"));
    }
    let ok_char =
        |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (dots && c == '.');
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !s.chars().all(ok_char) || !alnum(s.chars().next()) || !alnum(s.chars().last()) {
        return Some(format!(
            "{s:?} must consist of lower case alphanumeric characters{}, and start and end with an alphanumeric character",
            if dots { ", '-' or '.'" } else { " or '-'" }
        ));
    }
    None
}

/// Reads apiVersion/kind/metadata and checks them; `expect` pins kind/namespace/name when the URL
/// gave them (an absent namespace in the body takes the URL's, or "default").
pub fn identify(v: &Value, expect: Option<&ObjectKey>) -> VResult<ObjectKey> {
    let unnamed = At { object: &"object" };
    if !v.is_object() {
        return Err(unnamed.bad("", "an object must be a JSON/YAML mapping"));
    }
    let kind_s = unnamed
        .opt_str(v, "kind")?
        .or(expect.map(|k| k.kind.name()))
        .ok_or_else(|| unnamed.bad("kind", "is required"))?;
    let kind = Kind::from_name(kind_s).ok_or_else(|| {
        unnamed.bad(
            "kind",
            format!(
                "{kind_s:?} is not a kind sluice accepts ({})",
                Kind::ALL.map(|k| k.name()).join(", ")
            ),
        )
    })?;
    let name = unnamed
        .opt_str(v, "metadata.name")?
        .or(expect.map(|k| k.name.as_str()))
        .unwrap_or("")
        .to_string();
    let at_kind = format!(
        "{} {}",
        kind.name(),
        if name.is_empty() { "<unnamed>" } else { &name }
    );
    let at = At { object: &at_kind };
    if let Some(p) = dns_name_problem(&name, 253, true) {
        return Err(at.bad("metadata.name", p));
    }
    let namespace = if kind.namespaced() {
        let ns = at
            .opt_str(v, "metadata.namespace")?
            .or(expect
                .map(|k| k.namespace.as_str())
                .filter(|s| !s.is_empty()))
            .unwrap_or("default")
            .to_string();
        if let Some(p) = dns_name_problem(&ns, 63, false) {
            return Err(at.bad("metadata.namespace", p));
        }
        ns
    } else {
        if let Some(ns) = at.opt_str(v, "metadata.namespace")? {
            if !ns.is_empty() {
                return Err(at.bad(
                    "metadata.namespace",
                    format!("{} is cluster-scoped: remove the namespace", kind.name()),
                ));
            }
        }
        String::new()
    };
    let key = ObjectKey {
        kind,
        namespace,
        name,
    };
    let at = At { object: &key };
    if let Some(av) = at.opt_str(v, "apiVersion")? {
        if av != kind.api_version() {
            return Err(at.bad(
                "apiVersion",
                format!(
                    "{av:?} is not {:?}, the version sluice reads {} in",
                    kind.api_version(),
                    kind.name()
                ),
            ));
        }
    }
    if let Some(e) = expect {
        if e != &key {
            return Err(at.bad(
                if e.kind != key.kind {
                    "kind"
                } else if e.name != key.name {
                    "metadata.name"
                } else {
                    "metadata.namespace"
                },
                format!("does not match the URL, which names {e}"),
            ));
        }
    }
    if let Some(m) = get(v, "metadata.labels") {
        if !m.is_null()
            && !m
                .as_object()
                .is_some_and(|o| o.values().all(Value::is_string))
        {
            return Err(at.bad("metadata.labels", "must map strings to strings"));
        }
    }
    Ok(key)
}

/// The object with identity filled in (apiVersion, kind, metadata.namespace), as stored.
pub fn normalise(mut v: Value, key: &ObjectKey) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), key.kind.api_version().into());
        o.insert("kind".into(), key.kind.name().into());
        let meta = o.entry("metadata").or_insert_with(|| serde_json::json!({}));
        if let Some(m) = meta.as_object_mut() {
            m.insert("name".into(), key.name.clone().into());
            if key.kind.namespaced() {
                m.insert("namespace".into(), key.namespace.clone().into());
            }
        }
    }
    v
}

/// What validating an object of each kind yields: the typed view of the fields sluice reads.
pub enum Checked {
    Service(ServiceView),
    EndpointSlice(EndpointSliceView),
    Node(NodeView),
    Pod {
        ips: Vec<IpAddr>,
        egress_bps: Option<u64>,
    },
    Policy(Vec<crate::policy::rules::Rule>),
    Namespace,
}

/// Full validation of one object of any kind, keeping its view.
pub fn check(key: &ObjectKey, v: &Value) -> VResult<Checked> {
    Ok(match key.kind {
        Kind::Service => Checked::Service(service(key, v)?),
        Kind::EndpointSlice => Checked::EndpointSlice(endpoint_slice(key, v)?),
        Kind::Node => Checked::Node(node(key, v)?),
        Kind::Pod => Checked::Pod {
            ips: pod(key, v)?,
            egress_bps: pod_egress_bandwidth(key, v)?,
        },
        Kind::NetworkPolicy | Kind::CiliumNetworkPolicy => Checked::Policy(policy(key, v)?),
        Kind::Namespace => Checked::Namespace,
    })
}

/// Full validation of one object of any kind.
pub fn validate(key: &ObjectKey, v: &Value) -> VResult<()> {
    check(key, v).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn svc(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"}, "spec": spec})
    }

    fn err(v: &Value) -> Invalid {
        let k = identify(v, None).unwrap();
        validate(&k, v).unwrap_err()
    }

    #[test]
    fn identity_defaults_and_mismatches() {
        let k = identify(&json!({"kind": "Service", "metadata": {"name": "a"}}), None).unwrap();
        assert_eq!(k.namespace, "default");
        let n = identify(&json!({"kind": "Node", "metadata": {"name": "n1"}}), None).unwrap();
        assert_eq!(n.namespace, "");
        let e = identify(&json!({"kind": "Gadget", "metadata": {"name": "a"}}), None).unwrap_err();
        assert_eq!(e.field, "kind");
        let e = identify(
            &json!({"kind": "Service", "apiVersion": "v2", "metadata": {"name": "a"}}),
            None,
        )
        .unwrap_err();
        assert_eq!(e.field, "apiVersion");
        let e = identify(
            &json!({"kind": "Service", "metadata": {"name": "Web_1"}}),
            None,
        )
        .unwrap_err();
        assert_eq!(e.field, "metadata.name");
        let url = ObjectKey {
            kind: Kind::Service,
            namespace: "shop".into(),
            name: "web".into(),
        };
        let e = identify(
            &json!({"kind": "Service", "metadata": {"name": "api", "namespace": "shop"}}),
            Some(&url),
        )
        .unwrap_err();
        assert_eq!(e.field, "metadata.name");
        assert!(e.reason.contains("Service shop/web"));
        // the URL supplies what the body leaves out
        assert_eq!(identify(&json!({}), Some(&url)).unwrap(), url);
        let e = identify(
            &json!({"kind": "Node", "metadata": {"name": "n", "namespace": "x"}}),
            None,
        )
        .unwrap_err();
        assert_eq!(e.field, "metadata.namespace");
        assert_eq!(
            identify(&json!([1]), None).unwrap_err().reason,
            "an object must be a JSON/YAML mapping"
        );
    }

    #[test]
    fn service_fields() {
        let v = svc(
            json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10", "fd00::a"], "externalIPs": ["192.0.2.1"],
            "type": "LoadBalancer", "sessionAffinity": "ClientIP", "externalTrafficPolicy": "Local",
            "ports": [{"name": "http", "port": 80, "nodePort": 30080}, {"port": 53, "protocol": "UDP"}]}),
        );
        let k = identify(&v, None).unwrap();
        let s = service(&k, &v).unwrap();
        assert_eq!(s.cluster_ips.len(), 2);
        assert_eq!(s.ports[0].node_port, Some(30080));
        assert_eq!(s.ports[1].proto, Proto::Udp);
        assert_eq!(s.affinity_timeout_s, Some(10800));
        assert!(s.local_only);
        let headless = svc(json!({"clusterIP": "None", "ports": [{"port": 80}]}));
        assert!(service(&k, &headless).unwrap().cluster_ips.is_empty());
    }

    #[test]
    fn service_errors_name_the_field() {
        let e = err(&svc(json!({"ports": [{"port": 80}, {"port": 70000}]})));
        assert_eq!(
            (e.object.as_str(), e.field.as_str()),
            ("Service shop/web", "spec.ports[1].port")
        );
        assert_eq!(
            err(&svc(json!({"ports": [{"port": 80, "protocol": "ICMP"}]}))).field,
            "spec.ports[0].protocol"
        );
        assert_eq!(
            err(&svc(json!({"clusterIP": "10.96.0.300"}))).field,
            "spec.clusterIP"
        );
        assert_eq!(
            err(&svc(json!({"externalIPs": ["x"]}))).field,
            "spec.externalIPs[0]"
        );
        assert_eq!(
            err(&svc(json!({"ports": [{"port": 80}, {"port": 80}]}))).field,
            "spec.ports[1].port"
        );
        assert_eq!(
            err(&svc(json!({"sessionAffinity": "Sticky"}))).field,
            "spec.sessionAffinity"
        );
        assert_eq!(err(&svc(json!({"ports": "80"}))).field, "spec.ports");
        assert_eq!(err(&svc(json!({"type": "Magic"}))).field, "spec.type");
    }

    #[test]
    fn endpoint_slices() {
        let v = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-abc", "namespace": "shop", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.1.5"], "conditions": {"ready": false, "terminating": true}, "nodeName": "n1"},
                          {"addresses": ["10.0.1.6"]}],
            "ports": [{"name": "http", "port": 8080}]});
        let k = identify(&v, None).unwrap();
        let s = endpoint_slice(&k, &v).unwrap();
        assert_eq!(s.service, "web");
        assert!(!s.endpoints[0].ready && !s.endpoints[0].serving && s.endpoints[0].terminating);
        assert!(s.endpoints[1].ready && s.endpoints[1].serving);
        let mut bad = v.clone();
        bad["endpoints"][1]["addresses"][0] = json!("fd00::1");
        assert_eq!(err(&bad).field, "endpoints[1].addresses[0]");
        let mut nolabel = v.clone();
        nolabel["metadata"]["labels"] = json!({});
        assert!(err(&nolabel).field.contains("kubernetes.io/service-name"));
        let mut badcond = v;
        badcond["endpoints"][0]["conditions"]["ready"] = json!("yes");
        assert_eq!(err(&badcond).field, "endpoints[0].conditions.ready");
    }

    #[test]
    fn nodes_pods_policies() {
        let n = json!({"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDR": "10.0.1.0/24", "podCIDRs": ["10.0.1.0/24", "fd00:1::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}, {"type": "Hostname", "address": "n1"}]}});
        let k = identify(&n, None).unwrap();
        let nv = node(&k, &n).unwrap();
        assert_eq!((nv.addrs.len(), nv.pod_cidrs.len()), (1, 2));
        let mut bad = n.clone();
        bad["spec"]["podCIDRs"][1] = json!("fd00:1::1/64");
        assert_eq!(err(&bad).field, "spec.podCIDRs[1]");
        let p = json!({"kind": "Pod", "metadata": {"name": "p"}, "status": {"podIP": "10.0.1.5", "podIPs": [{"ip": "10.0.1.5"}, {"ip": "zz"}]}});
        assert_eq!(err(&p).field, "status.podIPs[1].ip");
        let c = json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p"}, "spec": []});
        assert_eq!(err(&c).field, "spec");
    }

    #[test]
    fn egress_bandwidth_quantities() {
        let key = ObjectKey {
            kind: Kind::Pod,
            namespace: "lab".into(),
            name: "be1".into(),
        };
        let pod =
            |q: serde_json::Value| json!({"metadata": {"annotations": {EGRESS_BANDWIDTH: q}}});
        for (q, want) in [
            ("10M", 10_000_000u64),
            ("1G", 1_000_000_000),
            ("500k", 500_000),
            ("1Mi", 1_048_576),
            ("2.5M", 2_500_000),
        ] {
            assert_eq!(
                pod_egress_bandwidth(&key, &pod(json!(q))).unwrap(),
                Some(want),
                "{q}"
            );
        }
        assert_eq!(pod_egress_bandwidth(&key, &json!({})).unwrap(), None);
        for bad in [
            json!("10 megabits"),
            json!("10X"),
            json!(10),
            json!("0"),
            json!("1T0"),
        ] {
            let e = pod_egress_bandwidth(&key, &pod(bad.clone())).unwrap_err();
            assert!(e.to_string().contains("egress-bandwidth"), "{bad}: {e}");
        }
    }
}
