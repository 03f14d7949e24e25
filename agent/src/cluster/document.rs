//! The cluster policy document: one JSON value under `<prefix>/policy`, its etcd revision the
//! policy's version.
//!
//! ```json
//! {
//!   "format": 1,
//!   "tableacl": { "table_groups": [ ... ] },
//!   "access": [
//!     { "port": 16991, "identities": ["vtgate client 1"] },
//!     { "listener": "vttablet", "identities": ["vtctld"], "cells": ["zone1"] }
//!   ],
//!   "meta": { "by": "root@ops1", "at": 1700000000, "source": "acl.json" }
//! }
//! ```
//!
//! `tableacl` is a Vitess tableacl JSON value, unchanged and validated as a local file is.
//! `access` grants identities a protected port, by port number or by the name of the listener
//! whose upstream it is, optionally only in some cells; on each node the grants join that
//! node's own `[[kernel.access]]` and listener `identities`. An entry naming a port this node
//! does not protect, or a listener it does not have, does not apply there. `meta` is written
//! by `vtguard policy load`; agents ignore it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::{acl::TableAcl, kernel::KernelPolicy};

/// The only `format` this build reads.
pub const FORMAT: u32 = 1;

/// Why a document was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "policy document {source_name}: not valid JSON of the cluster policy format: {message}"
    )]
    Json {
        source_name: String,
        message: String,
    },
    #[error("policy document {source_name}: format {found}: this vtguard reads format {FORMAT}; upgrade vtguard or write format {FORMAT}")]
    Format { source_name: String, found: u32 },
    #[error("policy document {source_name}: access entry {index}: {message}")]
    Access {
        source_name: String,
        index: usize,
        message: String,
    },
    #[error("policy document {source_name}: {error}")]
    TableAcl {
        source_name: String,
        #[source]
        error: crate::acl::tableacl::Error,
    },
}

/// One grant of the document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Access {
    /// A protected port, on every node that protects it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// A listener name: its upstream port, on every node with a listener of that name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listener: Option<String>,
    pub identities: Vec<String>,
    /// Only on nodes in these cells (all cells when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cells: Option<Vec<String>>,
}

/// Who wrote a document, when, from what (written by the CLI; not used by agents).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub at: i64,
    #[serde(default)]
    pub source: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    format: u32,
    tableacl: serde_json::Value,
    #[serde(default)]
    access: Vec<Access>,
    #[serde(default)]
    meta: Option<Meta>,
}

/// A validated cluster policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// The table ACL, validated.
    pub acl: TableAcl,
    /// The tableacl JSON as written.
    pub tableacl: serde_json::Value,
    pub access: Vec<Access>,
    pub meta: Option<Meta>,
}

/// Where this node stands, for resolving grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeView {
    pub cell: Option<String>,
    /// Listener name → its upstream port.
    pub listeners: BTreeMap<String, u16>,
}

