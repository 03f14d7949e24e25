//! The kernel half of policy: protected ports and which identity may reach which port, in two
//! generations so that a swap is seen whole or not at all.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    path::Path,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, MapData};
use parking_lot::Mutex;
use vtguard_common::{maps as map_names, protected_slot, AccessKey};

use super::{open_map, Error};

/// Which ports only vtguard may reach, and which identities its sockets may carry there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPolicy {
    /// Ports that only sockets registered by vtguard may connect to.
    pub protected_ports: BTreeSet<u16>,
    /// For each protected port, the identities whose sockets may reach it.
    pub access: BTreeMap<u16, BTreeSet<String>>,
}

impl KernelPolicy {
    /// Whether `identity` may reach `port` under this policy.
    pub fn allows(&self, identity: &str, port: u16) -> bool {
        self.protected_ports.contains(&port)
            && self
                .access
                .get(&port)
                .is_some_and(|ids| ids.contains(identity))
    }
}

/// How long a retired generation stays untouched after a flip. A program that read the old
/// generation number just before the flip finishes its lookups long before this; only then may
/// the next swap rewrite that generation.
const GRACE: Duration = Duration::from_secs(1);

/// Identity names and the small integers the kernel maps carry for them. Ids are never reused
/// while the agent runs, so a socket registered under an id keeps meaning that identity.
#[derive(Debug, Default)]
pub struct IdentityTable {
    by_name: StdHashMap<String, u32>,
    names: Vec<String>,
}

impl IdentityTable {
    /// The id of `name`, allocated on first use (ids start at 1; 0 means "none").
    pub fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.by_name.get(name) {
            return *id;
        }
        self.names.push(name.to_owned());
        let id = self.names.len() as u32;
        self.by_name.insert(name.to_owned(), id);
        id
    }

    /// The name of `id`, if it was allocated.
    pub fn name(&self, id: u32) -> Option<&str> {
        let i = usize::try_from(id).ok()?.checked_sub(1)?;
        self.names.get(i).map(String::as_str)
    }
}

/// What an installed policy amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySummary {
    /// The generation now active.
    pub generation: u32,
    pub protected_ports: BTreeSet<u16>,
    /// Number of (identity, port) grants.
    pub grants: usize,
}

pub(super) struct PolicyMaps {
    generation: Array<MapData, u32>,
    protected: Array<MapData, u32>,
    access: HashMap<MapData, AccessKey, u32>,
    /// The ports set in each generation's slots of `protected`.
    protected_ports: [BTreeSet<u16>; 2],
    last_flip: Option<Instant>,
}

impl PolicyMaps {
    pub(super) fn open(dir: &Path) -> Result<Self, Error> {
        let protected: Array<MapData, u32> = open_map(dir, map_names::PROTECTED)?;
        // Learn what a previous agent left (once, at start): both generations' ports.
        let protected_ports = [0, 1].map(|g| protected_ports(&protected, g));
        Ok(Self {
            generation: open_map(dir, map_names::POLICY_GEN)?,
            protected,
            access: open_map(dir, map_names::ACCESS)?,
            protected_ports,
            last_flip: None,
        })
    }

    /// Writes `policy` into the inactive generation, then makes it the active one. If writing
    /// fails half-way, the active generation is untouched. The identity table is locked only
    /// to look ids up, never across the grace wait, so registrations go on meanwhile.
    pub(super) fn install(
        &mut self,
        policy: &KernelPolicy,
        ids: &Mutex<IdentityTable>,
    ) -> Result<PolicySummary, Error> {
        if let Some(t) = self.last_flip {
            let since = t.elapsed();
            if since < GRACE {
                std::thread::sleep(GRACE - since);
            }
        }
        let grants: Vec<(u16, u32)> = {
            let mut ids = ids.lock();
            policy
                .access
                .iter()
                .filter(|(port, _)| policy.protected_ports.contains(port))
                .flat_map(|(port, names)| {
                    names.iter().map(|n| (*port, ids.id(n))).collect::<Vec<_>>()
                })
                .collect()
        };
        let op = |name| move |source| Error::MapOp { name, source };
        let current = self
            .generation
            .get(&0, 0)
            .map_err(op(map_names::POLICY_GEN))?
            & 1;
        let next = current ^ 1;

        // Clear what an earlier swap left in the generation about to be written.
        let stale = std::mem::take(&mut self.protected_ports[next as usize]);
        for port in stale {
            self.protected
                .set(protected_slot(next, port), 0, 0)
                .map_err(op(map_names::PROTECTED))?;
        }
        let stale_access: Vec<AccessKey> = self
            .access
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.generation == next)
            .collect();
        for k in stale_access {
            self.access.remove(&k).map_err(op(map_names::ACCESS))?;
        }

        for &port in &policy.protected_ports {
            self.protected
                .set(protected_slot(next, port), 1, 0)
                .map_err(op(map_names::PROTECTED))?;
            self.protected_ports[next as usize].insert(port);
        }
        for &(port, identity) in &grants {
            let key = AccessKey {
                generation: next,
                identity,
                port,
                _pad: [0; 3],
            };
            self.access
                .insert(key, 1, 0)
                .map_err(op(map_names::ACCESS))?;
        }
        self.generation
            .set(0, next, 0)
            .map_err(op(map_names::POLICY_GEN))?;
        self.last_flip = Some(Instant::now());
        Ok(PolicySummary {
            generation: next,
            protected_ports: policy.protected_ports.clone(),
            grants: grants.len(),
        })
    }
}

/// The ports set in `generation`'s slots of the PROTECTED array (65 536 lookups).
pub(super) fn protected_ports(protected: &Array<MapData, u32>, generation: u32) -> BTreeSet<u16> {
    (0..=u16::MAX)
        .filter(|&p| matches!(protected.get(&protected_slot(generation, p), 0), Ok(v) if v != 0))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_ids_are_stable_and_start_at_one() {
        let mut t = IdentityTable::default();
        assert_eq!(t.id("vtgate client 1"), 1);
        assert_eq!(t.id("vtgate client 2"), 2);
        assert_eq!(t.id("vtgate client 1"), 1);
        assert_eq!(t.name(1), Some("vtgate client 1"));
        assert_eq!(t.name(2), Some("vtgate client 2"));
        assert_eq!(t.name(0), None);
        assert_eq!(t.name(3), None);
    }
}
