//! `cargo xtask demo`: Vitess's encrypted-transport scenario (docs/VITESS.md §5) end to end on
//! loopback, through the real `vtguard` binary, printing each step and its outcome
//! (scenario.rs).
//!
//! The agent binary is the one named by `VTGUARD_BIN`, which `cargo xtask demo` sets to the
//! `vtguard` it has just built; the demo never guesses a path under target/.
//!
//! Exit status: 0 when every step that ran had the expected outcome, 1 otherwise (2 when
//! `VTGUARD_BIN` is not set).

mod scenario;

use std::{path::PathBuf, process::ExitCode};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let Some(bin) = std::env::var_os("VTGUARD_BIN").map(PathBuf::from) else {
        eprintln!("vtguard-demo: VTGUARD_BIN is not set: run the demo with `cargo xtask demo`, which builds vtguard and sets it");
        return ExitCode::from(2);
    };
    let report = scenario::run(&bin).await;
    if report.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
