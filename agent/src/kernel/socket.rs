//! The API the proxies use to reach a protected port: open a socket, register its cookie
//! under the caller's identity, record its flow, connect, unregister.
//!
//! The flow (source and destination address and port) is recorded before connect(): the
//! socket is bound to the source address the route would pick and a port the kernel chooses,
//! so the 4-tuple is known before the first packet leaves, and the ingress filter admits the
//! connection's packets from the first SYN on. Doing this here, not in a sockops program,
//! keeps a program off every TCP connection of the node.

use std::{
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsFd, BorrowedFd},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use aya::maps::{HashMap, MapData};
use parking_lot::Mutex;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use vtguard_common::{maps as map_names, FlowKey, FlowValue, SocketEntry, FLOW_LINGER_NS};

use super::{sys, Error, Kernel};

/// How long a looked-up route source address is reused.
const ROUTE_CACHE_TTL: Duration = Duration::from_secs(5);

/// Cached route source addresses by destination.
pub(super) type RouteSources =
    Mutex<std::collections::HashMap<IpAddr, (IpAddr, std::time::Instant)>>;

/// The flows map, shared with every open upstream connection.
pub(super) type Flows = Arc<Mutex<HashMap<MapData, FlowKey, FlowValue>>>;

/// A socket's registration; dropping it unregisters the socket. The connection it made
/// stays admitted (its flow was recorded before it connected).
#[derive(Debug)]
pub struct Registration<'k> {
    kernel: &'k Kernel,
    cookie: u64,
}

impl Registration<'_> {
    /// The registered socket's cookie.
    pub fn cookie(&self) -> u64 {
        self.cookie
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        // Fails only when the entry is already gone.
        let _ = self.kernel.sockets.lock().remove(&self.cookie);
    }
}

/// A recorded flow. Dropped when its connection closes: the record then expires after
/// [`FLOW_LINGER_NS`], so that the peer's last FIN/ACK still gets through.
pub struct FlowRecord {
    flows: Flows,
    key: FlowKey,
    value: FlowValue,
}

impl std::fmt::Debug for FlowRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlowRecord")
            .field("sport", &self.key.sport)
            .field("dport", &self.key.dport)
            .finish_non_exhaustive()
    }
}

impl Drop for FlowRecord {
    fn drop(&mut self) {
        let mut value = self.value;
        value.expires_ns = monotonic_ns() + FLOW_LINGER_NS;
        let _ = self.flows.lock().insert(self.key, value, 0);
    }
}

/// An upstream connection opened through the kernel's registered-socket path. Reads and
/// writes go to the stream; dropping it closes the stream and lets its flow record expire.
#[derive(Debug)]
pub struct Upstream<S> {
    stream: S,
    _flow: FlowRecord,
}

impl<S> Upstream<S> {
    /// The connection.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The connection, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.stream
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Upstream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Upstream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

impl std::io::Read for Upstream<std::net::TcpStream> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream.read(buf)
    }
}

impl std::io::Write for Upstream<std::net::TcpStream> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush()
    }
}

