//! Where the table ACL comes from (`[tableacl]`), and the one place that loads a file and puts
//! it in force.

use std::{path::PathBuf, sync::Arc, time::Duration};

use tracing::{error, info, warn};

use super::{Enforcer, Settings, TableAcl};

/// The `[tableacl]` part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableAclConfig {
    /// `table-acl-config`: a Vitess tableacl file (JSON or binary), loaded unchanged.
    pub file: PathBuf,
    /// `enforce-tableacl-config`: refuse to start without a valid file.
    pub enforce: bool,
    /// `table-acl-config-reload-interval`: re-read the file this often (None: only on SIGHUP).
    pub reload_interval: Option<Duration>,
    pub settings: Settings,
}

/// The table ACL file could not be used at start and `enforce-tableacl-config` is set.
#[derive(Debug, thiserror::Error)]
#[error("enforce-tableacl-config is set and the table ACL cannot be used: {0}")]
pub struct Enforced(#[from] super::tableacl::Error);

impl TableAclConfig {
    /// The enforcer for this configuration, with the file loaded. Without a usable file it
    /// starts with an empty ACL (nothing granted) unless `enforce` says to refuse, as Vitess
    /// does.
    pub fn start(&self) -> Result<Arc<Enforcer>, Enforced> {
        let s = &self.settings;
        let acl = match TableAcl::load(&self.file) {
            Ok(acl) => {
                info!(file = %self.file.display(), groups = acl.groups.len(), strict = s.strict, dry_run = s.dry_run, exempt = ?s.exempt, mode = ?s.mode, "table ACL loaded");
                acl
            }
            Err(e) if self.enforce => return Err(e.into()),
            Err(e) => {
                error!(error = %e, "table ACL not loaded: no table is granted to anyone (strict mode denies every checked statement)");
                TableAcl::default()
            }
        };
        let enforcer = Arc::new(Enforcer::new(acl, s.clone()));
        enforcer.set_source(&self.file.display().to_string());
        Ok(enforcer)
    }

    /// Re-reads the file and puts it in force; a file that cannot be used leaves the ACL in
    /// force as it is (as Vitess does).
    pub fn reload(&self, enforcer: &Enforcer) {
        self.reload_logged(enforcer, "table ACL reloaded");
    }

    /// [`TableAclConfig::reload`], logging `done` when the new ACL is in force.
    fn reload_logged(&self, enforcer: &Enforcer, done: &str) {
        match TableAcl::load(&self.file) {
            Ok(acl) => {
                info!(file = %self.file.display(), groups = acl.groups.len(), "{done}");
                enforcer.replace_from(acl, &self.file.display().to_string());
            }
            Err(e) => warn!(error = %e, "table ACL reload failed; the previous ACL stays in force"),
        }
    }

    /// Reloads the file whenever its content changes, checked every `reload_interval`; a
    /// policy loaded through the admin API stays until the file changes. Runs until dropped;
    /// returns at once without a reload interval.
    pub async fn watch(self, enforcer: Arc<Enforcer>) {
        let Some(every) = self.reload_interval else {
            return;
        };
        let mut last = std::fs::read(&self.file).ok();
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            tick.tick().await;
            let now = std::fs::read(&self.file).ok();
            if now != last {
                last = now;
                self.reload_logged(&enforcer, "table ACL changed on disk; reloaded");
            }
        }
    }
}
