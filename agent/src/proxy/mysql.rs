//! The MySQL listener: speaks the protocol to the client up to the TLS switch, proves who the
//! caller is, then relays to the upstream (vtgate's MySQL port or mysqld) over a connection of
//! that caller's own, with every command that names tables checked by the table ACL.
//!
//! # Where the upstream connection comes from, and whose it is
//!
//! The kernel authorizes a socket at connect() time by the identity it was registered under,
//! and the policy grants identities per port (DESIGN.md: one upstream socket per authenticated
//! caller, registered under that caller's identity). The caller's identity is known only after
//! the TLS handshake (clientcert) or the login packet (passthrough), both of which come after
//! the server's greeting. So vtguard does not open the upstream before it knows who is
//! asking: no socket is ever opened for an anonymous caller, no listener-wide identity needs a
//! kernel grant, and a client that stalls in the handshake holds nothing upstream.
//!
//! Authentication still passes through to the upstream. The greeting vtguard sends carries
//! the upstream's capabilities, server version and auth plugin (learned from the last
//! upstream greeting this listener saw; a conservative set before the first) and a one-time
//! challenge of its own. Once the login names the caller, vtguard connects under that
//! identity, reads the upstream's greeting, and sends the client an AuthSwitchRequest with
//! the upstream's plugin and challenge: the client answers the upstream's own challenge, and
//! the upstream checks the password. (A login with an empty auth response needs no switch: it
//! is the same for every challenge.) The login vtguard forwards has CLIENT_SSL and the
//! compression flags cleared (the upstream hop is plaintext, kept to vtguard by the kernel),
//! and sequence numbers are rewritten both ways until the upstream's OK or ERR.
//!
//! After the login, client packets are parsed (commands that name tables are checked; a
//! denial is answered with ERR 1142 and the session goes on); upstream bytes are relayed as
//! they come, only their packet boundaries followed (to see a LOAD DATA LOCAL request).

pub mod handshake;
pub mod packet;

use std::{
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering},
        Arc, Mutex,
    },
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};
use tracing::{debug, info, warn};

use self::{
    handshake::{cap, Greeting, Login},
    packet::Header,
};
use crate::{
    acl::{Decision, Enforcer, Role},
    config::{ListenerConfig, MysqlAuth, MysqlListener, Protocol},
    identity::{self, Identity},
    kernel::Kernel,
    sessions::Sessions,
    tls::{self, Reloadable},
};

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
        source: io::Error,
    },
    #[error("listener {0}: not a mysql listener")]
    NotMysql(String),
}

type Io = Box<dyn super::AsyncReadWrite>;

/// Counters of one listener.
#[derive(Debug, Default)]
pub struct Stats {
    pub connections: AtomicU64,
    /// Connections that ended before their login succeeded upstream.
    pub handshakes_failed: AtomicU64,
    pub logins: AtomicU64,
    /// Commands checked by the table ACL.
    pub checked: AtomicU64,
    /// Commands answered with an ERR by vtguard (ACL denials and refused commands).
    pub denied: AtomicU64,
    /// Commands a dry-run table ACL would have denied.
    pub acl_dry_run_denials: AtomicU64,
}

/// Largest packet accepted before the login succeeded: logins carry at most 64 KiB of
/// connection attributes, auth exchanges a few hundred bytes.
const HANDSHAKE_MAX_PACKET: usize = 80 * 1024;
/// Relay buffer size, each way.
const RELAY_BUFFER: usize = 64 * 1024;

/// Command bytes vtguard looks at.
mod com {
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const CHANGE_USER: u8 = 0x11;
    pub const BINLOG_DUMP: u8 = 0x12;
    pub const TABLE_DUMP: u8 = 0x13;
    pub const REGISTER_SLAVE: u8 = 0x15;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const BINLOG_DUMP_GTID: u8 = 0x1e;
    pub const MULTI: u8 = 0xfe;

    /// The name of a command the table ACL checks, for metrics.
    pub fn checked_name(command: u8) -> Option<&'static str> {
        Some(match command {
            INIT_DB => "COM_INIT_DB",
            QUERY => "COM_QUERY",
            FIELD_LIST => "COM_FIELD_LIST",
            STMT_PREPARE => "COM_STMT_PREPARE",
            _ => return None,
        })
    }
}

/// MySQL error codes and SQLSTATEs vtguard answers with.
mod er {
    pub const ACCESS_DENIED: (u16, &str) = (1045, "28000");
    pub const TABLEACCESS_DENIED: (u16, &str) = (1142, "42000");
    pub const PARSE_ERROR: (u16, &str) = (1064, "42000");
    pub const HANDSHAKE: (u16, &str) = (1043, "08S01");
    pub const NET_PACKET_TOO_LARGE: (u16, &str) = (1153, "08S01");
    pub const UNKNOWN_COM: (u16, &str) = (1047, "08S01");
    pub const PACKETS_OUT_OF_ORDER: (u16, &str) = (1156, "08S01");
    pub const SECURE_TRANSPORT_REQUIRED: (u16, &str) = (3159, "HY000");
    pub const NOT_SUPPORTED: (u16, &str) = (1235, "42000");
    pub const UPSTREAM: (u16, &str) = (2013, "HY000");
}