impl Kernel {
    /// Registers `socket` under `identity`: its connect() to a protected port that `identity`
    /// may reach is then allowed. Register before connect(), drop the registration after.
    pub fn register(
        &self,
        socket: BorrowedFd<'_>,
        identity: &str,
    ) -> Result<Registration<'_>, Error> {
        let cookie = sys::socket_cookie(socket).map_err(Error::Socket)?;
        let id = self.identities.lock().id(identity);
        self.insert_socket(cookie, id)?;
        Ok(Registration {
            kernel: self,
            cookie,
        })
    }

    fn insert_socket(&self, cookie: u64, identity: u32) -> Result<(), Error> {
        self.sockets
            .lock()
            .insert(cookie, SocketEntry { identity, _pad: 0 }, 0)
            .map_err(|source| Error::MapOp {
                name: map_names::SOCKETS,
                source,
            })
    }

    /// Opens a TCP connection to `addr` on behalf of `identity` (the proxies' upstream path).
    pub async fn connect(
        &self,
        identity: &str,
        addr: SocketAddr,
    ) -> Result<Upstream<tokio::net::TcpStream>, Error> {
        let socket = new_socket(addr)?;
        let (registration, flow) = self.prepare(&socket, identity, addr)?;
        socket.set_nonblocking(true).map_err(Error::Socket)?;
        let socket = tokio::net::TcpSocket::from_std_stream(socket.into());
        let stream = socket.connect(addr).await.map_err(Error::Socket);
        drop(registration);
        let upstream = Upstream {
            stream: stream?,
            _flow: flow,
        };
        // Defence in depth behind the bind guard: nothing is sent on a connection until the
        // socket listening there is known to be the port's owner's.
        if let Some(owner) = self.owner(addr.port()) {
            super::owner::check_listeners(addr, &owner)?;
        }
        Ok(upstream)
    }

    /// Blocking form of [`Kernel::connect`], for tools, tests and benchmarks.
    pub fn connect_blocking(
        &self,
        identity: &str,
        addr: SocketAddr,
    ) -> Result<Upstream<std::net::TcpStream>, Error> {
        let socket = new_socket(addr)?;
        let (registration, flow) = self.prepare(&socket, identity, addr)?;
        let result = socket.connect(&addr.into());
        drop(registration);
        result.map_err(Error::Socket)?;
        if let Some(owner) = self.owner(addr.port()) {
            super::owner::check_listeners(addr, &owner)?;
        }
        Ok(Upstream {
            stream: socket.into(),
            _flow: flow,
        })
    }

    /// Registers the socket, binds it to the source address and a port, records the flow.
    fn prepare(
        &self,
        socket: &Socket,
        identity: &str,
        addr: SocketAddr,
    ) -> Result<(Registration<'_>, FlowRecord), Error> {
        let registration = self.register(socket.as_fd(), identity)?;
        let source = self.route_source(addr)?;
        socket
            .bind(&SocketAddr::new(source, 0).into())
            .map_err(Error::Socket)?;
        let local = socket
            .local_addr()
            .map_err(Error::Socket)?
            .as_socket()
            .ok_or_else(|| Error::Socket(io::Error::other("bound socket has no IP address")))?;
        let key = FlowKey {
            saddr: words(local.ip()),
            daddr: words(addr.ip()),
            sport: local.port(),
            dport: addr.port(),
        };
        let value = FlowValue {
            cookie: registration.cookie,
            identity: self.identities.lock().id(identity),
            _pad: 0,
            expires_ns: 0,
        };
        self.flows
            .lock()
            .insert(key, value, 0)
            .map_err(|source| Error::MapOp {
                name: map_names::FLOWS,
                source,
            })?;
        let flow = FlowRecord {
            flows: Arc::clone(&self.flows),
            key,
            value,
        };
        Ok((registration, flow))
    }

    /// The source address for `dest`, from a short-lived cache: upstreams are few and routes
    /// change rarely, and each lookup costs a socket and a connect().
    fn route_source(&self, dest: SocketAddr) -> Result<IpAddr, Error> {
        let mut cache = self.route_sources.lock();
        if let Some((source, at)) = cache.get(&dest.ip()) {
            if at.elapsed() < ROUTE_CACHE_TTL {
                return Ok(*source);
            }
        }
        let source = source_address(dest).map_err(Error::Socket)?;
        if cache.len() > 1024 {
            cache.clear();
        }
        cache.insert(dest.ip(), (source, std::time::Instant::now()));
        Ok(source)
    }

    /// Benchmarks only: fills the socket map with `n` registrations under `identity` for
    /// cookies no socket will ever have (the kernel counts cookies up from 1).
    #[doc(hidden)]
    pub fn insert_synthetic_sockets(&self, n: u32, identity: &str) -> Result<(), Error> {
        let id = self.identities.lock().id(identity);
        for i in 0..u64::from(n) {
            self.insert_socket(u64::MAX - i, id)?;
        }
        Ok(())
    }
}

fn new_socket(addr: SocketAddr) -> Result<Socket, Error> {
    Socket::new(
        Domain::for_address(addr),
        Type::STREAM.cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(Error::Socket)
}

/// The source address the kernel's routing would use towards `dest` (a UDP connect sends
/// nothing; it only resolves the route).
fn source_address(dest: SocketAddr) -> io::Result<IpAddr> {
    let any: SocketAddr = match dest {
        SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = UdpSocket::bind(any)?;
    probe.connect(dest)?;
    Ok(probe.local_addr()?.ip())
}

/// An address as the maps carry it: 16 bytes in network order, IPv4 as IPv4-mapped IPv6.
pub(super) fn words(ip: IpAddr) -> [u32; 4] {
    let octets = match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    let mut w = [0u32; 4];
    for (i, chunk) in octets.chunks_exact(4).enumerate() {
        w[i] = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    w
}

/// CLOCK_MONOTONIC in ns: the clock of the kernel's bpf_ktime_get_ns.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec passed.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32).as_nanos() as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use vtguard_common::v4_mapped;

    #[test]
    fn ipv4_and_mapped_ipv6_give_the_same_words() {
        let v4: IpAddr = "127.0.0.1".parse().expect("ip");
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().expect("ip");
        assert_eq!(words(v4), words(mapped));
        assert_eq!(words(v4), v4_mapped(u32::from_ne_bytes([127, 0, 0, 1])));
        let v6: IpAddr = "::1".parse().expect("ip");
        assert_eq!(words(v6), [0, 0, 0, u32::from_ne_bytes([0, 0, 0, 1])]);
    }

    #[test]
    fn loopback_routes_from_loopback() {
        assert_eq!(
            source_address("127.0.0.1:9".parse().expect("addr")).expect("route"),
            "127.0.0.1".parse::<IpAddr>().expect("ip")
        );
        assert_eq!(
            source_address("[::ffff:127.0.0.1]:9".parse().expect("addr")).expect("route"),
            "::ffff:127.0.0.1".parse::<IpAddr>().expect("ip")
        );
    }
}
