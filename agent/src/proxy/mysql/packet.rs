//! MySQL packet framing: a 3-byte little-endian payload length, a sequence number, the
//! payload. A payload of 0xffffff bytes or more is split; every full 0xffffff chunk is followed
//! by another packet (possibly empty) holding the rest.
//!
//! Reading never goes past the packet it was asked for: the TLS switch after an SSLRequest
//! starts on the very next byte of the socket, which a client may have sent in the same write.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest payload one packet carries; a payload of exactly this size continues in the next.
pub const MAX_CHUNK: usize = 0xff_ffff;

/// Why a packet could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The peer closed the connection between packets.
    #[error("connection closed")]
    Closed,
    /// The peer closed the connection inside a packet.
    #[error("connection closed inside a packet (truncated after {got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("packet of {size} bytes or more is over the limit of {max} bytes")]
    TooLarge { size: usize, max: usize },
    #[error("continuation packet has sequence {got}, expected {want}")]
    Sequence { got: u8, want: u8 },
    #[error("reading: {0}")]
    Io(#[from] std::io::Error),
}

/// A packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    pub seq: u8,
}

impl Header {
    pub fn parse(b: [u8; 4]) -> Self {
        Header {
            len: usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16,
            seq: b[3],
        }
    }

    pub fn encode(self) -> [u8; 4] {
        debug_assert!(self.len <= MAX_CHUNK);
        [
            self.len as u8,
            (self.len >> 8) as u8,
            (self.len >> 16) as u8,
            self.seq,
        ]
    }
}

/// Appends `payload` as packets starting at `seq`; returns the next sequence number.
pub fn encode(out: &mut Vec<u8>, mut seq: u8, payload: &[u8]) -> u8 {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_CHUNK);
        out.extend_from_slice(&Header { len: n, seq }.encode());
        out.extend_from_slice(&rest[..n]);
        seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_CHUNK {
            return seq;
        }
    }
}

/// Reads exactly `buf.len()` bytes; `Truncated` (with `offset` counted in) if the peer closes
/// first.
async fn read_exact<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    offset: usize,
    want: usize,
) -> Result<(), Error> {
    let mut got = 0;
    while got < buf.len() {
        let n = r.read(&mut buf[got..]).await?;
        if n == 0 {
            return Err(Error::Truncated {
                got: offset + got,
                want,
            });
        }
        got += n;
    }
    Ok(())
}

/// Reads one header; `Closed` if the peer closed before its first byte.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, Error> {
    let mut h = [0u8; 4];
    let n = r.read(&mut h).await?;
    if n == 0 {
        return Err(Error::Closed);
    }
    read_exact(r, &mut h[n..], n, 4).await?;
    Ok(Header::parse(h))
}

/// Reads a payload of `len` bytes whose header is already read, with its continuation
/// packets, into `out` (payload bytes only). Returns the sequence number of the last packet.
pub async fn read_payload<R: AsyncRead + Unpin>(
    r: &mut R,
    first: Header,
    max: usize,
    out: &mut Vec<u8>,
) -> Result<u8, Error> {
    let mut h = first;
    loop {
        let size = out.len() + h.len;
        if size > max {
            return Err(Error::TooLarge { size, max });
        }
        // The buffer grows as bytes arrive: a peer that claims 16 MB and sends nothing holds
        // no 16 MB buffer.
        let got = (&mut *r).take(h.len as u64).read_to_end(out).await?;
        if got < h.len {
            return Err(Error::Truncated { got, want: h.len });
        }
        if h.len < MAX_CHUNK {
            return Ok(h.seq);
        }
        let next = read_header(r).await.map_err(|e| match e {
            Error::Closed => Error::Truncated { got: 0, want: 4 },
            e => e,
        })?;
        let want = h.seq.wrapping_add(1);
        if next.seq != want {
            return Err(Error::Sequence {
                got: next.seq,
                want,
            });
        }
        h = next;
    }
}

