//! The listeners: TLS termination, caller identity, and forwarding to the upstream through
//! the kernel's registered-socket path. [`listener`] is what both protocols share; [`grpc`]
//! and [`mysql`] are the protocols.

pub mod grpc;
pub mod listener;
pub mod mysql;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream either way (a TCP connection, a TLS session over one, ...).
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncReadWrite for T {}
