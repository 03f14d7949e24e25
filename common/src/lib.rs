//! Types shared by vtguard's kernel programs and its userspace loader.
//!
//! Every map key and value is `#[repr(C)]`, `Copy`, and spells out its padding so that the
//! layout the kernel programs see is exactly the layout the agent writes. Map and program
//! names live here too, so the loader and the programs cannot drift apart.
#![no_std]

/// Names of the maps in the eBPF object (and of their pins under the bpffs folder).
pub mod maps {
    /// `Array<u32>[1]`: which policy generation (0 or 1) is active.
    pub const POLICY_GEN: &str = "VTG_POLICY_GEN";
    /// `Array<u32>[PROTECTED_SLOTS]`: nonzero at `generation * 65536 + port` when only
    /// registered sockets may reach `port`. An array, not a hash: its lookup is a bounds check
    /// and an offset, and it runs on every connect() and every packet of the node.
    pub const PROTECTED: &str = "VTG_PROTECTED";
    /// `HashMap<AccessKey, u32>`: which identity may reach which protected port.
    pub const ACCESS: &str = "VTG_ACCESS";
    /// `HashMap<u64 cookie, SocketEntry>`: sockets vtguard opened for an identity.
    pub const SOCKETS: &str = "VTG_SOCKETS";
    /// `LruHashMap<FlowKey, FlowValue>`: connections made by registered sockets, written by
    /// the agent before it connects them.
    pub const FLOWS: &str = "VTG_FLOWS";
    /// `PerCpuArray<u64>[COUNTER_SLOTS]`: decision counters, see [`super::Counter`].
    pub const COUNTERS: &str = "VTG_COUNTERS";
    /// Ring buffer of [`super::DenyEvent`].
    pub const EVENTS: &str = "VTG_EVENTS";
    /// `Array<DenyEvent>[RECENT_SLOTS]`: the last denials, written by the agent so that
    /// `vtguard kernel status` can show them without the agent.
    pub const RECENT: &str = "VTG_RECENT";
    /// `Array<u32>[1]`: layout version of these maps (see [`super::LAYOUT_VERSION`]).
    pub const META: &str = "VTG_META";
    /// `HashMap<u32 port, PortOwner>`: who may bind a protected port (the bind guard). A
    /// protected port without an entry may be bound by anyone.
    pub const OWNERS: &str = "VTG_OWNERS";
    /// `HashMap<[u32; 4] address, u32>`: this node's addresses (IPv4 mapped), kept from
    /// rtnetlink. connect() to a protected port is policed only towards these (and loopback).
    pub const LOCAL_ADDRS: &str = "VTG_LOCAL_ADDRS";
    /// `Array<u32>[65536]`: for an intercepted port, 1 + the [`LISTENERS`] slot of the
    /// vtguard listener that takes its new connections; 0 when not intercepted.
    pub const INTERCEPT: &str = "VTG_INTERCEPT";
    /// `SockMap[MAX_INTERCEPT_LISTENERS]`: vtguard's listening sockets for interception.
    pub const LISTENERS: &str = "VTG_LISTENERS";
    /// `LruHashMap<FlowKey, FlowValue>`: connections the lookup program handed to vtguard; the
    /// ingress filter admits their packets to vtguard's socket on the protected port.
    pub const INTERCEPTED: &str = "VTG_INTERCEPTED";

    /// Every map the agent pins, in a fixed order.
    pub const ALL: [&str; 14] = [
        POLICY_GEN,
        PROTECTED,
        ACCESS,
        SOCKETS,
        FLOWS,
        COUNTERS,
        EVENTS,
        RECENT,
        META,
        OWNERS,
        LOCAL_ADDRS,
        INTERCEPT,
        LISTENERS,
        INTERCEPTED,
    ];
}

/// Names of the programs in the eBPF object (and of their link pins).
pub mod programs {
    /// cgroup/connect4.
    pub const CONNECT4: &str = "vtg_connect4";
    /// cgroup/connect6.
    pub const CONNECT6: &str = "vtg_connect6";
    /// cgroup_skb/ingress: drops packets to a protected port outside recorded flows.
    pub const INGRESS: &str = "vtg_ingress";
    /// cgroup/bind4: only a protected port's owner may bind it.
    pub const BIND4: &str = "vtg_bind4";
    /// cgroup/bind6.
    pub const BIND6: &str = "vtg_bind6";

