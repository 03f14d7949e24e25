//! Denial events: read from the kernel's ring buffer, logged, counted, and kept in the pinned
//! RECENT map so that `vtguard kernel status` can show the last ones.

use std::{
    borrow::Cow,
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};
use serde::{Deserialize, Serialize};
use tokio::io::unix::AsyncFd;
use tracing::warn;
use vtguard_common::{
    DenyEvent, DenyReason, HOOK_BIND4, HOOK_BIND6, HOOK_CONNECT4, HOOK_CONNECT6, HOOK_INGRESS,
    RECENT_SLOTS,
};

use super::{Error, Kernel};

/// A denial as a person reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub seq: u64,
    /// Monotonic kernel time (ns).
    pub ts_ns: u64,
    pub reason: Cow<'static, str>,
    pub hook: Cow<'static, str>,
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    pub cgroup_id: u64,
    pub cookie: u64,
    /// The identity of a registered socket that was refused.
    pub identity: Option<String>,
    pub destination: SocketAddr,
    /// The sender (ingress only).
    pub source: Option<SocketAddr>,
}

impl Denial {
    /// Decodes a kernel event; `identity` names identity ids.
    pub fn from_event(ev: &DenyEvent, identity: impl Fn(u32) -> Option<String>) -> Self {
        let reason = DenyReason::from_raw(ev.reason).map_or("unknown", DenyReason::as_str);
        let hook = match ev.hook {
            HOOK_CONNECT4 => "connect4",
            HOOK_CONNECT6 => "connect6",
            HOOK_INGRESS => "ingress",
            HOOK_BIND4 => "bind4",
            HOOK_BIND6 => "bind6",
            _ => "unknown",
        };
        let comm_len = ev
            .comm
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(ev.comm.len());
        Denial {
            seq: ev.seq,
            ts_ns: ev.ts_ns,
            reason: reason.into(),
            hook: hook.into(),
            pid: ev.pid,
            uid: ev.uid,
            comm: String::from_utf8_lossy(&ev.comm[..comm_len]).into_owned(),
            cgroup_id: ev.cgroup_id,
            cookie: ev.cookie,
            identity: (ev.identity != 0)
                .then(|| identity(ev.identity).unwrap_or_else(|| format!("#{}", ev.identity))),
            destination: SocketAddr::new(addr(ev.daddr), ev.dport),
            source: (ev.hook == HOOK_INGRESS && ev.sport != 0)
                .then(|| SocketAddr::new(addr(ev.saddr), ev.sport)),
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hook == "ingress" {
            write!(
                f,
                "packet to {} dropped ({})",
                self.destination, self.reason
            )?;
            if let Some(src) = self.source {
                write!(f, " from {src}")?;
            }
            Ok(())
        } else {
            let what = if self.hook.starts_with("bind") {
                "bind of"
            } else {
                "connect to"
            };
            write!(
                f,
                "{what} {} refused ({}): pid {} ({}) uid {} cgroup {}",
                self.destination, self.reason, self.pid, self.comm, self.uid, self.cgroup_id
            )?;
            if let Some(id) = &self.identity {
                write!(f, " identity {id:?}")?;
            }
            Ok(())
        }
    }
}

/// Words in network byte order (IPv4 stored mapped) to an address.
pub(super) fn addr(words: [u32; 4]) -> IpAddr {
    let mut b = [0u8; 16];
    for (i, w) in words.iter().enumerate() {
        b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    let v6 = Ipv6Addr::from(b);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// Denial log lines allowed per second; past that they are counted, not logged, so that a
/// flood of refused connections cannot flood the log.
const LOG_LINES_PER_SECOND: u32 = 100;

/// Reads denial events until dropped.
pub struct EventReader<'k> {
    kernel: &'k Kernel,
    ring: AsyncFd<RingBuf<MapData>>,
    next_seq: AtomicU64,
    limiter: LogLimiter,
}

/// A fixed one-second window of log lines.
#[derive(Debug)]
struct LogLimiter {
    window: std::time::Instant,
    logged: u32,
    suppressed: u64,
}

impl LogLimiter {
    fn new() -> Self {
        Self {
            window: std::time::Instant::now(),
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether one more line may be logged now; reports what the last window suppressed.
    fn allow(&mut self) -> bool {
        if self.window.elapsed() >= std::time::Duration::from_secs(1) {
            if self.suppressed > 0 {
                warn!(
                    suppressed = self.suppressed,
                    "{} more denials in the last second were counted but not logged",
                    self.suppressed
                );
            }
            *self = Self::new();
        }
        if self.logged < LOG_LINES_PER_SECOND {
            self.logged += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }
}

impl Kernel {
    /// Takes the event ring buffer (once). Needs a tokio runtime.
    pub fn event_reader(&self) -> Result<EventReader<'_>, Error> {
        let ring = self.events.lock().take().ok_or_else(|| {
            Error::Socket(std::io::Error::other("the event reader was already taken"))
        })?;
        // SAFETY: the ring buffer owns its descriptor and lives inside the AsyncFd, so the
        // descriptor stays open for as long as it is registered.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::Socket(e.into()))?;
        // Continue numbering after what a previous agent stored.
        let last = self
            .recent_denials()
            .iter()
            .map(|d| d.seq)
            .max()
            .unwrap_or(0);
        Ok(EventReader {
            kernel: self,
            ring,
            next_seq: AtomicU64::new(last + 1),
            limiter: LogLimiter::new(),
        })
    }

    /// The last denials kept in the pinned RECENT map, oldest first.
    pub fn recent_denials(&self) -> Vec<Denial> {
        let recent = self.recent.lock();
        let mut out: Vec<Denial> = (0..RECENT_SLOTS)
            .filter_map(|i| recent.get(&i, 0).ok())
            .filter(|ev| ev.seq != 0)
            .map(|ev| Denial::from_event(&ev, |id| self.identity_name(id)))
            .collect();
        out.sort_by_key(|d| d.seq);
        out
    }
}

impl EventReader<'_> {
    /// Waits for events and handles each: a log line, and a slot in RECENT.
    pub async fn run(&mut self) -> Result<(), Error> {
        loop {
            let mut guard = self.ring.readable_mut().await.map_err(Error::Socket)?;
            let mut batch = Vec::new();
            {
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    if item.len() >= std::mem::size_of::<DenyEvent>() {
                        // SAFETY: the kernel wrote a DenyEvent (a Pod) of at least this size;
                        // read_unaligned makes no alignment assumption.
                        batch.push(unsafe {
                            std::ptr::read_unaligned(item.as_ptr().cast::<DenyEvent>())
                        });
                    }
                }
            }
            guard.clear_ready();
            for ev in batch {
                self.handle(ev);
            }
        }
    }

    fn handle(&mut self, mut ev: DenyEvent) {
        ev.seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let d = Denial::from_event(&ev, |id| self.kernel.identity_name(id));
        self.kernel.count_denial(ev.reason);
        let slot = (ev.seq % u64::from(RECENT_SLOTS)) as u32;
        let _ = self.kernel.recent.lock().set(slot, ev, 0);
        if !self.limiter.allow() {
            return;
        }
        warn!(
            reason = &*d.reason,
            hook = &*d.hook,
            pid = d.pid,
            uid = d.uid,
            comm = %d.comm,
            cgroup_id = d.cgroup_id,
            dst = %d.destination,
            src = ?d.source,
            identity = ?d.identity,
            "denied: {d}"
        );
    }
}

/// Userspace tally of the denials the agent has logged, by reason.
#[derive(Debug, Default)]
pub(super) struct DenialTally {
    /// Slot 0 for reasons this build does not know, then one per [`DenyReason`] value.
    by_reason: [AtomicU64; 6],
}

impl DenialTally {
    /// Counts one event by its raw reason (slot 0: a reason this build does not know).
    fn add(&self, raw_reason: u32) {
        let i = DenyReason::from_raw(raw_reason).map_or(0, |r| r as usize);
        self.by_reason[i].fetch_add(1, Ordering::Relaxed);
    }

    /// (reason, count) for every reason seen at least once.
    pub(super) fn snapshot(&self) -> Vec<(&'static str, u64)> {
        self.by_reason
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let name = DenyReason::from_raw(i as u32).map_or("unknown", DenyReason::as_str);
                (name, c.load(Ordering::Relaxed))
            })
            .filter(|(_, c)| *c > 0)
            .collect()
    }
}

