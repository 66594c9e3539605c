use super::*;
use serde_json::json;
use sluice_dataplane::lb::maglev::Table;
use sluice_dataplane::state::FrontendKind;

fn svc(name: &str, ip: &str) -> Value {
    json!({"kind": "Service", "metadata": {"name": name, "namespace": "shop"},
           "spec": {"type": "NodePort", "clusterIP": ip, "ports": [{"name": "http", "port": 80, "nodePort": 30080}]}})
}
fn slice(name: &str, svc: &str, addrs: &[&str]) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": "shop", "labels": {"kubernetes.io/service-name": svc}},
           "addressType": "IPv4", "endpoints": addrs.iter().map(|a| json!({"addresses": [a]})).collect::<Vec<_>>(),
           "ports": [{"name": "http", "port": 8080}]})
}
fn fe(ip: &str, port: u16) -> Frontend {
    Frontend {
        addr: ip.parse().unwrap(),
        proto: 6,
        port,
    }
}

/// `a_full_apply_compiles_as_puts_do` with several slices a service, out of order, and
/// weights: a full apply compiles from the views it loaded, in the slices' name order, as
/// `compile` reads the stored objects.
#[test]
fn a_full_apply_orders_a_services_slices_as_puts_do() {
    let mut db = svc("db", "10.96.0.20");
    db["spec"]["ports"][0]["nodePort"] = json!(30081);
    db["metadata"]["annotations"] = json!({"sluice.io/backend-weights": "10.0.2.6=3"});
    let items = vec![
        slice("web-b", "web", &["10.0.1.7", "10.0.1.8"]),
        svc("web", "10.96.0.10"),
        slice("db-1", "db", &["10.0.2.5", "10.0.2.6"]),
        slice("web-a", "web", &["10.0.1.5", "10.0.1.6"]),
        db,
        slice("orphan", "gone", &["10.0.3.1"]),
    ];
    let node = vec!["192.0.2.1".parse().unwrap()];
    let mut whole = Store::new(node.clone());
    whole.replace_all(items.clone()).unwrap();
    let mut one_by_one = Store::new(node.clone());
    for v in items.iter().rev() {
        one_by_one.put(v.clone(), None).unwrap();
    }
    assert_eq!(whole.tables.services, one_by_one.tables.services);
    assert_eq!(
        whole.tables.services.len(),
        4,
        "ClusterIP and NodePort of both"
    );
    let web = &whole.tables.services[&fe("10.96.0.10", 80)];
    let addrs: Vec<String> = web.backends.iter().map(|b| b.addr.to_string()).collect();
    assert_eq!(addrs, ["10.0.1.5", "10.0.1.6", "10.0.1.7", "10.0.1.8"]);
    let db = &whole.tables.services[&fe("10.96.0.20", 80)];
    assert_eq!(db.backends[1].weight, 3);
}

#[test]
fn slices_before_or_after_their_service_compile_the_same() {
    let mut a = Store::new(vec!["192.0.2.1".parse().unwrap()]);
    a.put(svc("web", "10.96.0.10"), None).unwrap();
    a.put(slice("web-1", "web", &["10.0.1.5", "10.0.1.6"]), None)
        .unwrap();
    let mut b = Store::new(vec!["192.0.2.1".parse().unwrap()]);
    b.put(slice("web-1", "web", &["10.0.1.5", "10.0.1.6"]), None)
        .unwrap();
    b.put(svc("web", "10.96.0.10"), None).unwrap();
    for s in [&a, &b] {
        let e = &s.tables.services[&fe("10.96.0.10", 80)];
        assert_eq!(e.backends.len(), 2);
        assert_eq!(e.backends[0].port, 8080);
        assert_eq!(
            s.tables.services[&fe("192.0.2.1", 30080)].kind,
            FrontendKind::NodePort
        );
    }
}

/// Slots of each backend address in a frontend's Maglev table.
fn slots(s: &Store, f: &Frontend) -> Vec<(String, usize)> {
    let e = &s.tables.services[f];
    e.backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let n = e.table.iter().filter(|&t| t == i).count();
            (b.addr.to_string(), n)
        })
        .collect()
}

