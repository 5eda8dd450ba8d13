//! The `ferry` binary: tune the allocator, then run the command line
//! ([`ferry::cli`]).

use std::process::ExitCode;

fn main() -> ExitCode {
    tune_allocator();
    ferry::cli::main()
}

/// glibc's allocator, set before any thread starts: one arena, and freed
/// memory given back to the system at once. With its defaults (an arena per
/// thread: tokio's workers, its blocking pool, sled's threads) ferry holding
/// a 300,000-message backlog behind 37 links kept 132 MiB of RSS, most of it
/// freed but retained heap, even after the backlog drained; with these
/// settings 65 MiB, at the same drain rate (docs/performance.md). Either
/// setting alone saved far less. The environment (`MALLOC_ARENA_MAX`,
/// `MALLOC_TRIM_THRESHOLD_`) can still override both.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_allocator() {
    let set_by_env = |name: &str| std::env::var_os(name).is_some();
    // SAFETY: mallopt only changes allocator parameters; it is called first
    // thing in main, before any other thread exists.
    unsafe {
        if !set_by_env("MALLOC_ARENA_MAX") {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
        if !set_by_env("MALLOC_TRIM_THRESHOLD_") {
            libc::mallopt(libc::M_TRIM_THRESHOLD, 0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_allocator() {}
