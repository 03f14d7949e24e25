//! The admin API, over a Unix socket that only root can open (mode 0600): policy through the
//! CLI (`vtguard policy load` validates a file, reports what changes, and swaps it in
//! atomically — an invalid file changes nothing and says why; `policy show`; `policy check`
//! against the policy in force) and `vtguard status`.

use std::{
    io,
    path::{Path, PathBuf},
    sync::Arc,
};

use tonic::{Request, Response, Status};
use tracing::{info, warn};
use vtguard_proto::admin::{
    admin_client::AdminClient,
    admin_server::{Admin, AdminServer},
    CheckPolicyRequest, CheckPolicyResponse, LoadPolicyRequest, LoadPolicyResponse,
    ShowPolicyRequest, ShowPolicyResponse, StatusRequest, StatusResponse,
};

use crate::{
    acl::{Enforcer, Mode, TableAcl, Verdict},
    kernel::{Kernel, KernelStatus},
    proxy::listener::Listener,
    sessions::Sessions,
    status::{ConnectionStatus, KernelReport, PolicyStatus},
};

/// Default admin socket.
pub const DEFAULT_SOCKET: &str = "/run/vtguard/admin.sock";

/// What went wrong with the admin socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("admin socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("admin socket {path}: cannot connect ({detail}): is `vtguard run` running with this socket?")]
    Connect { path: PathBuf, detail: String },
    #[error("{0}")]
    Rpc(String),
}

/// What the admin API reports on and acts upon.
pub struct State {
    /// The table ACL in force; `None` without `[tableacl]`.
    pub enforcer: Option<Arc<Enforcer>>,
    pub sessions: Arc<Sessions>,
    pub kernel: Option<Arc<Kernel>>,
    pub listeners: Vec<Arc<dyn Listener>>,
    /// When the agent started (unix seconds).
    pub started: i64,
    /// `[cluster]`: the policy comes from etcd, not from the admin API.
    pub cluster: Option<Arc<crate::cluster::Node>>,
}

struct Service {
    state: Arc<State>,
}

impl Service {
    fn enforcer(&self) -> Result<&Arc<Enforcer>, Status> {
        self.state.enforcer.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this agent has no table ACL: add a [tableacl] section with table-acl-config to its config",
            )
        })
    }
}

#[tonic::async_trait]
impl Admin for Service {
    async fn load_policy(
        &self,
        req: Request<LoadPolicyRequest>,
    ) -> Result<Response<LoadPolicyResponse>, Status> {
        let req = req.into_inner();
        if self.state.cluster.is_some() {
            return Err(Status::failed_precondition(
                "this agent takes its policy from etcd ([cluster]): load it into the cluster with `vtguard policy load FILE --config CONFIG` (or --etcd URL)",
            ));
        }
        let new = TableAcl::parse(&req.path, &req.content).map_err(|e| {
            Status::invalid_argument(format!("{e}; the policy in force is unchanged"))
        })?;
        let enforcer = self.enforcer()?;
        let mut changes = diff(&enforcer.acl(), &new);
        let total_changes = changes.len() as u64;
        if !req.dry_run {
            enforcer.replace_from(new, &req.path);
            info!(source = %req.path, changes = total_changes, "table ACL loaded through the admin API");
        }
        // The summary stays small whatever the policy's size; the count is always whole.
        if req.max_changes > 0 {
            changes.truncate(req.max_changes as usize);
        }
        Ok(Response::new(LoadPolicyResponse {
            changes,
            applied: !req.dry_run,
            total_changes,
            version: enforcer.version(),
        }))
    }

    async fn show_policy(
        &self,
        _: Request<ShowPolicyRequest>,
    ) -> Result<Response<ShowPolicyResponse>, Status> {
        let enforcer = self.enforcer()?;
        let (source, loaded_at) = enforcer.origin();
        Ok(Response::new(ShowPolicyResponse {
            json: serde_json::to_string_pretty(&enforcer.acl().to_json()).unwrap_or_default(),
            source,
            loaded_at,
        }))
    }

    async fn check_policy(
        &self,
        req: Request<CheckPolicyRequest>,
    ) -> Result<Response<CheckPolicyResponse>, Status> {
        let req = req.into_inner();
        let enforcer = self.enforcer()?;
        let mut settings = enforcer.settings().clone();
        if !req.mode.is_empty() {
            settings.mode = req.mode.parse::<Mode>().map_err(|e| {
                Status::invalid_argument(format!("{e}, or leave it out for the agent's own"))
            })?;
        }
        let acl = enforcer.acl();
        let d = crate::acl::decide::decide(&acl, &settings, &req.user, &req.groups, &req.sql);
        let v = Verdict::new(&acl, &d);
        Ok(Response::new(CheckPolicyResponse {
            decision: v.decision.to_owned(),
            role: v.role.unwrap_or_default(),
            table: v.table.unwrap_or_default(),
            group: v.group.unwrap_or_default(),
            message: v.message,
        }))
    }

    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let json = serde_json::to_string(&status(&self.state))
            .map_err(|e| Status::internal(format!("encoding the status: {e}")))?;
        Ok(Response::new(StatusResponse { json }))
    }
}

