//! The bind guard: who may bind a protected port (`[[kernel.owner]]`), written into the pinned
//! OWNERS map that the bind4/bind6 programs read, kept current while the owner's cgroup comes
//! and goes, and checked again from userspace on every upstream connection (sock_diag: the
//! uid and cgroup of the socket listening where vtguard connected).
//!
//! A cgroup is matched by its kernel id (its directory's inode number). systemd and container
//! runtimes remove a unit's or container's cgroup when it stops and make a new one, with a new
//! id, when it starts; so the agent watches each owner cgroup's nearest existing ancestor with
//! inotify and rewrites the entry when the cgroup appears again. While an owner cgroup does not
//! exist, its port's entry holds an id no cgroup has: nobody can bind the port (fail closed).

use std::{
    collections::BTreeMap,
    fmt, fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::maps::{HashMap, MapData};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_sock_diag::{
    constants::{AF_INET, AF_INET6, IPPROTO_TCP},
    inet::{nlas::Nla, ExtensionFlags, InetRequest, SocketId, StateFlags},
    SockDiagMessage,
};
use vtguard_common::{maps as map_names, ANY_UID};

use super::Error;

/// Who may bind a protected port: a task in `cgroup` (or below it) and/or with real uid `uid`.
/// When both are set, both must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortOwner {
    /// A cgroup2 directory (absolute path), e.g. the systemd unit's
    /// `/sys/fs/cgroup/system.slice/vttablet.service` or a pod's cgroup.
    pub cgroup: Option<PathBuf>,
    pub uid: Option<u32>,
}

impl fmt::Display for PortOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.cgroup, self.uid) {
            (Some(c), Some(u)) => write!(f, "cgroup {} and uid {u}", c.display()),
            (Some(c), None) => write!(f, "cgroup {}", c.display()),
            (None, Some(u)) => write!(f, "uid {u}"),
            (None, None) => f.write_str("anyone"),
        }
    }
}

/// The id written for an owner cgroup that does not exist (now): no task's ancestor has it.
const NO_SUCH_CGROUP: u64 = u64::MAX;
/// `INET_DIAG_CGROUP_ID`: the socket's cgroup id (Linux 5.7+).
const INET_DIAG_CGROUP_ID: u16 = 21;
/// Directories looked at when asking whether a cgroup is below an owner cgroup.
const MAX_CGROUP_WALK: usize = 10_000;

/// The OWNERS map and what was written into it.
pub(super) struct Owners {
    map: HashMap<MapData, u32, vtguard_common::PortOwner>,
    /// The cgroup2 mount: cgroup levels count from it.
    cgroup_root: PathBuf,
    configured: BTreeMap<u16, PortOwner>,
    written: BTreeMap<u16, vtguard_common::PortOwner>,
}

impl Owners {
    pub(super) fn open(dir: &Path, cgroup_root: PathBuf) -> Result<Self, Error> {
        Ok(Self {
            map: super::open_map(dir, map_names::OWNERS)?,
            cgroup_root,
            configured: BTreeMap::new(),
            written: BTreeMap::new(),
        })
    }

    /// Makes `owners` the configured owners and writes them; entries of ports no longer
    /// configured (also those a previous agent left) are removed.
    pub(super) fn set(&mut self, owners: &BTreeMap<u16, PortOwner>) -> Result<(), Error> {
        for (port, o) in owners {
            if let Some(cg) = &o.cgroup {
                level(&self.cgroup_root, cg).map_err(|detail| Error::Owner {
                    port: *port,
                    detail,
                })?;
            }
        }
        self.configured = owners.clone();
        self.written.clear();
        let stale: Vec<u32> = self
            .map
            .keys()
            .filter_map(Result::ok)
            .filter(|p| u16::try_from(*p).map_or(true, |p| !owners.contains_key(&p)))
            .collect();
        for port in stale {
            self.map.remove(&port).map_err(|source| Error::MapOp {
                name: map_names::OWNERS,
                source,
            })?;
        }
        self.refresh().map(|_| ())
    }

    /// Re-resolves every owner cgroup and rewrites the entries whose id changed. Returns the
    /// ports rewritten.
    pub(super) fn refresh(&mut self) -> Result<Vec<u16>, Error> {
        let mut changed = Vec::new();
        for (port, o) in &self.configured {
            let value = self.value(o);
            if self.written.get(port) == Some(&value) {
                continue;
            }
            self.map
                .insert(u32::from(*port), value, 0)
                .map_err(|source| Error::MapOp {
                    name: map_names::OWNERS,
                    source,
                })?;
            if value.cgroup_id == NO_SUCH_CGROUP {
                tracing::warn!(port, owner = %o, "the owner cgroup does not exist (now): nobody may bind the port until it does");
            } else if self.written.contains_key(port) {
                tracing::info!(port, owner = %o, cgroup_id = value.cgroup_id, "owner cgroup (re)created: its tasks may bind the port");
            }
            self.written.insert(*port, value);
            changed.push(*port);
        }
        Ok(changed)
    }

