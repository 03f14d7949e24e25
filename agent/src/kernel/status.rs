//! `vtguard kernel status` and `vtguard kernel detach`: read or remove what is pinned, with or
//! without a running agent.

use std::{
    borrow::Cow,
    collections::BTreeSet,
    fmt, fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::links::{FdLink, PinnedLink},
};
use serde::{Deserialize, Serialize};
use vtguard_common::{
    maps as map_names, AccessKey, Counter, DenyEvent, FlowKey, FlowValue, PortOwner, SocketEntry,
    ANY_UID, RECENT_SLOTS,
};

use super::{events::Denial, link_pin, open_map, read_counters, sys, Error, PROGRAMS};

/// One program's link, as pinned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    pub program: Cow<'static, str>,
    pub section: Cow<'static, str>,
    pub attached: bool,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
}

/// What is pinned under a bpffs folder, and what it has done. Names are `Cow` so that
/// `vtguard status` can read the agent's report back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelStatus {
    pub bpffs: PathBuf,
    /// Whether an agent holds the folder right now.
    pub agent_running: bool,
    pub links: Vec<LinkStatus>,
    pub maps: Vec<(Cow<'static, str>, bool)>,
    pub generation: Option<u32>,
    pub protected_ports: BTreeSet<u16>,
    pub grants: usize,
    pub registered_sockets: usize,
    pub flows: usize,
    pub counters: Vec<(Cow<'static, str>, u64)>,
    pub recent_denials: Vec<Denial>,
    /// The bind guard, as the kernel holds it: who may bind each guarded port.
    #[serde(default)]
    pub owners: Vec<OwnerStatus>,
}

/// One entry of the bind guard's OWNERS map.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerStatus {
    pub port: u16,
    /// The owner cgroup's id; `None` when any cgroup may bind, `Some(u64::MAX)` while the
    /// owner cgroup does not exist (nobody may bind).
    pub cgroup_id: Option<u64>,
    pub uid: Option<u32>,
}

