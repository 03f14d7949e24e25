//! Vitess table ACL files, loaded unchanged: JSON (snake_case or camelCase keys, unknown keys
//! ignored) or the binary protobuf `tableacl.Config`, validated as vttablet's simpleacl does,
//! with errors that name the offending entries and groups.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    path::Path,
};

use prost::Message;
use serde::Deserialize;

/// A role a statement needs on a table. Roles are independent: a writer is not a reader, an
/// admin is neither.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Reader => "READER",
            Role::Writer => "WRITER",
            Role::Admin => "ADMIN",
        })
    }
}

/// Why a table ACL file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("table ACL {path}: {message}")]
    Invalid { path: String, message: String },
}

/// One table group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableGroup {
    pub name: String,
    /// Exact table names, or prefixes ending in `%`.
    pub tables: Vec<String>,
    pub readers: BTreeSet<String>,
    pub writers: BTreeSet<String>,
    pub admins: BTreeSet<String>,
}

impl TableGroup {
    /// The members of `role`.
    pub fn members(&self, role: Role) -> &BTreeSet<String> {
        match role {
            Role::Reader => &self.readers,
            Role::Writer => &self.writers,
            Role::Admin => &self.admins,
        }
    }
}

/// The entry prefix secure mode checks CALL against: `CALL p()` needs WRITER on `call:p`.
pub const PROCEDURE_PREFIX: &str = "call:";

/// A validated table ACL, indexed for lookups that do not depend on its size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TableAcl {
    pub groups: Vec<TableGroup>,
    /// Exact table name → group index.
    exact: HashMap<String, usize>,
    /// Prefix (without the '%') → group index.
    prefixes: HashMap<String, usize>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default, alias = "tableGroups")]
    table_groups: Vec<RawGroup>,
}

#[derive(Debug, Deserialize)]
struct RawGroup {
    #[serde(default)]
    name: String,
    #[serde(default, alias = "tableNamesOrPrefixes")]
    table_names_or_prefixes: Vec<String>,
    #[serde(default)]
    readers: Vec<String>,
    #[serde(default)]
    writers: Vec<String>,
    #[serde(default)]
    admins: Vec<String>,
}

impl TableAcl {
    /// Reads and validates a table ACL file.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::Invalid {
            path: path.display().to_string(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse(&path.display().to_string(), &bytes)
    }

    /// Parses and validates the content of a table ACL file (`path` names it in errors).
    pub fn parse(path: &str, bytes: &[u8]) -> Result<Self, Error> {
        let invalid = |message: String| Error::Invalid {
            path: path.to_owned(),
            message,
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(invalid(
                "the file is empty: give at least one table group".into(),
            ));
        }
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
        let groups: Vec<RawGroup> = if first == Some(b'{') {
            let raw: RawConfig = serde_json::from_slice(bytes)
                .map_err(|e| invalid(format!("not valid table ACL JSON: {e}")))?;
            raw.table_groups
        } else {
            let cfg = vtguard_proto::tableacl::Config::decode(bytes).map_err(|e| {
                invalid(format!(
                    "neither JSON (it does not start with '{{') nor a binary tableacl.Config: {e}"
                ))
            })?;
            cfg.table_groups
                .into_iter()
                .map(|g| RawGroup {
                    name: g.name,
                    table_names_or_prefixes: g.table_names_or_prefixes,
                    readers: g.readers,
                    writers: g.writers,
                    admins: g.admins,
                })
                .collect()
        };
        let acl = TableAcl::new(
            groups
                .into_iter()
                .map(|g| TableGroup {
                    name: g.name,
                    tables: g.table_names_or_prefixes,
                    readers: g.readers.into_iter().collect(),
                    writers: g.writers.into_iter().collect(),
                    admins: g.admins.into_iter().collect(),
                })
                .collect(),
        );
        acl.validate().map_err(invalid)?;
        Ok(acl)
    }

