//! The MySQL listener: speaks the protocol to the client up to the TLS switch, proves who the
//! caller is, then relays to the upstream (vtgate's MySQL port or mysqld) over a connection of
//! that caller's own, with every command that names tables checked by the table ACL.
//!
//! # Where the upstream connection comes from, and whose it is
//!
//! The kernel authorizes a socket at connect() time by the identity it was registered under,
//! and the policy grants identities per port (docs/DESIGN.md: one upstream socket per authenticated
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
pub mod responses;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc,
    },
    time::Duration,
};

use parking_lot::Mutex;
use tokio::{
    io::{
        AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
        BufReader,
    },
    net::TcpStream,
};
use tracing::{debug, info, warn};

use self::{
    handshake::{cap, Greeting, Login},
    packet::Header,
    responses::{Event, Expect, Responses},
};
use super::listener::{
    self, Core, Deps, DialError, IdentitySlot, ListenerConfig, Serve, TlsRefusal,
    TooManyConnections,
};
use crate::{
    acl::{Decision, Role},
    identity::Identity,
    metrics::{Handshake, RequestDecision},
    status::Protocol,
    tls::{self, ServerTls},
};

/// How a MySQL listener decides who the caller is (Vitess's `mysql-auth-server-impl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MysqlAuth {
    /// `clientcert`: the MySQL user must equal the certificate CN; identity = CN, groups =
    /// the certificate's DNS SANs.
    ClientCert,
    /// `passthrough`: identity = the MySQL user name (the upstream checks the password).
    Passthrough,
}

/// What a MySQL listener (in front of vtgate's MySQL port or mysqld) does beyond what every
/// listener does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlConfig {
    /// `mysql-server-ssl-*`; `None`: plaintext only (needs `insecure-plaintext = true`).
    pub tls: Option<ServerTls>,
    /// `mysql-server-require-secure-transport`: a plaintext login is refused.
    pub require_secure_transport: bool,
    pub auth: MysqlAuth,
    /// `insecure-plaintext = true`: a passthrough login without TLS is accepted.
    pub allow_plaintext: bool,
    /// Greeting to authenticated session, including the upstream's part.
    pub handshake_timeout: Duration,
    /// `max-allowed-packet`: the largest command a client may send (bytes).
    pub max_allowed_packet: usize,
    /// `mysql-server-read-timeout`: a session that sends no command for this long while it
    /// is owed no response is closed (ERR 4031), as MySQL's wait_timeout does.
    pub read_timeout: Duration,
    /// `mysql-allow-clear-text-without-tls`: relay authentication in which the client sends
    /// its password in clear ([`handshake::sends_password_in_clear`]) over the plaintext hop to
    /// the upstream. Off: such a login is refused before the client sends the password.
    pub allow_clear_text: bool,
}

/// Default `max-allowed-packet` (MariaDB's default, 16 MiB, is smaller; this leaves room).
pub const DEFAULT_MAX_ALLOWED_PACKET: usize = 64 * 1024 * 1024;

type Io = Box<dyn super::AsyncReadWrite>;

/// Largest packet accepted before the login succeeded: logins carry at most 64 KiB of
/// connection attributes, auth exchanges a few hundred bytes.
const HANDSHAKE_MAX_PACKET: usize = 80 * 1024;
/// How a caching_sha2_password full-authentication request is named in refusals.
const FULL_AUTHENTICATION_LABEL: &[u8] = b"caching_sha2_password full authentication";

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
    pub const CON_COUNT: (u16, &str) = (1040, "08004");
    pub const CLIENT_INTERACTION_TIMEOUT: (u16, &str) = (4031, "HY000");
}

/// Vitess's text for a plaintext login under `mysql-server-require-secure-transport`.
pub const INSECURE_TRANSPORT: &str =
    "server does not allow insecure connections, client must use SSL/TLS";

/// A MySQL listener, ready to serve.
pub struct MysqlProxy {
    core: Core,
    cfg: MysqlConfig,
    /// The last greeting the upstream sent: what the next client's greeting advertises.
    template: Mutex<Option<Greeting>>,
    next_connection_id: AtomicU32,
    /// Where challenges come from.
    crypto: Arc<rustls::crypto::CryptoProvider>,
}

