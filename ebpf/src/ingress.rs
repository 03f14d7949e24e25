//! cgroup_skb/ingress: a packet to a protected port is admitted only when it belongs to a
//! connection a registered socket made. A connection from another host, or from anything
//! that went around connect(), never completes.

use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::cgroup_skb, programs::SkBuffContext};
use vtguard_common::{v4_mapped, Counter, DenyReason, FlowKey, HOOK_INGRESS};

use crate::{
    event::{emit, Denial},
    policy::{count, generation, is_protected, FLOWS, INTERCEPTED},
};

const PASS: i32 = 1;
const DROP: i32 = 0;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const IPPROTO_TCP: u8 = 6;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;
/// IPv6 extension headers followed before giving up (and dropping, for a protected port).
const MAX_EXT_HEADERS: usize = 6;

#[cgroup_skb(ingress)]
pub fn vtg_ingress(ctx: SkBuffContext) -> i32 {
    // The receiving socket's local port decides whether the port is protected; reading it
    // from the socket (not the packet) leaves no header trick to hide the port behind.
    let local_port = ctx.skb.local_port() as u16;
    let gen = generation();
    if !is_protected(gen, local_port) {
        return PASS;
    }
    match parse(&ctx) {
        Parsed::NotTcp => PASS,
        Parsed::Tcp { key, flags } => check_flow(key, flags, local_port),
        Parsed::Malformed => {
            count(Counter::IngressDeniedMalformed);
            deny(DenyReason::Malformed, local_port, [0; 4], 0, [0; 4]);
            DROP
        }
    }
}

#[inline(always)]
fn check_flow(key: FlowKey, flags: u8, local_port: u16) -> i32 {
    if key.dport == local_port {
        if let Some(v) = FLOWS.get_ptr(key) {
            let expires = unsafe { (*v).expires_ns };
            if expires == 0 || unsafe { bpf_ktime_get_ns() } < expires {
                count(Counter::IngressAllowed);
                return PASS;
            }
        }
        // A connection the lookup program handed to vtguard's own listener.
        if INTERCEPTED.get_ptr(key).is_some() {
            count(Counter::IngressAllowed);
            return PASS;
        }
    }
    count(Counter::IngressDeniedFlow);
    // One event per connection attempt (the SYN), not one per retransmitted packet.
    if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN {
        deny(
            DenyReason::UnknownFlow,
            key.dport,
            key.daddr,
            key.sport,
            key.saddr,
        );
    }
    DROP
}

#[inline(always)]
fn deny(reason: DenyReason, dport: u16, daddr: [u32; 4], sport: u16, saddr: [u32; 4]) {
    emit(&Denial {
        reason,
        hook: HOOK_INGRESS,
        cookie: 0,
        identity: 0,
        dport,
        daddr,
        sport,
        saddr,
        task_context: false,
    });
}

enum Parsed {
    NotTcp,
    Tcp { key: FlowKey, flags: u8 },
    Malformed,
}

/// Reads the addresses and ports of a packet (cgroup_skb data starts at the IP header). Each
/// header is read with one helper call: this runs for every packet to a protected port.
#[inline(always)]
fn parse(ctx: &SkBuffContext) -> Parsed {
    let proto = u16::from_be(ctx.skb.protocol() as u16);
    let (saddr, daddr, l4) = match proto {
        ETH_P_IP => {
            let Ok(h) = ctx.load::<[u8; 20]>(0) else {
                return Parsed::Malformed;
            };
            let ihl = ((h[0] & 0x0f) as usize) * 4;
            if h[0] >> 4 != 4 || ihl < 20 {
                return Parsed::Malformed;
            }
            if h[9] != IPPROTO_TCP {
                return Parsed::NotTcp;
            }
            let s = u32::from_ne_bytes([h[12], h[13], h[14], h[15]]);
            let d = u32::from_ne_bytes([h[16], h[17], h[18], h[19]]);
            (v4_mapped(s), v4_mapped(d), ihl)
        }
        ETH_P_IPV6 => {
            let Ok(h) = ctx.load::<[u32; 10]>(0) else {
                return Parsed::Malformed;
            };
            // Next header is byte 6 of the fixed header: the third byte of word 1.
            let nh = h[1].to_ne_bytes()[2];
            let s = [h[2], h[3], h[4], h[5]];
            let d = [h[6], h[7], h[8], h[9]];
            match ipv6_transport(ctx, nh) {
                Some((IPPROTO_TCP, off)) => (s, d, off),
                Some(_) => return Parsed::NotTcp,
                None => return Parsed::Malformed,
            }
        }
        _ => return Parsed::NotTcp,
    };
    // Ports (0..4) and flags (13) of the TCP header.
    let Ok(t) = ctx.load::<[u8; 14]>(l4) else {
        return Parsed::Malformed;
    };
    Parsed::Tcp {
        key: FlowKey {
            saddr,
            daddr,
            sport: u16::from_be_bytes([t[0], t[1]]),
            dport: u16::from_be_bytes([t[2], t[3]]),
        },
        flags: t[13],
    }
}

/// Follows the IPv6 extension header chain to the transport header: (protocol, offset).
#[inline(always)]
fn ipv6_transport(ctx: &SkBuffContext, first: u8) -> Option<(u8, usize)> {
    let mut nh = first;
    let mut off: usize = 40;
    for _ in 0..MAX_EXT_HEADERS {
        match nh {
            // hop-by-hop, routing, destination options: length in 8-octet units after the first
            0 | 43 | 60 => {
                let next = ctx.load::<u8>(off).ok()?;
                let len = ctx.load::<u8>(off + 1).ok()? as usize;
                off += (len + 1) * 8;
                nh = next;
            }
            // fragment header: fixed 8 octets
            44 => {
                nh = ctx.load::<u8>(off).ok()?;
                off += 8;
            }
            // authentication header: length in 4-octet units, minus 2
            51 => {
                let next = ctx.load::<u8>(off).ok()?;
                let len = ctx.load::<u8>(off + 1).ok()? as usize;
                off += (len + 2) * 4;
                nh = next;
            }
            _ => return Some((nh, off)),
        }
    }
    // Still inside extension headers: treat as unreadable.
    match nh {
        0 | 43 | 44 | 51 | 60 => None,
        _ => Some((nh, off)),
    }
}
