//! The agent's side of the cluster: start from the persisted policy or etcd's, watch the
//! policy key, validate and apply each revision as a local load does, persist it, and publish
//! this node's state under a lease.
//!
//! Never open, never blind: a refused revision leaves the previous one in force; without etcd
//! the node keeps enforcing what it has (and starts from the persisted copy); a broken watch
//! resumes from the last revision seen, and one whose revision was compacted away reads the
//! key afresh.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use etcd_client::{EventType, WatchOptions};
use parking_lot::Mutex;
use tracing::{debug, error, info, warn};

use super::{
    document::NodeView,
    persist,
    store::{timed, Store},
    ClusterConfig, ClusterStatus, Document, Error, NodeState,
};
use crate::{
    acl::{now_unix, Enforcer},
    kernel::{Kernel, KernelPolicy},
    sessions::Sessions,
};

/// Where the policy in force came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Etcd,
    Persisted,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Etcd => "etcd",
            Source::Persisted => "persisted",
        }
    }
}

#[derive(Debug)]
struct Applied {
    revision: i64,
    doc: Arc<Document>,
    source: Source,
}

#[derive(Debug, Default)]
struct State {
    /// The node's own kernel policy (config file), which the document's grants join.
    base: Option<KernelPolicy>,
    applied: Option<Applied>,
    seen: i64,
    error: Option<String>,
    connected: bool,
    since: i64,
    /// The etcd revision to resume the watch from (0: read the key afresh).
    watch_from: i64,
}

/// One agent in the cluster.
pub struct Node {
    cfg: ClusterConfig,
    view: NodeView,
    enforcer: Option<Arc<Enforcer>>,
    kernel: Option<Arc<Kernel>>,
    sessions: Arc<Sessions>,
    state: Mutex<State>,
    /// Held while a policy goes into force, so that the watch and SIGHUP never interleave.
    applying: Mutex<()>,
}

/// The agent cannot start: `enforce-tableacl-config` and no policy to be had.
#[derive(Debug, thiserror::Error)]
#[error("enforce-tableacl-config is set and no cluster policy could be had: etcd: {etcd}; persisted: none in {dir}")]
pub struct NoPolicy {
    etcd: String,
    dir: String,
}

impl Node {
    pub fn new(
        cfg: ClusterConfig,
        view: NodeView,
        enforcer: Option<Arc<Enforcer>>,
        kernel: Option<Arc<Kernel>>,
        sessions: Arc<Sessions>,
        base: Option<KernelPolicy>,
    ) -> Arc<Self> {
        Arc::new(Node {
            cfg,
            view,
            enforcer,
            kernel,
            sessions,
            state: Mutex::new(State {
                base,
                since: now_unix(),
                ..State::default()
            }),
            applying: Mutex::new(()),
        })
    }

    fn key(&self) -> String {
        super::store::Keys::new(&self.cfg.etcd.prefix).policy()
    }

    /// Puts the persisted policy in force, then etcd's if etcd answers in time. Refuses only
    /// when `enforce-tableacl-config` is set and neither is there.
    pub async fn start(self: &Arc<Self>) -> Result<(), NoPolicy> {
        match persist::load(&self.cfg.state_dir, &self.cfg.etcd.prefix) {
            Ok(Some((rev, bytes))) => {
                match Document::parse(&format!("persisted revision {rev}"), &bytes) {
                    Ok(doc) => self.apply(rev, doc, None, Source::Persisted).await,
                    Err(e) => {
                        error!(error = %e, "persisted cluster policy unusable; ignoring it")
                    }
                }
            }
            Ok(None) => {}
            Err(e) => error!(error = %e, "persisted cluster policy unreadable; ignoring it"),
        }
        let etcd = match Store::connect(&self.cfg.etcd).await {
            Ok(mut store) => match self.full_read(&mut store).await {
                Ok(from) => {
                    self.state.lock().watch_from = from;
                    self.set_connected(true, None);
                    String::new()
                }
                Err(e) => e.to_string(),
            },
            Err(e) => e.to_string(),
        };
        if !etcd.is_empty() {
            let rev = self.revision();
            warn!(error = %etcd, revision = rev, "cluster: etcd unreachable at start; enforcing the persisted policy (revision 0: none) and retrying in the background");
        }
        if self.cfg.enforce && self.state.lock().applied.is_none() {
            return Err(NoPolicy {
                etcd: if etcd.is_empty() {
                    "no policy document".into()
                } else {
                    etcd
                },
                dir: self.cfg.state_dir.display().to_string(),
            });
        }
        Ok(())
    }

    /// Watches etcd until the agent stops, reconnecting with backoff.
    pub async fn run(self: Arc<Self>) -> anyhow::Result<()> {
        let mut backoff = Duration::from_millis(250);
        loop {
            let err = self.session().await;
            self.set_connected(false, Some(&err));
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            if self.state.lock().connected {
                backoff = Duration::from_millis(250);
            }
        }
    }

