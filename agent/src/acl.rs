//! Table ACLs: Vitess's tableacl files, SQL classification, and the decisions they make; the
//! [`Enforcer`] holds the ACL in force, swaps it atomically and caches decisions.

pub mod decide;
mod source;
pub mod sql;
pub mod tableacl;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use arc_swap::ArcSwap;

pub use decide::{Decision, Settings};
pub use source::{Enforced, TableAclConfig};
pub use sql::Mode;
pub use tableacl::{Role, TableAcl, TableGroup};

/// The ACL in force and how it is applied; the ACL can be replaced atomically (requests see
/// the old one or the new one).
pub struct Enforcer {
    acl: ArcSwap<TableAcl>,
    settings: Settings,
    cache: Mutex<HashMap<CacheKey, Decision>>,
    /// Where the ACL in force came from, and when (unix seconds).
    origin: Mutex<(String, i64)>,
    /// How many times an ACL was put in force (1 = the first).
    version: std::sync::atomic::AtomicU64,
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

/// (username, groups, SQL text): the SQL is taken exactly as sent, so that two spellings never
/// share a decision.
type CacheKey = (String, Vec<String>, String);

/// Decisions kept before the cache starts over.
const CACHE_CAPACITY: usize = 10_000;

impl Enforcer {
    pub fn new(acl: TableAcl, settings: Settings) -> Self {
        Self {
            acl: ArcSwap::from_pointee(acl),
            settings,
            cache: Mutex::new(HashMap::new()),
            origin: Mutex::new((String::new(), now_unix())),
            version: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// The ACL in force.
    pub fn acl(&self) -> Arc<TableAcl> {
        self.acl.load_full()
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

    /// Decides one SQL string for a caller (from the cache when the same caller sent the same
    /// text under the same ACL).
    pub fn check(&self, username: &str, groups: &[String], sql: &str) -> Decision {
        let key = (username.to_owned(), groups.to_vec(), sql.to_owned());
        if let Some(d) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
        {
            return d.clone();
        }
        // Decided outside the lock; a swap in between is handled by clearing after storing.
        let acl = self.acl.load();
        let d = decide::decide(&acl, &self.settings, username, groups, sql);
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::ptr_eq(&acl, &self.acl.load()) {
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key, d.clone());
        }
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
            &self.acl.load(),
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
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        self.acl.store(Arc::new(acl));
        cache.clear();
        self.version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times an ACL was put in force (1 = the one it started with).
    pub fn version(&self) -> u64 {
        self.version.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Cached decisions right now.
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
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
}
