//! Bad input on a gRPC listener, sent by a raw HTTP/2 client: each bad stream gets a gRPC
//! error naming the problem, nothing half-inspected is forwarded, and the connection and
//! every other caller carry on.

use std::{io::Write, time::Duration};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use prost::Message;
use vtguard_proto::query::ExecuteRequest;
use vtguard_tests::fixtures::Listener;
use vtguard_tests::{
    grpc::{framed, full, raw_call, raw_connection, start_listener, tls_channel, within},
    pki::Pki,
    upstream::{rows, Upstream},
};

type Body = vtguard_tests::grpc::RawBody;

/// (grpc-status, grpc-message, response data) of a call.
async fn call(
    send: &mut hyper::client::conn::http2::SendRequest<Body>,
    addr: std::net::SocketAddr,
    body: Body,
    encoding: Option<&str>,
) -> (u16, String, Vec<u8>) {
    raw_call(send, addr, "/queryservice.Query/Execute", body, encoding).await
}

fn valid() -> Vec<u8> {
    ExecuteRequest {
        target: Some(vtguard_tests::upstream::target("ks")),
        query: Some(vtguard_tests::upstream::bound("select 1")),
        ..Default::default()
    }
    .encode_to_vec()
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).expect("gzip");
    e.finish().expect("gzip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_streams_get_grpc_errors_and_the_connection_carries_on() {
    let pki = Pki::generate();
    let up = Upstream::start(0).await;
    let l = start_listener(
        &Listener::grpc("vttablet", up.addr)
            .mtls(&pki)
            .extra("grpc-max-message-size = 1024\n")
            .toml(),
        None,
    )
    .await;
    let mut send = raw_connection(&pki, l.addr, Some("vtgate-client-1")).await;
    let addr = l.addr;

    let cases: Vec<(&str, Body, Option<&str>, u16, &str)> = vec![
        (
            "not protobuf",
            full(framed(0, &[0xff, 0xff, 0xff])),
            None,
            3,
            "request is not valid protobuf",
        ),
        (
            "bad query field",
            full(framed(0, &[0x22, 0x02, 0xff, 0xff])),
            None,
            3,
            "Execute request field 4 is not a valid query.BoundQuery",
        ),
        (
            "group wire type",
            full(framed(0, &[0x0b])),
            None,
            3,
            "unsupported wire type 3",
        ),
        (
            "oversized",
            full(framed(0, &vec![0u8; 2000])),
            None,
            8,
            "larger than grpc-max-message-size 1024",
        ),
        (
            "truncated frame",
            full({
                let mut f = framed(0, &valid());
                f.truncate(f.len() - 3);
                f
            }),
            None,
            3,
            "declares",
        ),
        (
            "two messages",
            full([framed(0, &valid()), framed(0, &valid())].concat()),
            None,
            3,
            "expected one request message, got 2",
        ),
        (
            "no message",
            full(vec![]),
            None,
            3,
            "expected one request message, got 0",
        ),
        (
            "unknown encoding",
            full(framed(1, &gzip(&valid()))),
            Some("br"),
            12,
            "grpc-encoding \"br\" is not supported",
        ),
        (
            "compressed, no encoding",
            full(framed(1, &gzip(&valid()))),
            None,
            3,
            "flagged compressed but the request names no grpc-encoding",
        ),
        (
            "gzip bomb",
            full(framed(1, &gzip(&vec![0u8; 100_000]))),
            Some("gzip"),
            8,
            "decompresses to more than grpc-max-message-size 1024",
        ),
        (
            "not gzip",
            full(framed(1, b"garbage")),
            Some("gzip"),
            3,
            "does not decompress as gzip",
        ),
    ];
    for (name, body, encoding, code, text) in cases {
        let (status, message, _) = call(&mut send, addr, body, encoding).await;
        assert_eq!(status, code, "{name}: {message}");
        assert!(message.contains(text), "{name}: {message:?} lacks {text:?}");
    }

    // A broken stream: the body fails half-way, so the client resets the stream.
    let items: Vec<Result<Frame<Bytes>, std::io::Error>> = vec![
        Ok(Frame::data(Bytes::from(framed(0, &valid())[..4].to_vec()))),
        Err(std::io::Error::other("client gave up")),
    ];
    let broken: Body = StreamBody::new(futures_util::stream::iter(items)).boxed();
    let mut req = Request::post(format!("https://{addr}/queryservice.Query/Execute"));
    req = req
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    within("the connection to be ready", send.ready())
        .await
        .expect("ready");
    // The stream is reset by the client: whatever comes back (an error or a refusal) is the
    // listener's business; what matters is what follows.
    let _ = within(
        "the answer to the broken stream",
        send.send_request(req.body(broken).expect("request")),
    )
    .await;

    // Meanwhile another caller is served.
    let mut other = vtguard_proto::queryservice::query_client::QueryClient::new(
        tls_channel(&pki, addr, Some("vtgate-client-2"))
            .await
            .expect("connect"),
    );
    let r = other
        .execute(ExecuteRequest::decode(valid().as_slice()).expect("valid"))
        .await
        .expect("other caller");
    assert_eq!(
        rows(&r.into_inner().result.expect("result")),
        vec!["vtgate client 2|localhost,vtgate client 2"]
    );

    // gzip is inspected after decompression: the upstream gets the rewritten message.
    let (status, message, data) = call(
        &mut send,
        addr,
        full(framed(1, &gzip(&valid()))),
        Some("gzip"),
    )
    .await;
    assert_eq!(status, 0, "{message}");
    assert!(!data.is_empty());
    // And the same connection still serves a plain request.
    let (status, message, _) = call(&mut send, addr, full(framed(0, &valid())), None).await;
    assert_eq!(status, 0, "{message}");

    tokio::time::sleep(Duration::from_millis(50)).await;
    let got = up.received();
    assert_eq!(
        got.len(),
        3,
        "only whole, valid requests were forwarded: {:?}",
        got.iter().map(|r| r.body.len()).collect::<Vec<_>>()
    );
    let gz = ExecuteRequest::decode(got[1].message()).expect("decompressed and rewritten");
    assert_eq!(
        gz.immediate_caller_id.expect("set").username,
        "vtgate client 1"
    );
    assert_eq!(
        got[1].message(),
        got[2].message(),
        "the gzip and the plain request arrive alike"
    );
}