/// Why a login ended before its session began: the log's reason, and what the client is told.
#[derive(Debug, thiserror::Error)]
enum LoginError {
    #[error("client sent an SSLRequest, but this listener serves no TLS")]
    NoTls,
    #[error(transparent)]
    Tls(TlsRefusal),
    #[error("plaintext login refused (mysql-server-require-secure-transport)")]
    PlaintextRequired,
    #[error("plaintext login refused: this listener needs TLS (set insecure-plaintext = true to accept plaintext passthrough logins)")]
    Plaintext,
    #[error("{0}")]
    Malformed(handshake::Malformed),
    #[error("client asked for the compressed protocol, which vtguard does not relay")]
    Compression,
    #[error("client without CLIENT_PLUGIN_AUTH/CLIENT_SECURE_CONNECTION")]
    NoPluginAuth,
    #[error("user name is not valid UTF-8")]
    UserNotUtf8,
    #[error("MySQL user {user:?} is not the certificate's common name {cn:?} (mysql-auth-server-impl = clientcert)")]
    UserNotCn { user: String, cn: String },
    #[error("no verified client certificate (mysql-auth-server-impl = clientcert)")]
    NoCertificate { user: String },
    #[error("empty MySQL user name")]
    EmptyUser,
    #[error(transparent)]
    TooMany(TooManyConnections),
    #[error("{source}")]
    Dial { user: String, source: DialError },
    /// Too many connections, host blocked, ...: the upstream's own ERR, relayed as it is.
    #[error("upstream refused the connection: {}", err_text(.err))]
    UpstreamRefused { err: Vec<u8> },
    #[error("upstream greeting: {0}")]
    UpstreamGreeting(handshake::Malformed),
    #[error("client capabilities {missing:#x} (MariaDB {missing_ext:#x}) are not the upstream's")]
    CapabilitiesChanged { missing: u32, missing_ext: u32 },
    #[error("auth response over 255 bytes without CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA")]
    LongAuthResponse,
    /// The upstream asked for the password in clear; the client was not asked for it.
    #[error("the upstream asked for authentication that sends the password in clear ({plugin}); refused (mysql-allow-clear-text-without-tls = false)")]
    ClearTextPassword { plugin: String },
    #[error("auth switch response has sequence {got}, expected {expected}")]
    AuthSequence { got: u8, expected: u8 },
    /// The upstream's ERR already went to the client.
    #[error("upstream refused the login of {user:?}: {text}")]
    UpstreamLogin { user: String, text: String },
    #[error("{step}: {source}")]
    Io {
        step: &'static str,
        source: packet::Error,
    },
}

impl LoginError {
    fn io(step: &'static str) -> impl FnOnce(io::Error) -> Self {
        move |e| Self::Io {
            step,
            source: packet::Error::Io(e),
        }
    }

    fn read(step: &'static str) -> impl FnOnce(packet::Error) -> Self {
        move |source| Self::Io { step, source }
    }

    /// The ERR packet the client gets before the connection closes, if any.
    fn reply(&self) -> Option<Vec<u8>> {
        let denied = |user: &str| format!("Access denied for user '{user}'");
        let (code, message) = match self {
            Self::NoTls
            | Self::Tls(_)
            | Self::AuthSequence { .. }
            | Self::UpstreamLogin { .. }
            | Self::Io { .. } => return None,
            Self::UpstreamRefused { err } => return Some(err.clone()),
            Self::PlaintextRequired | Self::Plaintext => {
                (er::SECURE_TRANSPORT_REQUIRED, INSECURE_TRANSPORT.to_owned())
            }
            Self::Malformed(_) | Self::LongAuthResponse => (er::HANDSHAKE, "Bad handshake".into()),
            Self::Compression => (
                er::NOT_SUPPORTED,
                "vtguard does not support the compressed protocol: connect without compression"
                    .into(),
            ),
            Self::NoPluginAuth => (
                er::HANDSHAKE,
                "vtguard needs a client with pluggable authentication (CLIENT_PLUGIN_AUTH)".into(),
            ),
            Self::UserNotUtf8 => (
                er::ACCESS_DENIED,
                "Access denied: vtguard accepts only UTF-8 user names".into(),
            ),
            Self::UserNotCn { user, .. } | Self::NoCertificate { user } => {
                (er::ACCESS_DENIED, denied(user))
            }
            Self::EmptyUser => (er::ACCESS_DENIED, denied("")),
            Self::TooMany(e) => (er::CON_COUNT, format!("Too many connections: vtguard: {e}")),
            Self::Dial { user, source } => match source {
                DialError::PolicyRemoved { .. } => (
                    er::ACCESS_DENIED,
                    format!(
                        "{}: vtguard: this identity may no longer reach the upstream",
                        denied(user)
                    ),
                ),
                DialError::KernelRefused { .. } => (
                    er::ACCESS_DENIED,
                    format!(
                        "{}: vtguard: the kernel refused this identity a connection to the upstream",
                        denied(user)
                    ),
                ),
                DialError::Unavailable { upstream, .. } => {
                    (er::UPSTREAM, format!("vtguard: upstream {upstream} unavailable"))
                }
                DialError::NotOwner { upstream, .. } => (
                    er::UPSTREAM,
                    format!("vtguard: upstream {upstream} unavailable: whoever listens there is not the port's owner, so nothing was sent (see the agent's log)"),
                ),
            },
            Self::UpstreamGreeting(_) => (
                er::UPSTREAM,
                "vtguard: the upstream's greeting is not valid".into(),
            ),
            Self::ClearTextPassword { plugin } => (
                er::ACCESS_DENIED,
                format!("vtguard: the server asked for the password in clear ({plugin}), which vtguard does not relay to its upstream; use an account with another authentication plugin, or set mysql-allow-clear-text-without-tls = true on the listener"),
            ),
            Self::CapabilitiesChanged { .. } => (
                er::UPSTREAM,
                "vtguard: the upstream's capabilities changed since this connection's greeting; reconnect".into(),
            ),
        };
        Some(handshake::err(code.0, code.1, &message, true))
    }
}

