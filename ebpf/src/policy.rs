//! The maps that hold policy, and the lookups every program shares.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, SockMap},
};
use vtguard_common::{
    protected_slot, AccessKey, Counter, DenyEvent, FlowKey, FlowValue, PortOwner, SocketEntry,
    COUNTER_SLOTS, MAX_ACCESS, MAX_FLOWS, MAX_INTERCEPTED, MAX_INTERCEPT_LISTENERS,
    MAX_LOCAL_ADDRS, MAX_OWNERS, MAX_SOCKETS, PROTECTED_SLOTS, RECENT_SLOTS,
};

#[map(name = "VTG_POLICY_GEN")]
static POLICY_GEN: Array<u32> = Array::pinned(1, 0);

#[map(name = "VTG_PROTECTED")]
static PROTECTED: Array<u32> = Array::pinned(PROTECTED_SLOTS, 0);

#[map(name = "VTG_ACCESS")]
static ACCESS: HashMap<AccessKey, u32> = HashMap::pinned(MAX_ACCESS, 0);

#[map(name = "VTG_SOCKETS")]
static SOCKETS: HashMap<u64, SocketEntry> = HashMap::pinned(MAX_SOCKETS, 0);

#[map(name = "VTG_FLOWS")]
pub static FLOWS: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(MAX_FLOWS, 0);

#[map(name = "VTG_COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_SLOTS, 0);

/// Layout version of these maps, written by the agent (the programs never read it).
#[map(name = "VTG_META")]
static META: Array<u32> = Array::pinned(1, 0);

/// The last denials, written by the agent for `vtguard kernel status` (never read here).
#[map(name = "VTG_RECENT")]
static RECENT: Array<DenyEvent> = Array::pinned(RECENT_SLOTS, 0);

#[map(name = "VTG_OWNERS")]
static OWNERS: HashMap<u32, PortOwner> = HashMap::pinned(MAX_OWNERS, 0);

#[map(name = "VTG_LOCAL_ADDRS")]
static LOCAL_ADDRS: HashMap<[u32; 4], u32> = HashMap::pinned(MAX_LOCAL_ADDRS, 0);

#[map(name = "VTG_INTERCEPT")]
static INTERCEPT: Array<u32> = Array::pinned(65_536, 0);

#[map(name = "VTG_LISTENERS")]
pub static LISTENERS: SockMap = SockMap::pinned(MAX_INTERCEPT_LISTENERS, 0);

#[map(name = "VTG_INTERCEPTED")]
pub static INTERCEPTED: LruHashMap<FlowKey, FlowValue> = LruHashMap::pinned(MAX_INTERCEPTED, 0);

/// The active policy generation (0 or 1).
#[inline(always)]
pub fn generation() -> u32 {
    match POLICY_GEN.get(0) {
        Some(g) => *g,
        None => 0,
    }
}

/// Whether `port` is protected in generation `generation`.
#[inline(always)]
pub fn is_protected(generation: u32, port: u16) -> bool {
    matches!(PROTECTED.get(protected_slot(generation, port)), Some(v) if *v != 0)
}

/// Whether `identity` may reach `port` in generation `generation`.
#[inline(always)]
pub fn may_reach(generation: u32, identity: u32, port: u16) -> bool {
    let key = AccessKey {
        generation,
        identity,
        port,
        _pad: [0; 3],
    };
    ACCESS.get_ptr(key).is_some()
}

/// The identity a socket was registered under, if it was.
#[inline(always)]
pub fn registered_identity(cookie: u64) -> Option<u32> {
    SOCKETS.get_ptr(cookie).map(|e| unsafe { (*e).identity })
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter as u32) {
        unsafe { *p += 1 };
    }
}

/// Who may bind `port`, when the agent was told.
#[inline(always)]
pub fn owner(port: u16) -> Option<PortOwner> {
    OWNERS.get_ptr(port as u32).map(|o| unsafe { *o })
}

/// Whether `addr` (IPv4 mapped) is an address of this node: loopback, unspecified, or one the
/// agent listed from rtnetlink.
#[inline(always)]
pub fn is_local(addr: [u32; 4]) -> bool {
    let mapped = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    if addr[0] == 0 && addr[1] == 0 {
        if addr[2] == mapped {
            // 127.0.0.0/8 and 0.0.0.0
            let first = addr[3].to_ne_bytes()[0];
            if first == 127 || addr[3] == 0 {
                return true;
            }
        } else if addr[2] == 0 && (addr[3] == 0 || addr[3] == u32::from_ne_bytes([0, 0, 0, 1])) {
            // :: and ::1
            return true;
        }
    }
    LOCAL_ADDRS.get_ptr(addr).is_some()
}

/// The LISTENERS slot of the vtguard listener that intercepts `port`, if one does.
#[inline(always)]
pub fn intercept_slot(port: u16) -> Option<u32> {
    match INTERCEPT.get(port as u32) {
        Some(v) if *v != 0 => Some(*v - 1),
        _ => None,
    }
}