impl Kernel {
    fn count_denial(&self, raw_reason: u32) {
        self.tally.add(raw_reason);
    }

    /// Denials logged by this agent, by reason.
    pub fn denials_logged(&self) -> Vec<(&'static str, u64)> {
        self.tally.snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vtguard_common::v4_mapped;

    #[test]
    fn log_lines_are_capped_per_second() {
        let mut l = LogLimiter::new();
        let allowed = (0..250).filter(|_| l.allow()).count();
        assert_eq!(allowed, LOG_LINES_PER_SECOND as usize);
        assert_eq!(l.suppressed, 150);
        l.window -= std::time::Duration::from_secs(2);
        assert!(l.allow(), "a new window logs again");
        assert_eq!(l.suppressed, 0);
    }

    fn event() -> DenyEvent {
        let mut ev = DenyEvent::zeroed();
        ev.seq = 7;
        ev.reason = DenyReason::Unregistered as u32;
        ev.hook = HOOK_CONNECT4;
        ev.pid = 4242;
        ev.uid = 1000;
        ev.cgroup_id = 1;
        ev.comm[..7].copy_from_slice(b"python3");
        ev.dport = 16991;
        ev.daddr = v4_mapped(u32::from_ne_bytes([127, 0, 0, 1]));
        ev
    }

    #[test]
    fn connect_denial_reads_as_a_sentence() {
        let d = Denial::from_event(&event(), |_| None);
        assert_eq!(
            d.to_string(),
            "connect to 127.0.0.1:16991 refused (unregistered_socket): pid 4242 (python3) uid 1000 cgroup 1"
        );
        assert_eq!(d.identity, None);
    }

    #[test]
    fn identity_and_ipv6_destinations_are_named() {
        let mut ev = event();
        ev.reason = DenyReason::IdentityNotAllowed as u32;
        ev.hook = HOOK_CONNECT6;
        ev.identity = 3;
        let mut b = [0u8; 16];
        b[15] = 1;
        for i in 0..4 {
            ev.daddr[i] = u32::from_ne_bytes([b[i * 4], b[i * 4 + 1], b[i * 4 + 2], b[i * 4 + 3]]);
        }
        let d = Denial::from_event(&ev, |id| (id == 3).then(|| "vtgate client 2".to_owned()));
        assert_eq!(
            d.to_string(),
            "connect to [::1]:16991 refused (identity_not_allowed): pid 4242 (python3) uid 1000 cgroup 1 identity \"vtgate client 2\""
        );
    }

    #[test]
    fn bind_denial_names_the_impostor() {
        let mut ev = event();
        ev.reason = DenyReason::NotOwner as u32;
        ev.hook = HOOK_BIND4;
        ev.uid = 65534;
        ev.daddr = v4_mapped(0);
        let d = Denial::from_event(&ev, |_| None);
        assert_eq!(
            d.to_string(),
            "bind of 0.0.0.0:16991 refused (bind_not_owner): pid 4242 (python3) uid 65534 cgroup 1"
        );
    }

    #[test]
    fn ingress_denial_names_the_sender() {
        let mut ev = DenyEvent::zeroed();
        ev.reason = DenyReason::UnknownFlow as u32;
        ev.hook = HOOK_INGRESS;
        ev.dport = 16991;
        ev.daddr = v4_mapped(u32::from_ne_bytes([10, 199, 0, 1]));
        ev.sport = 40000;
        ev.saddr = v4_mapped(u32::from_ne_bytes([10, 199, 0, 2]));
        let d = Denial::from_event(&ev, |_| None);
        assert_eq!(
            d.to_string(),
            "packet to 10.199.0.1:16991 dropped (unknown_flow) from 10.199.0.2:40000"
        );
    }
}