impl Document {
    /// Parses and validates a document (`source_name` names it in errors: a file, an etcd
    /// revision).
    pub fn parse(source_name: &str, bytes: &[u8]) -> Result<Self, Error> {
        let json = |message: String| Error::Json {
            source_name: source_name.to_owned(),
            message,
        };
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| json(e.to_string()))?;
        if raw.format != FORMAT {
            return Err(Error::Format {
                source_name: source_name.to_owned(),
                found: raw.format,
            });
        }
        if !raw.tableacl.is_object() {
            return Err(json(
                "tableacl must be a Vitess tableacl JSON object, e.g. {\"table_groups\": []}"
                    .into(),
            ));
        }
        let text = serde_json::to_vec(&raw.tableacl).map_err(|e| json(e.to_string()))?;
        let acl = TableAcl::parse(&format!("{source_name} tableacl"), &text).map_err(|error| {
            Error::TableAcl {
                source_name: source_name.to_owned(),
                error,
            }
        })?;
        for (index, a) in raw.access.iter().enumerate() {
            check_access(a).map_err(|message| Error::Access {
                source_name: source_name.to_owned(),
                index,
                message,
            })?;
        }
        Ok(Document {
            acl,
            tableacl: raw.tableacl,
            access: raw.access,
            meta: raw.meta,
        })
    }

    /// The document as stored in etcd.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "format": FORMAT,
            "tableacl": self.tableacl,
            "access": self.access,
        });
        if let Some(m) = &self.meta {
            v["meta"] = serde_json::json!(m);
        }
        v
    }

    /// The grants that apply on `node`: (port, identity) pairs, whether or not the port is
    /// protected there (the caller keeps only protected ones).
    pub fn grants(&self, node: &NodeView) -> BTreeMap<u16, BTreeSet<String>> {
        let mut out: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
        for a in &self.access {
            if let Some(cells) = &a.cells {
                if !node.cell.as_ref().is_some_and(|c| cells.contains(c)) {
                    continue;
                }
            }
            let port = match (&a.port, &a.listener) {
                (Some(p), _) => Some(*p),
                (None, Some(l)) => node.listeners.get(l).copied(),
                (None, None) => None,
            };
            if let Some(port) = port {
                out.entry(port)
                    .or_default()
                    .extend(a.identities.iter().cloned());
            }
        }
        out
    }

    /// `base` (the node's own kernel policy) with this document's grants for `node` added on
    /// the ports `base` protects.
    pub fn kernel_policy(&self, base: &KernelPolicy, node: &NodeView) -> KernelPolicy {
        let mut p = base.clone();
        for (port, ids) in self.grants(node) {
            if p.protected_ports.contains(&port) {
                p.access.entry(port).or_default().extend(ids);
            }
        }
        p
    }
}

fn check_access(a: &Access) -> Result<(), String> {
    match (&a.port, &a.listener) {
        (Some(_), Some(_)) | (None, None) => {
            return Err("give exactly one of \"port\" and \"listener\"".into())
        }
        (Some(0), None) => return Err("port 0: use 1 to 65535".into()),
        (None, Some(l))
            if l.is_empty()
                || !l
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            return Err(format!(
                "listener {l:?}: a listener name has letters, digits, '-' and '_'"
            ))
        }
        _ => {}
    }
    if a.identities.is_empty() {
        return Err("identities is empty: list at least one, or remove the entry".into());
    }
    if let Some(id) = a
        .identities
        .iter()
        .find(|id| id.is_empty() || id.contains('\0'))
    {
        return Err(format!("identity {id:?} is empty or holds a NUL byte"));
    }
    if a.cells.as_ref().is_some_and(Vec::is_empty) {
        return Err("cells is empty: list at least one cell, or leave it out for all".into());
    }
    Ok(())
}

