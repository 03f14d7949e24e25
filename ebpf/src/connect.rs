//! cgroup/connect4 and cgroup/connect6: connect() to a protected port is allowed only for a
//! socket vtguard registered under an identity that may reach that port.

use core::ffi::c_void;

use aya_ebpf::{
    helpers::generated::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use vtguard_common::{v4_mapped, Counter, DenyReason, HOOK_CONNECT4, HOOK_CONNECT6};

use crate::{
    event::{emit, Denial},
    policy::{
        count, generation, intercept_slot, is_local, is_protected, may_reach, registered_identity,
    },
};

const ALLOW: i32 = 1;
const SOCK_DGRAM: u32 = 2;
/// The kernel turns 0 into EPERM for the caller.
const DENY: i32 = 0;

#[cgroup_sock_addr(connect4)]
pub fn vtg_connect4(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    let daddr = v4_mapped(sa.user_ip4);
    verdict(&ctx, HOOK_CONNECT4, sa.user_port, sa.type_, daddr)
}

#[cgroup_sock_addr(connect6)]
pub fn vtg_connect6(ctx: SockAddrContext) -> i32 {
    let sa = unsafe { &*ctx.sock_addr };
    // IPv4-mapped destinations (::ffff:a.b.c.d) arrive here too; the port decides, whatever
    // the address family, so they are policed like any other.
    let daddr = [
        sa.user_ip6[0],
        sa.user_ip6[1],
        sa.user_ip6[2],
        sa.user_ip6[3],
    ];
    verdict(&ctx, HOOK_CONNECT6, sa.user_port, sa.type_, daddr)
}

/// Every path ends in a deliberate verdict: unprotected ports are allowed, and a protected
/// port is allowed only on a positive match.
#[inline(always)]
fn verdict(
    ctx: &SockAddrContext,
    hook: u32,
    user_port: u32,
    sock_type: u32,
    daddr: [u32; 4],
) -> i32 {
    // user_port holds the port in network byte order in its low 16 bits.
    let port = u16::from_be(user_port as u16);
    let gen = generation();
    // Datagram sockets cannot reach a TCP service; connecting one only sets its default
    // destination (the agent uses that to ask the kernel for a route's source address).
    // Every other type (TCP, MPTCP, raw, ...) is policed.
    if !is_protected(gen, port) || sock_type == SOCK_DGRAM {
        return ALLOW;
    }
    // Protected endpoints are this node's: the same port on another host is that node's
    // business (its own vtguard).
    if !is_local(daddr) {
        count(Counter::ConnectOtherHost);
        return ALLOW;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.sock_addr as *mut c_void) };
    let (reason, identity) = match registered_identity(cookie) {
        Some(identity) if may_reach(gen, identity, port) => {
            count(Counter::ConnectAllowed);
            return ALLOW;
        }
        Some(identity) => {
            count(Counter::ConnectDeniedIdentity);
            (DenyReason::IdentityNotAllowed, identity)
        }
        // An intercepted port: the lookup program hands the connection to vtguard's listener,
        // which asks for a certificate like any other caller's.
        None if intercept_slot(port).is_some() => {
            count(Counter::ConnectAllowed);
            return ALLOW;
        }
        None => {
            count(Counter::ConnectDeniedUnregistered);
            (DenyReason::Unregistered, 0)
        }
    };
    emit(&Denial {
        reason,
        hook,
        cookie,
        identity,
        dport: port,
        daddr,
        sport: 0,
        saddr: [0; 4],
        task_context: true,
    });
    DENY
}
