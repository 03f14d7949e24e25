//! The kernel half of vtguard: loads the eBPF programs, attaches them to a cgroup2 directory,
//! pins programs' links and maps under a bpffs folder so that they outlive the agent, adopts
//! what a previous agent pinned, and offers the API the proxies use: register a socket under
//! an identity, connect, unregister.
//!
//! Fail closed: the pinned links keep the programs attached after the agent exits or dies.
//! Only [`detach`] (`vtguard kernel detach`) removes them.

mod addrs;
mod events;
mod owner;
mod policy;
mod socket;
mod status;
pub mod sys;

use std::{
    fs, io,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::fs::DirBuilderExt,
    },
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        ProgramError,
    },
    Ebpf, EbpfLoader,
};
use parking_lot::Mutex;
use tracing::{info, warn};
use vtguard_common::{
    maps as map_names, programs as prog_names, DenyEvent, FlowKey, FlowValue, COUNTER_SLOTS,
    LAYOUT_VERSION,
};

pub use addrs::node_addresses;
pub use events::{Denial, EventReader};
pub use owner::{check_listeners, listening_sockets, ListeningSocket, NotOwner, PortOwner};
pub use policy::{IdentityTable, KernelPolicy, PolicySummary};
pub use socket::{FlowRecord, Registration, Upstream};
pub use status::{detach, detach_forced, DetachReport, KernelStatus, LinkStatus};

/// Default pin folder.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/vtguard";

/// The `[kernel]` part of the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConfig {
    /// Folder on a BPF filesystem where programs, links and maps are pinned.
    pub bpffs: PathBuf,
    /// cgroup2 directory the programs attach to; `None` = the cgroup2 root from /proc/mounts.
    pub cgroup: Option<PathBuf>,
    /// The kernel half of policy: protected ports, and who may reach each.
    pub policy: KernelPolicy,
    /// The bind guard: who may bind each protected port (`[[kernel.owner]]`). A protected
    /// port without an owner may be bound by anyone.
    pub owners: std::collections::BTreeMap<u16, PortOwner>,
    /// Protected ports whose new connections the lookup program hands to a vtguard listener
    /// (listeners with `intercept = true`). Empty: the lookup program is not attached.
    pub intercept: std::collections::BTreeSet<u16>,
}

/// The eBPF object, built by `cargo xtask build-ebpf` and committed.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../ebpf/prebuilt/vtguard.bpf.o"
));

/// What went wrong in the kernel layer. Each message names the cause and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("vtguard needs root to load and attach eBPF programs (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN): run it as root")]
    NotRoot,
    #[error("no cgroup2 filesystem is mounted (none in /proc/mounts): mount one with `mount -t cgroup2 none /sys/fs/cgroup` or set [kernel] cgroup")]
    NoCgroup2,
    #[error("cgroup {path} is not a cgroup2 directory: set [kernel] cgroup to a directory of the cgroup2 mount (see `grep cgroup2 /proc/mounts`)")]
    NotCgroup2 { path: PathBuf },
    #[error("bpffs {path}: {parent} is not a BPF filesystem: mount one with `mount -t bpf bpf {parent}` or set [kernel] bpffs to a folder under a mounted bpffs")]
    NotBpffs { path: PathBuf, parent: PathBuf },
    #[error("bpffs {path} is in use by another running vtguard agent: stop it first, or give this one another [kernel] bpffs")]
    Busy { path: PathBuf },
    #[error("bpffs {path}: maps pinned there have layout version {found}, this vtguard needs {expected}: run `vtguard kernel detach --bpffs {path}` and start again")]
    Layout {
        path: PathBuf,
        found: u32,
        expected: u32,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("loading the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("kernel refused program {name} ({section}): {detail}: this kernel may lack that program type or helper; vtguard needs Linux 5.8 or newer with CONFIG_CGROUP_BPF and BTF")]
    Program {
        name: &'static str,
        section: &'static str,
        detail: String,
    },
    #[error("pinned map {name} under {path}: {source}")]
    Map {
        name: &'static str,
        path: PathBuf,
        source: MapError,
    },
    #[error("pinning link {path}: {detail}")]
    Pin { path: PathBuf, detail: String },
    #[error("kernel map {name}: {source}")]
    MapOp {
        name: &'static str,
        source: MapError,
    },
    #[error("socket: {0}")]
    Socket(io::Error),
    #[error("[[kernel.owner]] port {port}: {detail}")]
    Owner { port: u16, detail: String },
    /// Whoever listens where the upstream connection landed is not the port's owner.
    #[error("{0}")]
    NotOwner(#[from] NotOwner),
}

/// Whether to attach the programs (the agent) or only open the maps (benchmark baselines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    Yes,
    /// Load and pin the maps, attach nothing.
    MapsOnly,
}

/// How a program came to be attached when the agent started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Attached by this agent.
    Attached,
    /// Found pinned (a previous agent attached it) and reused.
    Adopted,
}

