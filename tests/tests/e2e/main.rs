//! vtguard's end-to-end tests, as one test binary: each file is a module, so the agent and its
//! dependencies (tonic, hyper, rustls, aya) are linked once, not once per file.
//!
//! Running in one process means tests of different files run side by side (the harness's
//! threads). What must not overlap says so itself: every test that attaches kernel programs,
//! counts attachments or runs the demo (fixed ports, the cgroup2 root) holds
//! [`vtguard_tests::serial`] for its whole length. No test changes process-wide state (the
//! environment, the working directory, signal handlers): signals go to child processes only.

use std::path::Path;

mod agent;
mod bind_guard;
mod cluster;
mod demo;
mod grpc;
mod grpc_acl;
mod grpc_bad_input;
mod grpc_kernel;
mod grpc_python;
mod impostor;
mod intercept;
mod kernel;
mod limits;
mod mysql;
mod mysql_agent;
mod mysql_bad_input;
mod mysql_kernel;
mod mysql_pipelining;
mod tls_rotation;

/// The demo's scenario (tests/examples/vtguard-demo), run in-process by [`demo`].
#[path = "../../examples/vtguard-demo/scenario.rs"]
mod scenario;

/// The agent binary cargo built for this test run (see src/bin/vtguard-under-test.rs for why
/// it is not `target/debug/vtguard`).
pub fn vtguard_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_vtguard-under-test"))
}

/// Starts `vtguard <global> run --config <config>` from [`vtguard_bin`].
pub fn spawn_agent(
    global: &[&str],
    config: &Path,
) -> std::io::Result<vtguard_tests::agent::AgentProcess> {
    vtguard_tests::agent::AgentProcess::spawn(vtguard_bin(), global, config)
}