    /// One connection to etcd: lease, catch up, publish, watch. Returns why it ended.
    async fn session(self: &Arc<Self>) -> Error {
        match self.session_inner().await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn session_inner(self: &Arc<Self>) -> Result<std::convert::Infallible, Error> {
        let mut store = Store::connect(&self.cfg.etcd).await?;
        let ttl = self.cfg.lease_ttl.as_secs().max(1) as i64;
        let lease = timed("granting a lease", store.client.lease_grant(ttl, None))
            .await?
            .id();
        let (mut keeper, mut alive) =
            timed("keeping the lease", store.client.lease_keep_alive(lease)).await?;
        let mut from = self.state.lock().watch_from;
        if from == 0 {
            from = self.full_read(&mut store).await?;
        }
        self.set_connected(true, None);
        self.publish(&mut store, lease).await?;
        let mut tick = tokio::time::interval(self.cfg.lease_ttl / 3);
        'watch: loop {
            let options = WatchOptions::new()
                .with_start_revision(from)
                .with_progress_notify();
            let mut watch = timed(
                "watching the policy",
                store.client.watch(self.key(), Some(options)),
            )
            .await?;
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        timed("keeping the lease", keeper.keep_alive()).await?;
                        match timed("keeping the lease", alive.message()).await? {
                            Some(r) if r.ttl() > 0 => {}
                            _ => return Err(Error::Etcd { op: "keeping the lease", detail: "the lease expired".into() }),
                        }
                    }
                    msg = watch.message() => {
                        let resp = msg.map_err(Error::etcd("watching the policy"))?.ok_or(Error::Etcd {
                            op: "watching the policy",
                            detail: "the watch stream ended".into(),
                        })?;
                        if resp.compact_revision() > 0 {
                            warn!(from, compacted = resp.compact_revision(), "cluster: the revisions to resume from were compacted away; reading the policy afresh");
                            from = self.full_read(&mut store).await?;
                            self.state.lock().watch_from = from;
                            self.publish(&mut store, lease).await?;
                            continue 'watch;
                        }
                        if resp.canceled() {
                            return Err(Error::Etcd { op: "watching the policy", detail: format!("watch canceled: {}", resp.cancel_reason()) });
                        }
                        let mut changed = false;
                        for ev in resp.events() {
                            let Some(kv) = ev.kv() else { continue };
                            match ev.event_type() {
                                EventType::Put => self.handle(kv.mod_revision(), kv.value(), false).await,
                                EventType::Delete => self.refuse(kv.mod_revision(), "the policy key was deleted; the previous policy stays in force (write a new one with `vtguard policy load`)".into()),
                            }
                            from = from.max(kv.mod_revision() + 1);
                            changed = true;
                        }
                        if let Some(h) = resp.header() {
                            if resp.events().is_empty() {
                                from = from.max(h.revision() + 1);
                            }
                        }
                        self.state.lock().watch_from = from;
                        if changed {
                            self.publish(&mut store, lease).await?;
                        }
                    }
                }
            }
        }
    }

    /// Reads the policy key and applies what it holds; returns the revision to watch from.
    async fn full_read(self: &Arc<Self>, store: &mut Store) -> Result<i64, Error> {
        let (stored, header) = store.policy().await?;
        match stored {
            Some(s) => self.handle(s.revision, &s.value, true).await,
            None => {
                warn!(key = %self.key(), revision = self.revision(), "cluster: no policy in etcd yet; keeping the policy in force (`vtguard policy load FILE` writes one)")
            }
        }
        Ok(header + 1)
    }

    /// A revision seen in etcd: applied if valid and new, refused (and reported) otherwise.
    /// `full`: from reading the key, where etcd is right even about an older revision (etcd
    /// restored from a backup).
    async fn handle(self: &Arc<Self>, rev: i64, bytes: &[u8], full: bool) {
        let applied = {
            let mut s = self.state.lock();
            s.seen = if full { rev } else { s.seen.max(rev) };
            s.applied
                .as_ref()
                .map(|a| (a.revision, a.source == Source::Etcd))
        };
        match applied {
            Some((a, true)) if a == rev => return,
            Some((a, _)) if a > rev && !full => return,
            Some((a, _)) if a > rev => {
                warn!(
                    etcd = rev,
                    applied = a,
                    "cluster: etcd holds an older policy revision than the one in force (etcd restored?); applying etcd's"
                )
            }
            _ => {}
        }
        match Document::parse(&format!("{} revision {rev}", self.key()), bytes) {
            Ok(doc) => {
                let raw = serde_json::from_slice(bytes).unwrap_or_default();
                self.apply(rev, doc, Some(raw), Source::Etcd).await;
            }
            Err(e) => self.refuse(rev, e.to_string()),
        }
    }

    fn refuse(&self, rev: i64, why: String) {
        let mut s = self.state.lock();
        error!(revision = rev, error = %why, applied = s.applied.as_ref().map_or(0, |a| a.revision), "cluster policy refused; the previous policy stays in force");
        s.seen = s.seen.max(rev);
        s.error = Some(why);
    }

    /// Puts `doc` in force (table ACL swap, kernel grants, cut-off) and, when it came from
    /// etcd, persists `raw`.
    async fn apply(
        self: &Arc<Self>,
        rev: i64,
        doc: Document,
        raw: Option<serde_json::Value>,
        source: Source,
    ) {
        let this = Arc::clone(self);
        let r = tokio::task::spawn_blocking(move || this.apply_blocking(rev, doc, raw, source));
        if let Err(e) = r.await {
            error!(error = %e, "cluster policy apply task failed");
        }
    }

    fn apply_blocking(
        &self,
        rev: i64,
        doc: Document,
        raw: Option<serde_json::Value>,
        source: Source,
    ) {
        let started = Instant::now();
        let _one = self.applying.lock();
        let doc = Arc::new(doc);
        if let Some(e) = &self.enforcer {
            e.replace_from(
                doc.acl.clone(),
                &format!("{} revision {rev} ({})", self.key(), source.as_str()),
            );
        }
        let base = {
            let mut s = self.state.lock();
            s.applied = Some(Applied {
                revision: rev,
                doc: Arc::clone(&doc),
                source,
            });
            s.error = None;
            s.base.clone()
        };
        self.apply_kernel(base.as_ref(), &doc);
        let m = crate::metrics::cluster();
        m.revision.set(rev);
        m.apply_seconds.observe(started.elapsed().as_secs_f64());
        info!(
            revision = rev,
            source = source.as_str(),
            table_groups = doc.acl.groups.len(),
            access = doc.access.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cluster policy applied"
        );
        if let Some(raw) = raw {
            if let Err(e) = persist::save(&self.cfg.state_dir, &self.cfg.etcd.prefix, rev, &raw) {
                error!(error = %e, "cluster policy applied but not persisted: a restart without etcd would start from an older copy");
            }
        }
    }

    /// The document's grants with the node's own, through the one path SIGHUP uses too.
    fn apply_kernel(&self, base: Option<&KernelPolicy>, doc: &Document) {
        if let (Some(k), Some(base)) = (&self.kernel, base) {
            let policy = doc.kernel_policy(base, &self.view);
            crate::app::apply_kernel_policy(k, &self.sessions, &policy, "cluster");
        }
    }

    /// SIGHUP re-read the node's own kernel policy: the document's grants join the new one.
    /// Blocking (the kernel may wait out a grace period).
    pub fn reload_base(&self, base: KernelPolicy) {
        let _one = self.applying.lock();
        let doc = {
            let mut s = self.state.lock();
            s.base = Some(base.clone());
            s.applied.as_ref().map(|a| Arc::clone(&a.doc))
        };
        match (&self.kernel, doc) {
            (Some(_), Some(doc)) => self.apply_kernel(Some(&base), &doc),
            (Some(k), None) => {
                crate::app::apply_kernel_policy(k, &self.sessions, &base, "SIGHUP");
            }
            (None, _) => {}
        }
    }

    fn revision(&self) -> i64 {
        self.state.lock().applied.as_ref().map_or(0, |a| a.revision)
    }

    fn set_connected(&self, connected: bool, why: Option<&Error>) {
        let mut s = self.state.lock();
        crate::metrics::cluster()
            .connected
            .set(i64::from(connected));
        if s.connected == connected {
            if let Some(e) = why {
                debug!(error = %e, "cluster: etcd still unreachable");
            }
            return;
        }
        s.connected = connected;
        s.since = now_unix();
        let rev = s.applied.as_ref().map_or(0, |a| a.revision);
        match why {
            None => {
                info!(endpoints = %self.cfg.etcd.endpoints.join(","), revision = rev, "cluster: connected to etcd")
            }
            Some(e) => {
                warn!(error = %e, revision = rev, "cluster: disconnected from etcd; enforcing revision {rev} and reconnecting")
            }
        }
    }

    async fn publish(&self, store: &mut Store, lease: i64) -> Result<(), Error> {
        let state = {
            let s = self.state.lock();
            NodeState {
                node: self.cfg.node.clone(),
                cell: self.cfg.cell.clone(),
                revision: s.applied.as_ref().map_or(0, |a| a.revision),
                seen: s.seen,
                error: s.error.clone(),
                time: now_unix(),
                pid: std::process::id(),
            }
        };
        store.publish(&state, lease).await
    }

    /// For `vtguard status`.
    pub fn status(&self) -> ClusterStatus {
        let s = self.state.lock();
        ClusterStatus {
            node: self.cfg.node.clone(),
            cell: self.cfg.cell.clone(),
            endpoints: self.cfg.etcd.endpoints.clone(),
            prefix: self.cfg.etcd.prefix.clone(),
            connected: s.connected,
            since: s.since,
            revision: s.applied.as_ref().map_or(0, |a| a.revision),
            source: s
                .applied
                .as_ref()
                .map_or("none", |a| a.source.as_str())
                .to_owned(),
            seen: s.seen,
            error: s.error.clone(),
        }
    }
}
