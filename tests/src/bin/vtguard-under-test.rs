//! The `vtguard` agent binary, built inside this package for the end-to-end tests.
//!
//! Why a copy of the binary here and not `target/debug/vtguard`: cargo sets
//! `CARGO_BIN_EXE_<name>` — the path of a binary it has just built for this run — only for the
//! integration tests of the package that owns the binary. The agent's `vtguard` belongs to
//! vtguard-agent, so tests here could only guess its path, and a guess can find a stale file
//! from an older build. This binary is the agent's own `main.rs`, included verbatim (it only
//! parses the command line, sets up logging and calls into the agent library), so it cannot
//! drift from the real one; its distinct name keeps it from overwriting `target/debug/vtguard`.
//! Tests run it through `env!("CARGO_BIN_EXE_vtguard-under-test")`, which cargo rebuilds
//! before every test run.

include!("../../../agent/src/main.rs");