/// Vitess's text for a plaintext login under `mysql-server-require-secure-transport`.
pub const INSECURE_TRANSPORT: &str =
    "server does not allow insecure connections, client must use SSL/TLS";

/// Relay state shared by the two directions, to follow LOAD DATA LOCAL exchanges.
const IDLE: u8 = 0;
/// A COM_QUERY went upstream; its response's first packet tells whether a file is wanted.
const AWAIT_QUERY: u8 = 1;
/// The upstream asked for a local file: client packets are file data until an empty one.
const INFILE: u8 = 2;

/// A MySQL listener, ready to serve.
pub struct MysqlProxy {
    name: String,
    /// The name again, shared with every session of the listener.
    label: Arc<str>,
    sessions: Arc<Sessions>,
    listen: SocketAddr,
    cfg: MysqlListener,
    upstream: SocketAddr,
    tls: Option<Arc<Reloadable>>,
    kernel: Option<Arc<Kernel>>,
    acl: Option<Arc<Enforcer>>,
    /// The last greeting the upstream sent: what the next client's greeting advertises.
    template: Mutex<Option<Greeting>>,
    next_connection_id: AtomicU32,
    /// Where challenges come from.
    crypto: Arc<rustls::crypto::CryptoProvider>,
    pub stats: Stats,
}

/// A connection refused before its session began: the log line's reason.
type Refused = String;

impl MysqlProxy {
    /// Loads the listener's certificates; `kernel`, when present, opens the upstream sockets.
    pub fn new(
        listener: &ListenerConfig,
        kernel: Option<Arc<Kernel>>,
        protected: bool,
        acl: Option<Arc<Enforcer>>,
        sessions: Arc<Sessions>,
    ) -> Result<Self, Error> {
        let Protocol::Mysql(cfg) = &listener.protocol else {
            return Err(Error::NotMysql(listener.name.clone()));
        };
        let tls = match &cfg.tls {
            Some(t) => Some(Arc::new(Reloadable::new(t.clone()).map_err(|e| {
                Error::Tls {
                    listener: listener.name.clone(),
                    source: mysql_labels(e),
                }
            })?)),
            None => None,
        };
        info!(
            listener = %listener.name,
            tls = cfg.tls.is_some(),
            client_ca = ?cfg.tls.as_ref().and_then(|t| t.ca.as_ref()),
            crl = ?cfg.tls.as_ref().and_then(|t| t.crl.as_ref()),
            min_tls = ?cfg.tls.as_ref().map(|t| t.min_version),
            require_secure_transport = cfg.require_secure_transport,
            auth = ?cfg.auth,
            max_allowed_packet = cfg.max_allowed_packet,
            handshake_timeout = ?cfg.handshake_timeout,
            table_acl = acl.is_some(),
            "mysql listener config"
        );
        if cfg.allow_plaintext {
            warn!(listener = %listener.name, listen = %listener.listen, "insecure-plaintext = true: plaintext logins are accepted, and their identity is the MySQL user name they claim");
        }
        if !protected {
            warn!(listener = %listener.name, upstream = %listener.upstream, "upstream port is not kernel-protected: clients can bypass vtguard; add it to [kernel] protected-ports");
        }
        Ok(Self {
            name: listener.name.clone(),
            label: Arc::from(listener.name.as_str()),
            sessions,
            listen: listener.listen,
            cfg: cfg.clone(),
            upstream: listener.upstream,
            tls,
            kernel,
            acl,
            template: Mutex::new(None),
            next_connection_id: AtomicU32::new(1),
            crypto: tls::crypto_provider(),
            stats: Stats::default(),
        })
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Re-reads the certificate files (when changed, or always with `force`).
    pub fn reload_tls(&self, force: bool) {
        super::reload_tls(&self.name, self.tls.as_deref(), force);
    }

    /// Binds the listening socket.
    pub async fn bind(&self, addr: SocketAddr) -> Result<TcpListener, Error> {
        TcpListener::bind(addr).await.map_err(|source| Error::Bind {
            listener: self.name.clone(),
            addr,
            source,
        })
    }

    /// Accepts connections until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let name = self.name.clone();
        super::accept_loop(&name, listener, move |tcp, peer| {
            Arc::clone(&self).connection(tcp, peer)
        })
        .await;
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        self.stats.connections.fetch_add(1, Ordering::Relaxed);
        let m = crate::metrics::metrics();
        m.connection(&self.name, "mysql");
        let timeout = self.cfg.handshake_timeout;
        let session = match tokio::time::timeout(timeout, self.handshake(tcp)).await {
            Ok(Ok(s)) => {
                m.handshake(&self.name, "ok");
                s
            }
            Ok(Err(reason)) => {
                m.handshake(&self.name, "refused");
                self.stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                info!(listener = %self.name, %peer, reason = %reason, "connection refused");
                return;
            }
            Err(_) => {
                m.handshake(&self.name, "timeout");
                self.stats.handshakes_failed.fetch_add(1, Ordering::Relaxed);
                info!(listener = %self.name, %peer, ?timeout, "connection closed: handshake not finished within handshake-timeout-seconds");
                return;
            }
        };
        self.stats.logins.fetch_add(1, Ordering::Relaxed);
        info!(listener = %self.name, %peer, identity = %session.identity, tls = session.tls, "accepted");
        let identity = session.identity.clone();
        // Both ends carry the identity: policy that takes it away closes the connection.
        let port = self.upstream.port();
        let _client = self.sessions.open(&self.label, port, &identity.username);
        let mut upstream = self
            .sessions
            .open_upstream(&self.label, port, &identity.username);
        tokio::select! {
            r = self.relay(session) => match r {
                Ok(()) => {
                    debug!(listener = %self.name, %peer, identity = %identity, "connection ended")
                }
                Err(reason) => {
                    info!(listener = %self.name, %peer, identity = %identity, reason = %reason, "connection closed")
                }
            },
            () = upstream.cut_off() => {
                info!(listener = %self.name, %peer, identity = %identity, "connection closed: policy no longer lets this identity reach the upstream");
            }
        }
    }

