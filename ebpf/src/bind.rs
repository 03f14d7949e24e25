//! cgroup/bind4 and cgroup/bind6: the bind guard. A protected port that has a configured owner
//! can be bound only by a task of that owner (its cgroup or below, and/or its uid); every other
//! bind() gets EPERM. While the real service is down or restarting, nobody else can stand up a
//! listener on its port for vtguard to connect to.

use aya_ebpf::{
    helpers::{
        bpf_get_current_uid_gid,
        generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_socket_cookie},
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use core::ffi::c_void;
use vtguard_common::{v4_mapped, Counter, DenyReason, ANY_UID, HOOK_BIND4, HOOK_BIND6};

use crate::{
    event::{emit, Denial},
    policy::{count, generation, is_protected, owner},
};

const ALLOW: i32 = 1;
/// The kernel turns 0 into EPERM for the caller.
const DENY: i32 = 0;

#[cgroup_sock_addr(bind4)]
pub fn vtg_bind4(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    let addr = v4_mapped(sa.user_ip4);
    verdict(&ctx, HOOK_BIND4, sa.user_port, addr)
}

#[cgroup_sock_addr(bind6)]
pub fn vtg_bind6(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    // [::] (which also takes IPv4 unless IPV6_V6ONLY) and IPv4-mapped addresses arrive here:
    // the port decides, whatever the address.
    let addr = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    verdict(&ctx, HOOK_BIND6, sa.user_port, addr)
}

#[inline(always)]
fn verdict(ctx: &SockAddrContext, hook: u32, user_port: u32, addr: [u32; 4]) -> i32 {
    // user_port holds the port in network byte order in its low 16 bits. Port 0 asks the
    // kernel for an ephemeral port, which is never a protected one (see the README).
    let port = u16::from_be(user_port as u16);
    if port == 0 || !is_protected(generation(), port) {
        return ALLOW;
    }
    // No owner configured for this port: the guard is off for it (the agent warns).
    let Some(o) = owner(port) else {
        return ALLOW;
    };
    let uid_ok = o.uid == ANY_UID || bpf_get_current_uid_gid() as u32 == o.uid;
    let cgroup_ok = o.cgroup_id == 0
        || unsafe { bpf_get_current_ancestor_cgroup_id(o.cgroup_level as i32) } == o.cgroup_id;
    if uid_ok && cgroup_ok {
        count(Counter::BindAllowed);
        return ALLOW;
    }
    count(Counter::BindDenied);
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    emit(&Denial {
        reason: DenyReason::NotOwner,
        hook,
        cookie,
        identity: 0,
        dport: port,
        daddr: addr,
        sport: 0,
        saddr: [0; 4],
        task_context: true,
    });
    DENY
}
