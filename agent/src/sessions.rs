//! Open connections by listener and identity, so that a policy change can cut off an
//! identity's connections and `vtguard status` can count them.
//!
//! A proxy opens a [`Session`] for every connection that carries an identity (a downstream
//! connection with a verified certificate, an upstream connection opened for a caller) and
//! holds it for the connection's life; dropping it deregisters. When the kernel policy changes,
//! [`Sessions::set_policy`] signals every session whose identity may no longer reach its
//! upstream port, and the proxy closes that connection.
//!
//! The kernel may take up to a second to apply a policy (the retired generation's grace
//! period). Meanwhile [`Sessions::refuses`] answers for it, and an upstream connection that
//! was already on its way when the policy changed is cut the moment it registers.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use parking_lot::{Mutex, MutexGuard};
use tokio::sync::watch;

use crate::kernel::KernelPolicy;

/// Whether `policy` keeps `identity` from a port the kernel guards. An unprotected port is
/// never taken away: the kernel does not guard it, so there is nothing for policy to remove.
fn takes_away(policy: &KernelPolicy, identity: &str, port: u16) -> bool {
    policy.protected_ports.contains(&port) && !policy.allows(identity, port)
}

/// Every open session of the agent.
#[derive(Debug, Default)]
pub struct Sessions {
    next: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
    /// The kernel policy in force or being applied; `None` without a kernel.
    policy: Mutex<Option<Arc<KernelPolicy>>>,
    /// A policy is being written to the kernel.
    applying: std::sync::atomic::AtomicBool,
}

#[derive(Debug)]
struct Entry {
    /// An upstream connection (else a client's connection to vtguard).
    upstream: bool,
    listener: Arc<str>,
    port: u16,
    identity: String,
    cut: watch::Sender<bool>,
}

/// One open connection; deregisters when dropped.
#[derive(Debug)]
pub struct Session {
    id: u64,
    sessions: Arc<Sessions>,
    cut: watch::Receiver<bool>,
}

impl Session {
    /// Resolves once policy has cut this session off (never, otherwise).
    pub async fn cut_off(&mut self) {
        if self.cut.wait_for(|cut| *cut).await.is_err() {
            // The sender lives in the registry until this session drops: unreachable, but
            // never resolve spuriously.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.sessions.lock().remove(&self.id);
    }
}

/// Sessions cut off by a policy change, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cut {
    pub listener: String,
    pub identity: String,
    pub port: u16,
    pub connections: usize,
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.open.lock()
    }

    fn current(&self) -> Option<Arc<KernelPolicy>> {
        self.policy.lock().clone()
    }

    /// Registers a downstream connection of `listener` carrying `identity`, whose upstream is
    /// `port`. It is cut only when a policy change takes the identity's access away.
    pub fn open(self: &Arc<Self>, listener: &Arc<str>, port: u16, identity: &str) -> Session {
        self.register(listener, port, identity, false, false)
    }

    /// Registers an upstream connection opened for `identity`: if the policy no longer lets
    /// it through (it changed while the connection was being made), it starts out cut.
    pub fn open_upstream(
        self: &Arc<Self>,
        listener: &Arc<str>,
        port: u16,
        identity: &str,
    ) -> Session {
        let cut = self
            .current()
            .is_some_and(|p| takes_away(&p, identity, port));
        self.register(listener, port, identity, true, cut)
    }

    /// Whether vtguard must refuse `identity` an upstream connection to `port` itself: only
    /// while a policy that takes it away is being applied (afterwards the kernel refuses).
    pub fn refuses(&self, identity: &str, port: u16) -> bool {
        self.applying.load(Ordering::Acquire)
            && self
                .current()
                .is_some_and(|p| takes_away(&p, identity, port))
    }

    /// Makes `policy` the one in force (`applying`: the kernel does not have it yet) and cuts
    /// every session it takes access from.
    pub fn set_policy(&self, policy: &KernelPolicy, applying: bool) -> Vec<Cut> {
        *self.policy.lock() = Some(Arc::new(policy.clone()));
        self.applying.store(applying, Ordering::Release);
        self.cut_disallowed(policy)
    }

    /// The kernel has the policy now.
    pub fn applied(&self) {
        self.applying.store(false, Ordering::Release);
    }

    fn register(
        self: &Arc<Self>,
        listener: &Arc<str>,
        port: u16,
        identity: &str,
        upstream: bool,
        cut: bool,
    ) -> Session {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = watch::channel(cut);
        self.lock().insert(
            id,
            Entry {
                upstream,
                listener: Arc::clone(listener),
                port,
                identity: identity.to_owned(),
                cut: tx,
            },
        );
        Session {
            id,
            sessions: Arc::clone(self),
            cut: rx,
        }
    }

    /// Cuts off every session whose upstream port `policy` takes away from its identity.
    fn cut_disallowed(&self, policy: &KernelPolicy) -> Vec<Cut> {
        let mut cut: BTreeMap<(Arc<str>, String, u16), usize> = BTreeMap::new();
        for e in self.lock().values() {
            if takes_away(policy, &e.identity, e.port) {
                // send_replace: the receiver may be gone already (connection closing).
                e.cut.send_replace(true);
                *cut.entry((Arc::clone(&e.listener), e.identity.clone(), e.port))
                    .or_default() += 1;
            }
        }
        cut.into_iter()
            .map(|((listener, identity, port), connections)| Cut {
                listener: listener.to_string(),
                identity,
                port,
                connections,
            })
            .collect()
    }

    /// Open connections by (listener, identity): (client connections, upstream connections).
    pub fn by_identity(&self) -> BTreeMap<(String, String), (usize, usize)> {
        let mut out: BTreeMap<_, (usize, usize)> = BTreeMap::new();
        for e in self.lock().values() {
            let n = out
                .entry((e.listener.to_string(), e.identity.clone()))
                .or_default();
            if e.upstream {
                n.1 += 1;
            } else {
                n.0 += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn policy(port: u16, ids: &[&str]) -> KernelPolicy {
        KernelPolicy {
            protected_ports: BTreeSet::from([port, 9]),
            access: BTreeMap::from([(port, ids.iter().map(|s| s.to_string()).collect())]),
        }
    }

    #[tokio::test]
    async fn removed_identity_is_cut_and_others_are_not() {
        let s = Arc::new(Sessions::default());
        let l: Arc<str> = Arc::from("vttablet");
        let mut alice = s.open(&l, 5, "alice");
        let mut bob = s.open(&l, 5, "bob");
        let mut bob_unprotected = s.open(&l, 7, "bob");
        assert_eq!(
            s.by_identity().get(&("vttablet".into(), "bob".into())),
            Some(&(2, 0))
        );

        let cut = s.set_policy(&policy(5, &["alice"]), true);
        assert_eq!(
            cut,
            vec![Cut {
                listener: "vttablet".into(),
                identity: "bob".into(),
                port: 5,
                connections: 1
            }]
        );
        bob.cut_off().await; // resolves
        let pending = |s: &mut Session| {
            let f = s.cut_off();
            futures_util::FutureExt::now_or_never(f).is_none()
        };
        assert!(pending(&mut alice), "alice is still allowed");
        assert!(pending(&mut bob_unprotected), "port 7 is not protected");

        drop(bob);
        assert_eq!(
            s.by_identity().get(&("vttablet".into(), "bob".into())),
            Some(&(1, 0))
        );
        drop(bob_unprotected);
        assert_eq!(s.by_identity().len(), 1);
    }
}