#[test]
fn weights_conditions_and_traffic_policy_shape_the_maglev_table() {
    let mut s = Store::new(vec!["192.0.2.1".parse().unwrap()])
        .with_local_node(Some("me".into()))
        .with_lb(LbDefaults {
            maglev_table_size: 1021,
            ..Default::default()
        });
    let mut v = svc("web", "10.96.0.10");
    v["metadata"]["annotations"] = json!({"sluice.io/backend-weights": "10.0.1.7=2"});
    v["spec"]["externalTrafficPolicy"] = json!("Local");
    s.put(v, None).unwrap();
    let mut sl = slice(
        "web-1",
        "web",
        &["10.0.1.5", "10.0.1.6", "10.0.1.7", "10.0.1.8"],
    );
    sl["endpoints"][0]["nodeName"] = json!("me");
    sl["endpoints"][3]["conditions"] =
        json!({"ready": false, "serving": true, "terminating": true});
    s.put(sl, None).unwrap();
    // cluster-wide: 1:1:2 over the ready backends, the terminating one gets nothing new
    let c = slots(&s, &fe("10.96.0.10", 80));
    assert_eq!(c[3], ("10.0.1.8".into(), 0));
    let total: usize = c.iter().map(|x| x.1).sum();
    assert_eq!(total, 1021);
    assert!((c[2].1 as f64 / total as f64 - 0.5).abs() < 0.01, "{c:?}");
    assert!((c[0].1 as f64 / total as f64 - 0.25).abs() < 0.01, "{c:?}");
    // NodePort with externalTrafficPolicy Local: only the backend on this node
    let l = slots(&s, &fe("192.0.2.1", 30080));
    assert_eq!(
        l.iter().map(|x| x.1).collect::<Vec<_>>(),
        vec![1021, 0, 0, 0]
    );
    // nothing ready: the serving terminating backend takes new connections
    s.put(slice("web-1", "web", &[]), None).unwrap();
    let mut sl = slice("web-1", "web", &["10.0.1.8"]);
    sl["endpoints"][0]["conditions"] =
        json!({"ready": false, "serving": true, "terminating": true});
    s.put(sl, None).unwrap();
    assert_eq!(
        slots(&s, &fe("10.96.0.10", 80)),
        vec![("10.0.1.8".into(), 1021)]
    );
    // a bad weight annotation is refused, naming it
    let mut bad = svc("web", "10.96.0.10");
    bad["metadata"]["annotations"] = json!({"sluice.io/backend-weights": "10.0.1.7:2"});
    let e = s.put(bad, None).unwrap_err();
    assert!(e.field.contains("sluice.io/backend-weights"), "{e:?}");
}

#[test]
fn node_ports_follow_the_service_ip_families() {
    let mut s = Store::new(vec![
        "192.0.2.1".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    ]);
    s.put(svc("web", "10.96.0.10"), None).unwrap();
    assert!(s.tables.services.contains_key(&fe("192.0.2.1", 30080)));
    assert!(!s.tables.services.contains_key(&fe("2001:db8::1", 30080)));
    let mut dual = svc("dual", "10.96.0.11");
    dual["spec"]["clusterIPs"] = json!(["10.96.0.11", "fd00::11"]);
    dual["spec"]["ports"][0]["nodePort"] = json!(30081);
    s.put(dual, None).unwrap();
    assert!(s.tables.services.contains_key(&fe("2001:db8::1", 30081)));
}

#[test]
fn a_dual_stack_frontend_balances_over_its_own_family_only() {
    let mut s = Store::new(vec![
        "192.0.2.1".parse().unwrap(),
        "2001:db8::1".parse().unwrap(),
    ]);
    let mut dual = svc("web", "10.96.0.10");
    dual["spec"]["clusterIPs"] = json!(["10.96.0.10", "fd00::10"]);
    s.put(dual, None).unwrap();
    s.put(slice("web-4", "web", &["10.0.1.5", "10.0.1.6"]), None)
        .unwrap();
    let mut v6 = slice("web-6", "web", &["fd00:1::5", "fd00:1::6", "fd00:1::7"]);
    v6["addressType"] = json!("IPv6");
    s.put(v6, None).unwrap();
    for (addr, port, v6, n) in [
        ("10.96.0.10", 80, false, 2),
        ("192.0.2.1", 30080, false, 2),
        ("fd00::10", 80, true, 3),
        ("2001:db8::1", 30080, true, 3),
    ] {
        let e = &s.tables.services[&fe(addr, port)];
        assert_eq!(e.backends.len(), n, "{addr}");
        assert!(e.backends.iter().all(|b| b.addr.is_ipv6() == v6), "{addr}");
        // every slot names a backend of the frontend's family
        assert!(e.table.iter().all(|i| i < n), "{addr}");
    }
}

