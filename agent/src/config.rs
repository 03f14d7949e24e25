//! The agent's configuration: a TOML file whose keys are Vitess flag names without the dashes
//! (where Vitess has one), turned into a validated [`Config`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

/// What went wrong reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from (for messages).
    pub source: PathBuf,
    /// Kernel enforcement; `None` runs the listeners without it (TLS and identity only).
    pub kernel: Option<KernelConfig>,
    pub tableacl: Option<TableAclConfig>,
    pub listeners: Vec<ListenerConfig>,
    /// The admin API's Unix socket.
    pub admin_socket: PathBuf,
    /// `[metrics] listen`: where `/metrics` and `/healthz` are served; `None` = off.
    pub metrics: Option<SocketAddr>,
}

/// The `[tableacl]` part: Vitess's flags, and vtguard's mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableAclConfig {
    /// `table-acl-config`: a Vitess tableacl file (JSON or binary), loaded unchanged.
    pub file: PathBuf,
    /// `enforce-tableacl-config`: refuse to start without a valid file.
    pub enforce: bool,
    /// `table-acl-config-reload-interval`: re-read the file this often (None: only on SIGHUP).
    pub reload_interval: Option<Duration>,
    pub settings: crate::acl::Settings,
}

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    pub name: String,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub protocol: Protocol,
    /// The identities whose connections may reach the upstream at all (`identities`): merged
    /// into the kernel's access list for the upstream port. `None`: the listener adds none.
    pub identities: Option<BTreeSet<String>>,
}

/// What a listener speaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protocol {
    Grpc(GrpcListener),
    Mysql(MysqlListener),
}

/// How a MySQL listener decides who the caller is (Vitess's `mysql-auth-server-impl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MysqlAuth {
    /// `clientcert`: the MySQL user must equal the certificate CN; identity = CN, groups =
    /// the certificate's DNS SANs.
    ClientCert,
    /// `passthrough`: identity = the MySQL user name (the upstream checks the password).
    Passthrough,
}

/// A MySQL-protocol listener (in front of vtgate's MySQL port or mysqld).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MysqlListener {
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
}

/// Default `max-allowed-packet` (MariaDB's default, 16 MiB, is smaller; this leaves room).
pub const DEFAULT_MAX_ALLOWED_PACKET: usize = 64 * 1024 * 1024;

/// Which Vitess gRPC service sits behind a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcService {
    /// vttablet: queryservice.Query (and TabletManager, UpdateStream, Throttler).
    Vttablet,
    /// vtgate: vtgateservice.Vitess.
    Vtgate,
}

impl GrpcService {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vttablet => "vttablet",
            Self::Vtgate => "vtgate",
        }
    }
}

/// Vitess's effective-caller-ID override, for callers without a verified certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectiveCallerId {
    /// `unsecure_grpc_client`.
    Off,
    /// `grpc-use-effective-callerid`: username = the effective principal.
    Principal,
    /// ... and `grpc-use-effective-groups`: groups = the effective groups.
    PrincipalAndGroups,
}

/// Lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// Server-side TLS of a listener (Vitess's `grpc-*` flags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are required and verified against this bundle.
    pub ca: Option<PathBuf>,
    pub crl: Option<PathBuf>,
    /// Appended to the served chain.
    pub server_ca: Option<PathBuf>,
    pub min_version: TlsVersion,
}

/// TLS towards the upstream (`tablet-grpc-*` / `vtgate-grpc-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Replaces the host name when the server certificate is checked.
    pub server_name: Option<String>,
}

/// A gRPC listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcListener {
    pub service: GrpcService,
    /// `None`: plaintext (only with `insecure-plaintext = true`).
    pub tls: Option<ServerTls>,
    pub effective_callerid: EffectiveCallerId,
    pub upstream_tls: Option<UpstreamTls>,
    pub handshake_timeout: Duration,
    pub max_message_size: usize,
    pub query_log: bool,
    /// Non-query services (vttablet only) and the identities (user or group) allowed on each.
    pub services: BTreeMap<String, BTreeSet<String>>,
}

/// The non-query services a vttablet port also serves; table ACLs do not cover them.
pub const VTTABLET_OTHER_SERVICES: [&str; 3] = [
    "tabletmanagerservice.TabletManager",
    "binlogservice.UpdateStream",
    "throttlerservice.Throttler",
];

/// The `[kernel]` part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConfig {
    /// Folder on a BPF filesystem where programs, links and maps are pinned.
    pub bpffs: PathBuf,
    /// cgroup2 directory the programs attach to; `None` = the cgroup2 root from /proc/mounts.
    pub cgroup: Option<PathBuf>,
    /// The kernel half of policy: protected ports, and who may reach each.
    pub policy: KernelPolicy,
}

/// Which ports only vtguard may reach, and which identities its sockets may carry there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPolicy {
    /// Ports that only sockets registered by vtguard may connect to.
    pub protected_ports: BTreeSet<u16>,
    /// For each protected port, the identities whose sockets may reach it.
    pub access: BTreeMap<u16, BTreeSet<String>>,
}

impl KernelPolicy {
    /// Whether `identity` may reach `port` under this policy.
    pub fn allows(&self, identity: &str, port: u16) -> bool {
        self.protected_ports.contains(&port)
            && self
                .access
                .get(&port)
                .is_some_and(|ids| ids.contains(identity))
    }
}