/// One attached program, as the agent found or made it.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub program: &'static str,
    pub origin: Origin,
    pub link_id: u32,
    pub program_id: u32,
}

/// The handle on vtguard's kernel state. Shared by the proxies (behind an `Arc`).
pub struct Kernel {
    pin_dir: PathBuf,
    cgroup: PathBuf,
    attachments: Vec<Attachment>,
    identities: Mutex<IdentityTable>,
    sockets: Mutex<HashMap<MapData, u64, vtguard_common::SocketEntry>>,
    policy: Mutex<policy::PolicyMaps>,
    counters: PerCpuArray<MapData, u64>,
    flows: socket::Flows,
    route_sources: socket::RouteSources,
    events: Mutex<Option<RingBuf<MapData>>>,
    owners: std::sync::Arc<Mutex<owner::Owners>>,
    local_addrs: std::sync::Arc<Mutex<addrs::LocalAddrs>>,
    /// Intercepted ports, in LISTENERS slot order.
    intercept: Vec<u16>,
    listeners: Mutex<aya::maps::SockMap<MapData>>,
    recent: Mutex<Array<MapData, DenyEvent>>,
    tally: events::DenialTally,
    // Held while the agent runs: a second agent on the same folder is refused.
    _lock: sys::DirLock,
}

/// Program name, ELF section (for messages), link pin file name.
const PROGRAMS: [(&str, &str); 5] = [
    (prog_names::BIND4, "cgroup/bind4"),
    (prog_names::BIND6, "cgroup/bind6"),
    (prog_names::CONNECT4, "cgroup/connect4"),
    (prog_names::CONNECT6, "cgroup/connect6"),
    (prog_names::INGRESS, "cgroup_skb/ingress"),
];

/// The pin path of a program's link.
pub fn link_pin(dir: &Path, program: &str) -> PathBuf {
    dir.join(format!("link_{program}"))
}

/// The cgroup2 directory to attach to: the configured one, or the cgroup2 root.
pub fn resolve_cgroup(configured: Option<&Path>) -> Result<PathBuf, Error> {
    let path = match configured {
        Some(p) => p.to_owned(),
        None => {
            let mounts = fs::read_to_string("/proc/mounts").map_err(|source| Error::Io {
                what: "reading",
                path: "/proc/mounts".into(),
                source,
            })?;
            sys::cgroup2_mount(&mounts).ok_or(Error::NoCgroup2)?
        }
    };
    match sys::fs_magic(&path) {
        Ok(m) if m == sys::CGROUP2_SUPER_MAGIC => Ok(path),
        _ => Err(Error::NotCgroup2 { path }),
    }
}

/// Checks that `dir` can hold pins: it, or the folder it would be created in, is on bpffs.
pub fn check_bpffs(dir: &Path) -> Result<(), Error> {
    let probe = if dir.exists() {
        dir.to_owned()
    } else {
        dir.parent()
            .map(Path::to_owned)
            .unwrap_or_else(|| "/".into())
    };
    match sys::fs_magic(&probe) {
        Ok(m) if m == sys::BPF_FS_MAGIC => Ok(()),
        _ => Err(Error::NotBpffs {
            path: dir.to_owned(),
            parent: probe,
        }),
    }
}

