//! sockops: when a registered socket starts a connection, record its 4-tuple, so that the
//! ingress filter can tell its packets from anyone else's.

use core::{ffi::c_void, ptr::read_volatile};

use aya_ebpf::{
    bindings::{
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        BPF_TCP_CLOSE,
    },
    helpers::{bpf_ktime_get_ns, generated::bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use vtguard_common::{v4_mapped, Counter, FlowKey, FlowValue, FLOW_LINGER_NS};

use crate::policy::{count, registered_identity, FLOWS};

const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;

#[sock_ops]
pub fn vtg_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_TCP_CONNECT_CB => on_connect(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => on_close(&ctx),
        _ => {}
    }
    // sockops return values only matter for the ops that ask a question; 1 = "no opinion".
    1
}

/// The flow as packets towards the remote (protected) port carry it.
///
/// Every context field is read with a volatile load at its own constant offset: LLVM would
/// otherwise merge the IPv4 and IPv6 branches into one load at a computed offset, which the
/// verifier refuses ("dereference of modified ctx ptr").
#[inline(always)]
fn flow_key(ctx: &SockOpsContext) -> Option<FlowKey> {
    let ops = ctx.ops;
    // All fields are read up front, straight-line, so that no branch shares a computed
    // address. SAFETY: ops is the context pointer the kernel passed; every read is of a
    // field of it.
    let (family, l4, r4, l6, r6, local_port, remote_port) = unsafe {
        (
            read_volatile(&(*ops).family),
            read_volatile(&(*ops).local_ip4),
            read_volatile(&(*ops).remote_ip4),
            [
                read_volatile(&(*ops).local_ip6[0]),
                read_volatile(&(*ops).local_ip6[1]),
                read_volatile(&(*ops).local_ip6[2]),
                read_volatile(&(*ops).local_ip6[3]),
            ],
            [
                read_volatile(&(*ops).remote_ip6[0]),
                read_volatile(&(*ops).remote_ip6[1]),
                read_volatile(&(*ops).remote_ip6[2]),
                read_volatile(&(*ops).remote_ip6[3]),
            ],
            read_volatile(&(*ops).local_port),
            read_volatile(&(*ops).remote_port),
        )
    };
    let (saddr, daddr) = match family {
        AF_INET => (v4_mapped(l4), v4_mapped(r4)),
        AF_INET6 => (l6, r6),
        _ => return None,
    };
    Some(FlowKey {
        saddr,
        daddr,
        // local_port is in host byte order; remote_port holds the network-order port in its
        // upper 16 bits (so ntohl gives the port).
        sport: local_port as u16,
        dport: u32::from_be(remote_port) as u16,
    })
}

#[inline(always)]
fn on_connect(ctx: &SockOpsContext) {
    let cookie = unsafe { bpf_get_socket_cookie(ctx.ops as *mut c_void) };
    let Some(identity) = registered_identity(cookie) else {
        return;
    };
    let Some(key) = flow_key(ctx) else {
        return;
    };
    let value = FlowValue {
        cookie,
        identity,
        _pad: 0,
        expires_ns: 0,
    };
    if FLOWS.insert(key, value, 0).is_ok() {
        count(Counter::FlowsRecorded);
        // Ask for state changes so that the record can expire once the connection closes.
        let _ = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

#[inline(always)]
fn on_close(ctx: &SockOpsContext) {
    let Some(key) = flow_key(ctx) else {
        return;
    };
    if let Some(v) = FLOWS.get_ptr_mut(key) {
        // Not deleted at once: the peer's last FIN/ACK may still be on its way.
        unsafe { (*v).expires_ns = bpf_ktime_get_ns() + FLOW_LINGER_NS };
    }
}