impl KernelStatus {
    /// Reads the pins under `dir`. Needs root (pinned objects are root-only).
    pub fn read(dir: &Path) -> Result<Self, Error> {
        if !sys::is_root() {
            return Err(Error::NotRoot);
        }
        if !dir.is_dir() {
            return Err(Error::Io {
                what: "reading pin folder",
                path: dir.to_owned(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "nothing is pinned there (is vtguard attached? start it with `vtguard run --config FILE`)"),
            });
        }
        let agent_running = sys::DirLock::try_lock(dir).ok().flatten().is_none();
        // The lookup program is attached only when a listener intercepts.
        let lookup = (vtguard_common::programs::LOOKUP, "sk_lookup");
        let links = PROGRAMS
            .iter()
            .copied()
            .chain(link_pin(dir, lookup.0).exists().then_some(lookup))
            .map(|(program, section)| {
                let info = PinnedLink::from_pin(link_pin(dir, program))
                    .ok()
                    .and_then(|p| FdLink::from(p).info().ok());
                LinkStatus {
                    program: program.into(),
                    section: section.into(),
                    // A detached cgroup link keeps its id but loses its program.
                    attached: info.as_ref().is_some_and(|i| i.program_id() != 0),
                    link_id: info.as_ref().map(|i| i.id()),
                    program_id: info.as_ref().map(|i| i.program_id()),
                }
            })
            .collect();
        let maps = map_names::ALL
            .iter()
            .map(|&n| (n.into(), dir.join(n).exists()))
            .collect();
        let mut st = KernelStatus {
            bpffs: dir.to_owned(),
            agent_running,
            links,
            maps,
            generation: None,
            protected_ports: BTreeSet::new(),
            grants: 0,
            registered_sockets: 0,
            flows: 0,
            counters: Vec::new(),
            recent_denials: Vec::new(),
            owners: Vec::new(),
        };
        if let Ok(o) = open_map::<HashMap<MapData, u32, PortOwner>>(dir, map_names::OWNERS) {
            st.owners = o
                .iter()
                .filter_map(Result::ok)
                .filter_map(|(port, v)| {
                    Some(OwnerStatus {
                        port: u16::try_from(port).ok()?,
                        cgroup_id: (v.cgroup_id != 0).then_some(v.cgroup_id),
                        uid: (v.uid != ANY_UID).then_some(v.uid),
                    })
                })
                .collect();
            st.owners.sort_by_key(|o| o.port);
        }
        if let Ok(g) = open_map::<Array<MapData, u32>>(dir, map_names::POLICY_GEN) {
            let gen = g.get(&0, 0).ok().map(|v| v & 1);
            st.generation = gen;
            if let (Some(gen), Ok(p)) = (
                gen,
                open_map::<Array<MapData, u32>>(dir, map_names::PROTECTED),
            ) {
                st.protected_ports = super::policy::protected_ports(&p, gen);
            }
            if let (Some(gen), Ok(a)) = (
                gen,
                open_map::<HashMap<MapData, AccessKey, u32>>(dir, map_names::ACCESS),
            ) {
                st.grants = a
                    .keys()
                    .filter_map(Result::ok)
                    .filter(|k| k.generation == gen)
                    .count();
            }
        }
        if let Ok(s) = open_map::<HashMap<MapData, u64, SocketEntry>>(dir, map_names::SOCKETS) {
            st.registered_sockets = s.keys().filter(Result::is_ok).count();
        }
        if let Ok(f) = open_map::<HashMap<MapData, FlowKey, FlowValue>>(dir, map_names::FLOWS) {
            st.flows = f.keys().filter(Result::is_ok).count();
        }
        if let Ok(c) = open_map::<PerCpuArray<MapData, u64>>(dir, map_names::COUNTERS) {
            let values = read_counters(&c)?;
            st.counters = Counter::ALL
                .iter()
                .map(|c| (c.as_str().into(), values[*c as usize]))
                .collect();
        }
        if let Ok(r) = open_map::<Array<MapData, DenyEvent>>(dir, map_names::RECENT) {
            let mut d: Vec<Denial> = (0..RECENT_SLOTS)
                .filter_map(|i| r.get(&i, 0).ok())
                .filter(|e| e.seq != 0)
                // Identity names live in the agent; here ids are shown as #N.
                .map(|e| Denial::from_event(&e, |_| None))
                .collect();
            d.sort_by_key(|d| d.seq);
            st.recent_denials = d;
        }
        Ok(st)
    }

    /// Whether every program is attached.
    pub fn fully_attached(&self) -> bool {
        self.links.iter().all(|l| l.attached)
    }
}