    /// Every program, in the order the agent attaches them: binds are guarded first (so no
    /// impostor takes a port meanwhile), then connect() is policed before packets are.
    pub const ALL: [&str; 5] = [BIND4, BIND6, CONNECT4, CONNECT6, INGRESS];
    /// sk_lookup on the node's network namespace (attached only when a listener intercepts):
    /// new connections to an intercepted port go to vtguard's listener.
    pub const LOOKUP: &str = "vtg_lookup";
}

/// Bumped whenever a key or value layout below changes; pinned maps of another layout are
/// not adopted.
pub const LAYOUT_VERSION: u32 = 4;

/// Slots of [`maps::PROTECTED`]: one per port, per generation.
pub const PROTECTED_SLOTS: u32 = 2 * 65_536;

/// The [`maps::PROTECTED`] slot of `port` in `generation`.
#[inline(always)]
pub const fn protected_slot(generation: u32, port: u16) -> u32 {
    (generation & 1) * 65_536 + port as u32
}
/// Capacity of [`maps::ACCESS`] (both generations together).
pub const MAX_ACCESS: u32 = 262_144;
/// Capacity of [`maps::SOCKETS`].
pub const MAX_SOCKETS: u32 = 131_072;
/// Capacity of [`maps::FLOWS`].
pub const MAX_FLOWS: u32 = 131_072;
/// Size of [`maps::EVENTS`] in bytes (a power of two, a multiple of the page size).
pub const EVENTS_BYTES: u32 = 256 * 1024;
/// Slots in [`maps::RECENT`].
pub const RECENT_SLOTS: u32 = 32;

/// How long a closed flow's record keeps admitting its packets (FIN/ACK stragglers), in ns.
pub const FLOW_LINGER_NS: u64 = 60_000_000_000;

/// Key of [`maps::ACCESS`]: identity `identity` may reach `port` in one generation.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AccessKey {
    pub generation: u32,
    pub identity: u32,
    pub port: u16,
    pub _pad: [u16; 3],
}

/// Value of [`maps::OWNERS`]: who may bind a protected port. Both conditions hold when both
/// are set.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortOwner {
    /// The owner's cgroup2 id (its directory's inode number): the binding task must be in
    /// that cgroup or below it. 0: any cgroup.
    pub cgroup_id: u64,
    /// Depth of that cgroup below the cgroup2 root (the root is 0), for
    /// `bpf_get_current_ancestor_cgroup_id`.
    pub cgroup_level: u32,
    /// The owner's uid (real uid of the binding task), or [`ANY_UID`].
    pub uid: u32,
}

/// Capacity of [`maps::LOCAL_ADDRS`].
pub const MAX_LOCAL_ADDRS: u32 = 4096;
/// Capacity of [`maps::LISTENERS`]: an IPv4 and an IPv6 socket for each of up to
/// [`INTERCEPT_V6_SLOTS`] intercepted ports (a socket takes only its own family's connections).
pub const MAX_INTERCEPT_LISTENERS: u32 = 64;
/// Where the IPv6 sockets start in [`maps::LISTENERS`]: slot `s` (IPv4) pairs with
/// `s + INTERCEPT_V6_SLOTS` (IPv6). Also the most ports one node intercepts.
pub const INTERCEPT_V6_SLOTS: u32 = 32;
/// Capacity of [`maps::INTERCEPTED`].
pub const MAX_INTERCEPTED: u32 = 131_072;

/// [`PortOwner::uid`] when any uid may bind.
pub const ANY_UID: u32 = u32::MAX;
/// Capacity of [`maps::OWNERS`].
pub const MAX_OWNERS: u32 = 1024;

/// Value of [`maps::SOCKETS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketEntry {
    /// The identity the socket was opened for (never 0).
    pub identity: u32,
    pub _pad: u32,
}

/// Key of [`maps::FLOWS`]: a TCP connection as the packets towards the protected port carry
/// it. IPv4 addresses are stored IPv4-mapped (`::ffff:a.b.c.d`), so a connection made from an
/// AF_INET6 socket to a mapped address and the IPv4 packets it sends have the same key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address, network byte order words.
    pub saddr: [u32; 4],
    /// Destination address, network byte order words.
    pub daddr: [u32; 4],
    /// Source port, host byte order.
    pub sport: u16,
    /// Destination (protected) port, host byte order.
    pub dport: u16,
}