    fn value(&self, o: &PortOwner) -> vtguard_common::PortOwner {
        let (cgroup_id, cgroup_level) = match &o.cgroup {
            None => (0, 0),
            Some(cg) => match (cgroup_id(cg), level(&self.cgroup_root, cg)) {
                (Ok(id), Ok(level)) => (id, level),
                _ => (NO_SUCH_CGROUP, 0),
            },
        };
        vtguard_common::PortOwner {
            cgroup_id,
            cgroup_level,
            uid: o.uid.unwrap_or(ANY_UID),
        }
    }

    /// The configured owner of `port`.
    pub(super) fn owner(&self, port: u16) -> Option<&PortOwner> {
        self.configured.get(&port)
    }

    /// What to watch for owner cgroups coming and going: the nearest existing ancestor of
    /// each (the cgroup itself too, when it exists, to see it removed and made again).
    pub(super) fn watch_paths(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for cg in self.configured.values().filter_map(|o| o.cgroup.as_ref()) {
            let mut p = cg.parent();
            while let Some(dir) = p {
                if dir.is_dir() {
                    out.push(dir.to_owned());
                    break;
                }
                p = dir.parent();
            }
        }
        out.sort();
        out.dedup();
        out
    }

    pub(super) fn configured(&self) -> &BTreeMap<u16, PortOwner> {
        &self.configured
    }
}

/// A cgroup2 directory's id: its inode number.
fn cgroup_id(path: &Path) -> io::Result<u64> {
    let m = fs::metadata(path)?;
    if !m.is_dir() {
        return Err(io::Error::other("not a directory"));
    }
    Ok(m.ino())
}

/// Depth of `cgroup` below the cgroup2 mount `root` (the root is 0).
fn level(root: &Path, cgroup: &Path) -> Result<u32, String> {
    let rel = cgroup.strip_prefix(root).map_err(|_| {
        format!(
            "cgroup {} is not under the cgroup2 mount {}: give a directory of that mount",
            cgroup.display(),
            root.display()
        )
    })?;
    let mut n = 0u32;
    for c in rel.components() {
        match c {
            std::path::Component::Normal(_) => n += 1,
            _ => {
                return Err(format!(
                    "cgroup {}: write the path without '.' or '..'",
                    cgroup.display()
                ))
            }
        }
    }
    Ok(n)
}

/// Whether cgroup id `id` is `owner` or a cgroup below it.
fn cgroup_within(owner: &Path, id: u64) -> bool {
    let mut stack = vec![owner.to_owned()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > MAX_CGROUP_WALK {
            return false;
        }
        let Ok(m) = fs::metadata(&dir) else { continue };
        if m.ino() == id {
            return true;
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    false
}

/// A socket listening on a protected port, as sock_diag reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListeningSocket {
    pub addr: SocketAddr,
    pub uid: u32,
    /// `None` on kernels older than 5.7.
    pub cgroup_id: Option<u64>,
}

/// Why an upstream connection was refused after connect(): whoever listens there is not the
/// port's owner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("upstream {upstream}: {detail}; its owner is {owner} ([[kernel.owner]] port {})", upstream.port())]
pub struct NotOwner {
    pub upstream: SocketAddr,
    pub owner: String,
    pub detail: String,
}

/// Checks that every socket listening where a connection to `upstream` can land belongs to
/// `owner`. Only addresses of this network namespace can be checked (sock_diag sees this
/// namespace's sockets); for another address the kernel's bind guard is the only check and
/// `Ok` is returned.
pub fn check_listeners(upstream: SocketAddr, owner: &PortOwner) -> Result<(), NotOwner> {
    let refuse = |detail: String| NotOwner {
        upstream,
        owner: owner.to_string(),
        detail,
    };
    let ip = unmap(upstream.ip());
    if !is_local(ip) {
        return Ok(());
    }
    let listeners = listening_sockets(upstream.port()).map_err(|e| {
        refuse(format!(
            "sock_diag could not list its listening sockets: {e}"
        ))
    })?;
    let candidates: Vec<&ListeningSocket> = listeners
        .iter()
        .filter(|l| covers(l.addr.ip(), ip))
        .collect();
    if candidates.is_empty() {
        return Err(refuse(
            "no listening socket is there to check (it closed meanwhile?)".into(),
        ));
    }
    for l in candidates {
        if let Some(uid) = owner.uid {
            if l.uid != uid {
                return Err(refuse(format!(
                    "the socket listening on {} belongs to uid {}",
                    l.addr, l.uid
                )));
            }
        }
        if let Some(cg) = &owner.cgroup {
            match l.cgroup_id {
                Some(id) if cgroup_within(cg, id) => {}
                Some(id) => {
                    return Err(refuse(format!(
                        "the socket listening on {} belongs to cgroup id {id}, not to {} or below",
                        l.addr,
                        cg.display()
                    )))
                }
                None => {
                    return Err(refuse(
                        "this kernel does not report a socket's cgroup (Linux 5.7+ does): use a uid owner".into(),
                    ))
                }
            }
        }
    }
    Ok(())
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a socket listening on `listen` receives connections to `dest`: the same address,
/// or a wildcard of the family ([::] also takes IPv4 unless IPV6_V6ONLY; counted as if it
/// did, which only ever adds sockets to check).
fn covers(listen: IpAddr, dest: IpAddr) -> bool {
    let listen = unmap(listen);
    listen == dest
        || listen == IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        || (dest.is_ipv4() && listen == IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Whether `ip` is an address of this network namespace.
fn is_local(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    local_addresses().is_ok_and(|a| a.contains(&ip))
}

fn local_addresses() -> io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says its real type.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: the family is AF_INET, so this is a sockaddr_in.
                let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: the family is AF_INET6, so this is a sockaddr_in6.
                let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The TCP sockets listening on `port` in this network namespace (both families).
pub fn listening_sockets(port: u16) -> io::Result<Vec<ListeningSocket>> {
    let mut out = Vec::new();
    for family in [AF_INET, AF_INET6] {
        out.extend(dump_listeners(family, port)?);
    }
    Ok(out)
}

fn dump_listeners(family: u8, port: u16) -> io::Result<Vec<ListeningSocket>> {
    use netlink_sys::{protocols::NETLINK_SOCK_DIAG, Socket, SocketAddr as NlAddr};
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    let mut socket_id = if family == AF_INET {
        SocketId::new_v4()
    } else {
        SocketId::new_v6()
    };
    // The kernel filters listening sockets by source port in a dump.
    socket_id.source_port = port;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        SockDiagMessage::InetRequest(InetRequest {
            family,
            protocol: IPPROTO_TCP,
            extensions: ExtensionFlags::empty(),
            states: StateFlags::LISTEN,
            socket_id,
        })
        .into(),
    );
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut out = Vec::new();
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let msg = <NetlinkMessage<SockDiagMessage>>::deserialize(&rx[offset..n])
                .map_err(|e| io::Error::other(format!("sock_diag reply: {e}")))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(SockDiagMessage::InetResponse(r)) => {
                    let id = &r.header.socket_id;
                    if id.source_port == port {
                        out.push(ListeningSocket {
                            addr: SocketAddr::new(id.source_address, id.source_port),
                            uid: r.header.uid,
                            cgroup_id: r.nlas.iter().find_map(cgroup_attr),
                        });
                    }
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("sock_diag: {e}")))
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            offset += len;
        }
    }
}