/// The client's side of a login once its login packet is in: the connection (inside TLS
/// when it asked for it) and the sequence number vtguard's next packet to it carries.
struct ClientLogin {
    io: Io,
    cert_identity: Option<Identity>,
    /// The login packet's sequence number.
    login_seq: u8,
    login: Vec<u8>,
    over_tls: bool,
    /// The sequence number of vtguard's next packet to the client.
    reply: u8,
}

/// A command vtguard answers itself instead of relaying.
#[derive(Debug)]
enum CommandRefusal {
    ChangeUser,
    Multi,
    Replication,
    /// The named part of the command is not UTF-8.
    NotUtf8(&'static str),
    /// The table ACL's denial.
    Denied(String),
    /// The statement cannot be read: a syntax error to the client, not an ACL denial.
    Unreadable(String),
}

impl CommandRefusal {
    /// The MySQL error code and SQLSTATE the client gets.
    fn code(&self) -> (u16, &'static str) {
        match self {
            Self::ChangeUser | Self::Multi | Self::Replication => er::NOT_SUPPORTED,
            Self::Unreadable(_) => er::PARSE_ERROR,
            Self::NotUtf8(_) | Self::Denied(_) => er::TABLEACCESS_DENIED,
        }
    }

    fn message(&self) -> String {
        match self {
            Self::ChangeUser => "vtguard: COM_CHANGE_USER is refused: a connection's identity is fixed at login; open a new connection".into(),
            Self::Multi => "vtguard: COM_MULTI is not supported".into(),
            Self::Replication => {
                "vtguard: replication commands are refused: table ACLs cannot check them".into()
            }
            Self::NotUtf8(what) => format!("vtguard: the {what} is not valid UTF-8"),
            Self::Denied(message) | Self::Unreadable(message) => message.clone(),
        }
    }
}

/// Why a session's relay ended.
#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error("client: {0}")]
    Client(packet::Error),
    #[error("upstream: {0}")]
    Upstream(io::Error),
    #[error("writing upstream: {0}")]
    WriteUpstream(io::Error),
    #[error("writing to the client: {0}")]
    WriteClient(io::Error),
    #[error("client sent a packet with sequence {0} where a command (sequence 0) belongs")]
    OutOfSequence(u8),
    #[error("client sent an empty command packet")]
    EmptyCommand,
    #[error("no command for {0:?} (mysql-server-read-timeout)")]
    Idle(Duration),
    #[error("client packet of {size} bytes or more is over max-allowed-packet ({max})")]
    TooLarge { size: usize, max: usize },
}