/// Value of [`maps::FLOWS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowValue {
    pub cookie: u64,
    pub identity: u32,
    pub _pad: u32,
    /// 0 while the connection is open; after it closed, the monotonic time (ns) until which
    /// its stragglers are still admitted.
    pub expires_ns: u64,
}

/// Why the kernel refused something.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenyReason {
    /// connect() to a protected port from a socket vtguard did not register.
    Unregistered = 1,
    /// connect() from a registered socket whose identity may not reach that port.
    IdentityNotAllowed = 2,
    /// A packet to a protected port outside every connection vtguard made.
    UnknownFlow = 3,
    /// A packet to a protected port whose headers could not be read.
    Malformed = 4,
    /// bind() of a protected port by a task that is not the port's configured owner.
    NotOwner = 5,
}

impl DenyReason {
    /// Parses the raw value of [`DenyEvent::reason`].
    pub fn from_raw(raw: u32) -> Option<Self> {
        match raw {
            1 => Some(Self::Unregistered),
            2 => Some(Self::IdentityNotAllowed),
            3 => Some(Self::UnknownFlow),
            4 => Some(Self::Malformed),
            5 => Some(Self::NotOwner),
            _ => None,
        }
    }

    /// A stable snake_case name, used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unregistered => "unregistered_socket",
            Self::IdentityNotAllowed => "identity_not_allowed",
            Self::UnknownFlow => "unknown_flow",
            Self::Malformed => "malformed_packet",
            Self::NotOwner => "bind_not_owner",
        }
    }
}

/// Where a denial happened.
pub const HOOK_CONNECT4: u32 = 1;
/// See [`HOOK_CONNECT4`].
pub const HOOK_CONNECT6: u32 = 2;
/// See [`HOOK_CONNECT4`].
pub const HOOK_INGRESS: u32 = 3;
/// See [`HOOK_CONNECT4`].
pub const HOOK_BIND4: u32 = 4;
/// See [`HOOK_CONNECT4`].
pub const HOOK_BIND6: u32 = 5;

/// One denial, written by the kernel programs into [`maps::EVENTS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyEvent {
    /// Monotonic time (ns).
    pub ts_ns: u64,
    /// Socket cookie of the refused socket (0 for ingress, where the sender is remote).
    pub cookie: u64,
    /// cgroup id of the calling task (0 for ingress).
    pub cgroup_id: u64,
    /// Sequence number assigned by the agent when it stores the event in RECENT.
    pub seq: u64,
    /// Process id (tgid) of the caller (0 for ingress).
    pub pid: u32,
    /// Real uid of the caller (0 for ingress).
    pub uid: u32,
    /// [`DenyReason`] as u32.
    pub reason: u32,
    /// `HOOK_*`.
    pub hook: u32,
    /// Identity of a registered socket that was refused (0 otherwise).
    pub identity: u32,
    /// Destination port, host byte order.
    pub dport: u16,
    /// Source port (ingress only), host byte order.
    pub sport: u16,
    /// Destination address (IPv4-mapped for IPv4), network byte order words.
    pub daddr: [u32; 4],
    /// Source address (ingress only), same encoding.
    pub saddr: [u32; 4],
    /// The caller's command name, NUL padded.
    pub comm: [u8; 16],
}

impl DenyEvent {
    /// An all-zero event (the content of an empty RECENT slot).
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            cookie: 0,
            cgroup_id: 0,
            seq: 0,
            pid: 0,
            uid: 0,
            reason: 0,
            hook: 0,
            identity: 0,
            dport: 0,
            sport: 0,
            daddr: [0; 4],
            saddr: [0; 4],
            comm: [0; 16],
        }
    }
}