impl Kernel {
    /// Attaches the programs (or adopts the pinned ones) and installs `cfg.policy`.
    ///
    /// On error nothing this call attached stays attached, and a pin folder this call created
    /// is removed again.
    pub fn start(cfg: &KernelConfig, attach: Attach) -> Result<Self, Error> {
        if !sys::is_root() {
            return Err(Error::NotRoot);
        }
        let cgroup = resolve_cgroup(cfg.cgroup.as_deref())?;
        let dir = cfg.bpffs.clone();
        check_bpffs(&dir)?;
        let created_dir = !dir.exists();
        if created_dir {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|source| Error::Io {
                    what: "creating pin folder",
                    path: dir.clone(),
                    source,
                })?;
        }
        let result = Self::start_in(&dir, cgroup, cfg, attach);
        if result.is_err() && created_dir {
            remove_pins(&dir);
        }
        result
    }

    fn start_in(
        dir: &Path,
        cgroup: PathBuf,
        cfg: &KernelConfig,
        attach: Attach,
    ) -> Result<Self, Error> {
        let kernel_policy = &cfg.policy;
        let lock = lock_pin_dir(dir)?;
        check_layout(dir)?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(dir)
            .load(EBPF_OBJECT)?;
        let mut meta: Array<MapData, u32> = open_map(dir, map_names::META)?;
        meta.set(0, LAYOUT_VERSION, 0)
            .map_err(|source| Error::MapOp {
                name: map_names::META,
                source,
            })?;

        // Sockets registered by a previous agent died with it; their cookies are never reused,
        // but there is no reason to keep them.
        let mut sockets: HashMap<MapData, u64, vtguard_common::SocketEntry> =
            open_map(dir, map_names::SOCKETS)?;
        let stale: Vec<u64> = sockets.keys().filter_map(Result::ok).collect();
        for cookie in stale {
            let _ = sockets.remove(&cookie);
        }

        // Flows belong to the agent that recorded them: a previous agent's connections were
        // closed when it exited.
        let mut flow_map: HashMap<MapData, FlowKey, FlowValue> = open_map(dir, map_names::FLOWS)?;
        let stale: Vec<FlowKey> = flow_map.keys().filter_map(Result::ok).collect();
        for key in stale {
            let _ = flow_map.remove(&key);
        }
        let flows = std::sync::Arc::new(Mutex::new(flow_map));

        // Policy goes in before anything is attached, so the first verdict is already right.
        let identities = Mutex::new(IdentityTable::default());
        let mut policy_maps = policy::PolicyMaps::open(dir)?;
        let summary = policy_maps.install(kernel_policy, &identities)?;
        info!(
            protected_ports = ?summary.protected_ports,
            grants = summary.grants,
            generation = summary.generation,
            "kernel policy installed"
        );

        // Owners too: the bind guard is right from its first verdict.
        let mut owners = owner::Owners::open(dir, resolve_cgroup(None)?)?;
        owners.set(&cfg.owners)?;
        for port in &kernel_policy.protected_ports {
            if !cfg.owners.contains_key(port) {
                warn!(port, "protected port without an owner: any process may bind it while its service is down; set [[kernel.owner]] for it");
            }
        }
        let owners = std::sync::Arc::new(Mutex::new(owners));
        owner_watch(std::sync::Arc::downgrade(&owners));
        // This node's addresses, before connect() is policed by them.
        let local_addrs = addrs::start(dir)?;
        let intercept: Vec<u16> = cfg.intercept.iter().copied().collect();
        write_intercept(dir, &intercept)?;

        let attachments = match attach {
            Attach::Yes => {
                // The lookup program first: when this kernel refuses it, nothing is attached.
                let lookup = attach_lookup(&mut ebpf, dir, !intercept.is_empty())?;
                let mut attachments = match attach_all(&mut ebpf, dir, &cgroup) {
                    Ok(a) => a,
                    Err(e) => {
                        if lookup
                            .as_ref()
                            .is_some_and(|l| l.origin == Origin::Attached)
                        {
                            let _ = fs::remove_file(link_pin(dir, prog_names::LOOKUP));
                        }
                        return Err(e);
                    }
                };
                attachments.extend(lookup);
                attachments
            }
            Attach::MapsOnly => Vec::new(),
        };
        // The links are pinned (or unneeded): dropping the loaded object detaches nothing.
        drop(ebpf);

        let recent: Array<MapData, DenyEvent> = open_map(dir, map_names::RECENT)?;
        Ok(Kernel {
            pin_dir: dir.to_owned(),
            cgroup,
            attachments,
            identities,
            sockets: Mutex::new(sockets),
            policy: Mutex::new(policy_maps),
            counters: open_map(dir, map_names::COUNTERS)?,
            flows,
            route_sources: Default::default(),
            events: Mutex::new(Some(open_map(dir, map_names::EVENTS)?)),
            owners,
            local_addrs,
            intercept,
            listeners: Mutex::new(open_map(dir, map_names::LISTENERS)?),
            recent: Mutex::new(recent),
            tally: events::DenialTally::default(),
            _lock: lock,
        })
    }

    /// The bpffs folder holding the pins.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The cgroup2 directory the programs are attached to.
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The programs attached, and whether this agent attached or adopted each.
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// Replaces the kernel policy. Programs see the old policy or the new one, never a mix:
    /// the new one is written into the inactive generation, then the generation flips.
    pub fn apply_policy(&self, policy: &KernelPolicy) -> Result<PolicySummary, Error> {
        self.policy.lock().install(policy, &self.identities)
    }

    /// Replaces the bind guard's owners (a config reload).
    pub fn set_owners(
        &self,
        owners: &std::collections::BTreeMap<u16, PortOwner>,
    ) -> Result<(), Error> {
        self.owners.lock().set(owners)
    }

    /// The bind guard's owners, by port.
    pub fn owners(&self) -> std::collections::BTreeMap<u16, PortOwner> {
        self.owners.lock().configured().clone()
    }

    /// This node's addresses, as the connect hooks know them.
    pub fn node_addresses(&self) -> std::collections::BTreeSet<std::net::IpAddr> {
        self.local_addrs.lock().addresses().clone()
    }

    /// Puts `listener` (a vtguard listening socket) in charge of new connections to the
    /// intercepted port `port` of its family (`ipv6`; a dual-stack socket is given for both).
    pub fn intercept_with(
        &self,
        port: u16,
        ipv6: bool,
        listener: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        let slot = self
            .intercept
            .iter()
            .position(|p| *p == port)
            .ok_or(Error::Owner {
                port,
                detail: "is not intercepted by this agent's configuration".into(),
            })?;
        let slot = slot as u32
            + if ipv6 {
                vtguard_common::INTERCEPT_V6_SLOTS
            } else {
                0
            };
        self.listeners
            .lock()
            .set(slot, &listener, 0)
            .map_err(|source| Error::MapOp {
                name: map_names::LISTENERS,
                source,
            })
    }

    /// The configured owner of `port`.
    pub fn owner(&self, port: u16) -> Option<PortOwner> {
        self.owners.lock().owner(port).cloned()
    }

    /// Decision counters, summed over CPUs, in [`vtguard_common::Counter`] order.
    pub fn counters(&self) -> Result<[u64; COUNTER_SLOTS as usize], Error> {
        read_counters(&self.counters)
    }

    /// The number of recorded flows (connections made by registered sockets).
    pub fn flow_count(&self) -> usize {
        self.flows.lock().keys().filter(Result::is_ok).count()
    }

    /// The name of an identity id, as the kernel maps carry them.
    pub fn identity_name(&self, id: u32) -> Option<String> {
        self.identities.lock().name(id).map(str::to_owned)
    }
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("pin_dir", &self.pin_dir)
            .field("cgroup", &self.cgroup)
            .field("attachments", &self.attachments)
            .finish_non_exhaustive()
    }
}

