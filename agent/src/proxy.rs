//! The listeners: TLS termination, caller identity, and forwarding to the upstream through
//! the kernel's registered-socket path.

pub mod grpc;
pub mod mysql;

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpStream};
use tracing::{info, warn};

use crate::tls::Reloadable;

/// Re-reads a listener's certificate files (when changed, or always with `force`); a failed
/// reload keeps the previous certificates.
pub fn reload_tls(listener: &str, tls: Option<&Reloadable>, force: bool) {
    if let Some(t) = tls {
        match t.reload(force) {
            Ok(true) => {
                info!(listener = %listener, "TLS certificates reloaded; new handshakes use them")
            }
            Ok(false) => {}
            Err(e) => {
                warn!(listener = %listener, error = %e, "TLS reload failed; the previous certificates stay in use")
            }
        }
    }
}

/// Accepts connections until the task is dropped, each handled on a task of its own.
pub async fn accept_loop<F, Fut>(name: &str, listener: TcpListener, handle: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                tokio::spawn(handle(tcp, peer));
            }
            Err(e) => {
                // Out of descriptors and the like: back off rather than spin.
                warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
