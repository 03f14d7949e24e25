use std::process::ExitCode;

use clap::Parser;

/// jemalloc rather than the C library's malloc: with glibc, the memory of closed connections
/// stayed in its per-thread arenas (RSS at its peak after every connection had closed); jemalloc
/// with the options below gives it back. Measured with glibc, jemalloc and mimalloc side by side:
/// `cargo bench -p vtguard-tests --bench allocator` (README, Benchmarks).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation (before `main`): a background thread
/// returns unused pages to the system over jemalloc's decay time (10 s), also while the agent
/// is idle (without it, jemalloc purges only while it is busy allocating, so an agent left idle
/// after its connections closed kept their memory). `_RJEM_MALLOC_CONF` in the environment
/// overrides them.
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 23] = b"background_thread:true\0";

fn main() -> ExitCode {
    let cli = vtguard_agent::cli::Cli::parse();
    vtguard_agent::telemetry::init(cli.log_format);
    vtguard_agent::cli::run(cli)
}