#[test]
fn changes_and_deletes_recompile_only_what_they_touch() {
    let mut s = Store::new(vec![]);
    s.put(svc("web", "10.96.0.10"), None).unwrap();
    s.put(slice("web-1", "web", &["10.0.1.5"]), None).unwrap();
    s.put(slice("web-2", "web", &["10.0.1.7"]), None).unwrap();
    assert_eq!(s.tables.services[&fe("10.96.0.10", 80)].backends.len(), 2);
    assert_eq!(
        s.put(slice("web-2", "web", &["10.0.1.7"]), None).unwrap().1,
        Outcome::Unchanged
    );
    // a slice moving to another service leaves this one
    s.put(slice("web-2", "other", &["10.0.1.7"]), None).unwrap();
    assert_eq!(s.tables.services[&fe("10.96.0.10", 80)].backends.len(), 1);
    let k = ObjectKey {
        kind: Kind::EndpointSlice,
        namespace: "shop".into(),
        name: "web-1".into(),
    };
    assert_eq!(s.delete(&k), Some(Outcome::Deleted));
    assert!(s.tables.services[&fe("10.96.0.10", 80)].backends.is_empty());
    let sk = ObjectKey {
        kind: Kind::Service,
        namespace: "shop".into(),
        name: "web".into(),
    };
    s.delete(&sk);
    assert!(s.tables.services.is_empty());
    assert_eq!(s.delete(&sk), None);
}

#[test]
fn a_conflicting_frontend_is_refused_and_nothing_changes() {
    let mut s = Store::new(vec![]);
    s.put(svc("web", "10.96.0.10"), None).unwrap();
    let before = s.tables.services.clone();
    let e = s.put(svc("api", "10.96.0.10"), None).unwrap_err();
    assert_eq!(e.object, "Service shop/api");
    assert!(
        e.reason.contains("already served by Service shop/web"),
        "{e}"
    );
    assert_eq!(s.len(), 1);
    assert_eq!(s.tables.services, before);
}

/// A full apply compiles every service once at the end, on several threads: the same
/// tables as putting the objects one by one, slices before or after their service, and a
/// frontend claimed twice is refused at the later item.
#[test]
fn a_full_apply_compiles_as_puts_do() {
    let mut items = Vec::new();
    for i in 0..300u32 {
        let name = format!("svc-{i}");
        let ip = format!("10.96.{}.{}", i / 200, i % 200 + 1);
        let mut v = svc(&name, &ip);
        v["spec"]["type"] = json!("ClusterIP");
        let addrs = [
            format!("10.1.{}.{}", i / 200, i % 200 + 1),
            format!("10.2.0.{}", i % 250 + 1),
        ];
        let sl = slice(&format!("{name}-x"), &name, &[&addrs[0], &addrs[1]]);
        if i % 2 == 0 {
            items.extend([v, sl]);
        } else {
            items.extend([sl, v]);
        }
    }
    let mut one_by_one = Store::new(vec![]);
    for v in items.clone() {
        one_by_one.put(v, None).unwrap();
    }
    let mut full = Store::new(vec![]);
    assert_eq!(full.replace_all(items.clone()).unwrap(), 600);
    assert_eq!(full.tables.services.len(), 300);
    assert_eq!(full.tables.services, one_by_one.tables.services);
    // with threads on spare cores too (idle class), and a replace that keeps them
    let mut spare = Store::new(vec![]).with_spare_cores(vec![0, 0]);
    spare.replace_all(vec![]).unwrap();
    assert_eq!(spare.replace_all(items.clone()).unwrap(), 600);
    assert_eq!(spare.tables.services, one_by_one.tables.services);

    // item 600 takes svc-7's address and port: refused there, and nothing changes
    let mut clash = svc("late", "10.96.0.8");
    clash["spec"]["type"] = json!("ClusterIP");
    items.push(clash);
    let e = full.replace_all(items).unwrap_err();
    assert_eq!(e.field, "items[600].spec");
    assert!(
        e.reason.contains("already served by Service shop/svc-7"),
        "{e}"
    );
    assert_eq!(full.tables.services, one_by_one.tables.services);
}

