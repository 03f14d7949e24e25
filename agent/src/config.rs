//! The agent's configuration file: TOML whose keys are Vitess flag names without the dashes
//! (where Vitess has one), translated into the types of the modules that own them.
//!
//! This module sits on top: it depends on `kernel`, `tls`, `identity`, `acl` and `proxy` for
//! their types, and nothing below it imports it. Each section is one `Raw*` struct with
//! `deny_unknown_fields`; a listener is one struct per protocol, chosen by its `protocol` key.
//! Serde reports what is wrong and where; [`listener_error`] turns that into one line that names
//! the listener, the key and the fix.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{de::DeserializeOwned, Deserialize};

use crate::{
    acl::{self, TableAclConfig},
    admin,
    cluster::{self, ClusterConfig, EtcdConfig},
    identity::EffectiveCallerId,
    kernel::{KernelConfig, KernelPolicy, PortOwner, DEFAULT_BPFFS},
    proxy::{
        grpc::{GrpcConfig, GrpcService, DEFAULT_MAX_MESSAGE_SIZE, VTTABLET_OTHER_SERVICES},
        listener::{Limits, ListenerConfig, ProtocolConfig, DEFAULT_HANDSHAKE_TIMEOUT},
        mysql::{MysqlAuth, MysqlConfig, DEFAULT_MAX_ALLOWED_PACKET},
    },
    tls::{ServerTls, TlsVersion, UpstreamTls},
};

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
    /// `[cluster]`: the table ACL and grants come from etcd.
    pub cluster: Option<ClusterConfig>,
    pub listeners: Vec<ListenerConfig>,
    /// The admin API's Unix socket.
    pub admin_socket: PathBuf,
    /// `[metrics] listen`: where `/metrics` and `/healthz` are served; `None` = off.
    pub metrics: Option<SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    kernel: Option<RawKernel>,
    tableacl: Option<RawTableAcl>,
    cluster: Option<RawCluster>,
    /// Each listener is read on its own, so that an error can name it.
    #[serde(default)]
    listener: Vec<toml::Table>,
    admin: Option<RawAdmin>,
    metrics: Option<RawMetrics>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawCluster {
    etcd: Vec<String>,
    prefix: Option<String>,
    cell: Option<String>,
    node: Option<String>,
    etcd_ca: Option<PathBuf>,
    etcd_cert: Option<PathBuf>,
    etcd_key: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    lease_ttl_seconds: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    socket: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKernel {
    protected_ports: Vec<i64>,
    bpffs: Option<PathBuf>,
    cgroup: Option<PathBuf>,
    #[serde(default)]
    access: Vec<RawAccess>,
    #[serde(default)]
    owner: Vec<RawOwner>,
}

/// `[[kernel.owner]]`: who may bind a protected port.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOwner {
    port: i64,
    cgroup: Option<PathBuf>,
    uid: Option<i64>,
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    port: i64,
    identities: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTableAcl {
    table_acl_config: Option<PathBuf>,
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
    /// `"secure"` (default) or `"vitess"`, read by `acl::Mode`'s own parser.
    mode: Option<String>,
}

/// What a `[[listener]]` speaks: its `protocol` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawProtocol {
    Grpc,
    Mysql,
}

impl RawProtocol {
    fn as_str(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Mysql => "mysql",
        }
    }

    /// What to use instead of a key of the other protocol.
    fn keys_hint(self) -> &'static str {
        match self {
            Self::Grpc => "remove it, or use grpc-* keys here",
            Self::Mysql => "a mysql listener uses mysql-server-ssl-* and mysql-auth-server-impl",
        }
    }

    /// Whether a listener of this protocol has a key called `key`: asks serde, so that the
    /// answer can never drift from the structs below.
    fn knows(self, key: &str) -> bool {
        let mut probe = toml::Table::new();
        probe.insert(key.to_owned(), toml::Value::Boolean(false));
        let unknown = |e: &serde_path_to_error::Error<toml::de::Error>| {
            e.inner().to_string().starts_with("unknown field")
        };
        match self {
            Self::Grpc => !from_table::<RawGrpc>(probe).is_err_and(|e| unknown(&e)),
            Self::Mysql => !from_table::<RawMysql>(probe).is_err_and(|e| unknown(&e)),
        }
    }
}

/// The `protocol` key alone (the rest of the table is read by the protocol's own struct).
#[derive(Debug, Deserialize)]
struct RawProtocolKey {
    protocol: RawProtocol,
}

/// A gRPC `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGrpc {
    name: String,
    listen: String,
    upstream: String,
    identities: Option<Vec<String>>,
    #[serde(default)]
    intercept: bool,
    #[serde(default)]
    insecure_plaintext: bool,
    handshake_timeout_seconds: Option<f64>,
    max_connections: Option<i64>,
    max_connections_per_identity: Option<i64>,
    service: Option<GrpcService>,
    grpc_cert: Option<PathBuf>,
    grpc_key: Option<PathBuf>,
    grpc_ca: Option<PathBuf>,
    grpc_crl: Option<PathBuf>,
    grpc_server_ca: Option<PathBuf>,
    grpc_tls_min_version: Option<TlsVersion>,
    #[serde(default)]
    grpc_use_effective_callerid: bool,
    #[serde(default)]
    grpc_use_effective_groups: bool,
    grpc_max_message_size: Option<i64>,
    grpc_server_keepalive_time: Option<f64>,
    grpc_server_keepalive_timeout: Option<f64>,
    grpc_max_connection_idle: Option<f64>,
    grpc_max_connection_age: Option<f64>,
    grpc_max_connection_age_grace: Option<f64>,
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
}