    /// The ACL as Vitess tableacl JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "table_groups": self.groups.iter().map(|g| serde_json::json!({
                "name": g.name,
                "table_names_or_prefixes": g.tables,
                "readers": g.readers,
                "writers": g.writers,
                "admins": g.admins,
            })).collect::<Vec<_>>()
        })
    }

    /// An ACL of these groups (not validated).
    pub fn new(groups: Vec<TableGroup>) -> Self {
        let mut exact = HashMap::new();
        let mut prefixes = HashMap::new();
        for (i, g) in groups.iter().enumerate() {
            for t in &g.tables {
                match t.strip_suffix('%') {
                    Some(p) => prefixes.entry(p.to_owned()).or_insert(i),
                    None => exact.entry(t.clone()).or_insert(i),
                };
            }
        }
        TableAcl {
            groups,
            exact,
            prefixes,
        }
    }

    /// Vitess's rules: an entry is a table name or a prefix ending in `%` (`%` nowhere else);
    /// entries may not repeat or overlap across all groups; a bare `%` must be alone.
    fn validate(&self) -> Result<(), String> {
        let mut entries: Vec<(&str, &str)> = Vec::new();
        for g in &self.groups {
            for t in &g.tables {
                if t.is_empty() {
                    return Err(format!(
                        "group {:?} has an empty table entry: remove it",
                        g.name
                    ));
                }
                if t.strip_suffix('%').unwrap_or(t).contains('%') {
                    return Err(format!(
                        "group {:?}: entry {t:?} has '%' before its end: '%' may only end a prefix (e.g. \"orders_%\")",
                        g.name
                    ));
                }
                entries.push((t.as_str(), g.name.as_str()));
            }
        }
        if entries.iter().any(|(t, _)| *t == "%") && entries.len() > 1 {
            let others: Vec<String> = entries
                .iter()
                .filter(|(t, _)| *t != "%")
                .map(|(t, g)| format!("{t:?} (group {g:?})"))
                .collect();
            let bare = entries.iter().filter(|(t, _)| *t == "%").count();
            return Err(if others.is_empty() {
                format!("'%' is listed {bare} times: list it once")
            } else {
                format!(
                    "'%' matches every table, so it must be the only entry; remove {}",
                    others.join(", ")
                )
            });
        }
        // Sorted by stem (the text before any '%'), a prefix comes right before every entry
        // it covers, so checking neighbours finds every repeat and every overlap.
        let mut sorted: Vec<(&str, bool, &str, &str)> = entries
            .iter()
            .map(|(t, g)| match t.strip_suffix('%') {
                Some(stem) => (stem, false, *t, *g),
                None => (*t, true, *t, *g),
            })
            .collect();
        sorted.sort();
        for pair in sorted.windows(2) {
            let ((sa, a_exact, a, ga), (sb, _, b, gb)) = (pair[0], pair[1]);
            if a == b {
                return Err(format!(
                    "entry {a:?} is listed twice (groups {ga:?} and {gb:?}): list each table once"
                ));
            }
            if !a_exact && sb.starts_with(sa) {
                return Err(format!(
                    "entries {a:?} (group {ga:?}) and {b:?} (group {gb:?}) overlap: a table matching {b:?} also matches {a:?}"
                ));
            }
        }
        Ok(())
    }

    /// The group whose entry matches `table` (unqualified, exact case), if any. `dual` is
    /// never checked and has none.
    pub fn group_for(&self, table: &str) -> Option<&TableGroup> {
        // A stored procedure (`call:p`, secure mode's CALL) is granted only by an entry made
        // for procedures: `call:p` or a prefix such as `call:%`, never by `%` or `c%`.
        let shortest = if table.starts_with(PROCEDURE_PREFIX) {
            PROCEDURE_PREFIX.len()
        } else {
            0
        };
        if let Some(i) = self.exact.get(table) {
            return self.groups.get(*i);
        }
        // Entries do not overlap, so at most one prefix of the name is listed.
        (shortest..=table.len())
            .rev()
            .filter(|n| table.is_char_boundary(*n))
            .find_map(|n| self.prefixes.get(&table[..n]))
            .and_then(|i| self.groups.get(*i))
    }

    /// Whether a caller (username and groups) holds `role` on `table`: its username or one of
    /// its groups is listed exactly. No matching group: nobody holds any role.
    pub fn allows(&self, username: &str, groups: &[String], role: Role, table: &str) -> bool {
        self.group_for(table).is_some_and(|g| {
            let m = g.members(role);
            m.contains(username) || groups.iter().any(|x| m.contains(x))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<TableAcl, Error> {
        TableAcl::parse("/etc/vtguard/acl.json", s.as_bytes())
    }

    fn err(s: &str) -> String {
        parse(s).expect_err("must be refused").to_string()
    }

    #[test]
    fn procedures_are_granted_only_by_entries_made_for_them() {
        let acl = |entry: &str| {
            parse(&format!(
                r#"{{"table_groups": [{{"name": "g", "table_names_or_prefixes": ["{entry}"], "writers": ["w"]}}]}}"#
            ))
            .expect("acl")
        };
        let w = |a: &TableAcl, t: &str| a.allows("w", &[], Role::Writer, t);
        let all = acl("%");
        assert!(w(&all, "orders"), "% grants every table");
        assert!(!w(&all, "call:p"), "but not a procedure");
        assert!(!w(&acl("c%"), "call:p"));
        assert!(!w(&acl("call%"), "call:p"), "a prefix shorter than call:");
        assert!(w(&acl("call:%"), "call:p"));
        assert!(w(&acl("call:p"), "call:p"));
        assert!(!w(&acl("call:p"), "call:q"));
    }

    #[test]
    fn vitess_reference_acl_and_camel_case() {
        let acl = parse(
            r#"{"table_groups": [{"name": "vt_insert_test", "table_names_or_prefixes": ["vt_insert_test"],
                "readers": ["vtgate client 1"], "writers": ["vtgate client 1"], "admins": ["vtgate client 1"]}],
                "unknown_key": 1}"#,
        )
        .expect("valid");
        assert!(acl.allows("vtgate client 1", &[], Role::Reader, "vt_insert_test"));
        assert!(!acl.allows("vtgate client 2", &[], Role::Reader, "vt_insert_test"));
        assert!(
            !acl.allows("vtgate client 1", &[], Role::Reader, "other"),
            "no group: nobody"
        );
        let camel = parse(r#"{"tableGroups": [{"name": "g", "tableNamesOrPrefixes": ["p_%"], "readers": ["u"], "writers": [], "admins": ["a"]}]}"#)
            .expect("camelCase");
        assert!(
            camel.allows("x", &["u".to_owned()], Role::Reader, "p_orders"),
            "group membership"
        );
        assert!(
            !camel.allows("u", &[], Role::Writer, "p_orders"),
            "a reader is not a writer"
        );
        assert!(
            !camel.allows("a", &[], Role::Reader, "p_orders"),
            "an admin is not a reader"
        );
        assert!(
            !camel.allows("u", &[], Role::Reader, "P_ORDERS"),
            "no case folding"
        );
    }

    #[test]
    fn binary_protobuf_files_load_too() {
        let cfg = vtguard_proto::tableacl::Config {
            table_groups: vec![vtguard_proto::tableacl::TableGroupSpec {
                name: "g".into(),
                table_names_or_prefixes: vec!["t1".into()],
                readers: vec!["u".into()],
                writers: vec![],
                admins: vec![],
            }],
        };
        let acl = TableAcl::parse("acl.bin", &cfg.encode_to_vec()).expect("binary");
        assert!(acl.allows("u", &[], Role::Reader, "t1"));
    }

    #[test]
    fn vitess_invalid_examples_are_refused_naming_the_entries() {
        let g = |tables: &str| {
            format!(
                r#"{{"table_groups": [{{"name": "g1", "table_names_or_prefixes": {tables}, "readers": ["u"]}}]}}"#
            )
        };
        let e = err(&g(r#"["b%c"]"#));
        assert!(e.contains("entry \"b%c\" has '%' before its end"), "{e}");
        let e = err(&g(r#"["aaa%%"]"#));
        assert!(e.contains("entry \"aaa%%\" has '%' before its end"), "{e}");
        let e = err(&g(r#"["aaa", "aaab%", "aaabb"]"#));
        assert!(
            e.contains("entries \"aaab%\" (group \"g1\") and \"aaabb\" (group \"g1\") overlap"),
            "{e}"
        );
        let e = err(&g(r#"["a", "aa%", "aaab"]"#));
        assert!(
            e.contains("\"aa%\"") && e.contains("\"aaab\"") && e.contains("overlap"),
            "{e}"
        );
        let e = err(&g(r#"["%", "t1"]"#));
        assert!(
            e.contains("'%' matches every table, so it must be the only entry; remove \"t1\""),
            "{e}"
        );
        let e = err(
            r#"{"table_groups": [{"name": "g1", "table_names_or_prefixes": ["t1"]}, {"name": "g2", "table_names_or_prefixes": ["t1"]}]}"#,
        );
        assert!(
            e.contains("entry \"t1\" is listed twice (groups \"g1\" and \"g2\")"),
            "{e}"
        );
        let e = err(
            r#"{"table_groups": [{"name": "g1", "table_names_or_prefixes": ["a%"]}, {"name": "g2", "table_names_or_prefixes": ["ab%"]}]}"#,
        );
        assert!(e.contains("overlap"), "{e}");
        // A prefix whose covered name sorts before it ('%' < '_').
        let e = err(&g(r#"["ab%", "ab_c"]"#));
        assert!(e.contains("overlap"), "{e}");
        assert!(err("").contains("the file is empty"));
        assert!(err("  \n").contains("the file is empty"));
        assert!(err("{not json").contains("not valid table ACL JSON"));
        assert!(parse(&g(r#"["%"]"#)).expect("bare % alone").allows(
            "u",
            &[],
            Role::Reader,
            "anything"
        ));
        assert!(err("\u{1}garbage").contains("binary tableacl.Config"));
        let e = err(&g(r#"["t\u00e9", "x%y\u00e9"]"#));
        assert!(
            e.contains("has '%' before its end"),
            "multi-byte names do not trip the check: {e}"
        );
    }
}
