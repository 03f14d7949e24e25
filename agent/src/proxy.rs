//! The listeners: TLS termination, caller identity, and forwarding to the upstream through
//! the kernel's registered-socket path.

pub mod grpc;
pub mod mysql;

use std::{future::Future, net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tracing::{info, warn};

use crate::{
    acl::Decision,
    kernel::{self, Kernel},
    metrics::ListenerMetrics,
    sessions::Sessions,
    tls::Reloadable,
};

/// A byte stream either way (a TCP connection, a TLS session over one, ...).
pub trait AsyncReadWrite: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> AsyncReadWrite for T {}

/// Why the upstream connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// A policy that removes this identity is being applied; vtguard refuses it meanwhile.
    #[error("identity {identity:?} may no longer reach upstream {upstream}: the policy that removed it is being applied")]
    PolicyRemoved {
        identity: String,
        upstream: SocketAddr,
    },
    /// The kernel refused this identity the upstream's port (EPERM at connect()).
    #[error("the kernel refused identity {identity:?} a connection to upstream {upstream}: grant it in [[kernel.access]] for port {}", upstream.port())]
    KernelRefused {
        identity: String,
        upstream: SocketAddr,
    },
    #[error("upstream {upstream} unavailable: {detail}")]
    Unavailable {
        upstream: SocketAddr,
        detail: String,
    },
}

/// Opens a TCP connection to `upstream` for `identity`: through the kernel's registered-socket
/// path when the agent enforces in the kernel, else a plain connect.
pub async fn dial(
    kernel: Option<&Kernel>,
    sessions: &Sessions,
    identity: &str,
    upstream: SocketAddr,
) -> Result<Box<dyn AsyncReadWrite>, DialError> {
    if sessions.refuses(identity, upstream.port()) {
        return Err(DialError::PolicyRemoved {
            identity: identity.to_owned(),
            upstream,
        });
    }
    let unavailable = |detail: String| DialError::Unavailable { upstream, detail };
    match kernel {
        Some(k) => match k.connect(identity, upstream).await {
            Ok(s) => {
                let _ = s.get_ref().set_nodelay(true);
                Ok(Box::new(s))
            }
            Err(kernel::Error::Socket(e)) if e.raw_os_error() == Some(libc::EPERM) => {
                Err(DialError::KernelRefused {
                    identity: identity.to_owned(),
                    upstream,
                })
            }
            Err(e) => Err(unavailable(e.to_string())),
        },
        None => {
            let s = TcpStream::connect(upstream)
                .await
                .map_err(|e| unavailable(e.to_string()))?;
            let _ = s.set_nodelay(true);
            Ok(Box::new(s))
        }
    }
}

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

/// Makes a table-ACL decision visible to operators: a denial is counted by table, identity
/// and reason; a dry-run would-be denial is logged and counted.
pub fn account(metrics: &ListenerMetrics, identity: &str, d: &Decision) {
    if let Decision::Deny { table, .. } = d {
        metrics.acl_denial(table.as_deref(), identity);
    } else if let Some(would) = d.would_deny() {
        metrics.dry_run_denial(identity);
        warn!(listener = %metrics.name(), identity = %identity, "table ACL dry run: {would}");
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