/// A Maglev table is a function of the backends, the size, the seed and the node: a
/// service recompiled with the same ones takes its table as it was, in a change and in a
/// full apply, and one whose backends changed gets the table a fresh store builds.
#[test]
fn unchanged_backends_keep_their_maglev_table() {
    let items = |port: u16, addrs: &[&str]| {
        let mut web = svc("web", "10.96.0.10");
        web["spec"]["ports"][0]["port"] = json!(port);
        let mut db = svc("db", "10.96.0.20");
        db["spec"]["type"] = json!("ClusterIP");
        vec![
            web,
            slice("web-1", "web", addrs),
            db,
            slice("db-1", "db", &["10.0.2.5"]),
        ]
    };
    let table = |s: &Store, ip: &str, port: u16| s.tables.services[&fe(ip, port)].table.clone();
    let mut s = Store::new(vec!["192.0.2.1".parse().unwrap()]);
    s.replace_all(items(80, &["10.0.1.5", "10.0.1.6"])).unwrap();
    let (web, db) = (table(&s, "10.96.0.10", 80), table(&s, "10.96.0.20", 80));
    // the same state again: no table built
    s.replace_all(items(80, &["10.0.1.5", "10.0.1.6"])).unwrap();
    assert!(Table::ptr_eq(&table(&s, "10.96.0.10", 80), &web));
    assert!(Table::ptr_eq(&table(&s, "10.96.0.20", 80), &db));
    // another service port, the same backends: the table stays, under the new frontend
    let mut moved = svc("web", "10.96.0.10");
    moved["spec"]["ports"][0]["port"] = json!(81);
    s.put(moved, None).unwrap();
    assert!(Table::ptr_eq(&table(&s, "10.96.0.10", 81), &web));
    // a backend more: built again, as a store that never saw the old one builds it
    s.replace_all(items(81, &["10.0.1.5", "10.0.1.6", "10.0.1.7"]))
        .unwrap();
    let mut fresh = Store::new(vec!["192.0.2.1".parse().unwrap()]);
    fresh
        .replace_all(items(81, &["10.0.1.5", "10.0.1.6", "10.0.1.7"]))
        .unwrap();
    assert!(!Table::ptr_eq(&table(&s, "10.96.0.10", 81), &web));
    assert_eq!(s.tables.services, fresh.tables.services);
    assert!(Table::ptr_eq(&table(&s, "10.96.0.20", 80), &db));
    // a backend no longer ready: its slots go (the conditions are part of the backends)
    let mut notready = slice("web-1", "web", &["10.0.1.5", "10.0.1.6", "10.0.1.7"]);
    notready["endpoints"][2]["conditions"] = json!({"ready": false});
    s.put(notready.clone(), None).unwrap();
    let mut fresh = Store::new(vec!["192.0.2.1".parse().unwrap()]);
    let mut fresh_items = items(81, &[]);
    fresh_items[1] = notready;
    fresh.replace_all(fresh_items).unwrap();
    assert_eq!(s.tables.services, fresh.tables.services);
    assert_eq!(slots(&s, &fe("10.96.0.10", 81))[2], ("10.0.1.7".into(), 0));
}

#[test]
fn replace_all_is_all_or_nothing() {
    let mut s = Store::new(vec![]);
    s.put(svc("web", "10.96.0.10"), None).unwrap();
    let bad = vec![
        svc("a", "10.96.0.1"),
        json!({"kind": "Service", "metadata": {"name": "b"}, "spec": {"ports": [{"port": 0}]}}),
    ];
    let e = s.replace_all(bad).unwrap_err();
    assert_eq!(e.field, "items[1].spec.ports[0].port");
    assert_eq!(s.len(), 1);
    assert!(s.tables.services.contains_key(&fe("10.96.0.10", 80)));
    let dup = vec![svc("a", "10.96.0.1"), svc("a", "10.96.0.1")];
    assert!(s.replace_all(dup).unwrap_err().reason.contains("twice"));
    assert_eq!(s.replace_all(vec![svc("a", "10.96.0.1")]).unwrap(), 1);
    assert!(!s.tables.services.contains_key(&fe("10.96.0.10", 80)));
}