/// Takes the pin folder's lock, or says which agent holds it.
fn lock_pin_dir(dir: &Path) -> Result<sys::DirLock, Error> {
    sys::DirLock::try_lock(dir)
        .map_err(|source| Error::Io {
            what: "locking pin folder",
            path: dir.to_owned(),
            source,
        })?
        .ok_or_else(|| Error::Busy {
            path: dir.to_owned(),
        })
}

fn open_map<T>(dir: &Path, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| Error::Map {
        name,
        path: path.clone(),
        source,
    })?;
    let map = Map::from_map_data(data).map_err(|source| Error::Map {
        name,
        path: path.clone(),
        source,
    })?;
    T::try_from(map).map_err(|source| Error::Map { name, path, source })
}

fn read_counters(m: &PerCpuArray<MapData, u64>) -> Result<[u64; COUNTER_SLOTS as usize], Error> {
    let mut out = [0u64; COUNTER_SLOTS as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        let per_cpu = m.get(&(i as u32), 0).map_err(|source| Error::MapOp {
            name: map_names::COUNTERS,
            source,
        })?;
        *slot = per_cpu.iter().sum();
    }
    Ok(out)
}

/// Refuses pinned maps of another layout (a vtguard of another version pinned them).
fn check_layout(dir: &Path) -> Result<(), Error> {
    let path = dir.join(map_names::META);
    if !path.exists() {
        return Ok(());
    }
    let meta: Array<MapData, u32> = open_map(dir, map_names::META)?;
    let found = meta.get(&0, 0).map_err(|source| Error::MapOp {
        name: map_names::META,
        source,
    })?;
    // 0: the maps were created but the agent died before it wrote the version.
    if found != LAYOUT_VERSION && found != 0 {
        return Err(Error::Layout {
            path: dir.to_owned(),
            found,
            expected: LAYOUT_VERSION,
        });
    }
    Ok(())
}