impl MysqlProxy {
    /// Loads the listener's certificates.
    pub fn new(
        listener: &ListenerConfig,
        cfg: &MysqlConfig,
        deps: Deps,
    ) -> Result<Self, listener::Error> {
        let core = Core::new(
            listener,
            Protocol::Mysql,
            cfg.tls.as_ref(),
            mysql_labels,
            deps,
        )?;
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
            table_acl = core.acl.is_some(),
            "mysql listener config"
        );
        if cfg.allow_plaintext {
            warn!(listener = %listener.name, listen = %listener.listen, "insecure-plaintext = true: plaintext logins are accepted, and their identity is the MySQL user name they claim");
        }
        if !core.protected {
            warn!(listener = %listener.name, upstream = %listener.upstream, "upstream port is not kernel-protected: clients can bypass vtguard; add it to [kernel] protected-ports");
        }
        Ok(Self {
            core,
            cfg: cfg.clone(),
            template: Mutex::new(None),
            next_connection_id: AtomicU32::new(1),
            crypto: tls::crypto_provider(),
        })
    }

    async fn serve_connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let (core, timeout) = (&self.core, self.cfg.handshake_timeout);
        let session = match tokio::time::timeout(timeout, self.handshake(tcp)).await {
            Ok(Ok(s)) => {
                core.metrics.handshake(Handshake::Ok);
                s
            }
            Ok(Err(reason)) => {
                core.metrics.handshake(Handshake::Refused);
                info!(listener = %core.name, %peer, reason = %reason, "connection refused");
                return;
            }
            Err(_) => {
                core.metrics.handshake(Handshake::Timeout);
                info!(listener = %core.name, %peer, ?timeout, "connection closed: handshake not finished within handshake-timeout-seconds");
                return;
            }
        };
        info!(listener = %core.name, %peer, identity = %session.identity, tls = session.tls, "accepted");
        let identity = session.identity.clone();
        // Both ends carry the identity: policy that takes it away closes the connection.
        let _client = core.client_session(&identity.username);
        let mut upstream = core.upstream_session(&identity.username);
        tokio::select! {
            r = self.relay(session) => match r {
                Ok(()) => {
                    debug!(listener = %core.name, %peer, identity = %identity, "connection ended")
                }
                Err(reason) => {
                    info!(listener = %core.name, %peer, identity = %identity, reason = %reason, "connection closed")
                }
            },
            () = upstream.cut_off() => {
                info!(listener = %core.name, %peer, identity = %identity, "connection closed: policy no longer lets this identity reach the upstream");
            }
        }
    }

    /// The greeting this listener sends now: the upstream's, with a fresh challenge.
    fn greeting(&self) -> Greeting {
        let template = self
            .template
            .lock()
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
        if self.core.serves_tls() {
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

    /// Greeting → (SSLRequest → TLS) → login → identity → upstream → authentication. A
    /// refusal the client should hear of is sent to it here.
    async fn handshake(&self, mut tcp: TcpStream) -> Result<Session, LoginError> {
        write_packet(&mut tcp, 0, &self.greeting().encode())
            .await
            .map_err(LoginError::io("writing the greeting"))?;
        let mut c = self.client_login(tcp).await?;
        match self.login(&mut c).await {
            Ok((upstream, identity, capabilities, slot)) => Ok(Session {
                client: c.io,
                upstream,
                identity,
                tls: c.over_tls,
                capabilities,
                _slot: Some(slot),
            }),
            Err(e) => {
                if let Some(err) = e.reply() {
                    let _ = write_packet(&mut c.io, c.reply, &err).await;
                    let _ = c.io.shutdown().await;
                }
                Err(e)
            }
        }
    }

    /// Reads the client's login, switching to TLS first when it sends an SSLRequest.
    async fn client_login(&self, mut tcp: TcpStream) -> Result<ClientLogin, LoginError> {
        let (seq, first) = packet::read(&mut tcp, HANDSHAKE_MAX_PACKET)
            .await
            .map_err(LoginError::read("reading the login"))?;
        if !handshake::is_ssl_request(&first) {
            return Ok(ClientLogin {
                io: Box::new(tcp),
                cert_identity: None,
                login_seq: seq,
                login: first,
                over_tls: false,
                reply: seq.wrapping_add(1),
            });
        }
        if !self.core.serves_tls() {
            return Err(LoginError::NoTls);
        }
        // packet::read stopped at the SSLRequest's last byte: a ClientHello sent in the same
        // write is still in the socket, where the TLS acceptor reads it.
        let (tls, cert_identity) = self.core.accept_tls(tcp).await.map_err(LoginError::Tls)?;
        let mut io: Io = Box::new(tls);
        let (seq, login) = packet::read(&mut io, HANDSHAKE_MAX_PACKET)
            .await
            .map_err(LoginError::read("reading the login inside TLS"))?;
        Ok(ClientLogin {
            io,
            cert_identity,
            login_seq: seq,
            login,
            over_tls: true,
            reply: seq.wrapping_add(1),
        })
    }

    /// From the login packet to an authenticated upstream session: the upstream connection,
    /// the caller, and the capabilities the session runs with.
    async fn login(
        &self,
        c: &mut ClientLogin,
    ) -> Result<(Io, Identity, u32, IdentitySlot), LoginError> {
        let (login, identity) = self.identify(c)?;
        let slot = self
            .core
            .admit_identity(&identity.username)
            .map_err(LoginError::TooMany)?;
        let (mut upstream, greeting) = self.open_upstream(&identity).await?;
        let capabilities = self
            .authenticate(c, &mut upstream, &login, &greeting)
            .await?;
        Ok((upstream, identity, capabilities, slot))
    }

    /// The login's checks, and who it proves the caller is.
    fn identify(&self, c: &mut ClientLogin) -> Result<(Login, Identity), LoginError> {
        // The config allows plaintext only for passthrough, without require-secure-transport.
        if !c.over_tls && !self.cfg.allow_plaintext {
            return Err(if self.cfg.require_secure_transport {
                LoginError::PlaintextRequired
            } else {
                LoginError::Plaintext
            });
        }
        let login = Login::parse(&c.login).map_err(LoginError::Malformed)?;
        if login.capabilities & (cap::COMPRESS | cap::ZSTD) != 0 {
            return Err(LoginError::Compression);
        }
        if login.capabilities & cap::PLUGIN_AUTH == 0
            || login.capabilities & cap::SECURE_CONNECTION == 0
        {
            return Err(LoginError::NoPluginAuth);
        }
        // The identity is this name: two byte strings must never map to one identity.
        let user = String::from_utf8(login.user.clone()).map_err(|_| LoginError::UserNotUtf8)?;
        let identity = match self.cfg.auth {
            MysqlAuth::ClientCert => match c.cert_identity.take() {
                Some(id) if id.username == user => id,
                Some(id) => {
                    return Err(LoginError::UserNotCn {
                        user,
                        cn: id.username,
                    })
                }
                None => return Err(LoginError::NoCertificate { user }),
            },
            MysqlAuth::Passthrough => Identity {
                username: user,
                groups: Vec::new(),
            },
        };
        if identity.username.is_empty() || identity.username.contains('\0') {
            return Err(LoginError::EmptyUser);
        }
        Ok((login, identity))
    }

    /// The upstream connection under the caller's identity, and the upstream's greeting.
    async fn open_upstream(&self, identity: &Identity) -> Result<(Io, Greeting), LoginError> {
        let mut upstream =
            self.core
                .dial(&identity.username)
                .await
                .map_err(|source| LoginError::Dial {
                    user: identity.username.clone(),
                    source,
                })?;
        let (_, ug) = packet::read(&mut upstream, HANDSHAKE_MAX_PACKET)
            .await
            .map_err(LoginError::read("reading the upstream greeting"))?;
        if ug.first() == Some(&0xff) {
            return Err(LoginError::UpstreamRefused { err: ug });
        }
        let ug = Greeting::parse(&ug).map_err(LoginError::UpstreamGreeting)?;
        // The next greetings advertise this server's plugin, never one that would have clients
        // send their password in clear to vtguard.
        if !handshake::sends_password_in_clear(&ug.auth_plugin) || self.cfg.allow_clear_text {
            *self.template.lock() = Some(ug.clone());
        }
        Ok((upstream, ug))
    }

    /// The login forwarded upstream; the client answers the upstream's own challenge (through
    /// an auth switch), and the upstream's replies go back until its OK or ERR.
    async fn authenticate(
        &self,
        c: &mut ClientLogin,
        upstream: &mut Io,
        login: &Login,
        ug: &Greeting,
    ) -> Result<u32, LoginError> {
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
            return Err(LoginError::CapabilitiesChanged {
                missing,
                missing_ext,
            });
        }
        let mut fwd = login.clone();
        fwd.capabilities =
            login.capabilities & ug.capabilities & !(cap::SSL | cap::COMPRESS | cap::ZSTD);
        fwd.mariadb_ext = login.mariadb_ext & ug.mariadb_ext;
        if fwd.capabilities & cap::CONNECT_ATTRS == 0 {
            fwd.attributes = None;
        }
        let mut last_client_seq = c.login_seq;
        if !login.auth_response.is_empty() {
            self.no_clear_text(&ug.auth_plugin)?;
            // The response answers vtguard's challenge: have the client answer the upstream's.
            write_packet(
                &mut c.io,
                c.reply,
                &handshake::auth_switch(&ug.auth_plugin, &ug.salt),
            )
            .await
            .map_err(LoginError::io("writing the auth switch"))?;
            let (seq, response) = packet::read(&mut c.io, HANDSHAKE_MAX_PACKET)
                .await
                .map_err(LoginError::read("reading the auth switch response"))?;
            let expected = c.reply.wrapping_add(1);
            if seq != expected {
                return Err(LoginError::AuthSequence { got: seq, expected });
            }
            c.reply = seq.wrapping_add(1);
            if response.len() > 255 && fwd.capabilities & cap::PLUGIN_AUTH_LENENC == 0 {
                return Err(LoginError::LongAuthResponse);
            }
            fwd.auth_response = response;
            fwd.auth_plugin = Some(ug.auth_plugin.clone());
            last_client_seq = seq;
        }
        // Upstream sequence n is client sequence n + delta.
        let delta = last_client_seq.wrapping_sub(1);
        write_packet(upstream, 1, &fwd.encode())
            .await
            .map_err(LoginError::io("writing the login upstream"))?;
        loop {
            let (seq, p) =
                packet::read(upstream, HANDSHAKE_MAX_PACKET)
                    .await
                    .map_err(LoginError::read(
                        "reading the upstream's authentication reply",
                    ))?;
            c.reply = seq.wrapping_add(delta);
            // A switch to a clear-text plugin, or a request for full authentication: the client
            // would answer with its password. Checked before the client sees the request.
            if let Some(plugin) = handshake::auth_switch_plugin(&p) {
                self.no_clear_text(plugin)?;
            } else if p == handshake::FULL_AUTHENTICATION {
                self.no_clear_text(FULL_AUTHENTICATION_LABEL)?;
            }
            write_packet(&mut c.io, c.reply, &p)
                .await
                .map_err(LoginError::io("writing the authentication reply"))?;
            match p.first() {
                Some(0x00) => return Ok(fwd.capabilities),
                Some(0xff) => {
                    return Err(LoginError::UpstreamLogin {
                        user: String::from_utf8_lossy(&login.user).into_owned(),
                        text: err_text(&p),
                    })
                }
                // caching_sha2_password's "fast auth succeeded": the OK follows.
                Some(0x01) if p == [0x01, 0x03] => continue,
                _ => {
                    let (cseq, cp) = packet::read(&mut c.io, HANDSHAKE_MAX_PACKET)
                        .await
                        .map_err(LoginError::read("reading the client's authentication data"))?;
                    write_packet(upstream, cseq.wrapping_sub(delta), &cp)
                        .await
                        .map_err(LoginError::io("writing authentication data upstream"))?;
                }
            }
        }
    }

    /// Refuses a plugin that would have the client send its password in clear, unless the
    /// listener allows it.
    fn no_clear_text(&self, plugin: &[u8]) -> Result<(), LoginError> {
        let clear =
            plugin == FULL_AUTHENTICATION_LABEL || handshake::sends_password_in_clear(plugin);
        if clear && !self.cfg.allow_clear_text {
            return Err(LoginError::ClearTextPassword {
                plugin: String::from_utf8_lossy(plugin).into_owned(),
            });
        }
        Ok(())
    }

    /// The command phase, until either side closes or a client packet is refused.
    async fn relay(&self, s: Session) -> Result<(), RelayError> {
        let (cr, cw) = tokio::io::split(s.client);
        let (ur, uw) = tokio::io::split(s.upstream);
        let cw = Arc::new(tokio::sync::Mutex::new(cw));
        let infile = AtomicBool::new(false);
        let responses = Mutex::new(Responses::new(s.capabilities));
        let up = self.client_to_upstream(
            BufReader::with_capacity(RELAY_BUFFER, cr),
            uw,
            Relay {
                client: &cw,
                infile: &infile,
                responses: &responses,
            },
            &s.identity,
        );
        let down = upstream_to_client(
            ur,
            Relay {
                client: &cw,
                infile: &infile,
                responses: &responses,
            },
        );
        tokio::select! {
            r = up => r,
            r = down => r,
        }
    }

    async fn client_to_upstream<R, W, C>(
        &self,
        mut cr: R,
        mut uw: W,
        relay: Relay<'_, C>,
        id: &Identity,
    ) -> Result<(), RelayError>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
        C: AsyncWrite + Unpin,
    {
        let (cw, infile) = (relay.client, relay.infile);
        let idle = self.cfg.read_timeout;
        let max = self.cfg.max_allowed_packet;
        let mut buf = vec![0u8; RELAY_BUFFER];
        loop {
            // Waiting for the next command: only while nothing is owed to the client does a
            // silence count as idle (a long query's client waits, and sends nothing).
            loop {
                match tokio::time::timeout(idle, cr.fill_buf()).await {
                    Ok(_) => break,
                    Err(_) if relay.responses.lock().idle() => {
                        let (code, state) = er::CLIENT_INTERACTION_TIMEOUT;
                        let message = format!("The client was disconnected by the server because of inactivity (vtguard: mysql-server-read-timeout = {idle:?})");
                        let mut err = Vec::new();
                        packet::encode(&mut err, 0, &handshake::err(code, state, &message, true));
                        let mut w = cw.lock().await;
                        let _ = w.write_all(&err).await;
                        let _ = w.shutdown().await;
                        return Err(RelayError::Idle(idle));
                    }
                    Err(_) => {}
                }
            }
            let h = match packet::read_header(&mut cr).await {
                Ok(h) => h,
                Err(packet::Error::Closed) => return Ok(()),
                Err(e) => return Err(RelayError::Client(e)),
            };
            if infile.load(Ordering::Acquire) {
                // File data the upstream asked for; an empty packet ends it.
                copy_packet(&mut cr, &mut uw, h, &mut buf).await?;
                if h.len == 0 {
                    infile.store(false, Ordering::Release);
                }
                continue;
            }
            if h.seq != 0 {
                // Continuations are read with their command, file data is handled above: a
                // packet here would be a command the upstream might take without its check.
                let (code, state) = er::PACKETS_OUT_OF_ORDER;
                let err = handshake::err(code, state, "Got packets out of order", true);
                let _ = write_packet(&mut *cw.lock().await, h.seq.wrapping_add(1), &err).await;
                return Err(RelayError::OutOfSequence(h.seq));
            }
            if h.len == 0 {
                let (code, state) = er::UNKNOWN_COM;
                let err = handshake::err(code, state, "vtguard: empty command packet", true);
                let _ = write_packet(&mut *cw.lock().await, 1, &err).await;
                return Err(RelayError::EmptyCommand);
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
                Err(e) => return Err(RelayError::Client(e)),
            }
            let command = payload[0];
            let refusal = self.refusal(command, &payload, id);
            if let Some(name) = com::checked_name(command) {
                let decision = if refusal.is_some() {
                    RequestDecision::Refused
                } else {
                    RequestDecision::Forwarded
                };
                self.core.metrics.command(name, decision);
            } else if refusal.is_some() {
                self.core.metrics.refused_outright();
            }
            if let Some(refusal) = refusal {
                let message = refusal.message();
                info!(listener = %self.core.name, identity = %id, command = format!("{command:#04x}"), message = %message, "denied");
                let (code, sqlstate) = refusal.code();
                let mut err = Vec::new();
                packet::encode(&mut err, 1, &handshake::err(code, sqlstate, &message, true));
                relay.answer(err).await?;
                continue;
            }
            if let Some(expect) = Expect::of(command) {
                // Queued before the command leaves: its response cannot come before its entry.
                relay.responses.lock().expect(expect);
            }
            let mut out = Vec::with_capacity(payload.len() + 4);
            packet::encode(&mut out, 0, &payload);
            uw.write_all(&out)
                .await
                .map_err(RelayError::WriteUpstream)?;
        }
    }

    /// Why vtguard answers this command itself, if it does.
    fn refusal(&self, command: u8, payload: &[u8], id: &Identity) -> Option<CommandRefusal> {
        let text = || std::str::from_utf8(&payload[1..]);
        let decision = match command {
            com::CHANGE_USER => return Some(CommandRefusal::ChangeUser),
            com::MULTI => return Some(CommandRefusal::Multi),
            com::BINLOG_DUMP | com::BINLOG_DUMP_GTID | com::REGISTER_SLAVE | com::TABLE_DUMP => {
                return Some(CommandRefusal::Replication)
            }
            _ if self.core.acl.is_none() => return None,
            com::QUERY | com::STMT_PREPARE => match text() {
                Ok(sql) => self.check(id, sql),
                Err(_) => return Some(CommandRefusal::NotUtf8("statement")),
            },
            com::INIT_DB => match text() {
                Ok(db) => self.check(id, &format!("use `{}`", db.replace('`', "``"))),
                Err(_) => return Some(CommandRefusal::NotUtf8("database name")),
            },
            com::FIELD_LIST => {
                let rest = &payload[1..];
                let table = &rest[..rest.iter().position(|&b| b == 0).unwrap_or(rest.len())];
                match std::str::from_utf8(table) {
                    Ok(t) => self.core.acl.as_ref()?.check_table(
                        &id.username,
                        &id.groups,
                        "Select",
                        Role::Reader,
                        t,
                    ),
                    Err(_) => return Some(CommandRefusal::NotUtf8("table name")),
                }
            }
            _ => return None,
        };
        self.core.account(&id.username, &decision);
        let unreadable = decision.is_unreadable();
        match decision {
            Decision::Deny { message, .. } if unreadable => {
                Some(CommandRefusal::Unreadable(message))
            }
            Decision::Deny { message, .. } => Some(CommandRefusal::Denied(message)),
            Decision::Allow { .. } => None,
        }
    }

    fn check(&self, id: &Identity, sql: &str) -> Decision {
        match &self.core.acl {
            Some(acl) => acl.check(&id.username, &id.groups, sql),
            None => Decision::Allow {
                reason: "no table ACL".into(),
            },
        }
    }
}

