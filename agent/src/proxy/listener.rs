//! What every listener does, whatever protocol it speaks: bind and accept, TLS with
//! certificate reload, the identity a verified client certificate proves, counters and status,
//! registering connections with the session registry, and opening the upstream connection
//! through the kernel's registered-socket path.
//!
//! A protocol (gRPC, MySQL) implements [`Serve`]: it serves one accepted connection with
//! the [`Core`] it is built on. The agent holds every listener as a [`Listener`] trait object.

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::server::TlsStream;
use tracing::{info, warn};

use super::{
    grpc::{GrpcConfig, GrpcProxy},
    mysql::{MysqlConfig, MysqlProxy},
    AsyncReadWrite,
};
use crate::{
    acl::{Decision, Enforcer},
    identity::{self, Identity},
    kernel::{self, Kernel},
    metrics::ListenerMetrics,
    sessions::{Session, Sessions},
    status::{ListenerStatus, Protocol},
    tls::{self, Reloadable, ServerTls},
};

/// Default TLS (gRPC) or login (MySQL) handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many client connections a listener holds open (`max-connections`,
/// `max-connections-per-identity`): no caller can take every descriptor of the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open client connections of the listener; beyond it a new connection is refused at
    /// once (MySQL: ERR 1040), before any handshake.
    pub max_connections: usize,
    /// Open client connections of one proven identity; beyond it the connection is refused
    /// with an error naming the identity and the key.
    pub max_per_identity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 10_000,
            max_per_identity: 1_000,
        }
    }
}

/// A connection beyond `max-connections-per-identity`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("identity {identity:?} already has {max} connections open on listener {listener} (max-connections-per-identity = {max}): close some, or raise the limit")]
pub struct TooManyConnections {
    pub listener: String,
    pub identity: String,
    pub max: usize,
}

/// A client connection counted against its listener's limit until dropped.
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A client connection counted against its identity's limit until dropped.
pub struct IdentitySlot {
    counts: Arc<parking_lot::Mutex<HashMap<String, usize>>>,
    identity: String,
}

impl Drop for IdentitySlot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.identity) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.identity);
            }
        }
    }
}

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub protocol: ProtocolConfig,
    /// The identities whose connections may reach the upstream at all (`identities`): merged
    /// into the kernel's access list for the upstream port. `None`: the listener adds none.
    pub identities: Option<BTreeSet<String>>,
    pub limits: Limits,
    /// `intercept`: new connections to the upstream's port, on every address of this node,
    /// are handed to this listener by the kernel (the callers keep dialling the published
    /// port).
    pub intercept: bool,
}

/// What a listener speaks, and that protocol's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtocolConfig {
    Grpc(GrpcConfig),
    Mysql(MysqlConfig),
}

/// What stops a listener from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listener {listener}: {source}")]
    Tls {
        listener: String,
        source: tls::Error,
    },
    #[error("listener {listener}: binding {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

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
    /// Whoever listens on the upstream's port is not its owner (`[[kernel.owner]]`): nothing
    /// was sent to it.
    #[error("refusing upstream {upstream}: {detail}")]
    NotOwner {
        upstream: SocketAddr,
        detail: String,
    },
    #[error("upstream {upstream} unavailable: {detail}")]
    Unavailable {
        upstream: SocketAddr,
        detail: String,
    },
}

/// Why a TLS handshake did not give a connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsRefusal {
    #[error("TLS handshake refused: {0}")]
    Handshake(std::io::Error),
    #[error("client certificate refused: {0}")]
    Certificate(identity::Error),
}

/// What the agent hands every listener it starts.
#[derive(Clone)]
pub struct Deps {
    /// Opens the upstream sockets when the agent enforces in the kernel.
    pub kernel: Option<Arc<Kernel>>,
    /// Whether the upstream port is kernel-protected (only for the warnings it decides).
    pub protected: bool,
    pub acl: Option<Arc<Enforcer>>,
    pub sessions: Arc<Sessions>,
}

/// The part of a listener every protocol shares.
pub struct Core {
    pub name: String,
    /// The name again, shared with every session of the listener.
    label: Arc<str>,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    tls: Option<Arc<Reloadable>>,
    /// Client certificates are verified against a CA: only then does one name the caller.
    verifies_clients: bool,
    pub kernel: Option<Arc<Kernel>>,
    pub protected: bool,
    pub acl: Option<Arc<Enforcer>>,
    sessions: Arc<Sessions>,
    protocol: Protocol,
    /// Where the listener counts; `vtguard status` reads the same counters.
    pub metrics: ListenerMetrics,
    limits: Limits,
    /// Open client connections, and by identity.
    open: Arc<AtomicUsize>,
    per_identity: Arc<parking_lot::Mutex<HashMap<String, usize>>>,
}