/// A MySQL `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawMysql {
    name: String,
    listen: String,
    upstream: String,
    identities: Option<Vec<String>>,
    #[serde(default)]
    intercept: bool,
    #[serde(default)]
    insecure_plaintext: bool,
    handshake_timeout_seconds: Option<f64>,
    max_connections: Option<i64>,
    max_connections_per_identity: Option<i64>,
    mysql_server_ssl_cert: Option<PathBuf>,
    mysql_server_ssl_key: Option<PathBuf>,
    mysql_server_ssl_ca: Option<PathBuf>,
    mysql_server_ssl_crl: Option<PathBuf>,
    mysql_server_tls_min_version: Option<TlsVersion>,
    #[serde(default)]
    mysql_server_require_secure_transport: bool,
    mysql_auth_server_impl: Option<MysqlAuth>,
    max_allowed_packet: Option<i64>,
    #[serde(default)]
    mysql_allow_clear_text_without_tls: bool,
    mysql_server_read_timeout: Option<f64>,
}

/// Vitess's `--tablet-grpc-*` or `--vtgate-grpc-*` flags: TLS towards the upstream.
#[derive(Debug, Default)]
struct RawUpstreamTls {
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
}

impl RawUpstreamTls {
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some() || self.server_name.is_some()
    }
}

/// The names of a protocol's server TLS keys.
struct TlsKeys {
    cert: &'static str,
    key: &'static str,
    ca: &'static str,
    crl: &'static str,
    server_ca: &'static str,
    min_version: &'static str,
}

const GRPC_TLS: TlsKeys = TlsKeys {
    cert: "grpc-cert",
    key: "grpc-key",
    ca: "grpc-ca",
    crl: "grpc-crl",
    server_ca: "grpc-server-ca",
    min_version: "grpc-tls-min-version",
};

const MYSQL_TLS: TlsKeys = TlsKeys {
    cert: "mysql-server-ssl-cert",
    key: "mysql-server-ssl-key",
    ca: "mysql-server-ssl-ca",
    crl: "mysql-server-ssl-crl",
    server_ca: "",
    min_version: "mysql-server-tls-min-version",
};

/// The values of those keys, as written.
struct RawServerTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    crl: Option<PathBuf>,
    server_ca: Option<PathBuf>,
    min_version: Option<TlsVersion>,
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
        let mut kernel = raw.kernel.map(kernel).transpose().map_err(invalid)?;
        let (tableacl, cluster) = match raw.cluster {
            None => (
                raw.tableacl.map(tableacl).transpose().map_err(invalid)?,
                None,
            ),
            Some(c) => {
                let acl = raw
                    .tableacl
                    .map(cluster_tableacl)
                    .transpose()
                    .map_err(invalid)?;
                (None, Some(cluster_config(c, acl).map_err(invalid)?))
            }
        };
        let mut listeners: Vec<ListenerConfig> = Vec::new();
        for table in raw.listener {
            let l = listener(table).map_err(invalid)?;
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
        for l in &listeners {
            grant_listener_identities(kernel.as_mut(), l).map_err(invalid)?;
            intercept_for(kernel.as_mut(), l).map_err(invalid)?;
        }
        let admin_socket = raw
            .admin
            .map_or_else(|| PathBuf::from(admin::DEFAULT_SOCKET), |a| a.socket);
        if !admin_socket.is_absolute() {
            return Err(invalid(format!(
                "[admin] socket {} is not an absolute path",
                admin_socket.display()
            )));
        }
        let metrics = raw
            .metrics
            .map(|m| {
                m.listen.parse::<SocketAddr>().map_err(|_| {
                    invalid(format!(
                        "[metrics] listen {:?} is not an address: use ip:port, e.g. \"127.0.0.1:9465\"",
                        m.listen
                    ))
                })
            })
            .transpose()?;
        Ok(Config {
            source: path.to_owned(),
            metrics,
            kernel,
            tableacl,
            cluster,
            listeners,
            admin_socket,
        })
    }
}

/// A listener's `identities` join the kernel grant of its upstream port, which must be
/// protected.
fn grant_listener_identities(
    kernel: Option<&mut KernelConfig>,
    l: &ListenerConfig,
) -> Result<(), String> {
    let Some(ids) = &l.identities else {
        return Ok(());
    };
    let port = l.upstream.port();
    match kernel {
        Some(k) if k.policy.protected_ports.contains(&port) => {
            k.policy.access.entry(port).or_default().extend(ids.iter().cloned());
            Ok(())
        }
        Some(_) => Err(format!(
            "listener {:?}: identities only take effect on a kernel-protected upstream: add port {port} to [kernel] protected-ports",
            l.name
        )),
        None => Err(format!(
            "listener {:?}: identities are enforced by the kernel: add a [kernel] section with protected-ports = [{port}]",
            l.name
        )),
    }
}

/// A listener with `intercept = true` takes the new connections to its upstream's port, which
/// must be protected; one listener per port.
fn intercept_for(kernel: Option<&mut KernelConfig>, l: &ListenerConfig) -> Result<(), String> {
    if let Some(k) = kernel.as_deref() {
        if k.policy.protected_ports.contains(&l.listen.port()) {
            return Err(format!(
                "listener {:?}: listens on protected port {}: the kernel would refuse its own callers; give it a port that is not in [kernel] protected-ports",
                l.name,
                l.listen.port()
            ));
        }
    }
    if !l.intercept {
        return Ok(());
    }
    let port = l.upstream.port();
    let k = match kernel {
        Some(k) if k.policy.protected_ports.contains(&port) => k,
        Some(_) => {
            return Err(format!(
                "listener {:?}: intercept needs the upstream's port protected: add {port} to [kernel] protected-ports",
                l.name
            ))
        }
        None => {
            return Err(format!(
                "listener {:?}: intercept is done by the kernel: add a [kernel] section with protected-ports = [{port}]",
                l.name
            ))
        }
    };
    if k.intercept.len() >= vtguard_common::INTERCEPT_V6_SLOTS as usize {
        return Err(format!(
            "listener {:?}: more than {} intercepted ports on one node",
            l.name,
            vtguard_common::INTERCEPT_V6_SLOTS
        ));
    }
    if !k.intercept.insert(port) {
        return Err(format!(
            "listener {:?}: another listener already intercepts port {port}: one listener per port",
            l.name
        ));
    }
    Ok(())
}

