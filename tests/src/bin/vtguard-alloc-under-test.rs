//! The `vtguard` agent with its global allocator chosen when it starts, for the allocator
//! benchmark (benches/allocator.rs): `VTGUARD_ALLOCATOR` = `glibc` (the C library's malloc, the
//! default), `jemalloc` (tikv-jemallocator; tuned at run time with `_RJEM_MALLOC_CONF`) or
//! `mimalloc` (tuned with `MIMALLOC_*`). One build holds all three, so a single benchmark run
//! compares them on the same code, alternating; every allocation goes through the same
//! dispatch (one relaxed load and a branch), whichever allocator is chosen.
//!
//! Apart from the allocator this is the agent's `main.rs` (which declares the allocator the
//! real binary uses, so it cannot be included here as vtguard-under-test includes it).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    ffi::CStr,
    process::ExitCode,
    sync::atomic::{AtomicU8, Ordering},
};

use clap::Parser;
use mimalloc::MiMalloc;
use tikv_jemallocator::Jemalloc;

const UNSET: u8 = 0;
const GLIBC: u8 = 1;
const JEMALLOC: u8 = 2;
const MIMALLOC: u8 = 3;
const UNKNOWN: u8 = 4;

static CHOICE: AtomicU8 = AtomicU8::new(UNSET);

/// The allocator named by `VTGUARD_ALLOCATOR`, read at the first allocation (before `main`,
/// while the process has one thread) and fixed from then on: memory is always freed by the
/// allocator that gave it.
#[inline]
fn choice() -> u8 {
    match CHOICE.load(Ordering::Relaxed) {
        UNSET => {
            // SAFETY: getenv with a NUL-terminated name; nothing changes the environment
            // while the process starts.
            let v = unsafe { libc::getenv(c"VTGUARD_ALLOCATOR".as_ptr()) };
            let c = if v.is_null() {
                GLIBC
            } else {
                // SAFETY: getenv returned a NUL-terminated string.
                match unsafe { CStr::from_ptr(v) }.to_bytes() {
                    b"glibc" | b"" => GLIBC,
                    b"jemalloc" => JEMALLOC,
                    b"mimalloc" => MIMALLOC,
                    // Served by glibc; main() refuses to run with it.
                    _ => UNKNOWN,
                }
            };
            CHOICE.store(c, Ordering::Relaxed);
            c
        }
        c => c,
    }
}

struct Chosen;

// SAFETY: every call is forwarded to one allocator, the same for the life of the process.
unsafe impl GlobalAlloc for Chosen {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            match choice() {
                JEMALLOC => Jemalloc.alloc(layout),
                MIMALLOC => MiMalloc.alloc(layout),
                _ => System.alloc(layout),
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's guarantees.
        unsafe {
            match choice() {
                JEMALLOC => Jemalloc.alloc_zeroed(layout),
                MIMALLOC => MiMalloc.alloc_zeroed(layout),
                _ => System.alloc_zeroed(layout),
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from the same allocator (the choice never changes).
        unsafe {
            match choice() {
                JEMALLOC => Jemalloc.dealloc(ptr, layout),
                MIMALLOC => MiMalloc.dealloc(ptr, layout),
                _ => System.dealloc(ptr, layout),
            }
        }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from the same allocator (the choice never changes).
        unsafe {
            match choice() {
                JEMALLOC => Jemalloc.realloc(ptr, layout, new_size),
                MIMALLOC => MiMalloc.realloc(ptr, layout, new_size),
                _ => System.realloc(ptr, layout, new_size),
            }
        }
    }
}

#[global_allocator]
static GLOBAL: Chosen = Chosen;

fn main() -> ExitCode {
    if choice() == UNKNOWN {
        eprintln!("VTGUARD_ALLOCATOR must be glibc, jemalloc or mimalloc");
        return ExitCode::from(2);
    }
    let cli = vtguard_agent::cli::Cli::parse();
    vtguard_agent::telemetry::init(cli.log_format);
    vtguard_agent::cli::run(cli)
}