impl Core {
    /// Loads the listener's certificates. `relabel` renames TLS errors into the protocol's key
    /// names.
    pub fn new(
        cfg: &ListenerConfig,
        protocol: Protocol,
        server_tls: Option<&ServerTls>,
        relabel: fn(tls::Error) -> tls::Error,
        deps: Deps,
    ) -> Result<Self, Error> {
        let tls = server_tls
            .map(|t| Reloadable::new(t.clone()).map(Arc::new))
            .transpose()
            .map_err(|e| Error::Tls {
                listener: cfg.name.clone(),
                source: relabel(e),
            })?;
        Ok(Self {
            name: cfg.name.clone(),
            label: Arc::from(cfg.name.as_str()),
            listen: cfg.listen,
            upstream: cfg.upstream,
            tls,
            verifies_clients: server_tls.is_some_and(|t| t.ca.is_some()),
            kernel: deps.kernel,
            protected: deps.protected,
            acl: deps.acl,
            sessions: deps.sessions,
            protocol,
            metrics: crate::metrics::metrics().listener(&cfg.name, protocol),
            limits: cfg.limits,
            open: Arc::default(),
            per_identity: Arc::default(),
        })
    }

    /// Whether the listener serves TLS.
    pub fn serves_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Re-reads the certificate files (when changed, or always with `force`); a failed reload
    /// keeps the previous certificates.
    pub fn reload_tls(&self, force: bool) {
        let Some(t) = &self.tls else { return };
        match t.reload(force) {
            Ok(true) => {
                info!(listener = %self.name, "TLS certificates reloaded; new handshakes use them")
            }
            Ok(false) => {}
            Err(e) => {
                warn!(listener = %self.name, error = %e, "TLS reload failed; the previous certificates stay in use")
            }
        }
    }

