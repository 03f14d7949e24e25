//! The API the proxies use to reach a protected port: open a socket, register its cookie
//! under the caller's identity, connect, unregister.

use std::{
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd},
};

use socket2::{Domain, Protocol, Socket, Type};

use vtguard_common::{maps as map_names, SocketEntry};

use super::{lock, sys, Error, Kernel};

/// A socket's registration; dropping it unregisters the socket. The connection it made
/// stays admitted (its flow was recorded when it connected).
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
        let _ = lock(&self.kernel.sockets).remove(&self.cookie);
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
        let id = lock(&self.identities).id(identity);
        lock(&self.sockets)
            .insert(
                cookie,
                SocketEntry {
                    identity: id,
                    _pad: 0,
                },
                0,
            )
            .map_err(|source| Error::MapOp {
                name: map_names::SOCKETS,
                source,
            })?;
        Ok(Registration {
            kernel: self,
            cookie,
        })
    }

    /// Benchmarks only: fills the socket map with `n` registrations under `identity` for
    /// cookies no socket will ever have (the kernel counts cookies up from 1).
    #[doc(hidden)]
    pub fn insert_synthetic_sockets(&self, n: u32, identity: &str) -> Result<(), Error> {
        let id = lock(&self.identities).id(identity);
        let mut sockets = lock(&self.sockets);
        for i in 0..u64::from(n) {
            sockets
                .insert(
                    u64::MAX - i,
                    SocketEntry {
                        identity: id,
                        _pad: 0,
                    },
                    0,
                )
                .map_err(|source| Error::MapOp {
                    name: map_names::SOCKETS,
                    source,
                })?;
        }
        Ok(())
    }

    /// Opens a TCP connection to `addr` on behalf of `identity` (the proxies' upstream path).
    pub async fn connect(
        &self,
        identity: &str,
        addr: SocketAddr,
    ) -> Result<tokio::net::TcpStream, Error> {
        let socket = match addr {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .map_err(Error::Socket)?;
        let registration = self.register(socket.as_fd(), identity)?;
        let stream = socket.connect(addr).await.map_err(Error::Socket);
        drop(registration);
        stream
    }

    /// Blocking form of [`Kernel::connect`], for tools, tests and benchmarks.
    pub fn connect_blocking(
        &self,
        identity: &str,
        addr: SocketAddr,
    ) -> Result<std::net::TcpStream, Error> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(Error::Socket)?;
        let registration = self.register(socket.as_fd(), identity)?;
        let result = socket.connect(&addr.into());
        drop(registration);
        result.map_err(Error::Socket)?;
        Ok(socket.into())
    }
}
