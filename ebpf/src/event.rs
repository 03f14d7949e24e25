//! Denial events, read by the agent from a ring buffer.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_ktime_get_ns,
    },
    macros::map,
    maps::RingBuf,
};
use vtguard_common::{Counter, DenyEvent, DenyReason, EVENTS_BYTES};

use crate::policy::count;

#[map(name = "VTG_EVENTS")]
static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// What the hook knows about the refused attempt.
pub struct Denial {
    pub reason: DenyReason,
    pub hook: u32,
    pub cookie: u64,
    pub identity: u32,
    pub dport: u16,
    pub daddr: [u32; 4],
    pub sport: u16,
    pub saddr: [u32; 4],
    /// Whether the current task is the one responsible (connect hooks), so that pid, uid,
    /// comm and cgroup describe it; in softirq context (ingress) they would not.
    pub task_context: bool,
}

/// Writes `d` into the ring buffer, or counts it as lost when the buffer is full.
#[inline(always)]
pub fn emit(d: &Denial) {
    let Some(mut entry) = EVENTS.reserve::<DenyEvent>(0) else {
        count(Counter::EventsLost);
        return;
    };
    let mut ev = DenyEvent::zeroed();
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.cookie = d.cookie;
    ev.reason = d.reason as u32;
    ev.hook = d.hook;
    ev.identity = d.identity;
    ev.dport = d.dport;
    ev.daddr = d.daddr;
    ev.sport = d.sport;
    ev.saddr = d.saddr;
    if d.task_context {
        ev.pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        ev.uid = bpf_get_current_uid_gid() as u32;
        ev.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
        if let Ok(comm) = bpf_get_current_comm() {
            ev.comm = comm;
        }
    }
    entry.write(ev);
    entry.submit(0);
}
