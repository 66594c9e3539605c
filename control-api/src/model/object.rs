//! How the store keeps an object once it is validated and normalised: as its JSON text.
//!
//! As a tree of `serde_json` maps, every JSON object is at least one B-tree leaf of ~630
//! bytes however few keys it has: an EndpointSlice of 10 endpoints takes ~12 KiB, a Pod as the
//! syncer sends it (its whole spec and status) tens of KiB. As text they take ~500 bytes and a
//! few KiB. At 10,000 Services, that is ~400 MB less for a full apply to fault in and zero
//! (BENCHMARKS.md, control plane).
//!
//! An object is parsed again only when its Service compiles (Services, EndpointSlices). What
//! the store rebuilds from all objects of a kind on a change (identities from every Pod, the
//! node table from every Node, the policy from every policy) it takes when each object is put
//! (`store::Facts`), so that no rebuild parses.

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// A validated, normalised object as stored. Its JSON has its keys in order (serde_json's maps
/// are sorted), so two objects are equal exactly when their texts are. An object nested too
/// deeply to parse again is kept as a tree.
pub struct Object(Repr);

enum Repr {
    Tree(Value),
    Text(Box<RawValue>),
}

/// Nesting beyond which an object stays a tree: its text must parse again under serde_json's
/// recursion limit (128), and a YAML body is not held to that limit when it is read.
const MAX_TEXT_NESTING: usize = 100;

impl Object {
    pub fn new(v: &Value) -> Object {
        if nesting(v, MAX_TEXT_NESTING) < MAX_TEXT_NESTING {
            // serialising a Value cannot fail (its map keys are strings), and what serde_json
            // writes is valid JSON
            if let Ok(raw) = serde_json::value::to_raw_value(v) {
                return Object(Repr::Text(raw));
            }
        }
        Object(Repr::Tree(v.clone()))
    }

    /// The object as JSON: borrowed when it is kept parsed, parsed again when kept as text.
    pub fn value(&self) -> Cow<'_, Value> {
        match &self.0 {
            Repr::Tree(v) => Cow::Borrowed(v),
            // text serde_json wrote, no deeper than MAX_TEXT_NESTING: it parses
            Repr::Text(t) => Cow::Owned(serde_json::from_str(t.get()).unwrap_or(Value::Null)),
        }
    }

    /// Whether this is the object `v` (already normalised).
    pub fn is(&self, v: &Value) -> bool {
        *self == Object::new(v)
    }
}

/// How deeply `v` nests arrays and objects, counted up to `limit`.
fn nesting(v: &Value, limit: usize) -> usize {
    if limit == 0 {
        return 0;
    }
    let inner = |items: &mut dyn Iterator<Item = &Value>| {
        items.map(|c| nesting(c, limit - 1)).max().unwrap_or(0)
    };
    match v {
        Value::Array(a) => 1 + inner(&mut a.iter()),
        Value::Object(o) => 1 + inner(&mut o.values()),
        _ => 0,
    }
}

impl PartialEq for Object {
    fn eq(&self, other: &Object) -> bool {
        match (&self.0, &other.0) {
            (Repr::Text(a), Repr::Text(b)) => a.get() == b.get(),
            (Repr::Tree(a), Repr::Tree(b)) => a == b,
            _ => self.value() == other.value(),
        }
    }
}

impl Serialize for Object {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Tree(v) => v.serialize(s),
            Repr::Text(t) => t.serialize(s),
        }
    }
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Repr::Tree(v) => write!(f, "{v}"),
            Repr::Text(t) => f.write_str(t.get()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn objects_are_kept_as_text_and_read_back_the_same() {
        let v = json!({"kind": "Service", "spec": {"ports": [{"port": 80}], "clusterIP": "10.96.0.1"},
                       "metadata": {"name": "a", "annotations": {"x": "1.5"}}, "n": 1.25});
        let o = Object::new(&v);
        assert!(matches!(o.0, Repr::Text(_)));
        assert!(matches!(o.value(), Cow::Owned(_)));
        assert_eq!(*o.value(), v);
        assert!(o.is(&v));
        assert!(!o.is(&json!({"kind": "Service"})));
        // serialised as it is stored: the same JSON the tree would give
        assert_eq!(serde_json::to_string(&o).unwrap(), v.to_string());
        assert_eq!(o, Object::new(&v));
        assert_ne!(o, Object::new(&json!({"kind": "Pod"})));
    }

    #[test]
    fn a_deeply_nested_object_stays_a_tree() {
        let mut v = json!(1);
        for _ in 0..150 {
            v = json!([v]);
        }
        let o = Object::new(&v);
        assert!(matches!(o.0, Repr::Tree(_)));
        assert!(matches!(o.value(), Cow::Borrowed(_)));
        assert_eq!(*o.value(), v);
        assert!(o.is(&v));
        assert_eq!(nesting(&v, 200), 150);
        assert_ne!(o, Object::new(&json!(1)));
    }
}