/// `[tableacl]` beside `[cluster]`: settings only, the ACL comes from etcd. Returns the
/// settings and `enforce-tableacl-config`.
fn cluster_tableacl(t: RawTableAcl) -> Result<(acl::Settings, bool), String> {
    if let Some(f) = &t.table_acl_config {
        return Err(format!(
            "[tableacl] table-acl-config {}: with [cluster] the table ACL comes from etcd: remove it (put the file into the cluster with `vtguard policy load`)",
            f.display()
        ));
    }
    if t.table_acl_config_reload_interval.is_some() {
        return Err("[tableacl] table-acl-config-reload-interval: with [cluster] agents watch etcd: remove it".into());
    }
    Ok((acl_settings(&t)?, t.enforce_tableacl_config))
}

fn acl_settings(t: &RawTableAcl) -> Result<acl::Settings, String> {
    let mode = match t.mode.as_deref() {
        None => acl::Mode::Secure,
        Some(m) => m.parse().map_err(|e| format!("[tableacl] {e}"))?,
    };
    Ok(acl::Settings {
        strict: t.queryserver_config_strict_table_acl,
        dry_run: t.queryserver_config_enable_table_acl_dry_run,
        exempt: Some(t.queryserver_config_acl_exempt_acl.clone()).filter(|e| !e.is_empty()),
        mode,
    })
}

/// The host name, the default `[cluster] node`.
pub(crate) fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec())
        .ok()
        .filter(|h| !h.is_empty())
}

/// Checks one etcd endpoint: `http(s)://host:port`.
pub fn etcd_endpoint(e: &str) -> Result<bool, String> {
    let uri: http::Uri = e
        .parse()
        .map_err(|_| format!("{e:?} is not a URL: use http://host:2379 or https://host:2379"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("{e:?}: use http:// or https://")),
    };
    if uri.host().is_none_or(str::is_empty) || uri.port_u16().is_none() {
        return Err(format!(
            "{e:?}: give a host and a port, e.g. http://127.0.0.1:2379"
        ));
    }
    Ok(tls)
}

/// The etcd part of `[cluster]`, shared with the CLI's `--etcd` flags.
pub fn etcd_config(
    endpoints: Vec<String>,
    prefix: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<EtcdConfig, String> {
    if endpoints.is_empty() {
        return Err("[cluster] etcd is empty: list etcd's client URLs, e.g. etcd = [\"http://127.0.0.1:2379\"]".into());
    }
    let mut tls = BTreeSet::new();
    for e in &endpoints {
        tls.insert(etcd_endpoint(e).map_err(|m| format!("[cluster] etcd {m}"))?);
    }
    if tls.len() > 1 {
        return Err("[cluster] etcd mixes http:// and https:// endpoints: use one scheme".into());
    }
    let tls = tls.contains(&true);
    if tls && ca.is_none() {
        return Err("[cluster] etcd uses https:// without etcd-ca: set etcd-ca to the CA bundle that signed etcd's certificate".into());
    }
    if !tls && (ca.is_some() || cert.is_some()) {
        return Err("[cluster] etcd-ca/etcd-cert are set but etcd is http://: use https:// endpoints, or remove them".into());
    }
    if cert.is_some() != key.is_some() {
        return Err("[cluster] etcd-cert and etcd-key go together: set both or neither".into());
    }
    let prefix = prefix.unwrap_or_else(|| cluster::DEFAULT_PREFIX.to_owned());
    if !prefix.starts_with('/')
        || prefix.len() < 2
        || prefix.ends_with('/')
        || prefix.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!(
            "[cluster] prefix {prefix:?}: use an absolute key path without a trailing '/', e.g. \"{}\"",
            cluster::DEFAULT_PREFIX
        ));
    }
    Ok(EtcdConfig {
        endpoints,
        ca,
        cert,
        key,
        prefix,
    })
}

fn cluster_config(
    c: RawCluster,
    acl: Option<(acl::Settings, bool)>,
) -> Result<ClusterConfig, String> {
    let etcd = etcd_config(c.etcd, c.prefix, c.etcd_ca, c.etcd_cert, c.etcd_key)?;
    let node = match c.node {
        Some(n) => n,
        None => hostname().ok_or(
            "[cluster] node is not set and the host name cannot be read: set node = \"...\"",
        )?,
    };
    if node.is_empty()
        || !node
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
    {
        return Err(format!(
            "[cluster] node {node:?}: use letters, digits, '-', '_' and '.'"
        ));
    }
    if let Some(cell) = c.cell.as_ref().filter(|c| c.is_empty() || c.contains('/')) {
        return Err(format!("[cluster] cell {cell:?}: give a Vitess cell name"));
    }
    let state_dir = c
        .state_dir
        .unwrap_or_else(|| PathBuf::from(cluster::DEFAULT_STATE_DIR));
    if !state_dir.is_absolute() {
        return Err(format!(
            "[cluster] state-dir {} is not an absolute path: use e.g. {}",
            state_dir.display(),
            cluster::DEFAULT_STATE_DIR
        ));
    }
    let lease_ttl = match c.lease_ttl_seconds {
        None => cluster::DEFAULT_LEASE_TTL,
        Some(s @ 2..=300) => Duration::from_secs(s as u64),
        Some(s) => return Err(format!("[cluster] lease-ttl-seconds {s}: use 2 to 300")),
    };
    let (acl, enforce) = match acl {
        Some((s, e)) => (Some(s), e),
        None => (None, false),
    };
    Ok(ClusterConfig {
        etcd,
        cell: c.cell,
        node,
        state_dir,
        lease_ttl,
        acl,
        enforce,
    })
}