/// Attaches every program whose link is not pinned yet, adopts the others, then pins the new
/// links. If anything fails, the links made here are closed (which detaches them).
fn attach_all(ebpf: &mut Ebpf, dir: &Path, cgroup: &Path) -> Result<Vec<Attachment>, Error> {
    let cg = fs::File::open(cgroup).map_err(|source| Error::Io {
        what: "opening cgroup",
        path: cgroup.to_owned(),
        source,
    })?;
    let mut adopted = Vec::new();
    let mut fresh: Vec<(&'static str, OwnedFd)> = Vec::new();
    for (name, section) in PROGRAMS {
        let pin = link_pin(dir, name);
        if pin.exists() {
            match link_info(&pin) {
                Ok(a) if a.program_id != 0 => {
                    adopted.push(Attachment {
                        origin: Origin::Adopted,
                        ..a
                    });
                    continue;
                }
                Ok(_) => warn!(pin = %pin.display(), "pinned link was detached; attaching anew"),
                Err(e) => {
                    warn!(pin = %pin.display(), error = %e, "pinned link unusable; attaching anew")
                }
            }
            // Not a live link: replace it rather than run unprotected.
            let _ = fs::remove_file(&pin);
        }
        fresh.push((name, attach_one(ebpf, cg.as_fd(), name, section)?));
    }
    // Pin only once every program is attached, so that a failure above leaves nothing behind.
    let mut pinned_now: Vec<PathBuf> = Vec::new();
    for (name, link) in &fresh {
        let pin = link_pin(dir, name);
        if let Err(e) = sys::bpf_obj_pin(link.as_fd(), &pin) {
            for p in &pinned_now {
                let _ = fs::remove_file(p);
            }
            // `fresh` drops here: its links close and detach.
            return Err(Error::Pin {
                path: pin,
                detail: e.to_string(),
            });
        }
        pinned_now.push(pin);
    }
    let mut attachments = adopted;
    for (name, _) in &fresh {
        let pin = link_pin(dir, name);
        let a = link_info(&pin).map_err(|e| Error::Pin {
            path: pin,
            detail: e.to_string(),
        })?;
        attachments.push(Attachment {
            origin: Origin::Attached,
            ..a
        });
    }
    // Keep the attach order in reports.
    attachments.sort_by_key(|a| PROGRAMS.iter().position(|(n, _)| *n == a.program));
    Ok(attachments)
}

/// Reads a pinned link's ids.
fn link_info(pin: &Path) -> Result<Attachment, aya::programs::links::LinkError> {
    let link = FdLink::from(PinnedLink::from_pin(pin)?);
    let info = link.info()?;
    let name = pin
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("link_"))
        .and_then(|n| {
            PROGRAMS
                .iter()
                .map(|(p, _)| *p)
                .chain([prog_names::LOOKUP])
                .find(|p| *p == n)
        })
        .unwrap_or("unknown");
    Ok(Attachment {
        program: name,
        origin: Origin::Adopted,
        link_id: info.id(),
        program_id: info.program_id(),
    })
}

