//! `vtguard policy load|history|rollback|status --cluster` against etcd: each validates before
//! it writes, and writes with a compare-and-swap on the revision it read.

use std::{path::Path, process::ExitCode};

use anyhow::Context;
use serde::Serialize;

use super::{
    document::{self, Document, Meta},
    store::Store,
    EtcdConfig, NodeState,
};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the etcd client")
}

/// Who runs this command, for the document's `meta.by`.
fn operator() -> String {
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        // SAFETY: getuid has no preconditions.
        .unwrap_or_else(|_| format!("uid {}", unsafe { libc::getuid() }));
    format!(
        "{user}@{}",
        crate::config::hostname().unwrap_or_else(|| "?".into())
    )
}

/// The document in etcd now, parsed (a stored document that no longer parses is shown as
/// absent in diffs, with a warning).
async fn current(store: &mut Store) -> anyhow::Result<(i64, Option<Document>)> {
    let (stored, _) = store.policy().await?;
    Ok(match stored {
        None => (0, None),
        Some(s) => {
            let name = format!("{} revision {}", store.keys.policy(), s.revision);
            match Document::parse(&name, &s.value) {
                Ok(d) => (s.revision, Some(d)),
                Err(e) => {
                    eprintln!("warning: the policy in etcd does not validate ({e}); the diff is against an empty policy");
                    (s.revision, None)
                }
            }
        }
    })
}

/// Reads a document file; a bare Vitess tableacl file gets a hint.
fn read_file(file: &Path) -> anyhow::Result<Document> {
    let bytes =
        std::fs::read(file).with_context(|| format!("reading policy {}", file.display()))?;
    let name = file.display().to_string();
    Document::parse(&name, &bytes).map_err(|e| {
        let bare = serde_json::from_slice::<serde_json::Value>(&bytes).is_ok_and(|v| {
            v.get("format").is_none()
                && (v.get("table_groups").is_some() || v.get("tableGroups").is_some())
        });
        if bare {
            anyhow::anyhow!("policy document {name}: this is a bare Vitess tableacl file: wrap it as {{\"format\": 1, \"tableacl\": <the file>, \"access\": [...]}} (see docs/CLUSTER.md)")
        } else {
            e.into()
        }
    })
}

fn print_changes(changes: &[String]) {
    for c in changes {
        println!("{c}");
    }
    if changes.is_empty() {
        println!("no changes");
    }
}

/// Validates `doc`, diffs it against etcd's, and writes it if etcd is still at the revision it
/// diffed against (`if_revision`, when given, must be that revision too).
async fn write(
    store: &mut Store,
    mut doc: Document,
    source: String,
    dry_run: bool,
    if_revision: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let (rev, old) = current(store).await?;
    if let Some(want) = if_revision.filter(|w| *w != rev) {
        return Err(super::Error::Conflict {
            expected: want,
            current: rev,
        }
        .into());
    }
    print_changes(&document::diff(old.as_ref(), &doc));
    if dry_run {
        println!("dry run: the policy in etcd stays at revision {rev}");
        return Ok(ExitCode::SUCCESS);
    }
    doc.meta = Some(Meta {
        by: operator(),
        at: crate::acl::now_unix(),
        source,
    });
    let value = serde_json::to_vec_pretty(&doc.to_json()).context("encoding the policy")?;
    let new = store.write_policy(rev, value).await?;
    println!("policy written: revision {new} (was {rev}); `vtguard policy status --cluster` shows which nodes enforce it");
    Ok(ExitCode::SUCCESS)
}

/// `vtguard policy load FILE --etcd …`.
pub fn load(
    etcd: &EtcdConfig,
    file: &Path,
    dry_run: bool,
    if_revision: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let doc = read_file(file)?;
    runtime()?.block_on(async {
        let mut store = Store::connect(etcd).await?;
        write(
            &mut store,
            doc,
            file.display().to_string(),
            dry_run,
            if_revision,
        )
        .await
    })
}

/// `vtguard policy rollback REV`: writes revision REV's document as a new revision.
pub fn rollback(etcd: &EtcdConfig, rev: i64, dry_run: bool) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async {
        let mut store = Store::connect(etcd).await?;
        let old = store
            .policy_at(rev)
            .await?
            .filter(|s| s.revision == rev)
            .ok_or(super::Error::NoSuchRevision(rev))?;
        let doc = Document::parse(
            &format!("{} revision {rev}", store.keys.policy()),
            &old.value,
        )
        .with_context(|| {
            format!("revision {rev} does not validate with this vtguard: roll back to another")
        })?;
        write(
            &mut store,
            doc,
            format!("rollback to revision {rev}"),
            dry_run,
            None,
        )
        .await
    })
}

