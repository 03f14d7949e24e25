//! The listeners: TLS termination, caller identity, and forwarding to the upstream through
//! the kernel's registered-socket path.

pub mod grpc;
pub mod mysql;
