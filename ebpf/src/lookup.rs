//! sk_lookup on the node's network namespace: transparent interception. Every new TCP
//! connection to an intercepted port on an address of this namespace is handed to vtguard's
//! listening socket for that port (held in the SOCKMAP), wherever it comes from — except the
//! connections vtguard itself opened to the service (recorded flows), which the normal lookup
//! delivers to the real service. With no vtguard socket in the map the connection is refused
//! (the client gets a reset): fail closed, never the plaintext service.

use aya_ebpf::{macros::sk_lookup, programs::SkLookupContext};
use vtguard_common::{v4_mapped, Counter, FlowKey, FlowValue, INTERCEPT_V6_SLOTS};

use crate::policy::{count, intercept_slot, FLOWS, INTERCEPTED, LISTENERS};

/// Let the normal lookup (or the socket assigned here) take the connection.
const SK_PASS: u32 = 1;
/// Refuse the connection.
const SK_DROP: u32 = 0;
const AF_INET: u32 = 2;
const IPPROTO_TCP: u32 = 6;

#[sk_lookup]
pub fn vtg_lookup(ctx: SkLookupContext) -> u32 {
    let l = ctx.lookup;
    // Each field is read with its own load at a constant offset from the context: the
    // verifier refuses a context pointer moved by an offset and then dereferenced.
    macro_rules! field {
        ($($f:tt)+) => {
            unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*l).$($f)+)) }
        };
    }
    if field!(protocol) != IPPROTO_TCP {
        return SK_PASS;
    }
    // local_port is in host byte order; remote_port in network byte order.
    let port = field!(local_port) as u16;
    let Some(slot) = intercept_slot(port) else {
        return SK_PASS;
    };
    // Every address field is read whatever the family: loads in both branches of a family
    // test get merged by the compiler into one load at a computed offset, which the verifier
    // refuses on a context.
    let family = field!(family);
    let remote4 = field!(remote_ip4);
    let local4 = field!(local_ip4);
    let remote6 = [
        field!(remote_ip6[0]),
        field!(remote_ip6[1]),
        field!(remote_ip6[2]),
        field!(remote_ip6[3]),
    ];
    let local6 = [
        field!(local_ip6[0]),
        field!(local_ip6[1]),
        field!(local_ip6[2]),
        field!(local_ip6[3]),
    ];
    let (saddr, daddr) = if family == AF_INET {
        (v4_mapped(remote4), v4_mapped(local4))
    } else {
        (remote6, local6)
    };
    let remote_port = field!(remote_port);
    let key = FlowKey {
        saddr,
        daddr,
        sport: u16::from_be(remote_port),
        dport: port,
    };
    // vtguard's own connection to the service: the real listener takes it.
    if FLOWS.get_ptr(key).is_some() {
        count(Counter::LookupPassedFlow);
        return SK_PASS;
    }
    // A socket takes connections of its own family only (a dual-stack one sits in both).
    let slot = if family == AF_INET {
        slot
    } else {
        slot + INTERCEPT_V6_SLOTS
    };
    match LISTENERS.redirect_sk_lookup(&ctx, slot, 0) {
        Ok(()) => {
            // Its packets reach vtguard's socket on a protected port: the ingress filter
            // admits this connection's packets by this record.
            let _ = INTERCEPTED.insert(
                key,
                FlowValue {
                    cookie: 0,
                    identity: 0,
                    _pad: 0,
                    expires_ns: 0,
                },
                0,
            );
            count(Counter::LookupIntercepted);
            SK_PASS
        }
        Err(_) => {
            count(Counter::LookupRefused);
            SK_DROP
        }
    }
}
