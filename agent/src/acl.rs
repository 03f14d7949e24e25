//! Table ACLs: Vitess's tableacl files, SQL classification, and the decisions they make.
//!
//! Still to come (the table-ACL issue): policy through the admin API, the decision cache,
//! reloads (SIGHUP, interval), and the kernel sync of who may reach which upstream.

pub mod decide;
pub mod sql;
pub mod tableacl;

use std::sync::Arc;

use arc_swap::ArcSwap;

pub use decide::{Decision, Settings};
pub use sql::Mode;
pub use tableacl::{Role, TableAcl, TableGroup};

/// The ACL in force and how it is applied; the ACL can be replaced atomically (requests see
/// the old one or the new one).
pub struct Enforcer {
    acl: ArcSwap<TableAcl>,
    settings: Settings,
}

impl Enforcer {
    pub fn new(acl: TableAcl, settings: Settings) -> Self {
        Self {
            acl: ArcSwap::from_pointee(acl),
            settings,
        }
    }

    /// Decides one SQL string for a caller.
    pub fn check(&self, username: &str, groups: &[String], sql: &str) -> Decision {
        decide::decide(&self.acl.load(), &self.settings, username, groups, sql)
    }

    /// Swaps in a new ACL.
    pub fn replace(&self, acl: TableAcl) {
        self.acl.store(Arc::new(acl));
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }
}