#[derive(Debug, Serialize)]
struct HistoryEntry {
    revision: i64,
    current: bool,
    valid: bool,
    by: String,
    at: i64,
    source: String,
    table_groups: usize,
    access: usize,
}

/// `vtguard policy history`.
pub fn history(etcd: &EtcdConfig, limit: usize, json: bool) -> anyhow::Result<ExitCode> {
    let entries = runtime()?.block_on(async {
        let mut store = Store::connect(etcd).await?;
        let key = store.keys.policy();
        let past = store.history(limit).await?;
        Ok::<_, anyhow::Error>(
            past.iter()
                .enumerate()
                .map(|(i, s)| {
                    let doc = Document::parse(&format!("{key} revision {}", s.revision), &s.value);
                    let meta = doc
                        .as_ref()
                        .ok()
                        .and_then(|d| d.meta.clone())
                        .unwrap_or_default();
                    HistoryEntry {
                        revision: s.revision,
                        current: i == 0,
                        valid: doc.is_ok(),
                        by: meta.by,
                        at: meta.at,
                        source: meta.source,
                        table_groups: doc.as_ref().map_or(0, |d| d.acl.groups.len()),
                        access: doc.as_ref().map_or(0, |d| d.access.len()),
                    }
                })
                .collect::<Vec<_>>(),
        )
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&entries).context("encoding")?
        );
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!("no policy in etcd yet: `vtguard policy load FILE` writes one");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<[String; 7]> = entries
        .iter()
        .map(|e| {
            [
                format!("{}{}", e.revision, if e.current { " *" } else { "" }),
                if e.at > 0 {
                    e.at.to_string()
                } else {
                    "-".into()
                },
                dash(&e.by),
                dash(&e.source),
                e.table_groups.to_string(),
                e.access.to_string(),
                if e.valid { "yes" } else { "NO" }.into(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            ["REVISION", "WRITTEN", "BY", "SOURCE", "GROUPS", "GRANTS", "VALID"],
            &rows
        )
    );
    println!("(* in etcd now; older revisions go as etcd compacts its history)");
    Ok(ExitCode::SUCCESS)
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// One node in `policy status --cluster`.
#[derive(Debug, Serialize)]
struct NodeReport {
    #[serde(flatten)]
    state: NodeState,
    /// `ok` (enforces the current revision), `lagging`, `refused` (refused the revision it
    /// saw and enforces an older one).
    status: &'static str,
}

#[derive(Debug, Serialize)]
struct ClusterReport {
    revision: i64,
    nodes: Vec<NodeReport>,
}

/// `vtguard policy status --cluster`: exits 0 when every node enforces the current revision,
/// 4 otherwise (so that scripts can wait on it).
pub fn status(etcd: &EtcdConfig, json: bool) -> anyhow::Result<ExitCode> {
    let report = runtime()?.block_on(async {
        let mut store = Store::connect(etcd).await?;
        let (stored, _) = store.policy().await?;
        let revision = stored.map_or(0, |s| s.revision);
        let nodes = store
            .nodes()
            .await?
            .into_iter()
            .map(|state| NodeReport {
                status: if state.revision == revision {
                    "ok"
                } else if state.error.is_some() {
                    "refused"
                } else {
                    "lagging"
                },
                state,
            })
            .collect();
        Ok::<_, anyhow::Error>(ClusterReport { revision, nodes })
    })?;
    let all_ok = report.nodes.iter().all(|n| n.status == "ok");
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("encoding")?
        );
    } else {
        println!(
            "policy revision {} in etcd; {} node(s)",
            report.revision,
            report.nodes.len()
        );
        let rows: Vec<[String; 6]> = report
            .nodes
            .iter()
            .map(|n| {
                [
                    n.state.node.clone(),
                    n.state.cell.clone().unwrap_or_else(|| "-".into()),
                    n.state.revision.to_string(),
                    n.status.to_owned(),
                    n.state.time.to_string(),
                    n.state.error.clone().unwrap_or_else(|| "-".into()),
                ]
            })
            .collect();
        print!(
            "{}",
            table(
                ["NODE", "CELL", "REVISION", "STATUS", "UPDATED", "ERROR"],
                &rows
            )
        );
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_CONVERGED)
    })
}

/// `policy status --cluster`'s exit status when a node does not enforce the current revision.
pub const NOT_CONVERGED: u8 = 4;

fn table<const N: usize>(head: [&str; N], rows: &[[String; N]]) -> String {
    let mut out = String::new();
    crate::cli::table(&mut out, head, rows);
    out
}
