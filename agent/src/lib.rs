//! vtguard: a node agent that enforces the Vitess transport security model, with the kernel's
//! help. See docs/DESIGN.md for the architecture; this crate is the userspace half.

pub mod acl;
pub mod admin;
pub mod app;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod identity;
pub mod kernel;
pub mod metrics;
pub mod proxy;
pub mod sessions;
pub mod status;
pub mod telemetry;
pub mod tls;