    /// The greeting this listener sends now: the upstream's, with a fresh challenge.
    fn greeting(&self) -> Greeting {
        let template = self
            .template
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(default_template);
        let mut salt = [0u8; 20];
        if self.crypto.secure_random.fill(&mut salt).is_err() {
            // Never expected; the challenge is the upstream's anyway after the switch.
            salt = *b"vtguard-challenge-00";
        }
        // Printable, never NUL (clients read the challenge as a C string).
        let salt: Vec<u8> = salt.iter().map(|b| b % 94 + 33).collect();
        let mut caps = template.capabilities & !(cap::COMPRESS | cap::ZSTD | cap::SSL);
        if self.tls.is_some() {
            caps |= cap::SSL;
        }
        Greeting {
            server_version: template.server_version,
            connection_id: self.next_connection_id.fetch_add(1, Ordering::Relaxed),
            salt,
            capabilities: caps,
            charset: template.charset,
            status: template.status,
            mariadb_ext: template.mariadb_ext & !cap::MARIADB_COM_MULTI,
            auth_plugin: template.auth_plugin,
        }
    }

    /// Greeting → (SSLRequest → TLS) → login → identity → upstream → authentication.
    async fn handshake(&self, mut tcp: TcpStream) -> Result<Session, Refused> {
        let greeting = self.greeting();
        write_packet(&mut tcp, 0, &greeting.encode())
            .await
            .map_err(|e| format!("writing the greeting: {e}"))?;
        let (seq, first) = packet::read(&mut tcp, HANDSHAKE_MAX_PACKET)
            .await
            .map_err(|e| format!("reading the login: {e}"))?;
        let (mut client, cert_identity, login_seq, payload, over_tls): (Io, _, _, _, _) =
            if handshake::is_ssl_request(&first) {
                let Some(t) = &self.tls else {
                    return Err("client sent an SSLRequest, but this listener serves no TLS".into());
                };
                // packet::read stopped at the SSLRequest's last byte: a ClientHello sent in the
                // same write is still in the socket, where the TLS acceptor reads it.
                let acceptor = tokio_rustls::TlsAcceptor::from(t.current());
                let tls = acceptor
                    .accept(tcp)
                    .await
                    .map_err(|e| format!("TLS handshake refused: {e}"))?;
                let cert_identity = if self.cfg.tls.as_ref().is_some_and(|t| t.ca.is_some()) {
                    match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                        Some(der) => Some(
                            identity::from_certificate(der)
                                .map_err(|e| format!("client certificate refused: {e}"))?,
                        ),
                        None => None,
                    }
                } else {
                    None
                };
                let mut io: Io = Box::new(tls);
                let (seq, payload) = packet::read(&mut io, HANDSHAKE_MAX_PACKET)
                    .await
                    .map_err(|e| format!("reading the login inside TLS: {e}"))?;
                (io, cert_identity, seq, payload, true)
            } else {
                (Box::new(tcp) as Io, None, seq, first, false)
            };
        let reply = login_seq.wrapping_add(1);
        // The config allows plaintext only for passthrough, without require-secure-transport.
        if !over_tls && !self.cfg.allow_plaintext {
            let why = if self.cfg.require_secure_transport {
                "plaintext login refused (mysql-server-require-secure-transport)"
            } else {
                "plaintext login refused: this listener needs TLS (set insecure-plaintext = true to accept plaintext passthrough logins)"
            };
            return refuse(
                &mut client,
                reply,
                er::SECURE_TRANSPORT_REQUIRED,
                INSECURE_TRANSPORT,
                why,
            )
            .await;
        }
        let login = match Login::parse(&payload) {
            Ok(l) => l,
            Err(e) => {
                return refuse(
                    &mut client,
                    reply,
                    er::HANDSHAKE,
                    "Bad handshake",
                    &e.to_string(),
                )
                .await
            }
        };
        if login.capabilities & (cap::COMPRESS | cap::ZSTD) != 0 {
            return refuse(
                &mut client,
                reply,
                er::NOT_SUPPORTED,
                "vtguard does not support the compressed protocol: connect without compression",
                "client asked for the compressed protocol, which vtguard does not relay",
            )
            .await;
        }
        if login.capabilities & cap::PLUGIN_AUTH == 0
            || login.capabilities & cap::SECURE_CONNECTION == 0
        {
            return refuse(
                &mut client,
                reply,
                er::HANDSHAKE,
                "vtguard needs a client with pluggable authentication (CLIENT_PLUGIN_AUTH)",
                "client without CLIENT_PLUGIN_AUTH/CLIENT_SECURE_CONNECTION",
            )
            .await;
        }
        let Ok(user) = String::from_utf8(login.user.clone()) else {
            // The identity is this name: two byte strings must never map to one identity.
            return refuse(
                &mut client,
                reply,
                er::ACCESS_DENIED,
                "Access denied: vtguard accepts only UTF-8 user names",
                "user name is not valid UTF-8",
            )
            .await;
        };
        let denied = format!("Access denied for user '{user}'");
        let identity = match self.cfg.auth {
            MysqlAuth::ClientCert => match cert_identity {
                Some(id) if id.username == user => id,
                Some(id) => {
                    return refuse(
                        &mut client,
                        reply,
                        er::ACCESS_DENIED,
                        &denied,
                        &format!(
                            "MySQL user {user:?} is not the certificate's common name {:?} (mysql-auth-server-impl = clientcert)",
                            id.username
                        ),
                    )
                    .await
                }
                None => {
                    return refuse(
                        &mut client,
                        reply,
                        er::ACCESS_DENIED,
                        &denied,
                        "no verified client certificate (mysql-auth-server-impl = clientcert)",
                    )
                    .await
                }
            },
            MysqlAuth::Passthrough => Identity {
                username: user.clone(),
                groups: Vec::new(),
            },
        };
        if identity.username.is_empty() || identity.username.contains('\0') {
            return refuse(
                &mut client,
                reply,
                er::ACCESS_DENIED,
                &denied,
                "empty MySQL user name",
            )
            .await;
        }