/// Slots of [`maps::COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// connect() to a protected port from a registered, allowed socket.
    ConnectAllowed = 0,
    /// connect() refused: socket not registered.
    ConnectDeniedUnregistered = 1,
    /// connect() refused: identity may not reach the port.
    ConnectDeniedIdentity = 2,
    /// Packets to a protected port admitted as part of a recorded flow.
    IngressAllowed = 3,
    /// Packets to a protected port dropped: no recorded flow.
    IngressDeniedFlow = 4,
    /// Packets to a protected port dropped: unreadable headers.
    IngressDeniedMalformed = 5,
    /// Events that did not fit in the ring buffer.
    EventsLost = 6,
    /// bind() of a protected port by its owner.
    BindAllowed = 7,
    /// bind() of a protected port refused: not its owner.
    BindDenied = 8,
    /// connect() to a protected port number on another host: not this node's business.
    ConnectOtherHost = 9,
    /// New connections to an intercepted port handed to vtguard's listener.
    LookupIntercepted = 10,
    /// New connections to an intercepted port that vtguard opened (recorded flows), left to
    /// the real service.
    LookupPassedFlow = 11,
    /// New connections to an intercepted port refused: no vtguard listener in the map.
    LookupRefused = 12,
}

/// Number of slots in [`maps::COUNTERS`].
pub const COUNTER_SLOTS: u32 = 13;

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; COUNTER_SLOTS as usize] = [
        Counter::ConnectAllowed,
        Counter::ConnectDeniedUnregistered,
        Counter::ConnectDeniedIdentity,
        Counter::IngressAllowed,
        Counter::IngressDeniedFlow,
        Counter::IngressDeniedMalformed,
        Counter::EventsLost,
        Counter::BindAllowed,
        Counter::BindDenied,
        Counter::ConnectOtherHost,
        Counter::LookupIntercepted,
        Counter::LookupPassedFlow,
        Counter::LookupRefused,
    ];

    /// A stable snake_case name, used in status output and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConnectAllowed => "connect_allowed",
            Self::ConnectDeniedUnregistered => "connect_denied_unregistered",
            Self::ConnectDeniedIdentity => "connect_denied_identity",
            Self::IngressAllowed => "ingress_allowed",
            Self::IngressDeniedFlow => "ingress_denied_unknown_flow",
            Self::IngressDeniedMalformed => "ingress_denied_malformed",
            Self::EventsLost => "events_lost",
            Self::BindAllowed => "bind_allowed",
            Self::BindDenied => "bind_denied_not_owner",
            Self::ConnectOtherHost => "connect_other_host",
            Self::LookupIntercepted => "lookup_intercepted",
            Self::LookupPassedFlow => "lookup_passed_own_flow",
            Self::LookupRefused => "lookup_refused_no_listener",
        }
    }
}

/// Maps an IPv4 address (network byte order u32) to the IPv4-mapped IPv6 form used in
/// [`FlowKey`] and [`DenyEvent`].
#[inline(always)]
pub const fn v4_mapped(addr_be: u32) -> [u32; 4] {
    [0, 0, u32::from_ne_bytes([0, 0, 0xff, 0xff]), addr_be]
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, and have no implicit padding (every hole is
    // an explicit `_pad` field), so any byte pattern is a valid value.
    unsafe impl aya::Pod for AccessKey {}
    unsafe impl aya::Pod for SocketEntry {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for DenyEvent {}
    unsafe impl aya::Pod for PortOwner {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<AccessKey>(), 16);
        assert_eq!(size_of::<SocketEntry>(), 8);
        assert_eq!(size_of::<FlowKey>(), 36);
        assert_eq!(size_of::<FlowValue>(), 24);
        assert_eq!(size_of::<PortOwner>(), 16);
        // 4*8 + 5*4 + 2*2 + 2*16 + 16 = 104
        assert_eq!(size_of::<DenyEvent>(), 104);
    }

    #[test]
    fn v4_mapped_is_the_ipv6_mapped_form() {
        let a = u32::from_ne_bytes([127, 0, 0, 1]);
        let words = v4_mapped(a);
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        assert_eq!(
            bytes,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]
        );
    }

    #[test]
    fn protected_slots_separate_generations() {
        assert_eq!(protected_slot(0, 16991), 16991);
        assert_eq!(protected_slot(1, 16991), 65_536 + 16991);
        assert_eq!(protected_slot(1, u16::MAX), PROTECTED_SLOTS - 1);
        assert_eq!(
            protected_slot(3, 0),
            65_536,
            "only the low bit is a generation"
        );
    }

    #[test]
    fn reasons_round_trip() {
        for r in [
            DenyReason::Unregistered,
            DenyReason::IdentityNotAllowed,
            DenyReason::UnknownFlow,
            DenyReason::Malformed,
        ] {
            assert_eq!(DenyReason::from_raw(r as u32), Some(r));
        }
        assert_eq!(DenyReason::from_raw(0), None);
    }
}
