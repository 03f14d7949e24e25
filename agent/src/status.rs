//! What `vtguard status` shows, as types: the admin server fills a [`Status`] and sends it as
//! JSON, the CLI reads the same type back. A misspelt field is a compile error on both sides,
//! and `vtguard status --json` prints these field names.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{acl::Mode, kernel::KernelStatus};

/// The running agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    /// The agent's open-file limit (RLIMIT_NOFILE, raised to the hard limit at start).
    #[serde(default)]
    pub open_files_limit: u64,
    /// When the agent started (unix seconds).
    pub started: i64,
    pub listeners: Vec<ListenerStatus>,
    /// Open connections by listener and identity.
    pub connections: Vec<ConnectionStatus>,
    /// The table ACL in force; `None` without `[tableacl]`.
    pub policy: Option<PolicyStatus>,
    /// The pinned kernel state; `None` without `[kernel]`.
    pub kernel: Option<KernelReport>,
    /// The cluster policy's state; `None` without `[cluster]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<crate::cluster::ClusterStatus>,
}

/// A listener's wire protocol (also the `protocol` label of `vtguard_connections_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Grpc,
    Mysql,
}

impl Protocol {
    /// The name in configs, labels and status.
    pub const fn as_str(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::Mysql => "mysql",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One listener: where it listens and forwards, and what it has counted since the start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub protocol: Protocol,
    /// The Vitess service behind a gRPC listener (`vttablet`, `vtgate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub tls: bool,
    #[serde(flatten)]
    pub counts: ListenerCounts,
}

/// A listener's counters, read from its metrics (the series of `/metrics`), so that the two
/// never disagree.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerCounts {
    /// Client connections accepted.
    pub connections: u64,
    /// Handshakes refused or timed out (on MySQL: the whole login).
    pub handshakes_failed: u64,
    /// MySQL logins that succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logins: Option<u64>,
    /// Requests decided on: gRPC calls; MySQL commands the table ACL checks, and the commands
    /// vtguard refuses outright.
    pub requests: u64,
    /// Requests vtguard answered with an error itself.
    pub refused: u64,
    /// Requests a dry-run table ACL would have denied.
    pub acl_dry_run_denials: u64,
    /// Connections refused by `max-connections` or `max-connections-per-identity`.
    #[serde(default)]
    pub limit_refused: u64,
    /// Upstream connections refused, nothing sent, because the socket listening there was not
    /// the port's owner's (`[[kernel.owner]]`).
    #[serde(default)]
    pub upstream_not_owner: u64,
}

/// Open connections of one identity on one listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStatus {
    pub listener: String,
    pub identity: String,
    pub client_connections: usize,
    pub upstream_connections: usize,
}

/// The table ACL in force and how it is applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// How many times an ACL was put in force (1 = the first).
    pub version: u64,
    /// Where the ACL came from (a file, or the admin API's caller).
    pub source: String,
    /// When it was put in force (unix seconds).
    pub loaded_at: i64,
    pub table_groups: usize,
    #[serde(with = "display_fromstr")]
    pub mode: Mode,
    pub strict: bool,
    pub dry_run: bool,
    pub exempt: Option<String>,
    pub cached_decisions: usize,
}

/// The kernel state, or why it could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum KernelReport {
    Read(KernelStatus),
    Unreadable { error: String },
}

/// A value as its `Display` text, read back with `FromStr`.
mod display_fromstr {
    use std::{fmt::Display, str::FromStr};

    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A status with a listener of each protocol, an open connection and a policy.
    pub(crate) fn sample(kernel: Option<KernelReport>) -> Status {
        Status {
            pid: 4242,
            open_files_limit: 1_048_576,
            started: 1_700_000_000,
            listeners: vec![
                ListenerStatus {
                    name: "vttablet".into(),
                    protocol: Protocol::Grpc,
                    service: Some("vttablet".into()),
                    listen: "127.0.0.1:16001".parse().expect("addr"),
                    upstream: "127.0.0.1:16991".parse().expect("addr"),
                    tls: true,
                    counts: ListenerCounts {
                        connections: 12,
                        handshakes_failed: 1,
                        logins: None,
                        requests: 2,
                        refused: 1,
                        acl_dry_run_denials: 0,
                        limit_refused: 0,
                        upstream_not_owner: 0,
                    },
                },
                ListenerStatus {
                    name: "mysql-primary".into(),
                    protocol: Protocol::Mysql,
                    service: None,
                    listen: "[::1]:3306".parse().expect("addr"),
                    upstream: "127.0.0.1:17100".parse().expect("addr"),
                    tls: false,
                    counts: ListenerCounts {
                        logins: Some(5),
                        ..ListenerCounts::default()
                    },
                },
            ],
            connections: vec![ConnectionStatus {
                listener: "vttablet".into(),
                identity: "vtgate client 1".into(),
                client_connections: 1,
                upstream_connections: 10,
            }],
            policy: Some(PolicyStatus {
                version: 2,
                source: "/etc/vtguard/acl.json".into(),
                loaded_at: 1_700_000_100,
                table_groups: 3,
                mode: Mode::Secure,
                strict: true,
                dry_run: false,
                exempt: None,
                cached_decisions: 7,
            }),
            kernel,
            cluster: None,
        }
    }

    /// The keys scripts read from `vtguard status --json` (as the agent wrote them before
    /// status was typed), and the round trip the CLI relies on.
    #[test]
    fn json_keeps_its_keys_and_reads_back() {
        let s = sample(Some(KernelReport::Unreadable {
            error: "not root".into(),
        }));
        let v = serde_json::to_value(&s).expect("encodes");
        let keys = |v: &serde_json::Value| -> Vec<String> {
            let mut k: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(
            keys(&v),
            [
                "connections",
                "kernel",
                "listeners",
                "open_files_limit",
                "pid",
                "policy",
                "started"
            ]
        );
        assert_eq!(
            keys(&v["listeners"][0]),
            [
                "acl_dry_run_denials",
                "connections",
                "handshakes_failed",
                "limit_refused",
                "listen",
                "name",
                "protocol",
                "refused",
                "requests",
                "service",
                "tls",
                "upstream",
                "upstream_not_owner"
            ]
        );
        assert_eq!(v["listeners"][0]["protocol"], "grpc");
        assert_eq!(v["listeners"][0]["listen"], "127.0.0.1:16001");
        assert!(v["listeners"][0].get("logins").is_none());
        assert_eq!(v["listeners"][1]["logins"], 5);
        assert_eq!(v["listeners"][1]["listen"], "[::1]:3306");
        assert!(v["listeners"][1].get("service").is_none());
        assert_eq!(
            keys(&v["policy"]),
            [
                "cached_decisions",
                "dry_run",
                "exempt",
                "loaded_at",
                "mode",
                "source",
                "strict",
                "table_groups",
                "version"
            ]
        );
        assert_eq!(v["policy"]["mode"], "secure");
        assert_eq!(v["policy"]["exempt"], serde_json::Value::Null);
        assert_eq!(v["kernel"], serde_json::json!({"error": "not root"}));
        let back: Status = serde_json::from_value(v).expect("reads back");
        assert_eq!(back, s);
    }

    #[test]
    fn a_wrong_mode_is_named() {
        let mut v = serde_json::to_value(sample(None)).expect("encodes");
        v["policy"]["mode"] = "lax".into();
        let e = serde_json::from_value::<Status>(v).expect_err("lax is no mode");
        assert!(e.to_string().contains("mode \"lax\""), "{e}");
    }
}