        let mut upstream: Io = match super::dial(
            self.kernel.as_deref(),
            &self.sessions,
            &identity.username,
            self.upstream,
        )
        .await
        {
            Ok(u) => u,
            Err(e) => {
                let (code, message) = match e {
                        super::DialError::PolicyRemoved { .. } => (
                            er::ACCESS_DENIED,
                            format!("{denied}: vtguard: this identity may no longer reach the upstream"),
                        ),
                        super::DialError::KernelRefused { .. } => (
                            er::ACCESS_DENIED,
                            format!("{denied}: vtguard: the kernel refused this identity a connection to the upstream"),
                        ),
                        super::DialError::Unavailable { upstream, .. } => (
                            er::UPSTREAM,
                            format!("vtguard: upstream {upstream} unavailable"),
                        ),
                    };
                return refuse(&mut client, reply, code, &message, &e.to_string()).await;
            }
        };
        let (_, ug) = packet::read(&mut upstream, HANDSHAKE_MAX_PACKET)
            .await
            .map_err(|e| format!("reading the upstream greeting: {e}"))?;
        if ug.first() == Some(&0xff) {
            // Too many connections, host blocked, ...: the upstream's own words.
            let _ = write_packet(&mut client, reply, &ug).await;
            return Err(format!(
                "upstream refused the connection: {}",
                err_text(&ug)
            ));
        }
        let ug = match Greeting::parse(&ug) {
            Ok(g) => g,
            Err(e) => {
                return refuse(
                    &mut client,
                    reply,
                    er::UPSTREAM,
                    "vtguard: the upstream's greeting is not valid",
                    &format!("upstream greeting: {e}"),
                )
                .await
            }
        };
        *self.template.lock().unwrap_or_else(|p| p.into_inner()) = Some(ug.clone());
        // The client chose from what vtguard advertised; a flag that changes the wire format
        // must be one the upstream also has (it does, unless the upstream just changed).
        const WIRE: u32 = cap::PROTOCOL_41
            | cap::DEPRECATE_EOF
            | cap::SESSION_TRACK
            | cap::MULTI_RESULTS
            | cap::PS_MULTI_RESULTS
            | cap::LOCAL_FILES;
        let missing = login.capabilities & !ug.capabilities & WIRE;
        let missing_ext = login.mariadb_ext & !ug.mariadb_ext;
        if missing != 0 || missing_ext != 0 {
            return refuse(
                &mut client,
                reply,
                er::UPSTREAM,
                "vtguard: the upstream's capabilities changed since this connection's greeting; reconnect",
                &format!("client capabilities {missing:#x} (MariaDB {missing_ext:#x}) are not the upstream's"),
            )
            .await;
        }
        let mut fwd = login.clone();
        fwd.capabilities =
            login.capabilities & ug.capabilities & !(cap::SSL | cap::COMPRESS | cap::ZSTD);
        fwd.mariadb_ext = login.mariadb_ext & ug.mariadb_ext;
        if fwd.capabilities & cap::CONNECT_ATTRS == 0 {
            fwd.attributes = None;
        }
        let mut last_client_seq = login_seq;
        if !login.auth_response.is_empty() {
            // The response answers vtguard's challenge: have the client answer the upstream's.
            write_packet(
                &mut client,
                reply,
                &handshake::auth_switch(&ug.auth_plugin, &ug.salt),
            )
            .await
            .map_err(|e| format!("writing the auth switch: {e}"))?;
            let (seq, response) = packet::read(&mut client, HANDSHAKE_MAX_PACKET)
                .await
                .map_err(|e| format!("reading the auth switch response: {e}"))?;
            if seq != reply.wrapping_add(1) {
                return Err(format!(
                    "auth switch response has sequence {seq}, expected {}",
                    reply.wrapping_add(1)
                ));
            }
            if response.len() > 255 && fwd.capabilities & cap::PLUGIN_AUTH_LENENC == 0 {
                return refuse(
                    &mut client,
                    seq.wrapping_add(1),
                    er::HANDSHAKE,
                    "Bad handshake",
                    "auth response over 255 bytes without CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA",
                )
                .await;
            }
            fwd.auth_response = response;
            fwd.auth_plugin = Some(ug.auth_plugin.clone());
            last_client_seq = seq;
        }
        // Upstream sequence n is client sequence n + delta.
        let delta = last_client_seq.wrapping_sub(1);
        write_packet(&mut upstream, 1, &fwd.encode())
            .await
            .map_err(|e| format!("writing the login upstream: {e}"))?;
        loop {
            let (seq, p) = packet::read(&mut upstream, HANDSHAKE_MAX_PACKET)
                .await
                .map_err(|e| format!("reading the upstream's authentication reply: {e}"))?;
            write_packet(&mut client, seq.wrapping_add(delta), &p)
                .await
                .map_err(|e| format!("writing the authentication reply: {e}"))?;
            match p.first() {
                Some(0x00) => break,
                Some(0xff) => {
                    return Err(format!(
                        "upstream refused the login of {user:?}: {}",
                        err_text(&p)
                    ))
                }
                // caching_sha2_password's "fast auth succeeded": the OK follows.
                Some(0x01) if p == [0x01, 0x03] => continue,
                _ => {
                    let (cseq, cp) = packet::read(&mut client, HANDSHAKE_MAX_PACKET)
                        .await
                        .map_err(|e| format!("reading the client's authentication data: {e}"))?;
                    write_packet(&mut upstream, cseq.wrapping_sub(delta), &cp)
                        .await
                        .map_err(|e| format!("writing authentication data upstream: {e}"))?;
                }
            }
        }
        Ok(Session {
            client,
            upstream,
            identity,
            tls: over_tls,
        })
    }

    /// The command phase, until either side closes or a client packet is refused.
    async fn relay(&self, s: Session) -> Result<(), String> {
        let (cr, cw) = tokio::io::split(s.client);
        let (ur, uw) = tokio::io::split(s.upstream);
        let cw = Arc::new(tokio::sync::Mutex::new(cw));
        let state = AtomicU8::new(IDLE);
        let up = self.client_to_upstream(
            BufReader::with_capacity(RELAY_BUFFER, cr),
            uw,
            &cw,
            &state,
            &s.identity,
        );
        let down = upstream_to_client(ur, &cw, &state);
        tokio::select! {
            r = up => r,
            r = down => r,
        }
    }

    async fn client_to_upstream<R, W, C>(
        &self,
        mut cr: R,
        mut uw: W,
        cw: &tokio::sync::Mutex<C>,
        state: &AtomicU8,
        id: &Identity,
    ) -> Result<(), String>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
        C: AsyncWrite + Unpin,
    {
        let max = self.cfg.max_allowed_packet;
        let mut buf = vec![0u8; RELAY_BUFFER];
        loop {
            let h = match packet::read_header(&mut cr).await {
                Ok(h) => h,
                Err(packet::Error::Closed) => return Ok(()),
                Err(e) => return Err(format!("client: {e}")),
            };
            if state.load(Ordering::Acquire) == INFILE {
                // File data the upstream asked for; an empty packet ends it.
                copy_packet(&mut cr, &mut uw, h, &mut buf).await?;
                if h.len == 0 {
                    state.store(IDLE, Ordering::Release);
                }
                continue;
            }
            if h.seq != 0 {
                // Continuations are read with their command, file data is handled above: a
                // packet here would be a command the upstream might take without its check.
                let _ = write_packet(
                    &mut *cw.lock().await,
                    h.seq.wrapping_add(1),
                    &handshake::err(
                        er::PACKETS_OUT_OF_ORDER.0,
                        er::PACKETS_OUT_OF_ORDER.1,
                        "Got packets out of order",
                        true,
                    ),
                )
                .await;
                return Err(format!(
                    "client sent a packet with sequence {} where a command (sequence 0) belongs",
                    h.seq
                ));
            }
            if h.len == 0 {
                let _ = write_packet(
                    &mut *cw.lock().await,
                    1,
                    &handshake::err(
                        er::UNKNOWN_COM.0,
                        er::UNKNOWN_COM.1,
                        "vtguard: empty command packet",
                        true,
                    ),
                )
                .await;
                return Err("client sent an empty command packet".into());
            }
            if h.len > max {
                return too_large(cw, 1, h.len, max).await;
            }
            let mut payload = Vec::with_capacity(h.len.min(RELAY_BUFFER));
            match packet::read_payload(&mut cr, h, max, &mut payload).await {
                Ok(_) => {}
                Err(packet::Error::TooLarge { size, max }) => {
                    return too_large(cw, 1, size, max).await
                }
                Err(e) => return Err(format!("client: {e}")),
            }
            let command = payload[0];
            let refusal = self.refusal(command, &payload, id);
            if let Some(name) = com::checked_name(command) {
                let decision = if refusal.is_some() {
                    "refused"
                } else {
                    "forwarded"
                };
                crate::metrics::metrics().command(&self.name, name, decision);
            }
            if let Some(message) = refusal {
                self.stats.denied.fetch_add(1, Ordering::Relaxed);
                info!(listener = %self.name, identity = %id, command = format!("{command:#04x}"), message = %message, "denied");
                let (code, sqlstate) = if command == com::CHANGE_USER
                    || command == com::MULTI
                    || command == com::BINLOG_DUMP
                    || command == com::BINLOG_DUMP_GTID
                    || command == com::REGISTER_SLAVE
                    || command == com::TABLE_DUMP
                {
                    er::NOT_SUPPORTED
                } else if crate::acl::decide::is_unreadable(&message) {
                    er::PARSE_ERROR
                } else {
                    er::TABLEACCESS_DENIED
                };
                write_packet(
                    &mut *cw.lock().await,
                    1,
                    &handshake::err(code, sqlstate, &message, true),
                )
                .await
                .map_err(|e| format!("writing to the client: {e}"))?;
                continue;
            }
            if command == com::QUERY {
                state.store(AWAIT_QUERY, Ordering::Release);
            }
            let mut out = Vec::with_capacity(payload.len() + 4);
            packet::encode(&mut out, 0, &payload);
            uw.write_all(&out)
                .await
                .map_err(|e| format!("writing upstream: {e}"))?;
        }
    }

    /// Why vtguard answers this command itself, if it does.
    fn refusal(&self, command: u8, payload: &[u8], id: &Identity) -> Option<String> {
        let text = || std::str::from_utf8(&payload[1..]);
        let decision = match command {
            com::CHANGE_USER => {
                return Some(
                    "vtguard: COM_CHANGE_USER is refused: a connection's identity is fixed at login; open a new connection".into(),
                )
            }
            com::MULTI => return Some("vtguard: COM_MULTI is not supported".into()),
            com::BINLOG_DUMP | com::BINLOG_DUMP_GTID | com::REGISTER_SLAVE | com::TABLE_DUMP => {
                return Some(
                    "vtguard: replication commands are refused: table ACLs cannot check them"
                        .into(),
                )
            }
            _ if self.acl.is_none() => return None,
            com::QUERY | com::STMT_PREPARE => match text() {
                Ok(sql) => self.check(id, sql),
                Err(_) => return Some("vtguard: the statement is not valid UTF-8".into()),
            },
            com::INIT_DB => match text() {
                Ok(db) => self.check(id, &format!("use `{}`", db.replace('`', "``"))),
                Err(_) => return Some("vtguard: the database name is not valid UTF-8".into()),
            },
            com::FIELD_LIST => {
                let rest = &payload[1..];
                let table = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
                match std::str::from_utf8(table) {
                    Ok(t) => {
                        self.stats.checked.fetch_add(1, Ordering::Relaxed);
                        self.acl.as_ref()?.check_table(
                            &id.username,
                            &id.groups,
                            "Select",
                            Role::Reader,
                            t,
                        )
                    }
                    Err(_) => return Some("vtguard: the table name is not valid UTF-8".into()),
                }
            }
            _ => return None,
        };
        super::account(
            &self.name,
            &id.username,
            &decision,
            &self.stats.acl_dry_run_denials,
        );
        match decision {
            Decision::Deny { message, .. } => Some(message),
            Decision::Allow { .. } => None,
        }
    }

    fn check(&self, id: &Identity, sql: &str) -> Decision {
        self.stats.checked.fetch_add(1, Ordering::Relaxed);
        match &self.acl {
            Some(acl) => acl.check(&id.username, &id.groups, sql),
            None => Decision::Allow {
                reason: "no table ACL".into(),
            },
        }
    }
}