/// Reads one logical packet (joining continuations): (first sequence number, payload).
pub async fn read<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<(u8, Vec<u8>), Error> {
    let h = read_header(r).await?;
    let mut out = Vec::with_capacity(h.len.min(4096));
    read_payload(r, h, max, &mut out).await?;
    Ok((h.seq, out))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        pin::Pin,
        task::{Context, Poll},
    };

    use tokio::io::ReadBuf;

    use super::*;

    /// Yields its bytes `step` at a time: packets split at every byte.
    pub(crate) struct Trickle {
        pub data: Vec<u8>,
        pub pos: usize,
        pub step: usize,
    }

    impl Trickle {
        pub fn new(data: Vec<u8>, step: usize) -> Self {
            Trickle { data, pos: 0, step }
        }
    }

    impl AsyncRead for Trickle {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            let n = self
                .step
                .min(self.data.len() - self.pos)
                .min(buf.remaining());
            let pos = self.pos;
            buf.put_slice(&self.data[pos..pos + n]);
            self.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    fn block<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn round_trip_split_at_every_byte() {
        let mut wire = Vec::new();
        encode(&mut wire, 0, b"\x03select 1");
        encode(&mut wire, 7, b"");
        encode(&mut wire, 255, b"xy");
        for step in 1..=wire.len() {
            let mut r = Trickle::new(wire.clone(), step);
            block(async {
                assert_eq!(
                    read(&mut r, 100).await.expect("first"),
                    (0, b"\x03select 1".to_vec())
                );
                assert_eq!(read(&mut r, 100).await.expect("empty"), (7, vec![]));
                assert_eq!(
                    read(&mut r, 100).await.expect("third"),
                    (255, b"xy".to_vec())
                );
                assert!(matches!(read(&mut r, 100).await, Err(Error::Closed)));
            });
        }
    }

    #[test]
    fn large_payloads_continue_and_join() {
        for size in [MAX_CHUNK - 1, MAX_CHUNK, MAX_CHUNK + 1, 2 * MAX_CHUNK + 5] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let mut wire = Vec::new();
            let next = encode(&mut wire, 3, &payload);
            let packets = size / MAX_CHUNK + 1;
            assert_eq!(next, 3 + packets as u8, "size {size}");
            assert_eq!(wire.len(), size + 4 * packets);
            let mut r = Trickle::new(wire, 1 << 20);
            let (seq, got) = block(read(&mut r, 64 << 20)).expect("read");
            assert_eq!(seq, 3);
            assert!(got == payload, "size {size}: payload differs");
        }
    }

    #[test]
    fn truncated_and_oversized_packets_are_errors() {
        let mut wire = Vec::new();
        encode(&mut wire, 0, b"hello world");
        for cut in 1..wire.len() {
            let mut r = Trickle::new(wire[..cut].to_vec(), 1);
            let e = block(read(&mut r, 100)).expect_err("truncated");
            assert!(matches!(e, Error::Truncated { .. }), "cut {cut}: {e}");
        }
        let mut r = Trickle::new(wire.clone(), 3);
        let e = block(read(&mut r, 10)).expect_err("too large");
        assert_eq!(
            e.to_string(),
            "packet of 11 bytes or more is over the limit of 10 bytes"
        );
        // A continuation whose sequence number jumps.
        let mut wire = Vec::new();
        wire.extend_from_slice(
            &Header {
                len: MAX_CHUNK,
                seq: 0,
            }
            .encode(),
        );
        wire.extend_from_slice(&vec![0u8; MAX_CHUNK]);
        wire.extend_from_slice(&Header { len: 1, seq: 5 }.encode());
        wire.push(1);
        let mut r = Trickle::new(wire, 1 << 20);
        let e = block(read(&mut r, 64 << 20)).expect_err("bad sequence");
        assert!(matches!(e, Error::Sequence { got: 5, want: 1 }), "{e}");
    }
}