/// Default pin folder.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/vtguard";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    kernel: Option<RawKernel>,
    tableacl: Option<RawTableAcl>,
    #[serde(default)]
    listener: Vec<RawListener>,
    admin: Option<RawAdmin>,
    metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTableAcl {
    table_acl_config: PathBuf,
    #[serde(default)]
    queryserver_config_strict_table_acl: bool,
    #[serde(default)]
    queryserver_config_enable_table_acl_dry_run: bool,
    #[serde(default)]
    queryserver_config_acl_exempt_acl: String,
    #[serde(default)]
    enforce_tableacl_config: bool,
    /// Seconds.
    table_acl_config_reload_interval: Option<f64>,
    mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawListener {
    name: String,
    protocol: String,
    service: Option<String>,
    listen: String,
    upstream: String,
    identities: Option<Vec<String>>,
    #[serde(default)]
    insecure_plaintext: bool,
    grpc_cert: Option<PathBuf>,
    grpc_key: Option<PathBuf>,
    grpc_ca: Option<PathBuf>,
    grpc_crl: Option<PathBuf>,
    grpc_server_ca: Option<PathBuf>,
    grpc_tls_min_version: Option<String>,
    #[serde(default)]
    grpc_use_effective_callerid: bool,
    #[serde(default)]
    grpc_use_effective_groups: bool,
    grpc_max_message_size: Option<i64>,
    handshake_timeout_seconds: Option<f64>,
    #[serde(default)]
    query_log: bool,
    #[serde(default)]
    services: BTreeMap<String, Vec<String>>,
    tablet_grpc_ca: Option<PathBuf>,
    tablet_grpc_cert: Option<PathBuf>,
    tablet_grpc_key: Option<PathBuf>,
    tablet_grpc_server_name: Option<String>,
    vtgate_grpc_ca: Option<PathBuf>,
    vtgate_grpc_cert: Option<PathBuf>,
    vtgate_grpc_key: Option<PathBuf>,
    vtgate_grpc_server_name: Option<String>,
    mysql_server_ssl_cert: Option<PathBuf>,
    mysql_server_ssl_key: Option<PathBuf>,
    mysql_server_ssl_ca: Option<PathBuf>,
    mysql_server_ssl_crl: Option<PathBuf>,
    mysql_server_tls_min_version: Option<String>,
    #[serde(default)]
    mysql_server_require_secure_transport: bool,
    mysql_auth_server_impl: Option<String>,
    max_allowed_packet: Option<i64>,
}

/// Vitess's default `grpc-max-message-size`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;
/// Default TLS handshake timeout.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKernel {
    protected_ports: Vec<i64>,
    bpffs: Option<PathBuf>,
    cgroup: Option<PathBuf>,
    #[serde(default)]
    access: Vec<RawAccess>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    port: i64,
    identities: Vec<String>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text` (read from `path`, which is used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            // toml's message spans several lines (with a source excerpt); keep it on one.
            message: one_line(&e.to_string()),
        })?;
        let invalid = |message: String| Error::Invalid {
            path: path.to_owned(),
            message,
        };
        if raw.kernel.is_none() && raw.listener.is_empty() {
            return Err(invalid(
                "nothing to run: add a [kernel] section, a [[listener]], or both".into(),
            ));
        }
        let kernel = match raw.kernel {
            Some(k) => Some(parse_kernel(k).map_err(invalid)?),
            None => None,
        };
        let tableacl = match raw.tableacl {
            Some(t) => {
                let mode = match t.mode.as_deref() {
                    None | Some("secure") => crate::acl::Mode::Secure,
                    Some("vitess") => crate::acl::Mode::Vitess,
                    Some(m) => {
                        return Err(invalid(format!(
                            "[tableacl] mode {m:?}: use \"secure\" (default) or \"vitess\""
                        )))
                    }
                };
                let exempt = Some(t.queryserver_config_acl_exempt_acl).filter(|e| !e.is_empty());
                let reload_interval = match t.table_acl_config_reload_interval {
                    None => None,
                    Some(s) if (0.1..=86_400.0).contains(&s) => Some(Duration::from_secs_f64(s)),
                    Some(s) => {
                        return Err(invalid(format!(
                            "[tableacl] table-acl-config-reload-interval {s}: use 0.1 to 86400 seconds, or leave it out to reload only on SIGHUP"
                        )))
                    }
                };
                Some(TableAclConfig {
                    file: t.table_acl_config,
                    enforce: t.enforce_tableacl_config,
                    reload_interval,
                    settings: crate::acl::Settings {
                        strict: t.queryserver_config_strict_table_acl,
                        dry_run: t.queryserver_config_enable_table_acl_dry_run,
                        exempt,
                        mode,
                    },
                })
            }
            None => None,
        };
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        for l in raw.listener {
            let l = parse_listener(l).map_err(invalid)?;
            if let Some(other) = listeners.iter().find(|o| o.name == l.name) {
                return Err(invalid(format!(
                    "two listeners are named {:?}: give each [[listener]] its own name",
                    other.name
                )));
            }
            if let Some(other) = listeners.iter().find(|o| o.listen == l.listen) {
                return Err(invalid(format!(
                    "listeners {:?} and {:?} both listen on {}: give each its own address",
                    other.name, l.name, l.listen
                )));
            }
            listeners.push(l);
        }
        let mut kernel = kernel;
        for l in &listeners {
            let Some(ids) = &l.identities else { continue };
            let port = l.upstream.port();
            match kernel.as_mut() {
                Some(k) if k.policy.protected_ports.contains(&port) => {
                    k.policy.access.entry(port).or_default().extend(ids.iter().cloned());
                }
                Some(_) => {
                    return Err(invalid(format!(
                        "listener {:?}: identities only take effect on a kernel-protected upstream: add port {port} to [kernel] protected-ports",
                        l.name
                    )))
                }
                None => {
                    return Err(invalid(format!(
                        "listener {:?}: identities are enforced by the kernel: add a [kernel] section with protected-ports = [{port}]",
                        l.name
                    )))
                }
            }
        }
        let admin_socket = raw
            .admin
            .map_or_else(|| PathBuf::from(crate::admin::DEFAULT_SOCKET), |a| a.socket);
        if !admin_socket.is_absolute() {
            return Err(invalid(format!(
                "[admin] socket {} is not an absolute path",
                admin_socket.display()
            )));
        }
        let metrics = match raw.metrics {
            None => None,
            Some(m) => Some(m.listen.parse::<SocketAddr>().map_err(|_| {
                invalid(format!(
                    "[metrics] listen {:?} is not an address: use ip:port, e.g. \"127.0.0.1:9465\"",
                    m.listen
                ))
            })?),
        };
        Ok(Config {
            source: path.to_owned(),
            metrics,
            kernel,
            tableacl,
            listeners,
            admin_socket,
        })
    }
}

fn parse_kernel(k: RawKernel) -> Result<KernelConfig, String> {
    if k.protected_ports.is_empty() {
        return Err("[kernel] protected-ports is empty: list the upstream ports only vtguard may reach, e.g. protected-ports = [16991]".to_owned());
    }
    let mut protected_ports = BTreeSet::new();
    for p in &k.protected_ports {
        let port = valid_port(*p).map_err(|m| format!("[kernel] protected-ports: {m}"))?;
        if !protected_ports.insert(port) {
            return Err(format!(
                "[kernel] protected-ports lists {port} twice: list each port once"
            ));
        }
    }
    let mut access: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for a in &k.access {
        let port = valid_port(a.port).map_err(|m| format!("[[kernel.access]] port: {m}"))?;
        if !protected_ports.contains(&port) {
            return Err(format!(
                    "[[kernel.access]] port {port} is not in [kernel] protected-ports: add it there or remove this entry"
                ));
        }
        let ids = access.entry(port).or_default();
        for id in &a.identities {
            if id.is_empty() || id.contains('\0') {
                return Err(format!(
                    "[[kernel.access]] port {port}: identity {id:?} is empty or holds a NUL byte"
                ));
            }
            ids.insert(id.clone());
        }
    }
    let bpffs = k.bpffs.unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS));
    if !bpffs.is_absolute() {
        return Err(format!(
                "[kernel] bpffs {} is not an absolute path: use a folder under a BPF filesystem, e.g. {DEFAULT_BPFFS}",
                bpffs.display()
            ));
    }
    if let Some(cg) = &k.cgroup {
        if !cg.is_absolute() {
            return Err(format!(
                    "[kernel] cgroup {} is not an absolute path: use a cgroup2 directory, e.g. /sys/fs/cgroup",
                    cg.display()
                ));
        }
    }
    Ok(KernelConfig {
        bpffs,
        cgroup: k.cgroup,
        policy: KernelPolicy {
            protected_ports,
            access,
        },
    })
}

fn parse_listener(l: RawListener) -> Result<ListenerConfig, String> {
    let name = l.name.clone();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "[[listener]] name {name:?}: use letters, digits, '-' and '_'"
        ));
    }
    let at = |m: String| format!("listener {name}: {m}");
    let listen: SocketAddr = l.listen.parse().map_err(|_| {
        at(format!(
            "listen {:?} is not an address:port, e.g. \"0.0.0.0:15991\"",
            l.listen
        ))
    })?;
    let upstream: SocketAddr = l.upstream.parse().map_err(|_| {
        at(format!(
            "upstream {:?} is not an address:port, e.g. \"127.0.0.1:16991\"",
            l.upstream
        ))
    })?;
    match l.protocol.as_str() {
        "grpc" => {}
        "mysql" => return parse_mysql_listener(l, name, listen, upstream),
        other => {
            return Err(at(format!(
                "protocol {other:?} is not supported: use \"grpc\" or \"mysql\""
            )))
        }
    }
    for (key, set) in [
        ("mysql-server-ssl-cert", l.mysql_server_ssl_cert.is_some()),
        ("mysql-server-ssl-key", l.mysql_server_ssl_key.is_some()),
        ("mysql-server-ssl-ca", l.mysql_server_ssl_ca.is_some()),
        ("mysql-server-ssl-crl", l.mysql_server_ssl_crl.is_some()),
        (
            "mysql-server-tls-min-version",
            l.mysql_server_tls_min_version.is_some(),
        ),
        (
            "mysql-server-require-secure-transport",
            l.mysql_server_require_secure_transport,
        ),
        ("mysql-auth-server-impl", l.mysql_auth_server_impl.is_some()),
        ("max-allowed-packet", l.max_allowed_packet.is_some()),
    ] {
        if set {
            return Err(at(format!(
                "{key} is for protocol = \"mysql\" listeners: remove it, or use grpc-* keys here"
            )));
        }
    }
    let service = match l.service.as_deref() {
        Some("vttablet") => GrpcService::Vttablet,
        Some("vtgate") => GrpcService::Vtgate,
        Some(other) => {
            return Err(at(format!(
                "service {other:?}: use \"vttablet\" or \"vtgate\""
            )))
        }
        None => {
            return Err(at(
                "service is missing: set service = \"vttablet\" or \"vtgate\"".into(),
            ))
        }
    };
    let min_version = match l.grpc_tls_min_version.as_deref() {
        None | Some("TLSv1.2") => TlsVersion::Tls12,
        Some("TLSv1.3") => TlsVersion::Tls13,
        Some(v) => {
            return Err(at(format!(
                "grpc-tls-min-version {v:?}: use \"TLSv1.2\" or \"TLSv1.3\""
            )))
        }
    };
    let tls = match (l.grpc_cert, l.grpc_key) {
        (Some(cert), Some(key)) => Some(ServerTls {
            cert,
            key,
            ca: l.grpc_ca,
            crl: l.grpc_crl,
            server_ca: l.grpc_server_ca,
            min_version,
        }),
        (Some(_), None) => return Err(at("grpc-cert is set without grpc-key: set both".into())),
        (None, Some(_)) => return Err(at("grpc-key is set without grpc-cert: set both".into())),
        (None, None) => {
            for (key, set) in [
                ("grpc-ca", l.grpc_ca.is_some()),
                ("grpc-crl", l.grpc_crl.is_some()),
                ("grpc-server-ca", l.grpc_server_ca.is_some()),
                ("grpc-tls-min-version", l.grpc_tls_min_version.is_some()),
            ] {
                if set {
                    return Err(at(format!("{key} needs grpc-cert and grpc-key")));
                }
            }
            if !l.insecure_plaintext {
                return Err(at(
                    "no grpc-cert/grpc-key: set them to serve TLS, or set insecure-plaintext = true to serve plaintext on purpose".into(),
                ));
            }
            None
        }
    };
    if let Some(t) = &tls {
        if l.insecure_plaintext {
            return Err(at(
                "insecure-plaintext = true contradicts grpc-cert: remove one".into(),
            ));
        }
        if t.crl.is_some() && t.ca.is_none() {
            return Err(at(
                "grpc-crl needs grpc-ca (revocation applies to verified client certificates)"
                    .into(),
            ));
        }
    }
    let effective_callerid = match (l.grpc_use_effective_callerid, l.grpc_use_effective_groups) {
        (false, false) => EffectiveCallerId::Off,
        (true, false) => EffectiveCallerId::Principal,
        (true, true) => EffectiveCallerId::PrincipalAndGroups,
        (false, true) => {
            return Err(at(
                "grpc-use-effective-groups needs grpc-use-effective-callerid".into(),
            ))
        }
    };
    let (mine, theirs, ca, cert, key, server_name) = match service {
        GrpcService::Vttablet => (
            "tablet-grpc",
            (
                "vtgate-grpc",
                l.vtgate_grpc_ca.is_some()
                    || l.vtgate_grpc_cert.is_some()
                    || l.vtgate_grpc_key.is_some()
                    || l.vtgate_grpc_server_name.is_some(),
            ),
            l.tablet_grpc_ca,
            l.tablet_grpc_cert,
            l.tablet_grpc_key,
            l.tablet_grpc_server_name,
        ),
        GrpcService::Vtgate => (
            "vtgate-grpc",
            (
                "tablet-grpc",
                l.tablet_grpc_ca.is_some()
                    || l.tablet_grpc_cert.is_some()
                    || l.tablet_grpc_key.is_some()
                    || l.tablet_grpc_server_name.is_some(),
            ),
            l.vtgate_grpc_ca,
            l.vtgate_grpc_cert,
            l.vtgate_grpc_key,
            l.vtgate_grpc_server_name,
        ),
    };
    if theirs.1 {
        return Err(at(format!(
            "{}-* keys are for the other service: a {} listener dials its upstream with {mine}-*",
            theirs.0,
            service.as_str()
        )));
    }
    if cert.is_some() != key.is_some() {
        return Err(at(format!(
            "{mine}-cert and {mine}-key go together: set both or neither"
        )));
    }
    if ca.is_none() && (cert.is_some() || server_name.is_some()) {
        return Err(at(format!(
            "{mine}-cert/-server-name turn on TLS to the upstream, which needs {mine}-ca to verify it: set {mine}-ca"
        )));
    }
    let upstream_tls = if ca.is_some() || cert.is_some() || server_name.is_some() {
        Some(UpstreamTls {
            ca,
            cert,
            key,
            server_name,
        })
    } else {
        None
    };
    let max_message_size = match l.grpc_max_message_size {
        None => DEFAULT_MAX_MESSAGE_SIZE,
        Some(n) if (1..=1 << 28).contains(&n) => n as usize,
        Some(n) => {
            return Err(at(format!(
                "grpc-max-message-size {n}: use 1 to 268435456 bytes"
            )))
        }
    };
    let handshake_timeout = match l.handshake_timeout_seconds {
        None => DEFAULT_HANDSHAKE_TIMEOUT,
        Some(s) if s > 0.0 && s <= 300.0 => Duration::from_secs_f64(s),
        Some(s) => {
            return Err(at(format!(
                "handshake-timeout-seconds {s}: use a value in (0, 300]"
            )))
        }
    };
    let mut services = BTreeMap::new();
    for (svc, ids) in l.services {
        if service == GrpcService::Vtgate || !VTTABLET_OTHER_SERVICES.contains(&svc.as_str()) {
            return Err(at(format!(
                "services: {svc:?} cannot be opened here; a vttablet listener can open {}",
                VTTABLET_OTHER_SERVICES.join(", ")
            )));
        }
        services.insert(svc, ids.into_iter().collect());
    }
    let identities = parse_identities(&name, l.identities)?;
    Ok(ListenerConfig {
        name,
        listen,
        upstream,
        identities,
        protocol: Protocol::Grpc(GrpcListener {
            service,
            tls,
            effective_callerid,
            upstream_tls,
            handshake_timeout,
            max_message_size,
            query_log: l.query_log,
            services,
        }),
    })
}

fn parse_min_version(key: &str, v: Option<&str>) -> Result<TlsVersion, String> {
    match v {
        None | Some("TLSv1.2") => Ok(TlsVersion::Tls12),
        Some("TLSv1.3") => Ok(TlsVersion::Tls13),
        Some(v) => Err(format!("{key} {v:?}: use \"TLSv1.2\" or \"TLSv1.3\"")),
    }
}

fn parse_handshake_timeout(s: Option<f64>) -> Result<Duration, String> {
    match s {
        None => Ok(DEFAULT_HANDSHAKE_TIMEOUT),
        Some(s) if s > 0.0 && s <= 300.0 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(format!(
            "handshake-timeout-seconds {s}: use a value in (0, 300]"
        )),
    }
}

/// A listener's `identities`: each one non-empty, without NUL.
fn parse_identities(
    name: &str,
    ids: Option<Vec<String>>,
) -> Result<Option<BTreeSet<String>>, String> {
    let Some(ids) = ids else { return Ok(None) };
    let mut set = BTreeSet::new();
    for id in ids {
        if id.is_empty() || id.contains('\0') {
            return Err(format!(
                "listener {name:?}: identities entry {id:?} is empty or holds a NUL byte"
            ));
        }
        set.insert(id);
    }
    Ok(Some(set))
}

fn parse_mysql_listener(
    l: RawListener,
    name: String,
    listen: SocketAddr,
    upstream: SocketAddr,
) -> Result<ListenerConfig, String> {
    let at = |m: String| format!("listener {name}: {m}");
    for (key, set) in [
        ("service", l.service.is_some()),
        ("grpc-cert", l.grpc_cert.is_some()),
        ("grpc-key", l.grpc_key.is_some()),
        ("grpc-ca", l.grpc_ca.is_some()),
        ("grpc-crl", l.grpc_crl.is_some()),
        ("grpc-server-ca", l.grpc_server_ca.is_some()),
        ("grpc-tls-min-version", l.grpc_tls_min_version.is_some()),
        ("grpc-use-effective-callerid", l.grpc_use_effective_callerid),
        ("grpc-use-effective-groups", l.grpc_use_effective_groups),
        ("grpc-max-message-size", l.grpc_max_message_size.is_some()),
        ("query-log", l.query_log),
        ("services", !l.services.is_empty()),
        (
            "tablet-grpc-*",
            l.tablet_grpc_ca.is_some()
                || l.tablet_grpc_cert.is_some()
                || l.tablet_grpc_key.is_some()
                || l.tablet_grpc_server_name.is_some(),
        ),
        (
            "vtgate-grpc-*",
            l.vtgate_grpc_ca.is_some()
                || l.vtgate_grpc_cert.is_some()
                || l.vtgate_grpc_key.is_some()
                || l.vtgate_grpc_server_name.is_some(),
        ),
    ] {
        if set {
            return Err(at(format!(
                "{key} is for protocol = \"grpc\" listeners: a mysql listener uses mysql-server-ssl-* and mysql-auth-server-impl"
            )));
        }
    }
    let min_version = parse_min_version(
        "mysql-server-tls-min-version",
        l.mysql_server_tls_min_version.as_deref(),
    )
    .map_err(at)?;
    let tls = match (l.mysql_server_ssl_cert, l.mysql_server_ssl_key) {
        (Some(cert), Some(key)) => Some(ServerTls {
            cert,
            key,
            ca: l.mysql_server_ssl_ca,
            crl: l.mysql_server_ssl_crl,
            server_ca: None,
            min_version,
        }),
        (Some(_), None) => {
            return Err(at(
                "mysql-server-ssl-cert is set without mysql-server-ssl-key: set both".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(at(
                "mysql-server-ssl-key is set without mysql-server-ssl-cert: set both".into(),
            ))
        }
        (None, None) => {
            for (key, set) in [
                ("mysql-server-ssl-ca", l.mysql_server_ssl_ca.is_some()),
                ("mysql-server-ssl-crl", l.mysql_server_ssl_crl.is_some()),
                (
                    "mysql-server-tls-min-version",
                    l.mysql_server_tls_min_version.is_some(),
                ),
                (
                    "mysql-server-require-secure-transport",
                    l.mysql_server_require_secure_transport,
                ),
            ] {
                if set {
                    return Err(at(format!(
                        "{key} needs mysql-server-ssl-cert and mysql-server-ssl-key"
                    )));
                }
            }
            None
        }
    };
    if let Some(t) = &tls {
        if t.crl.is_some() && t.ca.is_none() {
            return Err(at(
                "mysql-server-ssl-crl needs mysql-server-ssl-ca (revocation applies to verified client certificates)".into(),
            ));
        }
    }
    let auth = match l.mysql_auth_server_impl.as_deref() {
        Some("clientcert") => MysqlAuth::ClientCert,
        Some("passthrough") => MysqlAuth::Passthrough,
        Some(other) => {
            return Err(at(format!(
                "mysql-auth-server-impl {other:?}: use \"clientcert\" or \"passthrough\""
            )))
        }
        None => {
            return Err(at(
                "mysql-auth-server-impl is missing: set \"clientcert\" (MySQL user = certificate CN) or \"passthrough\" (identity = MySQL user)".into(),
            ))
        }
    };
    if auth == MysqlAuth::ClientCert && tls.as_ref().is_none_or(|t| t.ca.is_none()) {
        return Err(at(
            "mysql-auth-server-impl = \"clientcert\" needs mysql-server-ssl-ca (and -cert, -key): client certificates prove the user".into(),
        ));
    }
    if l.insecure_plaintext {
        if auth == MysqlAuth::ClientCert {
            return Err(at(
                "insecure-plaintext = true contradicts mysql-auth-server-impl = \"clientcert\" (a certificate needs TLS): remove it".into(),
            ));
        }
        if l.mysql_server_require_secure_transport {
            return Err(at(
                "insecure-plaintext = true contradicts mysql-server-require-secure-transport: remove one".into(),
            ));
        }
    } else if tls.is_none() {
        return Err(at(
            "no mysql-server-ssl-cert/mysql-server-ssl-key: set them to serve TLS, or set insecure-plaintext = true to accept plaintext logins on purpose".into(),
        ));
    }
    let max_allowed_packet = match l.max_allowed_packet {
        None => DEFAULT_MAX_ALLOWED_PACKET,
        Some(n) if (1024..=1 << 30).contains(&n) => n as usize,
        Some(n) => {
            return Err(at(format!(
                "max-allowed-packet {n}: use 1024 to 1073741824 bytes"
            )))
        }
    };
    let handshake_timeout = parse_handshake_timeout(l.handshake_timeout_seconds).map_err(at)?;
    let identities = parse_identities(&name, l.identities)?;
    Ok(ListenerConfig {
        name,
        listen,
        upstream,
        identities,
        protocol: Protocol::Mysql(MysqlListener {
            tls,
            require_secure_transport: l.mysql_server_require_secure_transport,
            auth,
            allow_plaintext: l.insecure_plaintext,
            handshake_timeout,
            max_allowed_packet,
        }),
    })
}

fn valid_port(p: i64) -> Result<u16, String> {
    match u16::try_from(p) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("{p} is not a TCP port: use 1-65535")),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(Path::new("/etc/vtguard/agent.toml"), text)
    }

    #[test]
    fn full_kernel_section() {
        let c = parse(
            r#"
            [kernel]
            protected-ports = [16991, 13306]
            bpffs = "/sys/fs/bpf/vtg"
            cgroup = "/sys/fs/cgroup"
            [[kernel.access]]
            port = 16991
            identities = ["vtgate client 1", "vtgate client 1"]
            "#,
        )
        .expect("valid config");
        let k = c.kernel.expect("kernel section");
        assert_eq!(k.bpffs, PathBuf::from("/sys/fs/bpf/vtg"));
        assert_eq!(k.cgroup, Some(PathBuf::from("/sys/fs/cgroup")));
        let p = &k.policy;
        assert_eq!(p.protected_ports, BTreeSet::from([13306, 16991]));
        assert!(p.allows("vtgate client 1", 16991));
        assert!(!p.allows("vtgate client 1", 13306));
        assert!(!p.allows("vtgate client 2", 16991));
    }

    #[test]
    fn listener_identities_join_the_kernel_access_of_the_upstream_port() {
        let l = |name: &str, listen: u16, ids: &str| {
            format!("[[listener]]\nname = \"{name}\"\nprotocol = \"grpc\"\nservice = \"vttablet\"\nlisten = \"127.0.0.1:{listen}\"\nupstream = \"127.0.0.1:16991\"\ninsecure-plaintext = true\nidentities = [{ids}]\n")
        };
        let c = parse(&format!(
            "[kernel]\nprotected-ports = [16991]\n[[kernel.access]]\nport = 16991\nidentities = [\"ops\"]\n{}{}",
            l("a", 1, "\"app\""),
            l("b", 2, "\"batch\", \"app\"")
        ))
        .expect("valid config");
        let p = &c.kernel.expect("kernel").policy;
        for who in ["ops", "app", "batch"] {
            assert!(p.allows(who, 16991), "{who}");
        }
        assert!(!p.allows("other", 16991));
        assert_eq!(
            c.listeners[1].identities,
            Some(BTreeSet::from(["app".to_owned(), "batch".to_owned()]))
        );

        let e = err(&l("a", 1, "\"app\""));
        assert!(
            e.contains("listener \"a\": identities are enforced by the kernel: add a [kernel] section with protected-ports = [16991]"),
            "{e}"
        );
        let e = err(&format!(
            "[kernel]\nprotected-ports = [5]\n{}",
            l("a", 1, "\"app\"")
        ));
        assert!(
            e.contains("add port 16991 to [kernel] protected-ports"),
            "{e}"
        );
        let e = err(&format!(
            "[kernel]\nprotected-ports = [16991]\n{}",
            l("a", 1, "\"\"")
        ));
        assert!(e.contains("identities entry \"\" is empty"), "{e}");
    }

    #[test]
    fn the_shipped_example_configs_are_valid() {
        for (name, text) in [
            (
                "agent/config/example.toml",
                include_str!("../config/example.toml"),
            ),
            (
                "deploy/config/vttablet-node.toml",
                include_str!("../../deploy/config/vttablet-node.toml"),
            ),
            (
                "deploy/config/vtgate-node.toml",
                include_str!("../../deploy/config/vtgate-node.toml"),
            ),
            (
                "deploy/config/mysql-node.toml",
                include_str!("../../deploy/config/mysql-node.toml"),
            ),
        ] {
            if let Err(e) = Config::parse(Path::new(name), text) {
                panic!("{e}");
            }
        }
    }

    #[test]
    fn upstream_tls_needs_a_ca() {
        let e = err("[[listener]]\nname = \"t\"\nprotocol = \"grpc\"\nservice = \"vttablet\"\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\ninsecure-plaintext = true\ntablet-grpc-server-name = \"vttablet server instance\"\n");
        assert!(
            e.contains("needs tablet-grpc-ca to verify it: set tablet-grpc-ca"),
            "{e}"
        );
    }

    #[test]
    fn defaults() {
        let c = parse("[kernel]\nprotected-ports = [1]\n").expect("valid config");
        let k = c.kernel.expect("kernel section");
        assert_eq!(k.bpffs, PathBuf::from(DEFAULT_BPFFS));
        assert_eq!(k.cgroup, None);
        assert!(k.policy.access.is_empty());
        assert!(c.listeners.is_empty());
    }

    fn err(text: &str) -> String {
        let e = parse(text).expect_err("config must be refused").to_string();
        assert!(!e.contains('\n'), "error must be one line: {e}");
        assert!(e.starts_with("config /etc/vtguard/agent.toml: "), "{e}");
        e
    }

    #[test]
    fn bad_configs_name_the_key_and_the_fix() {
        let e = err("[kernel]\nprotected-ports = [16991]\nprotected-port = 3\n");
        assert!(e.contains("unknown field `protected-port`"), "{e}");
        let e = err("[kernel]\nprotected-ports = [0]\n");
        assert!(
            e.contains("protected-ports: 0 is not a TCP port: use 1-65535"),
            "{e}"
        );
        let e = err("[kernel]\nprotected-ports = [70000]\n");
        assert!(e.contains("70000 is not a TCP port"), "{e}");
        let e = err("[kernel]\nprotected-ports = []\n");
        assert!(e.contains("protected-ports is empty"), "{e}");
        let e = err("[kernel]\nprotected-ports = [5, 5]\n");
        assert!(e.contains("lists 5 twice"), "{e}");
        let e = err("[kernel]\nprotected-ports = [5]\nbpffs = \"vtg\"\n");
        assert!(e.contains("bpffs vtg is not an absolute path"), "{e}");
        let e = err(
            "[kernel]\nprotected-ports = [5]\n[[kernel.access]]\nport = 6\nidentities = [\"a\"]\n",
        );
        assert!(
            e.contains("port 6 is not in [kernel] protected-ports"),
            "{e}"
        );
        let e = err(
            "[kernel]\nprotected-ports = [5]\n[[kernel.access]]\nport = 5\nidentities = [\"\"]\n",
        );
        assert!(e.contains("identity \"\" is empty"), "{e}");
        let e = err("[kernel]\nprotected-ports = \"16991\"\n");
        assert!(e.contains("protected-ports"), "{e}");
        let e = err("");
        assert!(
            e.contains("nothing to run: add a [kernel] section, a [[listener]], or both"),
            "{e}"
        );
    }

    const TLS_LISTENER: &str = r#"
        [[listener]]
        name = "vttablet"
        protocol = "grpc"
        service = "vttablet"
        listen = "0.0.0.0:15991"
        upstream = "127.0.0.1:16991"
        grpc-cert = "/etc/vtguard/server.pem"
        grpc-key = "/etc/vtguard/server.key"
        grpc-ca = "/etc/vtguard/clients.pem"
        grpc-crl = "/etc/vtguard/clients.crl"
        grpc-server-ca = "/etc/vtguard/ca.pem"
        grpc-tls-min-version = "TLSv1.3"
        grpc-use-effective-callerid = true
        grpc-use-effective-groups = true
        tablet-grpc-ca = "/etc/vtguard/tablet-ca.pem"
        tablet-grpc-server-name = "vttablet server instance"
        query-log = true
        [listener.services]
        "tabletmanagerservice.TabletManager" = ["vtctld"]
    "#;

    #[test]
    fn grpc_listener_with_every_key() {
        let c = parse(TLS_LISTENER).expect("valid listener");
        assert!(c.kernel.is_none());
        let l = &c.listeners[0];
        assert_eq!(l.name, "vttablet");
        assert_eq!(l.upstream, "127.0.0.1:16991".parse().expect("addr"));
        let Protocol::Grpc(g) = &l.protocol else {
            panic!("a grpc listener")
        };
        assert_eq!(g.service, GrpcService::Vttablet);
        let tls = g.tls.as_ref().expect("tls");
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(tls.crl, Some(PathBuf::from("/etc/vtguard/clients.crl")));
        assert_eq!(g.effective_callerid, EffectiveCallerId::PrincipalAndGroups);
        let up = g.upstream_tls.as_ref().expect("upstream tls");
        assert_eq!(up.server_name.as_deref(), Some("vttablet server instance"));
        assert_eq!(g.max_message_size, DEFAULT_MAX_MESSAGE_SIZE);
        assert_eq!(g.handshake_timeout, DEFAULT_HANDSHAKE_TIMEOUT);
        assert!(g.query_log);
        assert!(g.services["tabletmanagerservice.TabletManager"].contains("vtctld"));
    }

    fn listener(extra: &str) -> String {
        format!("[[listener]]\nname = \"l\"\nprotocol = \"grpc\"\nservice = \"vttablet\"\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\n{extra}")
    }

    #[test]
    fn bad_listeners_name_the_key_and_the_fix() {
        let e = err(&listener(""));
        assert!(e.contains("listener l: no grpc-cert/grpc-key: set them to serve TLS, or set insecure-plaintext = true"), "{e}");
        assert!(parse(&listener("insecure-plaintext = true\n")).is_ok());
        let e = err(&listener("grpc-cert = \"/c\"\n"));
        assert!(
            e.contains("grpc-cert is set without grpc-key: set both"),
            "{e}"
        );
        let e = err(&listener("insecure-plaintext = true\ngrpc-ca = \"/ca\"\n"));
        assert!(e.contains("grpc-ca needs grpc-cert and grpc-key"), "{e}");
        let e = err(&listener(
            "grpc-cert = \"/c\"\ngrpc-key = \"/k\"\ngrpc-crl = \"/crl\"\n",
        ));
        assert!(e.contains("grpc-crl needs grpc-ca"), "{e}");
        let e = err(&listener(
            "insecure-plaintext = true\ngrpc-use-effective-groups = true\n",
        ));
        assert!(
            e.contains("grpc-use-effective-groups needs grpc-use-effective-callerid"),
            "{e}"
        );
        let e = err(&listener(
            "insecure-plaintext = true\nvtgate-grpc-ca = \"/ca\"\n",
        ));
        assert!(e.contains("vtgate-grpc-* keys are for the other service: a vttablet listener dials its upstream with tablet-grpc-*"), "{e}");
        let e = err(&listener(
            "insecure-plaintext = true\ntablet-grpc-cert = \"/c\"\n",
        ));
        assert!(
            e.contains("tablet-grpc-cert and tablet-grpc-key go together"),
            "{e}"
        );
        let e = err(&listener(
            "insecure-plaintext = true\ngrpc-tls-min-version = \"TLSv1.3\"\n",
        ));
        assert!(e.contains("grpc-tls-min-version needs grpc-cert"), "{e}");
        let e = err(&listener(
            "grpc-cert = \"/c\"\ngrpc-key = \"/k\"\ngrpc-tls-min-version = \"TLSv1.0\"\n",
        ));
        assert!(
            e.contains("grpc-tls-min-version \"TLSv1.0\": use \"TLSv1.2\" or \"TLSv1.3\""),
            "{e}"
        );
        let e = err(&listener(
            "insecure-plaintext = true\ngrpc-max-message-size = 0\n",
        ));
        assert!(
            e.contains("grpc-max-message-size 0: use 1 to 268435456 bytes"),
            "{e}"
        );
        let e = err(&listener(
            "insecure-plaintext = true\n[listener.services]\n\"queryservice.Query\" = [\"x\"]\n",
        ));
        assert!(
            e.contains("services: \"queryservice.Query\" cannot be opened here"),
            "{e}"
        );
        let e = err(&listener("insecure-plaintext = true\n").replace("127.0.0.1:2", "localhost"));
        assert!(
            e.contains("upstream \"localhost\" is not an address:port"),
            "{e}"
        );
        let e = err(&listener("insecure-plaintext = true\n").replace("\"grpc\"", "\"mysql\""));
        assert!(
            e.contains("service is for protocol = \"grpc\" listeners: a mysql listener uses mysql-server-ssl-*"),
            "{e}"
        );
        let e = err(&listener("insecure-plaintext = true\n").replace("\"grpc\"", "\"redis\""));
        assert!(
            e.contains("protocol \"redis\" is not supported: use \"grpc\" or \"mysql\""),
            "{e}"
        );
        let e = err(&listener(
            "insecure-plaintext = true\nmax-allowed-packet = 5000\n",
        ));
        assert!(
            e.contains("max-allowed-packet is for protocol = \"mysql\" listeners"),
            "{e}"
        );
        let e = err(&listener("insecure-plaintext = true\n")
            .replace("service = \"vttablet\"", "service = \"vtctld\""));
        assert!(
            e.contains("service \"vtctld\": use \"vttablet\" or \"vtgate\""),
            "{e}"
        );
        let two = format!(
            "{}{}",
            listener("insecure-plaintext = true\n"),
            listener("insecure-plaintext = true\n")
        );
        let e = err(&two);
        assert!(e.contains("two listeners are named \"l\""), "{e}");
        let e = err(&listener("insecure-plaintext = true\ngrpc-sert = \"x\"\n"));
        assert!(e.contains("unknown field `grpc-sert`"), "{e}");
    }

    fn mysql(extra: &str) -> String {
        format!("[[listener]]\nname = \"m\"\nprotocol = \"mysql\"\nlisten = \"127.0.0.1:3306\"\nupstream = \"127.0.0.1:13306\"\n{extra}")
    }

    const MYSQL_TLS: &str = "mysql-server-ssl-cert = \"/c\"\nmysql-server-ssl-key = \"/k\"\n";

    #[test]
    fn mysql_listener_with_every_key() {
        let c = parse(&mysql(&format!(
            "{MYSQL_TLS}mysql-server-ssl-ca = \"/ca\"\nmysql-server-ssl-crl = \"/crl\"\nmysql-server-tls-min-version = \"TLSv1.3\"\nmysql-server-require-secure-transport = true\nmysql-auth-server-impl = \"clientcert\"\nmax-allowed-packet = 2048\nhandshake-timeout-seconds = 2\n"
        )))
        .expect("valid mysql listener");
        let Protocol::Mysql(m) = &c.listeners[0].protocol else {
            panic!("a mysql listener")
        };
        let tls = m.tls.as_ref().expect("tls");
        assert_eq!(tls.ca, Some(PathBuf::from("/ca")));
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert!(m.require_secure_transport);
        assert_eq!(m.auth, MysqlAuth::ClientCert);
        assert_eq!(m.max_allowed_packet, 2048);
        assert_eq!(m.handshake_timeout, Duration::from_secs(2));
        let c = parse(&mysql(
            "insecure-plaintext = true\nmysql-auth-server-impl = \"passthrough\"\n",
        ))
        .expect("plaintext passthrough");
        let Protocol::Mysql(m) = &c.listeners[0].protocol else {
            panic!("a mysql listener")
        };
        assert!(m.tls.is_none() && m.allow_plaintext);
        assert_eq!(m.max_allowed_packet, DEFAULT_MAX_ALLOWED_PACKET);
    }

    #[test]
    fn bad_mysql_listeners_name_the_key_and_the_fix() {
        let e = err(&mysql(MYSQL_TLS));
        assert!(
            e.contains("listener m: mysql-auth-server-impl is missing: set \"clientcert\""),
            "{e}"
        );
        let e = err(&mysql(&format!(
            "{MYSQL_TLS}mysql-auth-server-impl = \"static\"\n"
        )));
        assert!(
            e.contains("mysql-auth-server-impl \"static\": use \"clientcert\" or \"passthrough\""),
            "{e}"
        );
        let e = err(&mysql(&format!(
            "{MYSQL_TLS}mysql-auth-server-impl = \"clientcert\"\n"
        )));
        assert!(
            e.contains("\"clientcert\" needs mysql-server-ssl-ca"),
            "{e}"
        );
        let e = err(&mysql("mysql-auth-server-impl = \"passthrough\"\n"));
        assert!(e.contains("no mysql-server-ssl-cert/mysql-server-ssl-key: set them to serve TLS, or set insecure-plaintext = true"), "{e}");
        let e = err(&mysql(
            "mysql-auth-server-impl = \"passthrough\"\nmysql-server-ssl-cert = \"/c\"\n",
        ));
        assert!(
            e.contains("mysql-server-ssl-cert is set without mysql-server-ssl-key"),
            "{e}"
        );
        let e = err(&mysql("mysql-auth-server-impl = \"passthrough\"\ninsecure-plaintext = true\nmysql-server-require-secure-transport = true\n"));
        assert!(
            e.contains("mysql-server-require-secure-transport needs mysql-server-ssl-cert"),
            "{e}"
        );
        let e = err(&mysql(&format!("{MYSQL_TLS}mysql-auth-server-impl = \"passthrough\"\ninsecure-plaintext = true\nmysql-server-require-secure-transport = true\n")));
        assert!(
            e.contains(
                "insecure-plaintext = true contradicts mysql-server-require-secure-transport"
            ),
            "{e}"
        );
        let e = err(&mysql(&format!("{MYSQL_TLS}mysql-auth-server-impl = \"passthrough\"\nmysql-server-ssl-crl = \"/crl\"\n")));
        assert!(
            e.contains("mysql-server-ssl-crl needs mysql-server-ssl-ca"),
            "{e}"
        );
        let e = err(&mysql(&format!(
            "{MYSQL_TLS}mysql-auth-server-impl = \"passthrough\"\nmax-allowed-packet = 10\n"
        )));
        assert!(
            e.contains("max-allowed-packet 10: use 1024 to 1073741824 bytes"),
            "{e}"
        );
        let e = err(&mysql(&format!(
            "{MYSQL_TLS}mysql-auth-server-impl = \"passthrough\"\ngrpc-ca = \"/ca\"\n"
        )));
        assert!(
            e.contains("grpc-ca is for protocol = \"grpc\" listeners"),
            "{e}"
        );
        let e = err(&mysql(&format!("{MYSQL_TLS}mysql-auth-server-impl = \"passthrough\"\nmysql-server-tls-min-version = \"TLSv1.1\"\n")));
        assert!(
            e.contains("mysql-server-tls-min-version \"TLSv1.1\": use \"TLSv1.2\" or \"TLSv1.3\""),
            "{e}"
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = Config::load(Path::new("/nonexistent/vtguard.toml"))
            .expect_err("missing file")
            .to_string();
        assert!(
            e.starts_with("reading config /nonexistent/vtguard.toml: "),
            "{e}"
        );
    }
}