impl crate::admin::ListenerStatus for MysqlProxy {
    fn status(&self) -> serde_json::Value {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "name": self.name,
            "protocol": "mysql",
            "listen": self.listen.to_string(),
            "upstream": self.upstream.to_string(),
            "tls": self.tls.is_some(),
            "connections": n(&self.stats.connections),
            "handshakes_failed": n(&self.stats.handshakes_failed),
            "logins": n(&self.stats.logins),
            "requests": n(&self.stats.checked),
            "refused": n(&self.stats.denied),
            "acl_dry_run_denials": n(&self.stats.acl_dry_run_denials),
        })
    }
}

/// The TLS files' errors name Vitess's gRPC keys; on this listener they are the MySQL ones.
fn mysql_labels(e: tls::Error) -> tls::Error {
    let label = |what: &'static str| match what {
        "grpc-cert" => "mysql-server-ssl-cert",
        "grpc-key" => "mysql-server-ssl-key",
        "grpc-ca" => "mysql-server-ssl-ca",
        "grpc-crl" => "mysql-server-ssl-crl",
        other => other,
    };
    match e {
        tls::Error::Read { what, path, source } => tls::Error::Read {
            what: label(what),
            path,
            source,
        },
        tls::Error::Empty { what, path, kind } => tls::Error::Empty {
            what: label(what),
            path,
            kind,
        },
        tls::Error::Invalid { what, path, detail } => tls::Error::Invalid {
            what: label(what),
            path,
            detail,
        },
        e => e,
    }
}