fn attach_one(
    ebpf: &mut Ebpf,
    cg: BorrowedFd<'_>,
    name: &'static str,
    section: &'static str,
) -> Result<OwnedFd, Error> {
    use aya::programs::Program;
    let refused = |detail: String| Error::Program {
        name,
        section,
        detail,
    };
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| refused("not in the embedded eBPF object".into()))?;
    let (fd, attach_type) = match prog {
        Program::CgroupSockAddr(p) => {
            p.load().map_err(|e| refused(program_error(&e)))?;
            let t = match name {
                prog_names::CONNECT4 => sys::attach_type::CGROUP_INET4_CONNECT,
                prog_names::CONNECT6 => sys::attach_type::CGROUP_INET6_CONNECT,
                prog_names::BIND4 => sys::attach_type::CGROUP_INET4_BIND,
                _ => sys::attach_type::CGROUP_INET6_BIND,
            };
            (p.fd().map_err(|e| refused(program_error(&e)))?.as_fd(), t)
        }
        Program::CgroupSkb(p) => {
            p.load().map_err(|e| refused(program_error(&e)))?;
            (
                p.fd().map_err(|e| refused(program_error(&e)))?.as_fd(),
                sys::attach_type::CGROUP_INET_INGRESS,
            )
        }
        _ => return Err(refused("unexpected program type in the eBPF object".into())),
    };
    sys::bpf_link_create(fd, cg, attach_type).map_err(|e| refused(format!("attach failed: {e}")))
}

/// One line: the syscall error, and the verifier's last words when there are some.
fn program_error(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            tracing::debug!(verifier_log = %log, "verifier log");
            // The verifier ends with statistics; the reason is the line before them.
            let last = log
                .lines()
                .rev()
                .map(str::trim)
                .find(|l| {
                    !l.is_empty()
                        && !["processed ", "verification time", "stack depth"]
                            .iter()
                            .any(|p| l.starts_with(p))
                })
                .unwrap_or("");
            if last.is_empty() {
                format!("load failed: {io_error}")
            } else {
                format!("load failed: {io_error} (verifier: {})", last.trim())
            }
        }
        other => crate::telemetry::chain_line(other),
    }
}

/// Writes which ports are intercepted, each with its LISTENERS slot (their order in
/// `ports`); clears the rest. Until a listener puts its socket in its slot, a new connection to
/// an intercepted port finds none and is refused.
fn write_intercept(dir: &Path, ports: &[u16]) -> Result<(), Error> {
    let mut map: Array<MapData, u32> = open_map(dir, map_names::INTERCEPT)?;
    let op = |source| Error::MapOp {
        name: map_names::INTERCEPT,
        source,
    };
    for (slot, port) in ports.iter().enumerate() {
        map.set(u32::from(*port), slot as u32 + 1, 0).map_err(op)?;
    }
    for port in 0..=u16::MAX {
        if !ports.contains(&port) && matches!(map.get(&u32::from(port), 0), Ok(v) if v != 0) {
            map.set(u32::from(port), 0, 0).map_err(op)?;
        }
    }
    Ok(())
}