fn tableacl(t: RawTableAcl) -> Result<TableAclConfig, String> {
    let Some(file) = t.table_acl_config.clone() else {
        return Err("[tableacl] table-acl-config is missing: set it to a Vitess tableacl file (or add [cluster] to take the table ACL from etcd)".into());
    };
    let reload_interval = match t.table_acl_config_reload_interval {
        None => None,
        Some(s) if (0.1..=86_400.0).contains(&s) => Some(Duration::from_secs_f64(s)),
        Some(s) => {
            return Err(format!(
                "[tableacl] table-acl-config-reload-interval {s}: use 0.1 to 86400 seconds, or leave it out to reload only on SIGHUP"
            ))
        }
    };
    Ok(TableAclConfig {
        file,
        enforce: t.enforce_tableacl_config,
        reload_interval,
        settings: acl_settings(&t)?,
    })
}

fn kernel(k: RawKernel) -> Result<KernelConfig, String> {
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
    if let Some(cg) = k.cgroup.as_ref().filter(|cg| !cg.is_absolute()) {
        return Err(format!(
            "[kernel] cgroup {} is not an absolute path: use a cgroup2 directory, e.g. /sys/fs/cgroup",
            cg.display()
        ));
    }
    let mut owners = BTreeMap::new();
    for o in &k.owner {
        let (port, owner) = port_owner(o, &protected_ports)?;
        if owners.insert(port, owner).is_some() {
            return Err(format!(
                "[[kernel.owner]] port {port} is listed twice: give each port one owner"
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
        owners,
        intercept: BTreeSet::new(),
    })
}

fn port_owner(o: &RawOwner, protected: &BTreeSet<u16>) -> Result<(u16, PortOwner), String> {
    let port = valid_port(o.port).map_err(|m| format!("[[kernel.owner]] port: {m}"))?;
    let at = |m: String| format!("[[kernel.owner]] port {port}: {m}");
    if !protected.contains(&port) {
        return Err(at(
            "is not in [kernel] protected-ports: the bind guard covers protected ports only; add it there or remove this entry".into(),
        ));
    }
    if let Some(cg) = &o.cgroup {
        if !cg.is_absolute() {
            return Err(at(format!(
                "cgroup {} is not an absolute path: use the service's cgroup2 directory, e.g. /sys/fs/cgroup/system.slice/vttablet.service",
                cg.display()
            )));
        }
    }
    let uid = match (o.uid, &o.user) {
        (Some(_), Some(_)) => return Err(at("set uid or user, not both".into())),
        (Some(u), None) => Some(
            u32::try_from(u)
                .ok()
                .filter(|u| *u != u32::MAX)
                .ok_or_else(|| at(format!("uid {u} is not a user id: use 0 to 4294967294")))?,
        ),
        (None, Some(name)) => Some(uid_of(name).ok_or_else(|| {
            at(format!(
                "user {name:?} does not exist on this host: create it, or give its uid"
            ))
        })?),
        (None, None) => None,
    };
    if o.cgroup.is_none() && uid.is_none() {
        return Err(at(
            "names no owner: set cgroup (the service's cgroup2 directory), uid or user, or both"
                .into(),
        ));
    }
    Ok((
        port,
        PortOwner {
            cgroup: o.cgroup.clone(),
            uid,
        },
    ))
}

/// The uid of user `name` (getpwnam_r).
fn uid_of(name: &str) -> Option<u32> {
    let c = std::ffi::CString::new(name).ok()?;
    // SAFETY: passwd is plain data (integers and pointers); all-zero is a valid value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the length passed; `result` is set to `&mut pwd` or
    // null by the call.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    (rc == 0 && !result.is_null()).then_some(pwd.pw_uid)
}

fn from_table<T: DeserializeOwned>(
    table: toml::Table,
) -> Result<T, serde_path_to_error::Error<toml::de::Error>> {
    serde_path_to_error::deserialize(toml::Value::Table(table))
}

/// One `[[listener]]`: its protocol picks the struct that reads the rest.
fn listener(mut table: toml::Table) -> Result<ListenerConfig, String> {
    let name = match table.get("name") {
        Some(toml::Value::String(n)) => n.clone(),
        Some(_) => return Err("[[listener]] name must be a string".into()),
        None => return Err("[[listener]] without a name: set name = \"...\"".into()),
    };
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
    let protocol = match table.remove("protocol") {
        None => {
            return Err(at(
                "protocol is missing: set protocol = \"grpc\" or \"mysql\"".into(),
            ))
        }
        Some(p) => {
            let mut probe = toml::Table::new();
            probe.insert("protocol".into(), p.clone());
            from_table::<RawProtocolKey>(probe)
                .map_err(|_| {
                    at(format!(
                        "protocol {p} is not supported: use \"grpc\" or \"mysql\""
                    ))
                })?
                .protocol
        }
    };
    match protocol {
        RawProtocol::Grpc => from_table::<RawGrpc>(table)
            .map_err(|e| listener_error(RawProtocol::Grpc, e))
            .and_then(grpc_listener),
        RawProtocol::Mysql => from_table::<RawMysql>(table)
            .map_err(|e| listener_error(RawProtocol::Mysql, e))
            .and_then(mysql_listener),
    }
    .map_err(at)
}

/// Serde's complaint about a listener table, as one line that names the key and the fix.
fn listener_error(protocol: RawProtocol, e: serde_path_to_error::Error<toml::de::Error>) -> String {
    let key = e.path().to_string();
    let inner = one_line(&e.inner().to_string());
    if let Some(field) = backticked_after(&inner, "unknown field ") {
        let other = match protocol {
            RawProtocol::Grpc => RawProtocol::Mysql,
            RawProtocol::Mysql => RawProtocol::Grpc,
        };
        if other.knows(field) {
            return format!(
                "{field} is for protocol = \"{}\" listeners: {}",
                other.as_str(),
                protocol.keys_hint()
            );
        }
        return format!("{inner}: check the spelling against the configuration reference");
    }
    if let Some(value) = backticked_after(&inner, "unknown variant ") {
        let choices: Vec<String> = inner
            .split_once("expected ")
            .map(|(_, rest)| {
                rest.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(|c| format!("{c:?}"))
                    .collect()
            })
            .unwrap_or_default();
        return format!("{key} {value:?}: use {}", choices.join(" or "));
    }
    if let Some(field) = backticked_after(&inner, "missing field ") {
        return format!("{field} is missing: set it (see the configuration reference)");
    }
    format!("{key}: {inner}")
}

/// `x` in "<prefix>`x`...".
fn backticked_after<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = s.strip_prefix(prefix)?.strip_prefix('`')?;
    rest.split('`').next()
}

fn addresses(listen: &str, upstream: &str) -> Result<(SocketAddr, SocketAddr), String> {
    let listen = listen
        .parse()
        .map_err(|_| format!("listen {listen:?} is not an address:port, e.g. \"0.0.0.0:15991\""))?;
    let upstream = upstream.parse().map_err(|_| {
        format!("upstream {upstream:?} is not an address:port, e.g. \"127.0.0.1:16991\"")
    })?;
    Ok((listen, upstream))
}

fn grpc_listener(l: RawGrpc) -> Result<ListenerConfig, String> {
    let (listen, upstream) = addresses(&l.listen, &l.upstream)?;
    let service = l
        .service
        .ok_or("service is missing: set service = \"vttablet\" or \"vtgate\"")?;
    let tls = server_tls(
        &GRPC_TLS,
        RawServerTls {
            cert: l.grpc_cert,
            key: l.grpc_key,
            ca: l.grpc_ca,
            crl: l.grpc_crl,
            server_ca: l.grpc_server_ca,
            min_version: l.grpc_tls_min_version,
        },
    )?;
    match (&tls, l.insecure_plaintext) {
        (Some(_), true) => {
            return Err("insecure-plaintext = true contradicts grpc-cert: remove one".into())
        }
        (None, false) => return Err(
            "no grpc-cert/grpc-key: set them to serve TLS, or set insecure-plaintext = true to serve plaintext on purpose".into(),
        ),
        _ => {}
    }
    let effective_callerid = match (l.grpc_use_effective_callerid, l.grpc_use_effective_groups) {
        (false, false) => EffectiveCallerId::Off,
        (true, false) => EffectiveCallerId::Principal,
        (true, true) => EffectiveCallerId::PrincipalAndGroups,
        (false, true) => {
            return Err("grpc-use-effective-groups needs grpc-use-effective-callerid".into())
        }
    };
    let tablet = RawUpstreamTls {
        ca: l.tablet_grpc_ca,
        cert: l.tablet_grpc_cert,
        key: l.tablet_grpc_key,
        server_name: l.tablet_grpc_server_name,
    };
    let vtgate = RawUpstreamTls {
        ca: l.vtgate_grpc_ca,
        cert: l.vtgate_grpc_cert,
        key: l.vtgate_grpc_key,
        server_name: l.vtgate_grpc_server_name,
    };
    let (mine, theirs, own, other) = match service {
        GrpcService::Vttablet => ("tablet-grpc", "vtgate-grpc", tablet, vtgate),
        GrpcService::Vtgate => ("vtgate-grpc", "tablet-grpc", vtgate, tablet),
    };
    if other.is_set() {
        return Err(format!(
            "{theirs}-* keys are for the other service: a {} listener dials its upstream with {mine}-*",
            service.as_str()
        ));
    }
    let upstream_tls = upstream_tls(mine, own)?;
    let max_message_size = match l.grpc_max_message_size {
        None => DEFAULT_MAX_MESSAGE_SIZE,
        Some(n) if (1..=1 << 28).contains(&n) => n as usize,
        Some(n) => {
            return Err(format!(
                "grpc-max-message-size {n}: use 1 to 268435456 bytes"
            ))
        }
    };
    let mut services = BTreeMap::new();
    for (svc, ids) in l.services {
        if service == GrpcService::Vtgate || !VTTABLET_OTHER_SERVICES.contains(&svc.as_str()) {
            return Err(format!(
                "services: {svc:?} cannot be opened here; a vttablet listener can open {}",
                VTTABLET_OTHER_SERVICES.join(", ")
            ));
        }
        services.insert(svc, ids.into_iter().collect());
    }
    Ok(ListenerConfig {
        identities: identities(l.identities)?,
        intercept: l.intercept,
        limits: limits(l.max_connections, l.max_connections_per_identity)?,
        name: l.name,
        listen,
        upstream,
        protocol: ProtocolConfig::Grpc(GrpcConfig {
            service,
            tls,
            effective_callerid,
            upstream_tls,
            handshake_timeout: handshake_timeout(l.handshake_timeout_seconds)?,
            max_message_size,
            query_log: l.query_log,
            keepalive_time: seconds(
                "grpc-server-keepalive-time",
                l.grpc_server_keepalive_time,
                10.0,
            )?,
            keepalive_timeout: seconds(
                "grpc-server-keepalive-timeout",
                l.grpc_server_keepalive_timeout,
                10.0,
            )?,
            max_connection_idle: seconds(
                "grpc-max-connection-idle",
                l.grpc_max_connection_idle,
                1800.0,
            )?,
            // grpc-go's defaults: no age limit, and no limit on the grace after it.
            max_connection_age: l
                .grpc_max_connection_age
                .map(|s| seconds("grpc-max-connection-age", Some(s), 0.0))
                .transpose()?,
            max_connection_age_grace: l
                .grpc_max_connection_age_grace
                .map(|s| seconds("grpc-max-connection-age-grace", Some(s), 0.0))
                .transpose()?,
            services,
        }),
    })
}

fn upstream_tls(mine: &str, k: RawUpstreamTls) -> Result<Option<UpstreamTls>, String> {
    if k.cert.is_some() != k.key.is_some() {
        return Err(format!(
            "{mine}-cert and {mine}-key go together: set both or neither"
        ));
    }
    if k.ca.is_none() && (k.cert.is_some() || k.server_name.is_some()) {
        return Err(format!(
            "{mine}-cert/-server-name turn on TLS to the upstream, which needs {mine}-ca to verify it: set {mine}-ca"
        ));
    }
    Ok(k.is_set().then_some(UpstreamTls {
        ca: k.ca,
        cert: k.cert,
        key: k.key,
        server_name: k.server_name,
    }))
}

/// A listener's server TLS; `None` when neither certificate nor key is set (whether that is
/// allowed is the protocol's call).
fn server_tls(names: &TlsKeys, v: RawServerTls) -> Result<Option<ServerTls>, String> {
    match (v.cert, v.key) {
        (Some(cert), Some(key)) => {
            if v.crl.is_some() && v.ca.is_none() {
                return Err(format!(
                    "{} needs {} (revocation applies to verified client certificates)",
                    names.crl, names.ca
                ));
            }
            Ok(Some(ServerTls {
                cert,
                key,
                ca: v.ca,
                crl: v.crl,
                server_ca: v.server_ca,
                min_version: v.min_version.unwrap_or_default(),
            }))
        }
        (Some(_), None) => Err(format!(
            "{} is set without {}: set both",
            names.cert, names.key
        )),
        (None, Some(_)) => Err(format!(
            "{} is set without {}: set both",
            names.key, names.cert
        )),
        (None, None) => {
            let needs_cert = [
                (names.ca, v.ca.is_some()),
                (names.crl, v.crl.is_some()),
                (names.server_ca, v.server_ca.is_some()),
                (names.min_version, v.min_version.is_some()),
            ];
            match needs_cert.iter().find(|(_, set)| *set) {
                Some((k, _)) => Err(format!("{k} needs {} and {}", names.cert, names.key)),
                None => Ok(None),
            }
        }
    }
}

fn mysql_listener(l: RawMysql) -> Result<ListenerConfig, String> {
    let (listen, upstream) = addresses(&l.listen, &l.upstream)?;
    let tls = server_tls(
        &MYSQL_TLS,
        RawServerTls {
            cert: l.mysql_server_ssl_cert,
            key: l.mysql_server_ssl_key,
            ca: l.mysql_server_ssl_ca,
            crl: l.mysql_server_ssl_crl,
            server_ca: None,
            min_version: l.mysql_server_tls_min_version,
        },
    )?;
    if l.mysql_server_require_secure_transport && tls.is_none() {
        return Err(
            "mysql-server-require-secure-transport needs mysql-server-ssl-cert and mysql-server-ssl-key"
                .into(),
        );
    }
    let auth = l.mysql_auth_server_impl.ok_or(
        "mysql-auth-server-impl is missing: set \"clientcert\" (MySQL user = certificate CN) or \"passthrough\" (identity = MySQL user)",
    )?;
    if auth == MysqlAuth::ClientCert && tls.as_ref().is_none_or(|t| t.ca.is_none()) {
        return Err(
            "mysql-auth-server-impl = \"clientcert\" needs mysql-server-ssl-ca (and -cert, -key): client certificates prove the user".into(),
        );
    }
    if l.insecure_plaintext {
        if auth == MysqlAuth::ClientCert {
            return Err(
                "insecure-plaintext = true contradicts mysql-auth-server-impl = \"clientcert\" (a certificate needs TLS): remove it".into(),
            );
        }
        if l.mysql_server_require_secure_transport {
            return Err(
                "insecure-plaintext = true contradicts mysql-server-require-secure-transport: remove one".into(),
            );
        }
    } else if tls.is_none() {
        return Err(
            "no mysql-server-ssl-cert/mysql-server-ssl-key: set them to serve TLS, or set insecure-plaintext = true to accept plaintext logins on purpose".into(),
        );
    }
    let max_allowed_packet = match l.max_allowed_packet {
        None => DEFAULT_MAX_ALLOWED_PACKET,
        Some(n) if (1024..=1 << 30).contains(&n) => n as usize,
        Some(n) => {
            return Err(format!(
                "max-allowed-packet {n}: use 1024 to 1073741824 bytes"
            ))
        }
    };
    Ok(ListenerConfig {
        identities: identities(l.identities)?,
        intercept: l.intercept,
        limits: limits(l.max_connections, l.max_connections_per_identity)?,
        name: l.name,
        listen,
        upstream,
        protocol: ProtocolConfig::Mysql(MysqlConfig {
            tls,
            require_secure_transport: l.mysql_server_require_secure_transport,
            auth,
            allow_plaintext: l.insecure_plaintext,
            handshake_timeout: handshake_timeout(l.handshake_timeout_seconds)?,
            max_allowed_packet,
            allow_clear_text: l.mysql_allow_clear_text_without_tls,
            read_timeout: seconds(
                "mysql-server-read-timeout",
                l.mysql_server_read_timeout,
                28_800.0,
            )?,
        }),
    })
}

/// A duration key in seconds: 0.1 to 7 days, `default` when left out.
fn seconds(key: &str, v: Option<f64>, default: f64) -> Result<Duration, String> {
    match v.unwrap_or(default) {
        s if (0.1..=604_800.0).contains(&s) => Ok(Duration::from_secs_f64(s)),
        s => Err(format!("{key} {s}: use 0.1 to 604800 seconds")),
    }
}

/// `max-connections` and `max-connections-per-identity`.
fn limits(max: Option<i64>, per_identity: Option<i64>) -> Result<Limits, String> {
    let d = Limits::default();
    let count = |key: &str, v: Option<i64>, default: usize| match v {
        None => Ok(default),
        Some(n) if (1..=1_000_000).contains(&n) => Ok(n as usize),
        Some(n) => Err(format!("{key} {n}: use 1 to 1000000 connections")),
    };
    let limits = Limits {
        max_connections: count("max-connections", max, d.max_connections)?,
        max_per_identity: count(
            "max-connections-per-identity",
            per_identity,
            d.max_per_identity
                .min(max.map_or(usize::MAX, |m| m.max(1) as usize)),
        )?,
    };
    if limits.max_per_identity > limits.max_connections {
        return Err(format!(
            "max-connections-per-identity {} is over max-connections {}: lower it or raise max-connections",
            limits.max_per_identity, limits.max_connections
        ));
    }
    Ok(limits)
}

fn handshake_timeout(s: Option<f64>) -> Result<Duration, String> {
    match s {
        None => Ok(DEFAULT_HANDSHAKE_TIMEOUT),
        Some(s) if s > 0.0 && s <= 300.0 => Ok(Duration::from_secs_f64(s)),
        Some(s) => Err(format!(
            "handshake-timeout-seconds {s}: use a value in (0, 300]"
        )),
    }
}

/// A listener's `identities`: each one non-empty, without NUL.
fn identities(ids: Option<Vec<String>>) -> Result<Option<BTreeSet<String>>, String> {
    let Some(ids) = ids else { return Ok(None) };
    let mut set = BTreeSet::new();
    for id in ids {
        if id.is_empty() || id.contains('\0') {
            return Err(format!(
                "identities entry {id:?} is empty or holds a NUL byte"
            ));
        }
        set.insert(id);
    }
    Ok(Some(set))
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

    /// `[cluster]` errors are one line naming the key and the fix; defaults fill the rest.
    #[test]
    fn cluster_section_is_validated_with_the_fix() {
        let listener = "[[listener]]\nname = \"l\"\nprotocol = \"grpc\"\nservice = \"vttablet\"\nlisten = \"127.0.0.1:1\"\nupstream = \"127.0.0.1:2\"\ninsecure-plaintext = true\n";
        let parse =
            |cluster: &str| Config::parse(Path::new("c.toml"), &format!("{cluster}\n{listener}"));
        let err = |cluster: &str| parse(cluster).expect_err(cluster).to_string();
        let c = parse("[cluster]\netcd = [\"http://127.0.0.1:2379\"]\nnode = \"n1\"\n[tableacl]\nqueryserver-config-strict-table-acl = true\n")
            .expect("valid")
            .cluster
            .expect("cluster");
        assert_eq!(c.etcd.prefix, "/vtguard");
        assert_eq!(c.lease_ttl, Duration::from_secs(10));
        assert!(c.acl.as_ref().is_some_and(|s| s.strict));
        for (cluster, want) in [
            (
                "[cluster]\netcd = []",
                "[cluster] etcd is empty: list etcd's client URLs",
            ),
            (
                "[cluster]\netcd = [\"127.0.0.1:2379\"]",
                "use http:// or https://",
            ),
            (
                "[cluster]\netcd = [\"https://e:2379\"]",
                "without etcd-ca: set etcd-ca",
            ),
            (
                "[cluster]\netcd = [\"http://e:2379\"]\nprefix = \"vt/\"",
                "[cluster] prefix \"vt/\": use an absolute key path",
            ),
            (
                "[cluster]\netcd = [\"http://e:2379\"]\nnode = \"a b\"",
                "[cluster] node \"a b\": use letters",
            ),
            (
                "[cluster]\netcd = [\"http://e:2379\"]\nlease-ttl-seconds = 1",
                "lease-ttl-seconds 1: use 2 to 300",
            ),
            (
                "[cluster]\netcd = [\"http://e:2379\"]\n[tableacl]\ntable-acl-config = \"/a.json\"",
                "with [cluster] the table ACL comes from etcd: remove it",
            ),
            (
                "[tableacl]\nqueryserver-config-strict-table-acl = true",
                "[tableacl] table-acl-config is missing",
            ),
        ] {
            let e = err(cluster);
            assert!(
                e.starts_with("config c.toml: ") && e.contains(want),
                "{cluster}: {e}"
            );
        }
    }

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
    fn kernel_owners_are_read_and_bad_ones_named() {
        let c = parse("[kernel]\nprotected-ports = [16991, 16999]\n[[kernel.owner]]\nport = 16991\ncgroup = \"/sys/fs/cgroup/system.slice/vttablet.service\"\nuid = 999\n[[kernel.owner]]\nport = 16999\nuser = \"root\"\n")
            .expect("valid owners");
        let owners = c.kernel.expect("kernel").owners;
        assert_eq!(
            owners[&16991],
            PortOwner {
                cgroup: Some("/sys/fs/cgroup/system.slice/vttablet.service".into()),
                uid: Some(999)
            }
        );
        assert_eq!(
            owners[&16999],
            PortOwner {
                cgroup: None,
                uid: Some(0)
            }
        );
        let k = "[kernel]\nprotected-ports = [16991]\n[[kernel.owner]]\n";
        for (owner, expected) in [
            (
                "port = 17000\nuid = 1\n",
                "[[kernel.owner]] port 17000: is not in [kernel] protected-ports",
            ),
            (
                "port = 16991\n",
                "[[kernel.owner]] port 16991: names no owner: set cgroup",
            ),
            (
                "port = 16991\ncgroup = \"system.slice/x\"\n",
                "cgroup system.slice/x is not an absolute path",
            ),
            (
                "port = 16991\nuid = 1\nuser = \"root\"\n",
                "set uid or user, not both",
            ),
            ("port = 16991\nuid = -1\n", "uid -1 is not a user id"),
            (
                "port = 16991\nuser = \"no-such-user-vtguard\"\n",
                "user \"no-such-user-vtguard\" does not exist on this host",
            ),
            ("port = 16991\ngid = 1\n", "unknown field `gid`"),
        ] {
            let e = err(&format!("{k}{owner}"));
            assert!(e.contains(expected), "{owner:?}: {e}");
        }
        let e = err(&format!(
            "{k}port = 16991\nuid = 1\n[[kernel.owner]]\nport = 16991\nuid = 2\n"
        ));
        assert!(e.contains("port 16991 is listed twice"), "{e}");
    }

    #[test]
    fn intercept_needs_a_protected_upstream_and_one_listener_per_port() {
        let l = |name: &str, listen: u16, upstream: u16| {
            format!("[[listener]]\nname = \"{name}\"\nprotocol = \"grpc\"\nservice = \"vttablet\"\nlisten = \"127.0.0.1:{listen}\"\nupstream = \"127.0.0.1:{upstream}\"\ninsecure-plaintext = true\nintercept = true\n")
        };
        let c = parse(&format!(
            "[kernel]\nprotected-ports = [16991]\n{}",
            l("a", 15991, 16991)
        ))
        .expect("valid");
        assert_eq!(c.kernel.expect("kernel").intercept, BTreeSet::from([16991]));
        assert!(c.listeners[0].intercept);
        for (text, expected) in [
            (
                format!("[kernel]\nprotected-ports = [1]\n{}", l("a", 15991, 16991)),
                "listener \"a\": intercept needs the upstream's port protected: add 16991 to [kernel] protected-ports",
            ),
            (
                l("a", 15991, 16991),
                "listener \"a\": intercept is done by the kernel: add a [kernel] section with protected-ports = [16991]",
            ),
            (
                format!("[kernel]\nprotected-ports = [16991]\n{}{}", l("a", 15991, 16991), l("b", 15992, 16991)),
                "listener \"b\": another listener already intercepts port 16991: one listener per port",
            ),
            (
                format!("[kernel]\nprotected-ports = [16991, 15991]\n{}", l("a", 15991, 16991)),
                "listener \"a\": listens on protected port 15991",
            ),
        ] {
            let e = err(&text);
            assert!(e.contains(expected), "{e}");
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
        let ProtocolConfig::Grpc(g) = &l.protocol else {
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
        let plain = |extra: &str| err(&listener(&format!("insecure-plaintext = true\n{extra}")));
        let e = err(&format!(
            "[tableacl]\ntable-acl-config = \"/a.json\"\nmode = \"strict\"\n{}",
            listener("insecure-plaintext = true\n")
        ));
        assert!(
            e.contains("[tableacl] mode \"strict\": use \"secure\" or \"vitess\""),
            "{e}"
        );
        let e = plain("max-connections = 0\n");
        assert!(
            e.contains("listener l: max-connections 0: use 1 to 1000000 connections"),
            "{e}"
        );
        let e = plain("max-connections = 10\nmax-connections-per-identity = 20\n");
        assert!(
            e.contains("max-connections-per-identity 20 is over max-connections 10"),
            "{e}"
        );
        let e = plain("grpc-max-connection-idle = 0\n");
        assert!(
            e.contains("grpc-max-connection-idle 0: use 0.1 to 604800 seconds"),
            "{e}"
        );
        let e = plain("grpc-max-connection-age = -5\n");
        assert!(
            e.contains("grpc-max-connection-age -5: use 0.1 to 604800 seconds"),
            "{e}"
        );
        let e = plain("grpc-max-connection-age-grace = 1e9\n");
        assert!(
            e.contains("grpc-max-connection-age-grace 1000000000: use 0.1 to 604800 seconds"),
            "{e}"
        );
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
            "{MYSQL_TLS}mysql-server-ssl-ca = \"/ca\"\nmysql-server-ssl-crl = \"/crl\"\nmysql-server-tls-min-version = \"TLSv1.3\"\nmysql-server-require-secure-transport = true\nmysql-auth-server-impl = \"clientcert\"\nmax-allowed-packet = 2048\nhandshake-timeout-seconds = 2\nmysql-allow-clear-text-without-tls = true\n"
        )))
        .expect("valid mysql listener");
        let ProtocolConfig::Mysql(m) = &c.listeners[0].protocol else {
            panic!("a mysql listener")
        };
        let tls = m.tls.as_ref().expect("tls");
        assert_eq!(tls.ca, Some(PathBuf::from("/ca")));
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert!(m.require_secure_transport);
        assert_eq!(m.auth, MysqlAuth::ClientCert);
        assert_eq!(m.max_allowed_packet, 2048);
        assert_eq!(m.handshake_timeout, Duration::from_secs(2));
        assert!(m.allow_clear_text);
        let c = parse(&mysql(
            "insecure-plaintext = true\nmysql-auth-server-impl = \"passthrough\"\n",
        ))
        .expect("plaintext passthrough");
        let ProtocolConfig::Mysql(m) = &c.listeners[0].protocol else {
            panic!("a mysql listener")
        };
        assert!(m.tls.is_none() && m.allow_plaintext);
        assert_eq!(m.max_allowed_packet, DEFAULT_MAX_ALLOWED_PACKET);
        assert!(
            !m.allow_clear_text,
            "clear-text passwords are off unless set"
        );
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
