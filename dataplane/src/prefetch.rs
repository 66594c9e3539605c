//! Cache prefetch hints for the fast path's batched lookups: a stage asks for the lines a
//! batch's packets will need in one pass and uses them in a later one, so the misses overlap.

/// Asks the CPU to bring the first and last cache lines of `*r` into L1: all of a value of up
/// to 64 bytes, which may straddle two lines. A hint only: it never faults and changes no
/// result.
#[inline(always)]
pub fn read<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        let first = (r as *const T).cast::<i8>();
        let last = first.wrapping_add(std::mem::size_of::<T>().max(1) - 1);
        // SAFETY: `_mm_prefetch` is a hint that never faults or reads into the program; both
        // addresses lie within `*r`, a live reference.
        unsafe {
            core::arch::x86_64::_mm_prefetch(first, core::arch::x86_64::_MM_HINT_T0);
            if (last as usize) / 64 != (first as usize) / 64 {
                core::arch::x86_64::_mm_prefetch(last, core::arch::x86_64::_MM_HINT_T0);
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}