#[test]
fn remote_pod_cidrs_lead_to_their_node_and_the_local_node_is_left_out() {
    let node = |name: &str, ip: &str, cidr: &str| {
        json!({"kind": "Node", "metadata": {"name": name}, "spec": {"podCIDR": cidr},
               "status": {"addresses": [{"type": "InternalIP", "address": ip}]}})
    };
    let mut s = Store::new(vec![]).with_local_node(Some("me".into()));
    s.put(node("me", "192.168.1.1", "10.0.1.0/24"), None)
        .unwrap();
    s.put(node("n2", "192.168.1.2", "10.0.2.0/24"), None)
        .unwrap();
    let t = &s.tables;
    assert_eq!(
        t.pod_cidrs
            .lookup("10.0.2.77".parse().unwrap())
            .map(|n| n.addrs[0]),
        Some("192.168.1.2".parse().unwrap())
    );
    assert!(t.pod_cidrs.lookup("10.0.1.5".parse().unwrap()).is_none());
    assert!(
        t.node_ips
            .contains(&"192.168.1.1".parse::<IpAddr>().unwrap())
            && t.node_ips
                .contains(&"192.168.1.2".parse::<IpAddr>().unwrap())
    );
    s.replace_all(vec![node("n3", "192.168.1.3", "10.0.3.0/24")])
        .unwrap();
    assert!(s
        .tables
        .pod_cidrs
        .lookup("10.0.2.77".parse().unwrap())
        .is_none());
    assert!(s
        .tables
        .pod_cidrs
        .lookup("10.0.3.1".parse().unwrap())
        .is_some());
}

#[test]
fn nodes_compile_into_the_node_table() {
    let mut s = Store::new(vec![]);
    s.put(
        json!({"kind": "Node", "metadata": {"name": "n1"}, "spec": {"podCIDR": "10.0.1.0/24"},
                 "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]}}),
        None,
    )
    .unwrap();
    assert_eq!(s.tables.nodes.len(), 1);
    assert_eq!(&*s.tables.nodes[0].name, "n1");
    s.delete(&ObjectKey {
        kind: Kind::Node,
        namespace: String::new(),
        name: "n1".into(),
    });
    assert!(s.tables.nodes.is_empty());
}

/// A status update of a Pod or a Node (most of a cluster's churn) changes nothing the
/// identities are built from: no rebuild. A label or an address does.
#[test]
fn only_what_identities_read_rebuilds_them() {
    let pod = |app: &str, ip: &str, phase: &str| {
        json!({"kind": "Pod", "metadata": {"name": "fe-1", "namespace": "shop", "labels": {"app": app}},
               "status": {"phase": phase, "podIPs": [{"ip": ip}]}})
    };
    let id_of = |s: &Store, a: &str| s.tables.ipcache.lookup(a.parse().unwrap()).copied();
    let mut s = Store::new(vec![]);
    s.put(pod("fe", "10.0.1.5", "Pending"), None).unwrap();
    let (id, n) = (id_of(&s, "10.0.1.5"), s.identity_rebuilds);
    assert!(id.is_some());
    let (_, o) = s.put(pod("fe", "10.0.1.5", "Running"), None).unwrap();
    assert_eq!((o, s.identity_rebuilds), (Outcome::Configured, n));
    s.put(pod("fe", "10.0.1.6", "Running"), None).unwrap();
    assert_eq!(s.identity_rebuilds, n + 1);
    assert_eq!((id_of(&s, "10.0.1.6"), id_of(&s, "10.0.1.5")), (id, None));
    s.put(pod("checkout", "10.0.1.6", "Running"), None).unwrap();
    assert_eq!(s.identity_rebuilds, n + 2);
    assert_ne!(id_of(&s, "10.0.1.6"), id);
    let node = |ready: &str| {
        json!({"kind": "Node", "metadata": {"name": "n2"}, "spec": {"podCIDR": "10.244.2.0/24"},
               "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.12"}],
                          "conditions": [{"type": "Ready", "status": ready}]}})
    };
    s.put(node("True"), None).unwrap();
    assert_eq!((s.identity_rebuilds, s.tables.nodes.len()), (n + 3, 1));
    s.put(node("False"), None).unwrap();
    assert_eq!(s.identity_rebuilds, n + 3);
}

