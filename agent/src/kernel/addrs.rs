//! This node's addresses, kept in the pinned LOCAL_ADDRS map: the connect hooks police a
//! protected port only when the destination is an address of this node (or loopback, or the
//! unspecified address); the same port on another host is that node's business.
//!
//! Kept current from rtnetlink: the agent subscribes to address changes (IPv4 and IPv6) before
//! it lists the addresses, and lists them again on every change, so an address that comes
//! while the agent runs is policed from the moment the kernel announces it. While the agent
//! is down the map keeps the last list: an address added meanwhile is not policed at connect(),
//! but the ingress filter still drops every packet to a protected port outside vtguard's own
//! flows, so nothing reaches the service through it.

use std::{
    collections::BTreeSet,
    io,
    net::IpAddr,
    path::Path,
    sync::{Arc, Weak},
};

use aya::maps::{HashMap, MapData};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr as NlAddr};
use parking_lot::Mutex;
use tracing::{info, warn};
use vtguard_common::maps as map_names;

use super::{socket::words, Error};

/// `RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR`.
const ADDRESS_GROUPS: u32 = 0x10 | 0x100;

/// The LOCAL_ADDRS map and what it holds.
pub(super) struct LocalAddrs {
    map: HashMap<MapData, [u32; 4], u32>,
    written: BTreeSet<IpAddr>,
}

impl LocalAddrs {
    pub(super) fn open(dir: &Path) -> Result<Self, Error> {
        Ok(Self {
            map: super::open_map(dir, map_names::LOCAL_ADDRS)?,
            written: BTreeSet::new(),
        })
    }

    /// Makes the map hold exactly `addrs` (entries a previous agent left included).
    pub(super) fn sync(&mut self, addrs: &BTreeSet<IpAddr>) -> Result<(), Error> {
        let op = |source| Error::MapOp {
            name: map_names::LOCAL_ADDRS,
            source,
        };
        // Add first, then remove: an address present in both lists is never missing.
        for a in addrs.difference(&self.written) {
            self.map.insert(words(*a), 1, 0).map_err(op)?;
        }
        let wanted: BTreeSet<[u32; 4]> = addrs.iter().map(|a| words(*a)).collect();
        let stale: Vec<[u32; 4]> = self
            .map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for k in stale {
            let _ = self.map.remove(&k);
        }
        if !self.written.is_empty() && &self.written != addrs {
            info!(addresses = ?addrs, "this node's addresses changed: protected endpoints follow");
        }
        self.written = addrs.clone();
        Ok(())
    }

    pub(super) fn addresses(&self) -> &BTreeSet<IpAddr> {
        &self.written
    }
}

/// An rtnetlink socket subscribed to address changes.
pub(super) struct AddressEvents {
    socket: Socket,
}

impl AddressEvents {
    /// Subscribes; list the addresses only after this, so that no change is missed.
    pub(super) fn subscribe() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind(&NlAddr::new(0, ADDRESS_GROUPS))?;
        Ok(Self { socket })
    }

    /// Waits up to a second for the kernel to announce address changes: `Ok(true)` when it
    /// did (everything queued is read: one relisting covers them all).
    fn wait(&self) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.socket.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a socket this struct owns.
        let ready = unsafe { libc::poll(&mut pfd, 1, 1000) };
        if ready < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            };
        }
        if ready == 0 {
            return Ok(false);
        }
        let mut buf = vec![0u8; 64 * 1024];
        self.socket.set_non_blocking(true)?;
        // ENOBUFS (changes lost to a full queue) also calls for a relisting.
        while self.socket.recv(&mut &mut buf[..], 0).is_ok() {}
        Ok(true)
    }
}

/// Every address of this network namespace's interfaces (both families).
pub fn node_addresses() -> io::Result<BTreeSet<IpAddr>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&NlAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    let mut packet = NetlinkMessage::new(
        header,
        RouteNetlinkMessage::GetAddress(AddressMessage::default()).into(),
    );
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut out = BTreeSet::new();
    let mut rx = vec![0u8; 64 * 1024];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut offset = 0;
        while offset < n {
            let msg = <NetlinkMessage<RouteNetlinkMessage>>::deserialize(&rx[offset..n])
                .map_err(|e| io::Error::other(format!("rtnetlink reply: {e}")))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewAddress(m)) => {
                    // IFA_LOCAL is the address itself; IFA_ADDRESS is the peer's on a
                    // point-to-point link and the same as IFA_LOCAL otherwise. IPv6 has only
                    // IFA_ADDRESS.
                    let local = m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Local(ip) => Some(*ip),
                        _ => None,
                    });
                    let address = m.attributes.iter().find_map(|a| match a {
                        AddressAttribute::Address(ip) => Some(*ip),
                        _ => None,
                    });
                    if let Some(ip) = local.or(address) {
                        out.insert(ip);
                    }
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => {
                    return Err(io::Error::other(format!("rtnetlink: {e}")))
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

/// Keeps `addrs` equal to this node's addresses until the kernel handle is dropped.
pub(super) fn watch(events: AddressEvents, addrs: Weak<Mutex<LocalAddrs>>) {
    let spawned = std::thread::Builder::new()
        .name("vtguard-addrs".into())
        .spawn(move || loop {
            let changed = match events.wait() {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "rtnetlink: address changes are no longer followed");
                    return;
                }
            };
            let Some(addrs) = addrs.upgrade() else { return };
            if !changed {
                continue;
            }
            match node_addresses() {
                Ok(list) => {
                    if let Err(e) = addrs.lock().sync(&list) {
                        warn!(error = %e, "updating this node's addresses in the kernel");
                    }
                }
                Err(e) => warn!(error = %e, "listing this node's addresses"),
            }
        });
    if let Err(e) = spawned {
        warn!(error = %e, "could not follow address changes: the node's addresses are those at start");
    }
}

/// Starts the map and its watch: subscribe, list, write, then follow.
pub(super) fn start(dir: &Path) -> Result<Arc<Mutex<LocalAddrs>>, Error> {
    let mut local = LocalAddrs::open(dir)?;
    let events = AddressEvents::subscribe().map_err(Error::Socket)?;
    let list = node_addresses().map_err(Error::Socket)?;
    local.sync(&list)?;
    let local = Arc::new(Mutex::new(local));
    watch(events, Arc::downgrade(&local));
    Ok(local)
}
