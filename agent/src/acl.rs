//! Table ACLs: Vitess's tableacl files, SQL classification, and the decisions they make; the
//! [`Enforcer`] holds the ACL in force, swaps it atomically and caches decisions.

pub mod decide;
mod source;
pub mod sql;
pub mod tableacl;

use std::{
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;

pub use decide::{Decision, Settings};
pub use source::{Enforced, TableAclConfig};
pub use sql::Mode;
pub use tableacl::{Role, TableAcl, TableGroup};

/// The ACL in force and how it is applied; the ACL can be replaced atomically (requests see
/// the old one or the new one).
///
/// Two caches spare the work of a decision:
/// - decisions, by (ACL generation, username, groups, SQL text exactly as sent): a hit costs a
///   hash of the text; a new ACL starts a new generation, so no decision made under the old one
///   is ever returned;
/// - decisions by statement shape ([`sql::shape`]: literals normalised, as Vitess's plan cache
///   does) instead of text, with the same generation and caller: a text that differs from a
///   decided one only in its literals gets the same decision without being classified again
///   (see [`sql::shape`] for why two texts of one shape need the same (role, table) pairs).
pub struct Enforcer {
    current: ArcSwap<Current>,
    settings: Settings,
    decisions: quick_cache::sync::Cache<DecisionKey, Decision>,
    /// Decisions by statement shape instead of text.
    shapes: quick_cache::sync::Cache<DecisionKey, Decision>,
    /// Where the ACL in force came from, and when (unix seconds).
    origin: Mutex<(String, i64)>,
}

/// The ACL in force and its generation (how many times an ACL was put in force).
struct Current {
    acl: Arc<TableAcl>,
    generation: u64,
}

/// `mode` as config files, the CLI and `vtguard status` spell it.
impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Secure => "secure",
            Mode::Vitess => "vitess",
        })
    }
}

/// A `mode` that is neither `secure` nor `vitess`.
#[derive(Debug, thiserror::Error)]
#[error("mode {0:?}: use \"secure\" or \"vitess\"")]
pub struct UnknownMode(pub String);

impl std::str::FromStr for Mode {
    type Err = UnknownMode;
    fn from_str(s: &str) -> Result<Self, UnknownMode> {
        match s {
            "secure" => Ok(Mode::Secure),
            "vitess" => Ok(Mode::Vitess),
            other => Err(UnknownMode(other.to_owned())),
        }
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// (ACL generation, username, groups, SQL text): the SQL is taken exactly as sent, so that two
/// spellings never share a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DecisionKey {
    generation: u64,
    username: String,
    groups: Vec<String>,
    sql: String,
}

/// A [`DecisionKey`] borrowed from a request, to look a decision up without copying.
struct DecisionKeyRef<'a> {
    generation: u64,
    username: &'a str,
    groups: &'a [String],
    sql: &'a str,
}

fn hash_key<H: Hasher>(h: &mut H, generation: u64, username: &str, groups: &[String], sql: &str) {
    generation.hash(h);
    username.hash(h);
    groups.len().hash(h);
    for g in groups {
        g.as_str().hash(h);
    }
    sql.hash(h);
}

impl Hash for DecisionKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_key(h, self.generation, &self.username, &self.groups, &self.sql);
    }
}

impl Hash for DecisionKeyRef<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        hash_key(h, self.generation, self.username, self.groups, self.sql);
    }
}

impl quick_cache::Equivalent<DecisionKey> for DecisionKeyRef<'_> {
    fn equivalent(&self, k: &DecisionKey) -> bool {
        self.generation == k.generation
            && self.username == k.username
            && self.groups == k.groups.as_slice()
            && self.sql == k.sql
    }
}

/// Decisions kept (the least useful are evicted first).
const CACHE_CAPACITY: usize = 10_000;
/// Statement shapes kept.
const SHAPE_CAPACITY: usize = 10_000;

