//! Running a vtguard gRPC listener in-process, and clients for it.

use std::{net::SocketAddr, sync::Arc};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use vtguard_agent::kernel::Kernel;

use crate::{inproc::GrpcListener, pki::Pki};

/// Starts the gRPC `[[listener]]` described by `toml` (built with
/// [`crate::fixtures::Listener`]; its `listen` may use port 0).
pub async fn start_listener(toml: &str, kernel: Option<Arc<Kernel>>) -> GrpcListener {
    crate::inproc::start_grpc(toml, kernel).await
}

/// A TLS channel to `addr` trusting the PKI's root, presenting client `client` (a PKI file
/// stem such as "vtgate-client-1") or no certificate.
pub async fn tls_channel(
    pki: &Pki,
    addr: SocketAddr,
    client: Option<&str>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.read("root.pem")))
        .domain_name("localhost");
    if let Some(c) = client {
        tls = tls.identity(Identity::from_pem(
            pki.read(&format!("{c}.pem")),
            pki.read(&format!("{c}.key")),
        ));
    }
    Channel::from_shared(format!("https://{addr}"))
        .expect("uri")
        .tls_config(tls)?
        .connect()
        .await
}

/// A plaintext channel to `addr`.
pub async fn plain_channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect")
}

/// A request body for raw HTTP/2 clients.
pub type RawBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::io::Error>;

/// A bare HTTP/2 connection (hyper's client, as vtguard's own upstream side uses) that sends
/// whatever bytes it is given: over mTLS as PKI client `client`, or plaintext when `None`.
pub async fn raw_connection(
    pki: &Pki,
    addr: SocketAddr,
    client: Option<&str>,
) -> hyper::client::conn::http2::SendRequest<RawBody> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rustls::pki_types::ServerName;
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let Some(client) = client else {
        let (send, conn) = within(
            "the HTTP/2 handshake",
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)),
        )
        .await
        .expect("h2");
        tokio::spawn(conn);
        return send;
    };
    let mut cfg = client_config(pki, rustls::DEFAULT_VERSIONS, Some(client));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tls = within(
        "the TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(ServerName::try_from("localhost").expect("name"), tcp),
    )
    .await
    .expect("handshake");
    let (send, conn) = within(
        "the HTTP/2 handshake",
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)),
    )
    .await
    .expect("h2");
    tokio::spawn(conn);
    send
}

/// Sends one framed request body on a raw HTTP/2 connection: (grpc-status, grpc-message
/// percent-decoded, response data).
pub async fn raw_call(
    send: &mut hyper::client::conn::http2::SendRequest<RawBody>,
    addr: SocketAddr,
    path: &str,
    body: RawBody,
    encoding: Option<&str>,
) -> (u16, String, Vec<u8>) {
    let headers: Vec<(&str, &str)> = encoding.map(|e| ("grpc-encoding", e)).into_iter().collect();
    raw_request(send, addr, path, body, &headers).await
}

/// [`raw_call`] with more request headers.
pub async fn raw_request(
    send: &mut hyper::client::conn::http2::SendRequest<RawBody>,
    addr: SocketAddr,
    path: &str,
    body: RawBody,
    headers: &[(&str, &str)],
) -> (u16, String, Vec<u8>) {
    let mut req = http::Request::post(format!("https://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    within("the connection to be ready", send.ready())
        .await
        .expect("connection still usable");
    let resp = within(
        "the response",
        send.send_request(req.body(body).expect("request")),
    )
    .await
    .expect("response");
    let (parts, body) = resp.into_parts();
    let collected = within("the response body", http_body_util::BodyExt::collect(body))
        .await
        .expect("body");
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let data = collected.to_bytes().to_vec();
    let get = |k: &str| {
        parts
            .headers
            .get(k)
            .or_else(|| trailers.get(k))
            .map(|v| v.to_str().expect("ascii").to_owned())
            .unwrap_or_default()
    };
    let status = get("grpc-status").parse().expect("grpc-status");
    let message = percent_decode(&get("grpc-message"));
    (status, message, data)
}

/// How long a raw client waits for the listener: a regression fails the test instead of
/// hanging CI.
pub const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// `fut`'s output; panics naming `what` when it takes longer than [`READ_TIMEOUT`].
pub async fn within<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(READ_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("no {what} within {READ_TIMEOUT:?}"))
}

/// A client config trusting the PKI's root, offering `versions`, presenting client `client`
/// (a PKI file stem) or no certificate.
pub fn client_config(
    pki: &Pki,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client: Option<&str>,
) -> rustls::ClientConfig {
    use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.read("root.pem").as_bytes()).expect("root"))
        .expect("root");
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .expect("versions")
    .with_root_certificates(roots);
    match client {
        None => builder.with_no_client_auth(),
        Some(c) => {
            let certs: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(pki.read(&format!("{c}.pem")).as_bytes())
                    .collect::<Result<_, _>>()
                    .expect("certs");
            let key = PrivateKeyDer::from_pem_slice(pki.read(&format!("{c}.key")).as_bytes())
                .expect("key");
            builder
                .with_client_auth_cert(certs, key)
                .expect("client cert")
        }
    }
}

/// A TLS handshake with `config` to the listener at `addr` (name "localhost"): the session,
/// or the TLS error that ended it (a refusal's alert, say).
pub async fn tls_handshake(
    config: rustls::ClientConfig,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, rustls::Error> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    within(
        "end of the TLS handshake",
        tokio_rustls::TlsConnector::from(Arc::new(config)).connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        ),
    )
    .await
    .map_err(|e| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .cloned()
            .unwrap_or_else(|| panic!("a TLS error, not an I/O one: {e}"))
    })
}

/// The serial number of the certificate the TLS listener at `addr` serves.
pub async fn served_serial(pki: &Pki, addr: SocketAddr) -> Vec<u8> {
    let versions = rustls::DEFAULT_VERSIONS;
    let tls = tls_handshake(client_config(pki, versions, None), addr)
        .await
        .expect("server handshake");
    let der = tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
    cert.raw_serial().to_vec()
}

/// Undoes grpc-message's percent-encoding.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A gRPC message frame: compression flag, big-endian length, the message.
pub fn framed(flag: u8, msg: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

/// Bytes as a raw request body.
pub fn full(b: Vec<u8>) -> RawBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes::Bytes::from(b))
        .map_err(|never| match never {})
        .boxed()
}

/// A framed vttablet ExecuteRequest for `sql`, as a raw request body.
pub fn execute_body(sql: &str) -> RawBody {
    use prost::Message;
    let msg = vtguard_proto::query::ExecuteRequest {
        target: Some(crate::upstream::target("ks")),
        query: Some(crate::upstream::bound(sql)),
        ..Default::default()
    }
    .encode_to_vec();
    full(framed(0, &msg))
}
