//! An allocator for the big fast-path tables (conntrack): large blocks come from their own
//! anonymous mapping, advised to use transparent huge pages and touched up front.
//!
//! Why: a million tracked connections spread their hash buckets and entries over ~100 MB, and
//! a lookup touches two or three random places in it. With 4 KiB pages nearly every one is a TLB
//! miss, and in a VM each miss is a two-dimensional page walk: the lookup cost was dominated by
//! address translation. 2 MiB pages make the whole table a few hundred TLB entries. Touching the
//! memory at allocation commits it then (the table's memory is bounded and preallocated, as
//! Cilium's BPF maps are), so the fast path never takes a page fault for it.
//!
//! Blocks smaller than a huge page, or aligned beyond a page, use the global allocator. Where
//! transparent huge pages are off (`/sys/kernel/mm/transparent_hugepage/enabled` = never), the
//! advice is ignored and the memory is ordinary pages: correct, only slower.

use allocator_api2::alloc::{AllocError, Allocator, Global, Layout};
use std::ptr::NonNull;

/// The x86-64 (and arm64 4K-granule) PMD size.
const HUGE_PAGE: usize = 2 << 20;
/// Memory is touched at this stride to fault it in (the base page size).
const PAGE: usize = 4096;

#[derive(Debug, Clone, Copy, Default)]
pub struct HugePages;

fn mapped_len(size: usize) -> usize {
    size.div_ceil(HUGE_PAGE) * HUGE_PAGE
}

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE_PAGE && layout.align() <= PAGE
}

// SAFETY: blocks are either the global allocator's (same layout test on both paths) or whole
// private anonymous mappings of `mapped_len(size)` bytes, page aligned (>= any align accepted
// here), zero-filled, valid until `deallocate` unmaps exactly that range.
unsafe impl Allocator for HugePages {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if !is_huge(&layout) {
            return Global.allocate(layout);
        }
        let len = mapped_len(layout.size());
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(AllocError);
        }
        // SAFETY: advice on the range just mapped; failure (THP off) leaves normal pages.
        unsafe {
            libc::madvise(p, len, libc::MADV_HUGEPAGE);
        }
        let base = p.cast::<u8>();
        // commit now: one write per base page faults the range in (as huge pages when granted)
        for off in (0..len).step_by(PAGE) {
            // SAFETY: within the mapping, which is writable.
            unsafe { base.add(off).write_volatile(0) };
        }
        let ptr = NonNull::new(base).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(ptr, layout.size()))
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if !is_huge(&layout) {
            // SAFETY: allocated by Global with this layout (same test as in allocate).
            unsafe { Global.deallocate(ptr, layout) };
            return;
        }
        // SAFETY: the mapping allocate() made for this layout, unmapped once.
        unsafe {
            libc::munmap(ptr.as_ptr().cast(), mapped_len(layout.size()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_blocks_work_and_come_back_zeroed() {
        let mut v: allocator_api2::vec::Vec<u64, HugePages> =
            allocator_api2::vec::Vec::with_capacity_in(1 << 20, HugePages);
        assert!(v.iter().all(|x| *x == 0));
        v.extend((0..1u64 << 20).map(|i| i * 3));
        assert_eq!(v[12345], 12345 * 3);
        let mut small: allocator_api2::vec::Vec<u8, HugePages> =
            allocator_api2::vec::Vec::new_in(HugePages);
        small.extend_from_slice(b"small");
        assert_eq!(&small[..], b"small");
        let mut m: hashbrown::HashMap<u32, u32, hashbrown::DefaultHashBuilder, HugePages> =
            hashbrown::HashMap::with_capacity_in(1 << 18, HugePages);
        for i in 0..1000 {
            m.insert(i, i + 1);
        }
        assert_eq!(m.get(&999), Some(&1000));
    }
}
