//! A relist with no change must not allocate per pod. A counting global
//! allocator measures it on 100, 1,000 and 10,000 pods.

// Test and benchmark code: an `expect` names what was expected, and the
// pedantic lints, meant for the library, are not applied here.
#![allow(clippy::expect_used, clippy::pedantic, unreachable_pub)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use pleg::diff::{Diff, Records, diff_into};
use pleg::model::Listing;
use pleg::runtime::fake::{FixedRuntime, synthetic_pods};
use pleg::{Config, Pleg};

struct Counting;

// Both the switch and the count are per thread, so tests running in parallel
// on other threads do not disturb each other's counts.
thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator; we only count.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made on this thread while `f` runs.
fn allocations_during<T>(f: impl FnOnce() -> T) -> (u64, T) {
    let before = ALLOCATIONS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (ALLOCATIONS.with(Cell::get) - before, out)
}

const SIZES: [usize; 3] = [100, 1_000, 10_000];

#[test]
fn a_no_change_diff_allocates_nothing_at_any_size() {
    for pods in SIZES {
        let first = Listing::new(synthetic_pods(pods));
        let mut records = Records::new();
        let mut out = Diff::new();
        diff_into(&records, &first, &mut out);
        for change in out.changes() {
            records.apply(&change.uid, change.new.as_ref());
        }
        // A second listing with the same content in fresh memory, as a runtime
        // would send it.
        let second = Listing::new(synthetic_pods(pods));
        let (allocations, changed) = allocations_during(|| {
            diff_into(&records, &second, &mut out);
            out.changes().len()
        });
        assert_eq!(changed, 0);
        assert_eq!(allocations, 0, "{pods} pods");
    }
}

#[test]
fn allocations_of_a_no_change_relist_do_not_grow_with_the_number_of_pods() {
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("tokio runtime");
    let mut per_size = Vec::new();
    for pods in SIZES {
        let runtime = FixedRuntime::new(Listing::new(synthetic_pods(pods)));
        let pleg = Pleg::new(runtime, Config::generic()).expect("valid config");
        let _subscriber = pleg.subscribe();
        tokio.block_on(async {
            // The first relist reports every pod; the second warms the buffers.
            pleg.relist().await.expect("listing works");
            pleg.relist().await.expect("listing works");
        });
        let (allocations, summary) = allocations_during(|| tokio.block_on(pleg.relist()));
        let summary = summary.expect("listing works");
        assert_eq!((summary.pods, summary.events), (pods, 0));
        per_size.push(allocations);
    }
    println!("allocations of one no-change relist at {SIZES:?} pods: {per_size:?}");
    assert!(
        per_size.iter().all(|&a| a == per_size[0]),
        "allocations grew with the pods: {per_size:?}"
    );
    assert!(
        per_size[0] < 16,
        "a handful of fixed allocations, got {}",
        per_size[0]
    );
}