/// An authenticated connection, both ends.
struct Session {
    client: Io,
    upstream: Io,
    identity: Identity,
    tls: bool,
}

/// What a greeting advertises before the upstream was ever seen: flags every MySQL-protocol
/// server vtguard fronts (MySQL 5.7+, MariaDB 10.2+, vtgate) has, none that changes the
/// result format.
fn default_template() -> Greeting {
    Greeting {
        server_version: b"8.0.30-vtguard".to_vec(),
        connection_id: 0,
        salt: Vec::new(),
        capabilities: cap::LONG_PASSWORD
            | cap::FOUND_ROWS
            | cap::LONG_FLAG
            | cap::CONNECT_WITH_DB
            | cap::IGNORE_SPACE
            | cap::PROTOCOL_41
            | cap::INTERACTIVE
            | cap::TRANSACTIONS
            | cap::SECURE_CONNECTION
            | cap::MULTI_STATEMENTS
            | cap::PLUGIN_AUTH
            | cap::CONNECT_ATTRS
            | cap::PLUGIN_AUTH_LENENC,
        charset: 33,
        status: 2,
        mariadb_ext: 0,
        auth_plugin: b"mysql_native_password".to_vec(),
    }
}

async fn write_packet<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    seq: u8,
    payload: &[u8],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(payload.len() + 4);
    packet::encode(&mut out, seq, payload);
    w.write_all(&out).await?;
    w.flush().await
}