#[test]
fn pods_get_identities_by_labels_and_the_ipcache_maps_their_addresses() {
    use sluice_dataplane::identity::{HOST, REMOTE_NODE};
    let pod = |ns: &str, name: &str, app: &str, ip: &str| {
        json!({"kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
               "status": {"podIPs": [{"ip": ip}]}})
    };
    let ns = |name: &str, team: &str| json!({"kind": "Namespace", "metadata": {"name": name, "labels": {"team": team}}});
    let mut s = Store::new(vec!["192.0.2.1".parse().unwrap()]).with_local_node(Some("me".into()));
    s.put(ns("shop", "web"), None).unwrap();
    s.put(pod("shop", "fe-1", "frontend", "10.0.1.5"), None)
        .unwrap();
    s.put(pod("shop", "fe-2", "frontend", "10.0.2.6"), None)
        .unwrap();
    s.put(pod("shop", "api-1", "api", "fd00:1::7"), None)
        .unwrap();
    s.put(
        json!({"kind": "Node", "metadata": {"name": "n2"}, "status": {"addresses": [{"type": "InternalIP", "address": "192.168.0.2"}]}}),
        None,
    )
    .unwrap();
    fn id_of(s: &Store, a: &str) -> Option<u32> {
        s.tables.ipcache.lookup(a.parse().unwrap()).copied()
    }
    let id = |a: &str| id_of(&s, a);
    let fe = id("10.0.1.5").unwrap();
    assert_eq!(id("10.0.2.6"), Some(fe), "same labels, same identity");
    let api = id("fd00:1::7").unwrap();
    assert_ne!(api, fe);
    assert!(fe >= 256 && api >= 256);
    assert_eq!(id("192.168.0.2"), Some(REMOTE_NODE));
    assert_eq!(id("192.0.2.1"), Some(HOST));
    assert_eq!(id("10.9.9.9"), None, "unknown: world");
    let views = s.identities();
    let v = views.iter().find(|v| v.id == fe).unwrap();
    assert_eq!(v.endpoints, vec!["shop/fe-1", "shop/fe-2"]);
    assert!(v
        .labels
        .contains(&"k8s:io.cilium.k8s.namespace.labels.team=web".to_string()));
    assert_eq!(views[0].labels, vec!["reserved:host"]);
    // the namespace's labels are part of the identity
    s.put(ns("shop", "payments"), None).unwrap();
    let fe2 = id_of(&s, "10.0.1.5").unwrap();
    assert_ne!(fe2, fe);
    // a full replace keeps the numbers of the label sets that stay
    let objects: Vec<Value> = s
        .snapshot_objects()
        .iter()
        .map(|v| v.value().into_owned())
        .collect();
    s.replace_all(objects).unwrap();
    assert_eq!(
        s.tables.ipcache.lookup("10.0.1.5".parse().unwrap()),
        Some(&fe2)
    );
    // the last pod of a label set gone: its identity is free, its address unknown
    s.delete(&ObjectKey {
        kind: Kind::Pod,
        namespace: "shop".into(),
        name: "api-1".into(),
    });
    assert_eq!(s.tables.ipcache.lookup("fd00:1::7".parse().unwrap()), None);
    assert!(s.identities().iter().all(|v| v.id != api));
}

#[test]
fn policies_are_validated_on_apply_and_compiled_for_the_pods() {
    use sluice_dataplane::policy::Decision;
    let mut s = Store::new(vec![]);
    for (name, app, ip) in [("fe", "frontend", "10.0.1.5"), ("api", "api", "10.0.1.6")] {
        s.put(
            json!({"kind": "Pod", "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
                   "status": {"podIP": ip}}),
            None,
        )
        .unwrap();
    }
    let cnp = |port: &str| {
        json!({"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
               "metadata": {"name": "api-from-frontend", "namespace": "shop"},
               "spec": {"endpointSelector": {"matchLabels": {"app": "api"}},
                        "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                                     "toPorts": [{"ports": [{"port": port, "protocol": "TCP"}]}]}]}})
    };
    let e = s.put(cnp("http"), None).unwrap_err();
    assert_eq!(e.field, "spec.ingress[0].toPorts[0].ports[0].port");
    assert_eq!(s.count(Kind::CiliumNetworkPolicy), 0, "nothing applied");
    s.put(cnp("8080"), None).unwrap();
    let id = |a: &str| *s.tables.ipcache.lookup(a.parse().unwrap()).unwrap();
    let (fe, api) = (id("10.0.1.5"), id("10.0.1.6"));
    let p = &s.tables.policy;
    assert_eq!(
        p.verdict(fe, api, 6, 8080),
        Decision::Allow("shop/api-from-frontend")
    );
    assert_eq!(
        p.verdict(fe, api, 6, 80),
        Decision::DefaultDeny("shop/api-from-frontend")
    );
    assert_eq!(p.verdict(api, fe, 6, 80), Decision::Allow(""));
}