/// The agent's state: listeners, open connections per identity, policy, kernel.
pub fn status(state: &State) -> crate::status::Status {
    let connections = state
        .sessions
        .by_identity()
        .into_iter()
        .map(
            |((listener, identity), (clients, upstreams))| ConnectionStatus {
                listener,
                identity,
                client_connections: clients,
                upstream_connections: upstreams,
            },
        )
        .collect();
    let policy = state.enforcer.as_ref().map(|e| {
        let (source, loaded_at) = e.origin();
        let s = e.settings();
        PolicyStatus {
            version: e.version(),
            source,
            loaded_at,
            table_groups: e.acl().groups.len(),
            mode: s.mode,
            strict: s.strict,
            dry_run: s.dry_run,
            exempt: s.exempt.clone(),
            cached_decisions: e.cached(),
        }
    });
    let kernel = state
        .kernel
        .as_ref()
        .map(|k| match KernelStatus::read(k.pin_dir()) {
            Ok(st) => KernelReport::Read(st),
            Err(e) => KernelReport::Unreadable {
                error: e.to_string(),
            },
        });
    crate::status::Status {
        pid: std::process::id(),
        open_files_limit: crate::app::open_files_limit(),
        started: state.started,
        listeners: state.listeners.iter().map(|l| l.status()).collect(),
        connections,
        policy,
        kernel,
        cluster: state.cluster.as_ref().map(|c| c.status()),
    }
}

/// Serves the admin API on `path` until the task is dropped.
pub async fn serve(path: &Path, state: Arc<State>) -> Result<(), Error> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| Error::Socket {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    // A socket left by an agent that died; nobody listens on it.
    if path.exists() && std::os::unix::net::UnixStream::connect(path).is_err() {
        let _ = std::fs::remove_file(path);
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    info!(socket = %path.display(), "admin API listening");
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(
            AdminServer::new(Service { state })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming(incoming)
        .await
        .map_err(|e| Error::Socket {
            path: path.to_owned(),
            source: io::Error::other(e),
        })
}

/// The largest admin message either way: policies (and their JSON) of any realistic size fit,
/// not only those under gRPC's default of 4 MiB.
pub const MAX_MESSAGE: usize = 1 << 30;

/// A client of the admin socket.
pub async fn client(path: &Path) -> Result<AdminClient<tonic::transport::Channel>, Error> {
    let p = path.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://vtguard.admin")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| {
            let p = p.clone();
            async move {
                Ok::<_, io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .map_err(|e| Error::Connect {
            path: path.to_owned(),
            detail: std::error::Error::source(&e).map_or_else(|| e.to_string(), |s| s.to_string()),
        })?;
    Ok(AdminClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// What changes between two policies: groups and table entries added or removed, and
/// identities gaining or losing a role on an entry.
pub fn diff(old: &TableAcl, new: &TableAcl) -> Vec<String> {
    use std::collections::BTreeSet;
    let groups = |a: &TableAcl| {
        a.groups
            .iter()
            .map(|g| g.name.clone())
            .collect::<BTreeSet<_>>()
    };
    let entries = |a: &TableAcl| {
        a.groups
            .iter()
            .flat_map(|g| g.tables.clone())
            .collect::<BTreeSet<_>>()
    };
    let grants = |a: &TableAcl| {
        let mut out = BTreeSet::new();
        for g in &a.groups {
            for (role, members) in [
                ("READER", &g.readers),
                ("WRITER", &g.writers),
                ("ADMIN", &g.admins),
            ] {
                for m in members {
                    for t in &g.tables {
                        out.insert((m.clone(), role, t.clone()));
                    }
                }
            }
        }
        out
    };
    let mut out = Vec::new();
    let (go, gn) = (groups(old), groups(new));
    out.extend(gn.difference(&go).map(|g| format!("+ group {g:?}")));
    out.extend(go.difference(&gn).map(|g| format!("- group {g:?}")));
    let (eo, en) = (entries(old), entries(new));
    out.extend(en.difference(&eo).map(|t| format!("+ table {t:?}")));
    out.extend(eo.difference(&en).map(|t| format!("- table {t:?}")));
    let (ao, an) = (grants(old), grants(new));
    out.extend(
        an.difference(&ao)
            .map(|(m, r, t)| format!("+ {m:?} gains {r} on {t:?}")),
    );
    out.extend(
        ao.difference(&an)
            .map(|(m, r, t)| format!("- {m:?} loses {r} on {t:?}")),
    );
    if out.is_empty() {
        warn!("policy load changes nothing");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_groups_tables_and_identities() {
        let a = TableAcl::parse("a", br#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["t1"], "readers": ["alice"]}]}"#).expect("a");
        let b = TableAcl::parse(
            "b",
            br#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["t1", "t2"], "readers": ["bob"]}, {"name": "h", "table_names_or_prefixes": ["x%"], "admins": ["ops"]}]}"#,
        )
        .expect("b");
        let d = diff(&a, &b);
        assert!(d.contains(&"+ group \"h\"".to_owned()), "{d:?}");
        assert!(d.contains(&"+ table \"t2\"".to_owned()), "{d:?}");
        assert!(
            d.contains(&"+ \"bob\" gains READER on \"t1\"".to_owned()),
            "{d:?}"
        );
        assert!(
            d.contains(&"- \"alice\" loses READER on \"t1\"".to_owned()),
            "{d:?}"
        );
        assert!(
            d.contains(&"+ \"ops\" gains ADMIN on \"x%\"".to_owned()),
            "{d:?}"
        );
        assert!(diff(&a, &a).is_empty());
    }
}