/// Sends the client an ERR and ends the handshake with `reason`.
async fn refuse<T>(
    client: &mut Io,
    seq: u8,
    (code, sqlstate): (u16, &str),
    message: &str,
    reason: &str,
) -> Result<T, Refused> {
    let _ = write_packet(client, seq, &handshake::err(code, sqlstate, message, true)).await;
    let _ = client.shutdown().await;
    Err(reason.to_owned())
}

/// ERR 1153 to the client, then the connection ends.
async fn too_large<C: AsyncWrite + Unpin>(
    cw: &tokio::sync::Mutex<C>,
    seq: u8,
    size: usize,
    max: usize,
) -> Result<(), String> {
    let message = format!("Got a packet bigger than 'max_allowed_packet' bytes ({size} > {max})");
    let mut w = cw.lock().await;
    let _ = write_packet(
        &mut *w,
        seq,
        &handshake::err(
            er::NET_PACKET_TOO_LARGE.0,
            er::NET_PACKET_TOO_LARGE.1,
            &message,
            true,
        ),
    )
    .await;
    let _ = w.shutdown().await;
    Err(format!(
        "client packet of {size} bytes or more is over max-allowed-packet ({max})"
    ))
}

/// The message of an ERR payload.
fn err_text(p: &[u8]) -> String {
    let rest = p.get(3..).unwrap_or_default();
    let rest = match rest.first() {
        Some(b'#') => rest.get(6..).unwrap_or_default(),
        _ => rest,
    };
    let code = p.get(1..3).map_or(0, |c| u16::from_le_bytes([c[0], c[1]]));
    format!("{code} {}", String::from_utf8_lossy(rest))
}

/// Forwards one packet (header and payload) without holding it whole.
async fn copy_packet<R, W>(r: &mut R, w: &mut W, h: Header, buf: &mut [u8]) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(&h.encode())
        .await
        .map_err(|e| format!("writing upstream: {e}"))?;
    let mut left = h.len;
    while left > 0 {
        let n = left.min(buf.len());
        let got = r
            .read(&mut buf[..n])
            .await
            .map_err(|e| format!("client: {e}"))?;
        if got == 0 {
            return Err(format!(
                "client: connection closed inside a packet ({} of {} bytes missing)",
                left, h.len
            ));
        }
        w.write_all(&buf[..got])
            .await
            .map_err(|e| format!("writing upstream: {e}"))?;
        left -= got;
    }
    Ok(())
}

