//! A counting global allocator: the bytes live on the heap (every allocation minus every free, all
//! threads), for the soak tests' leak checks. A test binary opts in with
//!
//! ```text
//! #[global_allocator]
//! static GLOBAL: p2pd_tests::heap::LiveBytes = p2pd_tests::heap::LiveBytes;
//! ```
//!
//! and reads [`live_bytes`]; in a binary without it, [`live_bytes`] stays 0. It counts every
//! thread, so a test that measures must not run next to another test of its binary (take a lock
//! shared by the binary's tests).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

/// The system allocator, counting the bytes live on the heap.
pub struct LiveBytes;

static LIVE: AtomicI64 = AtomicI64::new(0);

fn size(layout: Layout) -> i64 {
    i64::try_from(layout.size()).unwrap_or(i64::MAX)
}

// SAFETY: every call is forwarded to `System` unchanged; only a counter is updated on the side.
unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(size(layout), Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(size(layout), Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(size(layout), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            let new = i64::try_from(new_size).unwrap_or(i64::MAX);
            LIVE.fetch_add(new - size(layout), Ordering::Relaxed);
        }
        p
    }
}

/// Bytes live on the heap now (0 unless the binary's global allocator is [`LiveBytes`]).
pub fn live_bytes() -> i64 {
    LIVE.load(Ordering::Relaxed)
}