impl Enforcer {
    pub fn new(acl: TableAcl, settings: Settings) -> Self {
        Self {
            current: ArcSwap::from_pointee(Current {
                acl: Arc::new(acl),
                generation: 1,
            }),
            settings,
            decisions: quick_cache::sync::Cache::new(CACHE_CAPACITY),
            shapes: quick_cache::sync::Cache::new(SHAPE_CAPACITY),
            origin: Mutex::new((String::new(), now_unix())),
        }
    }

    /// The ACL in force.
    pub fn acl(&self) -> Arc<TableAcl> {
        self.current.load().acl.clone()
    }

    /// Where the ACL in force came from, and when it was loaded (unix seconds).
    pub fn origin(&self) -> (String, i64) {
        self.origin
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records where the ACL in force came from (the one it started with).
    pub fn set_source(&self, source: &str) {
        *self.origin.lock().unwrap_or_else(|p| p.into_inner()) = (source.to_owned(), now_unix());
    }

    /// [`Enforcer::replace`], recording where the new ACL came from.
    pub fn replace_from(&self, acl: TableAcl, source: &str) {
        self.replace(acl);
        *self.origin.lock().unwrap_or_else(|p| p.into_inner()) = (source.to_owned(), now_unix());
    }

    /// Decides one SQL string for a caller: from the decision cache when the same caller sent
    /// the same text under the same ACL, else from the shape cache when the caller sent a text
    /// of the same shape (the same statement with other literals).
    pub fn check(&self, username: &str, groups: &[String], sql: &str) -> Decision {
        let current = self.current.load();
        let generation = current.generation;
        let key = |text| DecisionKeyRef {
            generation,
            username,
            groups,
            sql: text,
        };
        if let Some(d) = self.decisions.get(&key(sql)) {
            return d;
        }
        let shape = sql::shape(sql, self.settings.mode);
        if let Some(shape) = &shape {
            if let Some(d) = self.shapes.get(&key(shape)) {
                return d;
            }
        }
        let d = decide::decide(&current.acl, &self.settings, username, groups, sql);
        // Stored under the generation it was made with: after a swap nobody looks it up.
        let owned = |text: String| DecisionKey {
            generation,
            username: username.to_owned(),
            groups: groups.to_vec(),
            sql: text,
        };
        if let Some(shape) = shape {
            // Not for unreadable text: the message tells where in this text reading stopped.
            if !d.is_unreadable() {
                self.shapes.insert(owned(shape), d.clone());
            }
        }
        self.decisions.insert(owned(sql.to_owned()), d.clone());
        d
    }

    /// Decides one (role, table) need outside SQL (MessageStream's WRITER on its table).
    pub fn check_table(
        &self,
        username: &str,
        groups: &[String],
        plan: &str,
        role: Role,
        table: &str,
    ) -> Decision {
        decide::decide_table(
            &self.current.load().acl,
            &self.settings,
            username,
            groups,
            plan,
            role,
            table,
        )
    }

    /// Swaps in a new ACL and forgets every cached decision.
    pub fn replace(&self, acl: TableAcl) {
        let acl = Arc::new(acl);
        self.current.rcu(|c| Current {
            acl: acl.clone(),
            generation: c.generation + 1,
        });
        self.decisions.clear();
        self.shapes.clear();
    }

    /// How many times an ACL was put in force (1 = the one it started with).
    pub fn version(&self) -> u64 {
        self.current.load().generation
    }

    /// Cached decisions right now.
    pub fn cached(&self) -> usize {
        self.decisions.len()
    }

    /// Decisions cached by statement shape.
    pub fn cached_shapes(&self) -> usize {
        self.shapes.len()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// A decision explained for people and scripts: `vtguard policy check`'s output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// "allow" or "deny".
    pub decision: &'static str,
    pub role: Option<String>,
    pub table: Option<String>,
    /// The group covering the denied table, if any.
    pub group: Option<String>,
    /// The reason for an allow; for a denial, what the caller sees.
    pub message: String,
}

impl Verdict {
    /// Explains `d`, made under `acl`.
    pub fn new(acl: &TableAcl, d: &Decision) -> Self {
        match d {
            Decision::Allow { reason } => Verdict {
                decision: "allow",
                role: None,
                table: None,
                group: None,
                message: reason.clone(),
            },
            Decision::Deny {
                message,
                role,
                table,
            } => Verdict {
                decision: "deny",
                role: role.map(|r| r.to_string()),
                group: table
                    .as_deref()
                    .and_then(|t| acl.group_for(t))
                    .map(|g| g.name.clone()),
                table: table.clone(),
                message: message.clone(),
            },
        }
    }

    /// The text form: the decision and message, then the rule behind a denial.
    pub fn to_text(&self) -> String {
        let mut out = format!("{}: {}\n", self.decision, self.message);
        if let (Some(r), Some(t)) = (&self.role, &self.table) {
            match &self.group {
                Some(g) => out.push_str(&format!("rule: {r} on {t:?} is granted by group {g:?}, which does not list this caller\n")),
                None => out.push_str(&format!("rule: no table group covers {t:?}, so nobody holds {r} on it\n")),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_decisions_are_dropped_when_the_acl_changes() {
        let acl = |reader: &str| {
            TableAcl::parse(
                "acl.json",
                format!(r#"{{"table_groups": [{{"name": "g", "table_names_or_prefixes": ["t"], "readers": ["{reader}"]}}]}}"#).as_bytes(),
            )
            .expect("acl")
        };
        let settings = Settings {
            strict: true,
            dry_run: false,
            exempt: None,
            mode: Mode::Secure,
        };
        let e = Enforcer::new(acl("alice"), settings);
        assert!(e.check("alice", &[], "select * from t").is_allow());
        assert!(
            e.check("alice", &[], "select * from t").is_allow(),
            "from the cache"
        );
        assert_eq!(e.cached(), 1);
        e.replace(acl("bob"));
        assert_eq!(e.cached(), 0);
        assert!(
            !e.check("alice", &[], "select * from t").is_allow(),
            "the new ACL decides"
        );
        assert!(e.check("bob", &[], "select * from t").is_allow());
        assert!(
            !e.check("alice", &[], "SELECT * FROM t").is_allow(),
            "another spelling is decided on its own"
        );
    }

    #[test]
    fn statement_shapes_merge_only_texts_that_differ_in_literals() {
        let s = |q: &str| sql::shape(q, Mode::Secure);
        assert_eq!(
            s("select * from t where a = 1"),
            s("select  *  from t /* c */ where a = 'x'")
        );
        assert_ne!(
            s("select * from t where a = 1"),
            s("select * from u where a = 1")
        );
        assert_ne!(s("select * from t"), s("select * from T"));
        assert_ne!(s("select * from `t`"), s("select * from t"));
        assert_ne!(s("select * from \"t\""), s("select * from \"u\""));
        assert_ne!(s("select * from ab"), s("select * from a b"));
        for no_shape in [
            "select 'a\\' from t",
            "select 1 /*!50000 from t */",
            "prepare p from 'select 1'",
            "execute immediate 'delete from t'",
            "select 'open",
        ] {
            assert_eq!(s(no_shape), None, "{no_shape}");
        }

        let acl = TableAcl::parse(
            "acl.json",
            br#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["t"], "readers": ["alice"], "writers": ["alice"]}]}"#,
        )
        .expect("acl");
        let settings = Settings {
            strict: true,
            dry_run: false,
            exempt: None,
            mode: Mode::Secure,
        };
        let e = Enforcer::new(acl, settings);
        assert!(e
            .check("alice", &[], "select * from t where a = 1")
            .is_allow());
        assert!(e
            .check("alice", &[], "select * from t where a = 2")
            .is_allow());
        assert_eq!(e.cached_shapes(), 1, "one shape for both");
        assert!(!e
            .check("alice", &[], "select * from secret where a = 3")
            .is_allow());
        // A string alias is never taken as naming the DELETE target.
        assert!(e.check("alice", &[], "delete x from t as x").is_allow());
        assert!(!e
            .check("alice", &[], "delete secret from t as 'secret'")
            .is_allow());
        assert!(!e
            .check("alice", &[], "delete secret from t as 'other'")
            .is_allow());
    }
}