/// What changes between two documents for people: table ACL changes (as `vtguard policy
/// load` prints them for a file) and grants gained or lost, by port or listener.
pub fn diff(old: Option<&Document>, new: &Document) -> Vec<String> {
    let empty = TableAcl::default();
    let mut out = crate::admin::diff(old.map_or(&empty, |d| &d.acl), &new.acl);
    let grants = |d: Option<&Document>| {
        let mut s = BTreeSet::new();
        for a in d.map(|d| d.access.as_slice()).unwrap_or_default() {
            let target = match (&a.port, &a.listener) {
                (Some(p), _) => format!("port {p}"),
                (None, Some(l)) => format!("listener {l:?}"),
                (None, None) => continue,
            };
            let cells = a
                .cells
                .as_ref()
                .map(|c| format!(" in cells {}", c.join(",")))
                .unwrap_or_default();
            for id in &a.identities {
                s.insert((id.clone(), target.clone(), cells.clone()));
            }
        }
        s
    };
    let (go, gn) = (grants(old), grants(Some(new)));
    out.extend(
        gn.difference(&go)
            .map(|(id, t, c)| format!("+ {id:?} gains {t}{c}")),
    );
    out.extend(
        go.difference(&gn)
            .map(|(id, t, c)| format!("- {id:?} loses {t}{c}")),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"format": 1,
        "tableacl": {"table_groups": [{"name": "g", "table_names_or_prefixes": ["t1"], "readers": ["alice"]}]},
        "access": [{"port": 16991, "identities": ["vtgate client 1"]},
                   {"listener": "vttablet", "identities": ["ops"], "cells": ["zone1"]}]}"#;

    #[test]
    fn grants_resolve_ports_listeners_and_cells_per_node() {
        let d = Document::parse("test", DOC.as_bytes()).expect("valid");
        let base = KernelPolicy {
            protected_ports: [16991, 17000].into(),
            access: BTreeMap::from([(17000, BTreeSet::from(["local".to_owned()]))]),
        };
        let node = |cell: &str| NodeView {
            cell: Some(cell.into()),
            listeners: BTreeMap::from([("vttablet".to_owned(), 17000)]),
        };
        let p = d.kernel_policy(&base, &node("zone1"));
        assert!(p.allows("vtgate client 1", 16991));
        assert!(p.allows("ops", 17000) && p.allows("local", 17000));
        let p = d.kernel_policy(&base, &node("zone2"));
        assert!(!p.allows("ops", 17000), "cells restrict the grant");
        let unprotected = KernelPolicy::default();
        assert_eq!(
            d.kernel_policy(&unprotected, &node("zone1")),
            unprotected,
            "a grant on a port this node does not protect does not apply"
        );
    }

    #[test]
    fn invalid_documents_are_refused_naming_the_part_and_the_fix() {
        let bad = |text: &str| {
            Document::parse("etcd revision 7", text.as_bytes())
                .expect_err(text)
                .to_string()
        };
        let e = bad(r#"{"format": 2, "tableacl": {}}"#);
        assert!(e.contains("format 2: this vtguard reads format 1"), "{e}");
        let e = bad(
            r#"{"format": 1, "tableacl": {"table_groups": [{"name": "g", "table_names_or_prefixes": ["a", "a"]}]}}"#,
        );
        assert!(
            e.starts_with("policy document etcd revision 7: table ACL etcd revision 7 tableacl:"),
            "{e}"
        );
        let e = bad(
            r#"{"format": 1, "tableacl": {}, "access": [{"port": 1, "listener": "x", "identities": ["a"]}]}"#,
        );
        assert!(
            e.contains("access entry 0: give exactly one of \"port\" and \"listener\""),
            "{e}"
        );
        let e = bad(r#"{"format": 1, "tableacl": {}, "acess": []}"#);
        assert!(e.contains("unknown field `acess`"), "{e}");
        let e = bad(r#"{"format": 1, "tableacl": {}, "access": [{"port": 5, "identities": []}]}"#);
        assert!(e.contains("identities is empty"), "{e}");
    }

    #[test]
    fn diff_names_acl_and_grant_changes() {
        let old = Document::parse("a", DOC.as_bytes()).expect("valid");
        let new = Document::parse(
            "b",
            br#"{"format": 1, "tableacl": {"table_groups": [{"name": "g", "table_names_or_prefixes": ["t1"], "readers": ["bob"]}]},
                "access": [{"port": 16991, "identities": ["vtgate client 2"]}]}"#,
        )
        .expect("valid");
        let d = diff(Some(&old), &new);
        for want in [
            "+ \"bob\" gains READER on \"t1\"",
            "- \"alice\" loses READER on \"t1\"",
            "+ \"vtgate client 2\" gains port 16991",
            "- \"vtgate client 1\" loses port 16991",
            "- \"ops\" loses listener \"vttablet\" in cells zone1",
        ] {
            assert!(d.contains(&want.to_owned()), "{want} not in {d:?}");
        }
        assert!(diff(Some(&new), &new).is_empty());
    }
}