impl Serve for MysqlProxy {
    fn core(&self) -> &Core {
        &self.core
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        self.serve_connection(tcp, peer).await
    }

    fn refuse_full(&self, mut tcp: TcpStream) -> impl Future<Output = ()> + Send + 'static {
        // In place of the greeting, as a server at max_connections does.
        let message = format!(
            "Too many connections (vtguard: listener {} has max-connections open)",
            self.core.name
        );
        async move {
            let (code, state) = er::CON_COUNT;
            let _ = write_packet(&mut tcp, 0, &handshake::err(code, state, &message, true)).await;
            let _ = tcp.shutdown().await;
        }
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
    /// The capabilities the client and the upstream agreed on (the wire format).
    capabilities: u32,
    /// The session counts against `max-connections-per-identity` while it lasts.
    _slot: Option<IdentitySlot>,
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

/// ERR 1153 to the client, then the connection ends.
async fn too_large<C: AsyncWrite + Unpin>(
    cw: &tokio::sync::Mutex<C>,
    seq: u8,
    size: usize,
    max: usize,
) -> Result<(), RelayError> {
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
    Err(RelayError::TooLarge { size, max })
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
async fn copy_packet<R, W>(
    r: &mut R,
    w: &mut W,
    h: Header,
    buf: &mut [u8],
) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    w.write_all(&h.encode())
        .await
        .map_err(RelayError::WriteUpstream)?;
    let mut left = h.len;
    while left > 0 {
        let n = left.min(buf.len());
        let got = r
            .read(&mut buf[..n])
            .await
            .map_err(|e| RelayError::Client(packet::Error::Io(e)))?;
        if got == 0 {
            return Err(RelayError::Client(packet::Error::Truncated {
                got: h.len - left,
                want: h.len,
            }));
        }
        w.write_all(&buf[..got])
            .await
            .map_err(RelayError::WriteUpstream)?;
        left -= got;
    }
    Ok(())
}

/// What the two directions of a session's relay share.
struct Relay<'a, C> {
    /// The client's writing half; whoever writes holds it for the whole write.
    client: &'a tokio::sync::Mutex<C>,
    /// LOAD DATA LOCAL: whether client packets are file data.
    infile: &'a AtomicBool,
    /// The responses the upstream owes, and vtguard's own answers queued behind them.
    responses: &'a Mutex<Responses>,
}

