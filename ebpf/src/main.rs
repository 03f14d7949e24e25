//! vtguard's kernel programs: only sockets vtguard registered may reach a protected port.
//!
//! - `connect` (cgroup/connect4, cgroup/connect6): connect() to a protected port needs a
//!   registered socket cookie whose identity may reach that port; otherwise EPERM.
//! - `ingress` (cgroup_skb/ingress): a packet to a protected port is admitted only as part of a
//!   flow the agent recorded (it binds a registered socket, records its 4-tuple, then
//!   connects), so a connection from another host (or a hand-made packet) never completes.
//!
//! - `bind` (cgroup/bind4, cgroup/bind6): only a protected port's configured owner (cgroup
//!   and/or uid) may bind it, so no impostor can listen there while the service is down.
//!
//! - `lookup` (sk_lookup on the node's network namespace, when a listener intercepts): new
//!   connections to an intercepted port go to vtguard's listening socket, except vtguard's own
//!   (recorded flows); with no vtguard socket they are refused.
//! - connect() is policed only towards this node's addresses (kept from rtnetlink): the same
//!   port on another host is that node's business.
//!
//! Every program reads the active policy generation once and looks up only that generation, so
//! a policy swap done by the agent is seen whole or not at all.
#![no_std]
#![no_main]

mod bind;
mod connect;
mod event;
mod ingress;
mod lookup;
mod policy;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Required by the kernel for programs that call GPL-only helpers (ring buffer, cookies).
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