impl fmt::Display for KernelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "bpffs:      {}", self.bpffs.display())?;
        writeln!(
            f,
            "agent:      {}",
            if self.agent_running {
                "running"
            } else {
                "not running (pinned programs keep enforcing)"
            }
        )?;
        writeln!(f, "programs:")?;
        for l in &self.links {
            match (l.attached, l.link_id, l.program_id) {
                (true, Some(link), Some(prog)) => writeln!(
                    f,
                    "  {:<12} {:<19} attached (link {link}, prog {prog})",
                    l.program, l.section
                )?,
                _ => writeln!(f, "  {:<12} {:<19} NOT ATTACHED", l.program, l.section)?,
            }
        }
        let missing: Vec<&str> = self
            .maps
            .iter()
            .filter(|(_, p)| !p)
            .map(|(n, _)| &**n)
            .collect();
        if missing.is_empty() {
            writeln!(f, "maps:       {} pinned", self.maps.len())?;
        } else {
            writeln!(f, "maps:       missing {}", missing.join(", "))?;
        }
        let ports: Vec<String> = self.protected_ports.iter().map(u16::to_string).collect();
        writeln!(
            f,
            "policy:     generation {}, protected ports [{}], {} identity grants",
            self.generation.map_or("-".into(), |g| g.to_string()),
            ports.join(", "),
            self.grants
        )?;
        let guarded: BTreeSet<u16> = self.owners.iter().map(|o| o.port).collect();
        for o in &self.owners {
            let cgroup = match o.cgroup_id {
                None => "any cgroup".to_owned(),
                Some(u64::MAX) => "its cgroup (absent now: nobody may bind)".to_owned(),
                Some(id) => format!("cgroup id {id}"),
            };
            let uid = o.uid.map_or("any uid".to_owned(), |u| format!("uid {u}"));
            writeln!(f, "bind guard: port {}: {cgroup}, {uid}", o.port)?;
        }
        let unguarded: Vec<String> = self
            .protected_ports
            .difference(&guarded)
            .map(u16::to_string)
            .collect();
        if !unguarded.is_empty() {
            writeln!(
                f,
                "bind guard: none for port(s) {} (anyone may bind them: set [[kernel.owner]])",
                unguarded.join(", ")
            )?;
        }
        writeln!(
            f,
            "sockets:    {} registered, {} flows recorded",
            self.registered_sockets, self.flows
        )?;
        writeln!(f, "counters:")?;
        for (name, v) in &self.counters {
            writeln!(f, "  {name:<28} {v}")?;
        }
        if self.recent_denials.is_empty() {
            writeln!(f, "last denials: none")?;
        } else {
            writeln!(f, "last denials (oldest first):")?;
            for d in &self.recent_denials {
                writeln!(f, "  #{} {d}", d.seq)?;
            }
        }
        Ok(())
    }
}

/// What `detach` removed.
#[derive(Debug, Default, Serialize)]
pub struct DetachReport {
    pub links_detached: Vec<String>,
    pub pins_removed: usize,
}

/// Detaches every program pinned under `dir` and removes the pins and the folder. Refuses
/// while an agent runs on that folder (it would keep running, enforcing nothing).
pub fn detach(dir: &Path) -> Result<DetachReport, Error> {
    if !dir.exists() {
        return detach_forced(dir);
    }
    if !sys::is_root() {
        return Err(Error::NotRoot);
    }
    let _lock = super::lock_pin_dir(dir)?;
    detach_forced(dir)
}

/// [`detach`] without asking whether an agent runs on the folder (its owner tears it down).
pub fn detach_forced(dir: &Path) -> Result<DetachReport, Error> {
    if !sys::is_root() {
        return Err(Error::NotRoot);
    }
    let mut report = DetachReport::default();
    if !dir.exists() {
        return Ok(report);
    }
    let lookup = (vtguard_common::programs::LOOKUP, "sk_lookup");
    for (program, _) in PROGRAMS.into_iter().chain([lookup]) {
        let pin = link_pin(dir, program);
        if !pin.exists() {
            continue;
        }
        // Detach explicitly: a descriptor held elsewhere would otherwise keep it attached.
        let fd = sys::bpf_obj_get(&pin).map_err(|source| Error::Io {
            what: "opening pinned link",
            path: pin.clone(),
            source,
        })?;
        sys::bpf_link_detach(fd.as_fd()).map_err(|source| Error::Io {
            what: "detaching link",
            path: pin.clone(),
            source,
        })?;
        report.links_detached.push(program.to_owned());
    }
    for e in fs::read_dir(dir).map_err(|source| Error::Io {
        what: "reading pin folder",
        path: dir.to_owned(),
        source,
    })? {
        let path = e
            .map_err(|source| Error::Io {
                what: "reading pin folder",
                path: dir.to_owned(),
                source,
            })?
            .path();
        fs::remove_file(&path).map_err(|source| Error::Io {
            what: "removing pin",
            path: path.clone(),
            source,
        })?;
        report.pins_removed += 1;
    }
    fs::remove_dir(dir).map_err(|source| Error::Io {
        what: "removing pin folder",
        path: dir.to_owned(),
        source,
    })?;
    Ok(report)
}
