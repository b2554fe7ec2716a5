//! The allocator's tuning for a long-running daemon (glibc only).
//!
//! A relist allocates a few large buffers (the runtime's listing, decoded;
//! the new listing) and frees them once it is applied. Two glibc defaults
//! then keep freed memory resident:
//! - glibc raises its mmap threshold each time such a buffer is freed, so
//!   after the first relists these buffers come from the heap instead, and
//!   the holes they leave stay resident;
//! - each thread that allocates may get an arena of its own, and a relist
//!   that runs on one worker thread and then another fragments both.
//!
//! With 50,000 containers (`tests/faults_grpc.rs`, `measure_…`, whose doc
//! comment has today's figures), the fixed threshold took the RSS after a
//! burst from 252 to 173 MiB, and one arena then took the peak from 174 to
//! 146 MiB. `MALLOC_MMAP_THRESHOLD_` and `MALLOC_ARENA_MAX` in the
//! environment still win: glibc reads them before `main`, and the setting
//! each names is left alone then.

/// The fixed mmap threshold: glibc's own starting value.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 128 * 1024;

/// One arena: the daemon has two worker threads, and glibc's per-thread
/// caches keep them from contending on it.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: i32 = 1;

/// Sets both (see the module). Call it first in `main`, before any other
/// thread exists.
pub(crate) fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (variable, option, value) in [
        (
            "MALLOC_MMAP_THRESHOLD_",
            nix::libc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        ),
        ("MALLOC_ARENA_MAX", nix::libc::M_ARENA_MAX, ARENA_MAX),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: `mallopt` only changes the allocator's parameters; it
            // is called before any other thread is started, so no
            // allocation runs concurrently, and its arguments are a valid
            // option and value.
            #[allow(unsafe_code)]
            let _ = unsafe { nix::libc::mallopt(option, value) };
        }
    }
}

/// Listings of at least this many pods and containers are followed by a
/// trim ([`after_relist`]).
const TRIM_FROM_ENTRIES: usize = 1_000;

/// Whether `MALLOC_TRIM_THRESHOLD_` is set (read once).
static TRIM_TAKEN_BY_ENVIRONMENT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

/// Hands glibc's free memory back to the system after a relist that listed
/// at least [`TRIM_FROM_ENTRIES`] pods and containers.
///
/// Every relist frees what it built: the runtime's `ListContainers` message,
/// which tonic buffers whole (about 400 B per container), its decoded form
/// and the listing it replaces. glibc keeps those pages resident between
/// relists, which at 50,000 containers was about 620 B per container on top
/// of what pleg keeps (`bench/PROFILES.md`). `malloc_trim` gives back the
/// free pages of the heap, not only its top. It costs a walk of the free
/// chunks and, at the next relist, the page faults of memory taken again;
/// small listings are not worth it.
///
/// `MALLOC_TRIM_THRESHOLD_` in the environment turns it off: whoever sets it
/// takes charge of trimming.
pub(crate) fn after_relist(summary: &pleg::RelistSummary) {
    if summary.pods + summary.containers < TRIM_FROM_ENTRIES
        || *TRIM_TAKEN_BY_ENVIRONMENT
            .get_or_init(|| std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some())
    {
        return;
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = tokio::time::Instant::now();
        // SAFETY: `malloc_trim` only returns free memory to the system; it
        // takes the allocator's own locks and may run beside any other
        // allocation.
        #[allow(unsafe_code)]
        let released = unsafe { nix::libc::malloc_trim(0) };
        tracing::debug!(
            entries = summary.pods + summary.containers,
            released = released != 0,
            took_us = started.elapsed().as_micros(),
            "malloc_trim after relist"
        );
    }
}
