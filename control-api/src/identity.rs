//! Security identities of endpoints, as Cilium derives them: a pod's labels, with its
//! namespace's labels and name, form a label set; each distinct label set gets a numeric
//! identity; the ipcache maps the pod's addresses to it.
//!
//! Labels are strings `k8s:KEY=VALUE` (Cilium's source prefix), plus
//! `k8s:io.kubernetes.pod.namespace=NS` and `k8s:io.cilium.k8s.namespace.labels.KEY=VALUE` for
//! each namespace label, so selectors can match on the namespace as Cilium's do.
//!
//! Allocation is stable and the same on every appliance given the same label sets: a label set's
//! identity is a hash of its labels into [256, 2^24) (24 bits: it travels in the VNI). Two sets
//! whose hashes collide are separated by probing to the next free number, in label order; an
//! identity, once given, is kept while its label set exists.

use serde::Serialize;
use sluice_dataplane::identity::{MAX_LABELS, MIN_LABELS};
use std::collections::{BTreeMap, BTreeSet};

/// A label set, sorted: `source:key=value` strings.
pub type Labels = BTreeSet<String>;

/// Cilium's label for the pod's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// Cilium's prefix for the namespace's own labels.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";

/// The label set of a pod in namespace `ns` (whose labels are `ns_labels`).
pub fn endpoint_labels(
    pod_labels: &BTreeMap<String, String>,
    ns: &str,
    ns_labels: &BTreeMap<String, String>,
) -> Labels {
    let mut l: Labels = pod_labels
        .iter()
        .map(|(k, v)| format!("k8s:{k}={v}"))
        .collect();
    l.insert(format!("k8s:{NAMESPACE_LABEL}={ns}"));
    for (k, v) in ns_labels {
        l.insert(format!("k8s:{NAMESPACE_LABELS_PREFIX}{k}={v}"));
    }
    l
}

/// FNV-1a over the labels: fixed forever (identities must not change between versions).
fn hash(labels: &Labels) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for l in labels {
        for b in l.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The number a label set gets unless another set holds it.
fn first_choice(labels: &Labels) -> u32 {
    MIN_LABELS + (hash(labels) % u64::from(MAX_LABELS - MIN_LABELS)) as u32
}

/// The label sets in use and their identities.
#[derive(Debug, Default, Clone)]
pub struct Allocator {
    by_labels: BTreeMap<Labels, u32>,
    by_id: BTreeMap<u32, Labels>,
}

impl Allocator {
    /// Makes `wanted` exactly the label sets with an identity: keeps the identities of those
    /// that had one, frees the others', allocates for the new ones (in label order).
    pub fn resolve(&mut self, wanted: &BTreeSet<Labels>) {
        let gone: Vec<Labels> = self
            .by_labels
            .keys()
            .filter(|l| !wanted.contains(*l))
            .cloned()
            .collect();
        for l in gone {
            if let Some(id) = self.by_labels.remove(&l) {
                self.by_id.remove(&id);
            }
        }
        for l in wanted {
            if self.by_labels.contains_key(l) {
                continue;
            }
            let mut id = first_choice(l);
            while self.by_id.contains_key(&id) {
                id = if id + 1 >= MAX_LABELS {
                    MIN_LABELS
                } else {
                    id + 1
                };
            }
            self.by_labels.insert(l.clone(), id);
            self.by_id.insert(id, l.clone());
        }
    }

    pub fn get(&self, labels: &Labels) -> Option<u32> {
        self.by_labels.get(labels).copied()
    }

    pub fn labels(&self, id: u32) -> Option<&Labels> {
        self.by_id.get(&id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// One row of `GET /v1/identities`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct IdentityView {
    pub id: u32,
    pub labels: Vec<String>,
    /// Pods ("namespace/name") with this identity; none for reserved identities.
    pub endpoints: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_carry_the_namespace_as_cilium_does() {
        let l = endpoint_labels(
            &labels(&[("app", "frontend")]),
            "shop",
            &labels(&[("team", "web")]),
        );
        let want: Labels = [
            "k8s:app=frontend",
            "k8s:io.kubernetes.pod.namespace=shop",
            "k8s:io.cilium.k8s.namespace.labels.team=web",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        assert_eq!(l, want);
    }

    #[test]
    fn identities_are_stable_and_independent_of_order() {
        let sets: Vec<Labels> = (0..200)
            .map(|i| {
                endpoint_labels(
                    &labels(&[("app", &format!("a{i}"))]),
                    "ns",
                    &BTreeMap::new(),
                )
            })
            .collect();
        let mut a = Allocator::default();
        a.resolve(&sets.iter().cloned().collect());
        // another appliance that saw them in two steps, in another order
        let mut b = Allocator::default();
        b.resolve(&sets[100..].iter().cloned().collect());
        b.resolve(&sets.iter().cloned().collect());
        for s in &sets {
            let id = a.get(s).unwrap();
            assert_eq!(b.get(s), Some(id));
            assert!((MIN_LABELS..MAX_LABELS).contains(&id));
        }
        // one set goes: the others keep their numbers
        let mut fewer: BTreeSet<Labels> = sets.iter().cloned().collect();
        fewer.remove(&sets[7]);
        let before = a.get(&sets[8]);
        a.resolve(&fewer);
        assert_eq!(a.get(&sets[7]), None);
        assert_eq!(a.get(&sets[8]), before);
        assert_eq!(a.len(), 199);
    }

    #[test]
    fn a_set_whose_number_is_taken_gets_the_next_free_one() {
        let y: Labels = ["k8s:app=y".to_string()].into();
        let z: Labels = ["k8s:app=z".to_string()].into();
        let mut a = Allocator::default();
        // z already holds y's first choice (as if their hashes collided)
        let first = first_choice(&y);
        a.by_id.insert(first, z.clone());
        a.by_labels.insert(z.clone(), first);
        a.resolve(&[y.clone(), z.clone()].into());
        assert_eq!(a.get(&z), Some(first), "an identity given is kept");
        assert_eq!(a.get(&y), Some(first + 1));
    }
}