impl<C> Clone for Relay<'_, C> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<C> Copy for Relay<'_, C> {}

impl<C: AsyncWrite + Unpin> Relay<'_, C> {
    /// Sends vtguard's own answer to a command (a whole packet): at once when the upstream owes
    /// no response, else after the responses to the commands before it (in order, as a
    /// pipelining client expects).
    async fn answer(&self, packet: Vec<u8>) -> Result<(), RelayError> {
        // The client's writer first: the upstream direction holds it while it takes entries off
        // the queue and writes what they release, so "idle" cannot change under this write.
        let mut w = self.client.lock().await;
        let now = {
            let mut r = self.responses.lock();
            if r.idle() {
                Some(packet)
            } else {
                r.answer_later(packet);
                None
            }
        };
        if let Some(p) = now {
            w.write_all(&p).await.map_err(RelayError::WriteClient)?;
            w.flush().await.map_err(RelayError::WriteClient)?;
        }
        Ok(())
    }
}

/// Upstream bytes go to the client as they come. Where a response ends, vtguard's own answers
/// queued behind it go out before the next one; a LOCAL INFILE request switches the client's
/// direction to file data.
async fn upstream_to_client<R, C>(mut ur: R, relay: Relay<'_, C>) -> Result<(), RelayError>
where
    R: AsyncRead + Unpin,
    C: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    let mut events = Vec::new();
    loop {
        let n = ur.read(&mut buf).await.map_err(RelayError::Upstream)?;
        let mut w = relay.client.lock().await;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        relay.responses.lock().feed(&buf[..n], |e| events.push(e));
        let mut from = 0;
        for e in events.drain(..) {
            match e {
                Event::Infile => relay.infile.store(true, Ordering::Release),
                Event::Ended { answers, .. } if answers.is_empty() => {}
                Event::Ended { at, answers } => {
                    w.write_all(&buf[from..at])
                        .await
                        .map_err(RelayError::WriteClient)?;
                    from = at;
                    for a in answers {
                        w.write_all(&a).await.map_err(RelayError::WriteClient)?;
                    }
                }
            }
        }
        w.write_all(&buf[from..n])
            .await
            .map_err(RelayError::WriteClient)?;
        w.flush().await.map_err(RelayError::WriteClient)?;
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
        let cfg = MysqlConfig {
            tls: None,
            require_secure_transport: false,
            auth: MysqlAuth::Passthrough,
            allow_plaintext: true,
            handshake_timeout: Duration::from_secs(1),
            max_allowed_packet: DEFAULT_MAX_ALLOWED_PACKET,
            read_timeout: Duration::from_secs(60),
            allow_clear_text: false,
        };
        let listener = ListenerConfig {
            name: "m".into(),
            listen: "127.0.0.1:1".parse().expect("address"),
            upstream: "127.0.0.1:2".parse().expect("address"),
            protocol: super::listener::ProtocolConfig::Mysql(cfg.clone()),
            identities: None,
            limits: Default::default(),
            intercept: false,
        };
        let deps = Deps {
            kernel: None,
            protected: true,
            acl: None,
            sessions: Default::default(),
        };
        MysqlProxy::new(&listener, &cfg, deps).expect("proxy")
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
                    capabilities: cap::PROTOCOL_41 | cap::DEPRECATE_EOF,
                    _slot: None,
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
