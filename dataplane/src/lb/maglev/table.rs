//! A built Maglev table as the datapath keeps it.

use std::sync::Arc;

/// A built table as the datapath keeps it: slot -> index into the member list, one byte a slot
/// when every index fits in one (a service of up to 256 backends, which is nearly all: 16 KiB
/// at the default size instead of 32, half the memory 10,000 services fault in and the lookups
/// of new connections miss on), two otherwise. Empty: no member takes new connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Table {
    Narrow(Arc<[u8]>),
    Wide(Arc<[u16]>),
}

impl Default for Table {
    fn default() -> Self {
        Table::Narrow(Arc::new([]))
    }
}

impl From<Vec<u16>> for Table {
    fn from(slots: Vec<u16>) -> Table {
        match u8::try_from(slots.iter().copied().max().unwrap_or(0)) {
            Ok(_) => Table::Narrow(slots.iter().map(|&i| i as u8).collect()),
            Err(_) => Table::Wide(slots.into()),
        }
    }
}

impl Table {
    pub fn len(&self) -> usize {
        match self {
            Table::Narrow(t) => t.len(),
            Table::Wide(t) => t.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The member at `slot` (< `len()`; out of range: None).
    #[inline]
    pub fn get(&self, slot: usize) -> Option<usize> {
        match self {
            Table::Narrow(t) => t.get(slot).map(|&i| usize::from(i)),
            Table::Wide(t) => t.get(slot).map(|&i| usize::from(i)),
        }
    }

    /// Asks the cache for `slot` ahead of `get` (a hint: nothing if out of range).
    #[inline]
    pub fn prefetch(&self, slot: usize) {
        match self {
            Table::Narrow(t) => t.get(slot).map(crate::prefetch::read),
            Table::Wide(t) => t.get(slot).map(crate::prefetch::read),
        };
    }

    /// The slots' members in order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).filter_map(|s| self.get(s))
    }

    /// Whether both are the same table in memory (not only equal).
    pub fn ptr_eq(a: &Table, b: &Table) -> bool {
        match (a, b) {
            (Table::Narrow(a), Table::Narrow(b)) => Arc::ptr_eq(a, b),
            (Table::Wide(a), Table::Wide(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}
