//! Cluster policy through etcd (`[cluster]`): one versioned document under `<prefix>/policy`
//! that every agent watches, validates and applies as a local load does, and that `vtguard
//! policy load|history|rollback|status --cluster` write and read. See docs/CLUSTER.md.
//!
//! Keys under the prefix:
//! - `<prefix>/policy`: the [`document::Document`]; its etcd `mod_revision` is the policy's
//!   revision, and etcd's own history of the key is the policy's history.
//! - `<prefix>/nodes/<node>`: each agent's [`NodeState`], under a lease, so a node that stops
//!   disappears from the list when its lease expires.

pub mod command;
pub mod document;
pub mod node;
mod persist;
pub mod store;

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

pub use document::Document;
pub use node::Node;

/// Default key prefix (as Vitess's `--topo_global_root`).
pub const DEFAULT_PREFIX: &str = "/vtguard";
/// Default folder for the last applied policy.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/vtguard";
/// Default lease of a node's state key.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// How long one etcd request may take before the connection counts as broken.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Endpoints, `http://host:port` or `https://host:port`.
    pub endpoints: Vec<String>,
    /// `etcd-ca`: verify etcd's certificate with this CA bundle (PEM).
    pub ca: Option<PathBuf>,
    /// `etcd-cert`, `etcd-key`: the client certificate etcd may ask for.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Key prefix, without a trailing `/`.
    pub prefix: String,
}

/// The `[cluster]` part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    pub etcd: EtcdConfig,
    /// This node's cell (a Vitess cell name); grants may be limited to cells.
    pub cell: Option<String>,
    /// This node's name under `<prefix>/nodes/`.
    pub node: String,
    /// Where the last applied policy is kept (`cluster-policy.json`).
    pub state_dir: PathBuf,
    /// Lease of the node's state key.
    pub lease_ttl: Duration,
    /// `[tableacl]` settings (the ACL itself comes from etcd); `None` without `[tableacl]`.
    pub acl: Option<crate::acl::Settings>,
    /// `enforce-tableacl-config`: refuse to start without a policy (from etcd or persisted).
    pub enforce: bool,
}

/// What went wrong talking to etcd or keeping the policy.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcd {endpoints}: {detail}: check [cluster] etcd (or --etcd) and that etcd runs")]
    Connect { endpoints: String, detail: String },
    #[error("etcd {op}: {detail}")]
    Etcd { op: &'static str, detail: String },
    #[error("etcd {op}: no answer within {secs} s", secs = REQUEST_TIMEOUT.as_secs())]
    Timeout { op: &'static str },
    #[error("reading {what} {path}: {source}")]
    Tls {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the policy in etcd is at revision {current}, not {expected} as diffed: someone else changed it; run the command again with --dry-run to see what it changes now")]
    Conflict { expected: i64, current: i64 },
    #[error("revision {0} is not a revision of the policy (or etcd compacted it away): `vtguard policy history` lists the revisions etcd still has")]
    NoSuchRevision(i64),
    #[error("{path}: {source}")]
    Persist {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    fn etcd(op: &'static str) -> impl FnOnce(etcd_client::Error) -> Error {
        move |e| Error::Etcd {
            op,
            detail: error_detail(&e),
        }
    }
}

/// An etcd error as one line (tonic's status carries the useful part in its message).
fn error_detail(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => crate::telemetry::chain_line(other),
    }
}

/// What a node publishes under `<prefix>/nodes/<node>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub node: String,
    #[serde(default)]
    pub cell: Option<String>,
    /// The policy revision in force on the node (0: none).
    pub revision: i64,
    /// The newest policy revision the node has seen.
    pub seen: i64,
    /// Why the node refused the revision it saw, if it did.
    #[serde(default)]
    pub error: Option<String>,
    /// When the node wrote this (unix seconds).
    pub time: i64,
    pub pid: u32,
}

/// `vtguard status`'s view of the cluster part of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub node: String,
    pub cell: Option<String>,
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub connected: bool,
    /// When `connected` last changed (unix seconds).
    pub since: i64,
    /// The revision in force (0: none).
    pub revision: i64,
    /// Where it came from: `etcd`, `persisted` (read at start from the state folder), `none`.
    pub source: String,
    /// The newest revision seen in etcd.
    pub seen: i64,
    /// Why the newest revision seen was refused.
    pub error: Option<String>,
}
