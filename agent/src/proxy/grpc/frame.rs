//! gRPC message framing (a flag byte, a 4-byte length, the message) and request
//! decompression (gzip, snappy), each bounded by the listener's message size limit.

use std::io::Read;

use tonic::{Code, Status};

/// One framed message: compressed flag and payload.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub compressed: bool,
    pub payload: &'a [u8],
}

/// Splits a request body into its messages; a body that ends inside a frame is refused.
pub fn split(body: &[u8], max: usize) -> Result<Vec<Frame<'_>>, Status> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < body.len() {
        if body.len() - at < 5 {
            return Err(Status::new(
                Code::InvalidArgument,
                format!("vtguard: request body ends inside a gRPC frame header (byte {at})"),
            ));
        }
        let flag = body[at];
        if flag > 1 {
            return Err(Status::new(
                Code::InvalidArgument,
                format!(
                    "vtguard: gRPC frame at byte {at} has compressed flag {flag} (must be 0 or 1)"
                ),
            ));
        }
        let len =
            u32::from_be_bytes([body[at + 1], body[at + 2], body[at + 3], body[at + 4]]) as usize;
        if len > max {
            return Err(too_large(len, max));
        }
        let start = at + 5;
        if body.len() - start < len {
            return Err(Status::new(
                Code::InvalidArgument,
                format!(
                    "vtguard: gRPC frame at byte {at} declares {len} bytes but the body holds {}",
                    body.len() - start
                ),
            ));
        }
        out.push(Frame {
            compressed: flag == 1,
            payload: &body[start..start + len],
        });
        at = start + len;
    }
    Ok(out)
}

/// The RESOURCE_EXHAUSTED refusal for a message over the limit.
pub fn too_large(len: usize, max: usize) -> Status {
    Status::new(
        Code::ResourceExhausted,
        format!(
            "vtguard: request message of {len} bytes is larger than grpc-max-message-size {max}"
        ),
    )
}

/// The payload as the upstream would decode it: decompressed per `grpc-encoding` when the
/// frame's flag says so, never larger than `max`.
pub fn decompress(
    frame: &Frame<'_>,
    encoding: Option<&str>,
    max: usize,
) -> Result<Vec<u8>, Status> {
    if !frame.compressed {
        return Ok(frame.payload.to_vec());
    }
    let mut out = Vec::new();
    let limit = max as u64 + 1;
    let result = match encoding {
        Some("gzip") => flate2::read::GzDecoder::new(frame.payload).take(limit).read_to_end(&mut out),
        Some("snappy") => snap::read::FrameDecoder::new(frame.payload).take(limit).read_to_end(&mut out),
        Some("identity") | None => {
            return Err(Status::new(
                Code::InvalidArgument,
                "vtguard: message is flagged compressed but the request names no grpc-encoding",
            ))
        }
        Some(other) => {
            return Err(Status::new(
                Code::Unimplemented,
                format!("vtguard: grpc-encoding {other:?} is not supported (vtguard inspects gzip, snappy or uncompressed requests)"),
            ))
        }
    };
    if let Err(e) = result {
        return Err(Status::new(
            Code::InvalidArgument,
            format!(
                "vtguard: request message does not decompress as {}: {e}",
                encoding.unwrap_or("")
            ),
        ));
    }
    if out.len() > max {
        return Err(Status::new(
            Code::ResourceExhausted,
            format!(
                "vtguard: request message decompresses to more than grpc-max-message-size {max}"
            ),
        ));
    }
    Ok(out)
}

/// Frames one uncompressed message.
pub fn encode(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 5);
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn splits_frames_and_refuses_truncation() {
        let mut body = encode(b"abc");
        body.extend(encode(b""));
        let f = split(&body, 100).expect("valid");
        assert_eq!(
            f,
            vec![
                Frame {
                    compressed: false,
                    payload: b"abc"
                },
                Frame {
                    compressed: false,
                    payload: b""
                }
            ]
        );
        let e = split(&body[..6], 100).expect_err("truncated");
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(
            e.message()
                .contains("declares 3 bytes but the body holds 1"),
            "{}",
            e.message()
        );
        assert!(split(&[0, 0, 0], 100)
            .expect_err("short header")
            .message()
            .contains("inside a gRPC frame header"));
        assert!(split(&[7, 0, 0, 0, 0], 100)
            .expect_err("bad flag")
            .message()
            .contains("compressed flag 7"));
        let e = split(&encode(&[0; 11]), 10).expect_err("too large");
        assert_eq!(e.code(), Code::ResourceExhausted);
        assert!(e
            .message()
            .contains("11 bytes is larger than grpc-max-message-size 10"));
    }

    #[test]
    fn decompresses_gzip_and_snappy_within_the_limit() {
        let plain = b"select * from vt_insert_test".repeat(10);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&plain).expect("gzip");
        let gz = gz.finish().expect("gzip");
        let mut sn = snap::write::FrameEncoder::new(Vec::new());
        sn.write_all(&plain).expect("snappy");
        let sn = sn.into_inner().expect("snappy");
        let f = |p: &'static [u8]| Frame {
            compressed: true,
            payload: p,
        };
        let gz: &'static [u8] = Box::leak(gz.into_boxed_slice());
        let sn: &'static [u8] = Box::leak(sn.into_boxed_slice());
        assert_eq!(decompress(&f(gz), Some("gzip"), 1000).expect("gzip"), plain);
        assert_eq!(
            decompress(&f(sn), Some("snappy"), 1000).expect("snappy"),
            plain
        );
        let e = decompress(&f(gz), Some("gzip"), 100).expect_err("bomb");
        assert_eq!(e.code(), Code::ResourceExhausted);
        let e = decompress(&f(b"not gzip"), Some("gzip"), 100).expect_err("garbage");
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = decompress(&f(gz), Some("br"), 1000).expect_err("unknown");
        assert_eq!(e.code(), Code::Unimplemented);
        assert!(e
            .message()
            .contains("grpc-encoding \"br\" is not supported"));
        assert_eq!(
            decompress(&f(gz), None, 1000)
                .expect_err("no encoding")
                .code(),
            Code::InvalidArgument
        );
        let plain_frame = Frame {
            compressed: false,
            payload: b"x",
        };
        assert_eq!(
            decompress(&plain_frame, Some("gzip"), 1).expect("uncompressed"),
            b"x"
        );
    }
}