fn cgroup_attr(nla: &Nla) -> Option<u64> {
    use netlink_packet_core::Nla as _;
    match nla {
        Nla::Other(d) if d.kind() == INET_DIAG_CGROUP_ID && d.value_len() == 8 => {
            let mut v = [0u8; 8];
            d.emit_value(&mut v);
            Some(u64::from_ne_bytes(v))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_count_from_the_cgroup2_mount() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(level(root, root), Ok(0));
        assert_eq!(
            level(
                root,
                Path::new("/sys/fs/cgroup/system.slice/vttablet.service")
            ),
            Ok(2)
        );
        let e = level(root, Path::new("/tmp/x")).unwrap_err();
        assert!(
            e.contains("not under the cgroup2 mount /sys/fs/cgroup"),
            "{e}"
        );
        let e = level(root, Path::new("/sys/fs/cgroup/a/../b")).unwrap_err();
        assert!(e.contains("without '.' or '..'"), "{e}");
    }

    #[test]
    fn wildcards_cover_their_family() {
        let v4 = |s: &str| s.parse::<IpAddr>().unwrap();
        let lo = v4("127.0.0.1");
        assert!(covers(v4("127.0.0.1"), lo));
        assert!(covers(v4("0.0.0.0"), lo));
        assert!(covers(v4("::"), lo), "[::] takes IPv4 too unless V6ONLY");
        assert!(covers(v4("::ffff:127.0.0.1"), lo));
        assert!(!covers(v4("127.0.0.2"), lo));
        assert!(
            !covers(v4("0.0.0.0"), v4("::1")),
            "0.0.0.0 does not take IPv6"
        );
        assert!(covers(v4("::"), v4("::1")));
    }

    #[test]
    fn owners_read_as_a_phrase() {
        let o = PortOwner {
            cgroup: Some("/sys/fs/cgroup/system.slice/vttablet.service".into()),
            uid: Some(999),
        };
        assert_eq!(
            o.to_string(),
            "cgroup /sys/fs/cgroup/system.slice/vttablet.service and uid 999"
        );
    }

    #[test]
    fn sock_diag_lists_a_listener_with_its_uid() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let found = listening_sockets(port).unwrap();
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].addr, l.local_addr().unwrap());
        assert_eq!(found[0].uid, uid);
        let me = PortOwner {
            cgroup: None,
            uid: Some(uid),
        };
        assert_eq!(check_listeners(l.local_addr().unwrap(), &me), Ok(()));
        let other = PortOwner {
            cgroup: None,
            uid: Some(uid + 1),
        };
        let e = check_listeners(l.local_addr().unwrap(), &other).unwrap_err();
        assert!(
            e.to_string().contains(&format!(
                "belongs to uid {uid}; its owner is uid {}",
                uid + 1
            )),
            "{e}"
        );
    }
}