    /// The TLS handshake on `io` with the current certificates, and the identity of the
    /// client certificate when the listener verifies client certificates. On a listener
    /// without TLS (callers check [`Core::serves_tls`] first) it refuses.
    pub async fn accept_tls<S>(&self, io: S) -> Result<(TlsStream<S>, Option<Identity>), TlsRefusal>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(t) = &self.tls else {
            return Err(TlsRefusal::Handshake(std::io::Error::other(
                "this listener serves no TLS",
            )));
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(t.current());
        let tls = acceptor.accept(io).await.map_err(TlsRefusal::Handshake)?;
        // Only a certificate the verifier checked against the CA names the caller.
        let identity = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(der) if self.verifies_clients => {
                Some(identity::from_certificate(der).map_err(TlsRefusal::Certificate)?)
            }
            _ => None,
        };
        Ok((tls, identity))
    }

    /// Counts a new client connection against `max-connections`; `None` when the listener is
    /// full.
    fn admit(&self) -> Option<Slot> {
        let n = self.open.fetch_add(1, Ordering::Relaxed);
        let slot = Slot(Arc::clone(&self.open));
        (n < self.limits.max_connections).then_some(slot)
    }

    /// Counts a client connection of `identity` against `max-connections-per-identity`.
    pub fn admit_identity(&self, identity: &str) -> Result<IdentitySlot, TooManyConnections> {
        let mut counts = self.per_identity.lock();
        let n = counts.entry(identity.to_owned()).or_default();
        if *n >= self.limits.max_per_identity {
            self.metrics.limit_refused();
            return Err(TooManyConnections {
                listener: self.name.clone(),
                identity: identity.to_owned(),
                max: self.limits.max_per_identity,
            });
        }
        *n += 1;
        Ok(IdentitySlot {
            counts: Arc::clone(&self.per_identity),
            identity: identity.to_owned(),
        })
    }

    /// Registers a client connection that carries `identity`: a policy that takes the
    /// identity away closes it.
    pub fn client_session(&self, identity: &str) -> Session {
        self.sessions
            .open(&self.label, self.upstream.port(), identity)
    }

    /// Registers an upstream connection opened for `identity`.
    pub fn upstream_session(&self, identity: &str) -> Session {
        self.sessions
            .open_upstream(&self.label, self.upstream.port(), identity)
    }

    /// Opens a TCP connection to the upstream for `identity`: through the kernel's
    /// registered-socket path when the agent enforces in the kernel, else a plain connect.
    pub async fn dial(&self, identity: &str) -> Result<Box<dyn AsyncReadWrite>, DialError> {
        let upstream = self.upstream;
        if self.sessions.refuses(identity, upstream.port()) {
            return Err(DialError::PolicyRemoved {
                identity: identity.to_owned(),
                upstream,
            });
        }
        let unavailable = |detail: String| DialError::Unavailable { upstream, detail };
        match &self.kernel {
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
                Err(kernel::Error::NotOwner(e)) => {
                    warn!(listener = %self.name, identity = %identity, "upstream connection refused, nothing sent: {e}");
                    self.metrics.upstream_not_owner();
                    Err(DialError::NotOwner {
                        upstream,
                        detail: e.to_string(),
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

    /// Makes a table-ACL decision visible to operators: a denial is counted by table,
    /// identity and reason; a dry-run would-be denial is logged and counted.
    pub fn account(&self, identity: &str, d: &Decision) {
        if let Decision::Deny { table, .. } = d {
            self.metrics.acl_denial(table.as_deref(), identity);
        } else if let Some(would) = d.would_deny() {
            self.metrics.dry_run_denial(identity);
            warn!(listener = %self.name, identity = %identity, "table ACL dry run: {would}");
        }
    }

    /// What `vtguard status` shows of every listener; the protocol adds its own part.
    pub fn status(&self) -> ListenerStatus {
        ListenerStatus {
            name: self.name.clone(),
            protocol: self.protocol,
            service: None,
            listen: self.listen,
            upstream: self.upstream,
            tls: self.tls.is_some(),
            counts: self.metrics.counts(),
        }
    }
}

/// A protocol served on a [`Core`].
pub trait Serve: Send + Sync + 'static {
    /// The listener's shared part.
    fn core(&self) -> &Core;

    /// Serves one accepted connection until it ends.
    fn connection(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> impl Future<Output = ()> + Send + 'static;

    /// Turns away a connection beyond `max-connections` (before any handshake): closing it is
    /// all a protocol can do before TLS; MySQL says so in an ERR first.
    fn refuse_full(&self, tcp: TcpStream) -> impl Future<Output = ()> + Send + 'static {
        async move { drop(tcp) }
    }

    /// The protocol's own part of `vtguard status`.
    fn status_extra(&self, _status: &mut ListenerStatus) {}
}

/// A running listener of any protocol, as the agent holds it.
pub trait Listener: Send + Sync {
    fn core(&self) -> &Core;
    /// What `vtguard status` shows of it.
    fn status(&self) -> ListenerStatus;
    /// Accepts connections until the task is dropped, each handled on a task of its own.
    fn serve(self: Arc<Self>, socket: TcpListener) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}

impl<P: Serve> Listener for P {
    fn core(&self) -> &Core {
        Serve::core(self)
    }

    fn status(&self) -> ListenerStatus {
        let mut s = Serve::core(self).status();
        self.status_extra(&mut s);
        s
    }

    fn serve(self: Arc<Self>, socket: TcpListener) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            loop {
                match socket.accept().await {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        let core = Serve::core(&*self);
                        core.metrics.connection();
                        let Some(slot) = core.admit() else {
                            core.metrics.limit_refused();
                            info!(listener = %core.name, %peer, max = core.limits.max_connections, "connection refused: the listener is full (max-connections)");
                            tokio::spawn(self.refuse_full(tcp));
                            continue;
                        };
                        let conn = Arc::clone(&self).connection(tcp, peer);
                        tokio::spawn(async move {
                            conn.await;
                            drop(slot);
                        });
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off rather than spin.
                        warn!(listener = %Serve::core(&*self).name, error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        })
    }
}

/// Builds the listener `cfg` describes (its certificates loaded), ready to bind and serve.
pub fn build(cfg: &ListenerConfig, deps: Deps) -> Result<Arc<dyn Listener>, Error> {
    Ok(match &cfg.protocol {
        ProtocolConfig::Grpc(g) => Arc::new(GrpcProxy::new(cfg, g, deps)?),
        ProtocolConfig::Mysql(m) => Arc::new(MysqlProxy::new(cfg, m, deps)?),
    })
}

/// Binds a listener's socket.
pub async fn bind(listener: &dyn Listener) -> Result<TcpListener, Error> {
    let core = listener.core();
    TcpListener::bind(core.listen)
        .await
        .map_err(|source| Error::Bind {
            listener: core.name.clone(),
            addr: core.listen,
            source,
        })
}