/// Attaches the lookup program to this network namespace when `wanted` (or adopts its pinned
/// link); when not wanted, removes a link an earlier configuration left.
fn attach_lookup(ebpf: &mut Ebpf, dir: &Path, wanted: bool) -> Result<Option<Attachment>, Error> {
    use aya::programs::Program;
    let pin = link_pin(dir, prog_names::LOOKUP);
    if !wanted {
        if pin.exists() {
            info!("no listener intercepts: detaching the lookup program");
            let _ = fs::remove_file(&pin);
        }
        return Ok(None);
    }
    if pin.exists() {
        if let Ok(a) = link_info(&pin) {
            return Ok(Some(Attachment {
                origin: Origin::Adopted,
                ..a
            }));
        }
        let _ = fs::remove_file(&pin);
    }
    let refused = |detail: String| Error::Program {
        name: prog_names::LOOKUP,
        section: "sk_lookup",
        detail,
    };
    let netns = fs::File::open("/proc/self/ns/net").map_err(|source| Error::Io {
        what: "opening network namespace",
        path: "/proc/self/ns/net".into(),
        source,
    })?;
    let Some(Program::SkLookup(p)) = ebpf.program_mut(prog_names::LOOKUP) else {
        return Err(refused("not in the embedded eBPF object".into()));
    };
    p.load().map_err(|e| refused(program_error(&e)))?;
    let fd = p.fd().map_err(|e| refused(program_error(&e)))?;
    let link = sys::bpf_link_create(fd.as_fd(), netns.as_fd(), sys::attach_type::SK_LOOKUP)
        .map_err(|e| refused(format!("attach failed: {e}")))?;
    sys::bpf_obj_pin(link.as_fd(), &pin).map_err(|e| Error::Pin {
        path: pin.clone(),
        detail: e.to_string(),
    })?;
    let a = link_info(&pin).map_err(|e| Error::Pin {
        path: pin,
        detail: e.to_string(),
    })?;
    Ok(Some(Attachment {
        origin: Origin::Attached,
        ..a
    }))
}

/// Keeps the OWNERS map current while owner cgroups come and go: woken by inotify on each
/// owner cgroup's nearest existing ancestor, and once a second in any case. Ends when the
/// kernel handle is dropped.
fn owner_watch(owners: std::sync::Weak<Mutex<owner::Owners>>) {
    let spawned = std::thread::Builder::new()
        .name("vtguard-owners".into())
        .spawn(move || {
            use inotify::{Inotify, WatchMask};
            use std::os::fd::AsRawFd;
            let mut inotify = match Inotify::init() {
                Ok(i) => Some(i),
                Err(e) => {
                    warn!(error = %e, "inotify unavailable: owner cgroups are looked at once a second");
                    None
                }
            };
            let mut watched: Vec<PathBuf> = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                let Some(owners) = owners.upgrade() else { return };
                let paths = {
                    let mut o = owners.lock();
                    if let Err(e) = o.refresh() {
                        warn!(error = %e, "updating the bind guard's owners");
                    }
                    o.watch_paths()
                };
                drop(owners);
                if let Some(i) = inotify.as_mut() {
                    for p in paths {
                        if watched.contains(&p) {
                            continue;
                        }
                        let mask = WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_TO;
                        if i.watches().add(&p, mask).is_ok() {
                            watched.push(p);
                        }
                    }
                    let mut pfd = libc::pollfd {
                        fd: i.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd, for the inotify descriptor this thread owns.
                    if unsafe { libc::poll(&mut pfd, 1, 1000) } > 0 {
                        // Only the wake-up matters: everything is looked at again above.
                        while i.read_events(&mut buf).is_ok_and(|mut ev| ev.next().is_some()) {}
                    }
                } else {
                    std::thread::sleep(std::time::Duration::from_secs(1));
                }
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "could not start the owner cgroup watch: owners are written only at start and reload");
    }
}

/// Removes every pin in `dir` and the folder itself (best effort).
fn remove_pins(dir: &Path) {
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let _ = fs::remove_file(e.path());
        }
    }
    let _ = fs::remove_dir(dir);
}
