//! Software prefetch: a hint to bring a value's cache line in before it is used, so the
//! misses of several independent lookups overlap.

/// Prefetches the cache line holding `value` (a no-op where the target has no prefetch).
#[inline(always)]
pub fn read<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        // Safety: a prefetch never faults and reads nothing the program sees; the pointer comes
        // from a live reference.
        #[allow(unused_unsafe)]
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>((value as *const T).cast())
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