/// Upstream bytes go to the client as they come; only packet starts are looked at, to see
/// the upstream ask for a local file in answer to a query.
async fn upstream_to_client<R, C>(
    mut ur: R,
    cw: &tokio::sync::Mutex<C>,
    state: &AtomicU8,
) -> Result<(), String>
where
    R: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    let mut tracker = packet::Tracker::default();
    loop {
        let n = ur
            .read(&mut buf)
            .await
            .map_err(|e| format!("upstream: {e}"))?;
        if n == 0 {
            let _ = cw.lock().await.shutdown().await;
            return Ok(());
        }
        tracker.feed(&buf[..n], |_, first| {
            if state.load(Ordering::Acquire) == AWAIT_QUERY {
                let next = if first == Some(0xfb) { INFILE } else { IDLE };
                state.store(next, Ordering::Release);
            }
        });
        let mut w = cw.lock().await;
        w.write_all(&buf[..n])
            .await
            .map_err(|e| format!("writing to the client: {e}"))?;
        w.flush()
            .await
            .map_err(|e| format!("writing to the client: {e}"))?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_greeting_parses_and_never_offers_compression() {
        let mut g = default_template();
        g.salt = b"01234567890123456789".to_vec();
        let parsed = Greeting::parse(&g.encode()).expect("parse");
        assert_eq!(parsed, g);
        assert_eq!(g.capabilities & (cap::COMPRESS | cap::ZSTD | cap::SSL), 0);
    }

    fn proxy() -> MysqlProxy {
        let config = crate::config::Config::parse(
            std::path::Path::new("t.toml"),
            "[[listener]]\nname = \"m\"\nprotocol = \"mysql\"\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\ninsecure-plaintext = true\nmysql-auth-server-impl = \"passthrough\"\n",
        )
        .expect("config");
        MysqlProxy::new(&config.listeners[0], None, true, None, Default::default()).expect("proxy")
    }

    fn frame(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        packet::encode(&mut out, seq, payload);
        out
    }

    /// File data the upstream asked for passes as it is, even a packet at sequence 0 that
    /// looks like a refused command; once the file ends, commands are looked at again.
    #[test]
    fn load_data_local_file_data_is_not_taken_for_commands() {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(async {
                let (client, mut c) = tokio::io::duplex(1 << 20);
                let (upstream, mut u) = tokio::io::duplex(1 << 20);
                let session = Session {
                    client: Box::new(client),
                    upstream: Box::new(upstream),
                    identity: Identity {
                        username: "u".into(),
                        groups: vec![],
                    },
                    tls: false,
                };
                let p = proxy();
                let relay = p.relay(session);
                let script = async {
                    let load = b"\x03load data local infile 'f' into table t";
                    c.write_all(&frame(0, load)).await.expect("query");
                    let (seq, got) = packet::read(&mut u, 1 << 20).await.expect("forwarded");
                    assert_eq!((seq, got.as_slice()), (0, &load[..]));
                    u.write_all(&frame(1, b"\xfbf"))
                        .await
                        .expect("file request");
                    let (_, req) = packet::read(&mut c, 1 << 20).await.expect("relayed");
                    assert_eq!(req, b"\xfbf");
                    // 300 packets: sequence numbers 2..=255, 0, 1, ... ; the one at 0 starts
                    // with COM_CHANGE_USER's byte.
                    let mut sent = Vec::new();
                    for i in 0..300u32 {
                        let seq = (2 + i) as u8;
                        let data = if seq == 0 {
                            b"\x11root\x00".to_vec()
                        } else {
                            format!("{i},row\n").into_bytes()
                        };
                        sent.extend(frame(seq, &data));
                    }
                    sent.extend(frame(46, b""));
                    c.write_all(&sent).await.expect("file");
                    let mut got = vec![0u8; sent.len()];
                    u.read_exact(&mut got).await.expect("file upstream");
                    assert!(got == sent, "file data forwarded byte for byte");
                    u.write_all(&frame(47, b"\x00\x01\x00\x02\x00\x00\x00"))
                        .await
                        .expect("OK");
                    packet::read(&mut c, 1 << 20).await.expect("OK relayed");
                    // Back to commands: COM_CHANGE_USER is refused.
                    c.write_all(&frame(0, b"\x11root\x00"))
                        .await
                        .expect("change user");
                    let (seq, e) = packet::read(&mut c, 1 << 20).await.expect("ERR");
                    assert_eq!((seq, e[0]), (1, 0xff));
                    drop(c);
                };
                let (r, ()) = tokio::join!(relay, script);
                r.expect("relay ends cleanly when the client closes");
            });
    }

    #[test]
    fn tls_errors_name_the_mysql_keys() {
        let e = mysql_labels(tls::Error::Empty {
            what: "grpc-ca",
            path: "/etc/ca.pem".into(),
            kind: "certificates",
        });
        assert_eq!(
            e.to_string(),
            "mysql-server-ssl-ca /etc/ca.pem holds no certificates: give a PEM file with at least one"
        );
    }

    #[test]
    fn err_text_reads_both_err_shapes() {
        assert_eq!(
            err_text(&handshake::err(1040, "08004", "Too many connections", true)),
            "1040 Too many connections"
        );
        assert_eq!(err_text(&handshake::err(1040, "", "x", false)), "1040 x");
        assert_eq!(err_text(&[0xff]), "0 ");
    }
}
