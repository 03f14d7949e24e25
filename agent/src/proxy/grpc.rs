//! The gRPC listener: terminates TLS, proves who the caller is, and forwards each request to
//! the upstream over a connection of that caller's own, with the caller-ID fields vtguard
//! owns rewritten at the wire level and every other byte as it came.

mod frame;
pub mod methods;
pub mod wire;

use std::{
    collections::HashMap,
    convert::Infallible,
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use rustls::pki_types::ServerName;
use tokio::{
    net::{TcpListener, TcpStream},
    sync::Mutex as AsyncMutex,
};
use tracing::{debug, info, warn};
use vtguard_proto::{query, vtrpc};

use self::{
    frame::Refusal,
    methods::{code, Method, Rewrite, Route, Sql},
};
use super::AsyncReadWrite;
use crate::{
    acl::{Decision, Enforcer},
    config::{
        EffectiveCallerId, GrpcListener, GrpcService, ListenerConfig, Protocol,
        VTTABLET_OTHER_SERVICES,
    },
    identity::{self, Identity},
    kernel::Kernel,
    metrics::{Handshake, ListenerMetrics, RequestDecision},
    sessions::Sessions,
    status::{self, ListenerStatus, ReportStatus},
    tls::{self, Reloadable},
};

/// What stops a listener from starting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("listener {listener}: {source}")]
    Tls {
        listener: String,
        source: tls::Error,
    },
    #[error("listener {listener}: binding {addr}: {source}")]
    Bind {
        listener: String,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("listener {0}: not a gRPC listener")]
    NotGrpc(String),
}

type Body = BoxBody<Bytes, hyper::Error>;
type UpstreamIo = Box<dyn AsyncReadWrite>;

/// A gRPC listener, ready to serve.
pub struct GrpcProxy {
    name: String,
    /// The name again, shared with every session of the listener.
    label: Arc<str>,
    sessions: Arc<Sessions>,
    cfg: GrpcListener,
    listen: SocketAddr,
    upstream: SocketAddr,
    tls: Option<Arc<Reloadable>>,
    upstream_tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    kernel: Option<Arc<Kernel>>,
    acl: Option<Arc<Enforcer>>,
    /// Where the listener counts (what `vtguard status` reads, too).
    metrics: ListenerMetrics,
}

impl GrpcProxy {
    /// Loads the listener's certificates; `kernel`, when present, opens the upstream sockets.
    pub fn new(
        listener: &ListenerConfig,
        kernel: Option<Arc<Kernel>>,
        protected: bool,
        acl: Option<Arc<Enforcer>>,
        sessions: Arc<Sessions>,
    ) -> Result<Self, Error> {
        let Protocol::Grpc(cfg) = &listener.protocol else {
            return Err(Error::NotGrpc(listener.name.clone()));
        };
        let tls_err = |source| Error::Tls {
            listener: listener.name.clone(),
            source,
        };
        let tls = match &cfg.tls {
            Some(t) => Some(Arc::new(Reloadable::new(t.clone()).map_err(tls_err)?)),
            None => None,
        };
        let prefix = match cfg.service {
            GrpcService::Vttablet => "tablet-grpc",
            GrpcService::Vtgate => "vtgate-grpc",
        };
        let upstream_tls = match &cfg.upstream_tls {
            Some(u) => {
                let (c, name) = tls::client_config(u, &listener.upstream.ip().to_string(), prefix)
                    .map_err(tls_err)?;
                Some((Arc::new(c), name))
            }
            None => None,
        };
        if cfg.tls.is_none() {
            warn!(listener = %listener.name, listen = %listener.listen, "serving plaintext (insecure-plaintext = true): callers have no certificate to prove who they are");
        }
        if cfg.effective_callerid != EffectiveCallerId::Off {
            let port = listener.upstream.port();
            if protected {
                warn!(listener = %listener.name, "grpc-use-effective-callerid: callers without a verified certificate name themselves in the request, which is not secure; upstream port {port} is kernel-protected, so this listener is the only way to it and the identity it forwards is the one vtguard decided");
            } else {
                warn!(listener = %listener.name, "grpc-use-effective-callerid is not secure: any client can put any principal in the request, and upstream port {port} is not kernel-protected, so clients can also bypass vtguard: add it to [kernel] protected-ports");
            }
        }
        Ok(Self {
            name: listener.name.clone(),
            label: Arc::from(listener.name.as_str()),
            sessions,
            cfg: cfg.clone(),
            listen: listener.listen,
            upstream: listener.upstream,
            tls,
            upstream_tls,
            kernel,
            acl,
            metrics: crate::metrics::metrics().listener(&listener.name, status::Protocol::Grpc),
        })
    }

    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Re-reads the certificate files (when changed, or always with `force`).
    pub fn reload_tls(&self, force: bool) {
        super::reload_tls(&self.name, self.tls.as_deref(), force);
    }

    /// Binds the listening socket.
    pub async fn bind(&self, addr: SocketAddr) -> Result<TcpListener, Error> {
        TcpListener::bind(addr).await.map_err(|source| Error::Bind {
            listener: self.name.clone(),
            addr,
            source,
        })
    }

    /// Accepts connections until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let name = self.name.clone();
        super::accept_loop(&name, listener, move |tcp, peer| {
            Arc::clone(&self).connection(tcp, peer)
        })
        .await;
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let _ = tcp.set_nodelay(true);
        let m = &self.metrics;
        m.connection();
        let (io, identity): (Box<dyn AsyncReadWrite>, Option<Identity>) = match &self.tls {
            None => (Box::new(tcp), None),
            Some(t) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(t.current());
                let tls = match tokio::time::timeout(
                    self.cfg.handshake_timeout,
                    acceptor.accept(tcp),
                )
                .await
                {
                    Ok(Ok(s)) => {
                        m.handshake(Handshake::Ok);
                        s
                    }
                    Ok(Err(e)) => {
                        m.handshake(Handshake::Refused);
                        info!(listener = %self.name, %peer, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        m.handshake(Handshake::Timeout);
                        info!(listener = %self.name, %peer, timeout = ?self.cfg.handshake_timeout, "TLS handshake timed out");
                        return;
                    }
                };
                // Only a certificate the verifier checked against grpc-ca names the caller.
                let cert_identity = if self.cfg.tls.as_ref().is_some_and(|t| t.ca.is_some()) {
                    match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                        Some(der) => match identity::from_certificate(der) {
                            Ok(id) => Some(id),
                            Err(e) => {
                                info!(listener = %self.name, %peer, error = %e, "client certificate refused");
                                return;
                            }
                        },
                        None => None,
                    }
                } else {
                    None
                };
                (Box::new(tls), cert_identity)
            }
        };
        // A certificate identity is the connection's: policy that takes it away closes it.
        let mut session = match &identity {
            Some(id) => {
                info!(listener = %self.name, %peer, identity = %id, "accepted");
                Some(
                    self.sessions
                        .open(&self.label, self.upstream.port(), &id.username),
                )
            }
            None => {
                debug!(listener = %self.name, %peer, "accepted without a certificate identity");
                None
            }
        };
        let who = identity.as_ref().map(|i| i.username.clone());
        let conn = Arc::new(Conn {
            proxy: Arc::clone(&self),
            identity,
            upstreams: AsyncMutex::new(HashMap::new()),
        });
        let service = hyper::service::service_fn(move |req| {
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(conn.handle(req).await) }
        });
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.max_concurrent_streams(1000);
        let serve = builder.serve_connection(TokioIo::new(io), service);
        let cut = async {
            match session.as_mut() {
                Some(s) => s.cut_off().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            res = serve => if let Err(e) = res {
                debug!(listener = %self.name, %peer, error = %e, "connection ended with an error");
            },
            () = cut => {
                info!(listener = %self.name, %peer, identity = who.as_deref().unwrap_or(""), "connection closed: policy no longer lets this identity reach the upstream");
            }
        }
    }
}

impl ReportStatus for GrpcProxy {
    fn status(&self) -> ListenerStatus {
        ListenerStatus {
            name: self.name.clone(),
            protocol: status::Protocol::Grpc,
            service: Some(self.cfg.service.as_str().to_owned()),
            listen: self.listen,
            upstream: self.upstream,
            tls: self.tls.is_some(),
            counts: self.metrics.counts(),
        }
    }
}

/// One downstream connection: its proven identity and its own upstream connections.
struct Conn {
    proxy: Arc<GrpcProxy>,
    identity: Option<Identity>,
    /// By identity username: with the effective-caller override, callers on one connection
    /// may name different identities, and no upstream socket is ever shared between them.
    upstreams: AsyncMutex<HashMap<String, hyper::client::conn::http2::SendRequest<Full<Bytes>>>>,
}

/// What the request said about itself, for the query log.
#[derive(Debug, Default)]
struct Inspected {
    effective: Option<vtrpc::CallerId>,
    target: Option<query::Target>,
    sql: Vec<String>,
    /// Message tables the request streams from (and so writes: acks).
    message_tables: Vec<String>,
}

impl Conn {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let p = &self.proxy;
        let path = req.uri().path().to_owned();
        let route = methods::route(p.cfg.service, &path, &VTTABLET_OTHER_SERVICES);
        let result = self.forward(req, &route).await;
        let latency = start.elapsed();
        // A bounded label: the method path only for methods the listener knows.
        let method = match &route {
            Route::Query(_) | Route::Other { .. } => path.as_str(),
            Route::Refused { .. } => "unknown",
        };
        let decision = if result.is_ok() {
            RequestDecision::Forwarded
        } else {
            RequestDecision::Refused
        };
        p.metrics.request(method, decision, latency);
        match result {
            Ok((response, id, ins)) => {
                if !p.cfg.query_log {
                    return response.map(|b| b.boxed());
                }
                // Logged when the response ends (or the caller goes away), with its status.
                let status = grpc_status(response.headers());
                response.map(|inner| {
                    Logged {
                        inner,
                        status,
                        finished: false,
                        entry: Some(LogEntry {
                            listener: p.name.clone(),
                            method: path,
                            identity: id,
                            inspected: ins,
                            start,
                        }),
                    }
                    .boxed()
                })
            }
            Err((refusal, id, ins)) => {
                if p.cfg.query_log {
                    query_log(
                        &p.name,
                        &path,
                        id.as_ref(),
                        &ins,
                        "refused",
                        Some(refusal.code),
                        latency,
                    );
                }
                debug!(listener = %p.name, path = %path, code = refusal.code, message = %refusal.message, "refused");
                if refusal.in_body {
                    vtgate_error(refusal.code, &refusal.message)
                } else {
                    grpc_error(refusal.code, &refusal.message)
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    async fn forward(
        &self,
        req: Request<Incoming>,
        route: &Route,
    ) -> Result<(Response<Incoming>, Identity, Inspected), (Refusal, Option<Identity>, Inspected)>
    {
        let p = &self.proxy;
        let max = p.cfg.max_message_size;
        let refuse = |r: Refusal| (r, self.identity.clone(), Inspected::default());
        if let Route::Refused { code, message } = route {
            return Err(refuse(Refusal::new(*code, message.clone())));
        }
        let (parts, body) = req.into_parts();
        // Requests are unary: read the whole message (bounded), inspect it, then forward.
        let body = match Limited::new(body, max + 5).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(refuse(frame::too_large(max + 5, max)));
            }
            Err(e) => {
                return Err(refuse(Refusal::new(
                    code::INVALID_ARGUMENT,
                    format!("vtguard: reading the request body: {e}"),
                )));
            }
        };
        let frames = frame::split(&body, max).map_err(refuse)?;
        let [only] = frames.as_slice() else {
            return Err(refuse(Refusal::new(
                code::INVALID_ARGUMENT,
                format!(
                    "vtguard: expected one request message, got {}",
                    frames.len()
                ),
            )));
        };
        let encoding = parts
            .headers
            .get("grpc-encoding")
            .and_then(|v| v.to_str().ok());
        let msg = frame::decompress(only, encoding, max).map_err(refuse)?;
        let fields = wire::fields(&msg).map_err(|e| {
            refuse(Refusal::new(
                code::INVALID_ARGUMENT,
                format!("vtguard: request is not valid protobuf: {e}"),
            ))
        })?;

        let (outgoing, identity, inspected) = match route {
            Route::Query(m) => {
                let ins = inspect(m, &msg, &fields).map_err(refuse)?;
                let identity = self.caller(ins.effective.as_ref());
                if let Some(acl) = &p.acl {
                    for table in &ins.message_tables {
                        let d = acl.check_table(
                            &identity.username,
                            &identity.groups,
                            m.name,
                            crate::acl::Role::Writer,
                            table,
                        );
                        super::account(&p.metrics, &identity.username, &d);
                        if let Decision::Deny { message, .. } = d {
                            return Err((
                                Refusal::new(code::PERMISSION_DENIED, message),
                                Some(identity),
                                ins,
                            ));
                        }
                    }
                    for sql in &ins.sql {
                        let decision = acl.check(&identity.username, &identity.groups, sql);
                        super::account(&p.metrics, &identity.username, &decision);
                        if let Decision::Deny { message, .. } = decision {
                            let mut r = Refusal::new(code::PERMISSION_DENIED, message);
                            r.in_body = p.cfg.service == GrpcService::Vtgate
                                && VTGATE_UNARY.contains(&m.name);
                            return Err((r, Some(identity), ins));
                        }
                    }
                }
                let out = rewrite(m, &msg, &fields, &identity, ins.effective.as_ref());
                (out, identity, ins)
            }
            Route::Other { service } => {
                let identity = self.caller(None);
                let allowed = p.cfg.services.get(service);
                let member = allowed.is_some_and(|ids| {
                    ids.contains(&identity.username)
                        || identity.groups.iter().any(|g| ids.contains(g))
                });
                if !member {
                    return Err((
                        Refusal::new(
                            code::PERMISSION_DENIED,
                            format!("vtguard: identity {:?} may not call {service} on listener {} (list it under [listener.services])", identity.username, p.name),
                        ),
                        Some(identity),
                        Inspected::default(),
                    ));
                }
                (msg.clone(), identity, Inspected::default())
            }
            Route::Refused { .. } => unreachable!("handled above"),
        };

        let mut sender = match self.upstream(&identity).await {
            Ok(s) => s,
            Err(r) => return Err((r, Some(identity), inspected)),
        };
        let scheme = if p.upstream_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let uri = format!(
            "{scheme}://{}{}",
            p.upstream,
            parts.uri.path_and_query().map_or("/", |x| x.as_str())
        );
        let mut up = Request::builder().method(parts.method).uri(uri);
        for (k, v) in &parts.headers {
            if k != http::header::CONTENT_LENGTH && k != http::header::HOST {
                up = up.header(k, v);
            }
        }
        let up = match up.body(Full::new(Bytes::from(frame::encode(&outgoing)))) {
            Ok(r) => r,
            Err(e) => {
                return Err((
                    Refusal::new(
                        code::INTERNAL,
                        format!("vtguard: building the upstream request: {e}"),
                    ),
                    Some(identity),
                    inspected,
                ))
            }
        };
        match sender.send_request(up).await {
            Ok(resp) => Ok((resp, identity, inspected)),
            Err(e) => {
                self.upstreams.lock().await.remove(&identity.username);
                Err((
                    Refusal::new(
                        code::UNAVAILABLE,
                        format!("vtguard: upstream {} failed: {e}", p.upstream),
                    ),
                    Some(identity),
                    inspected,
                ))
            }
        }
    }

    /// The caller's identity: its certificate's, else Vitess's fallbacks.
    fn caller(&self, effective: Option<&vtrpc::CallerId>) -> Identity {
        match &self.identity {
            Some(id) => id.clone(),
            None => identity::fallback(
                self.proxy.cfg.effective_callerid,
                effective.map(|e| (e.principal.as_str(), e.groups.as_slice())),
            ),
        }
    }

    /// This connection's upstream connection for `identity`, opened on first use.
    async fn upstream(
        &self,
        identity: &Identity,
    ) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, Refusal> {
        let mut map = self.upstreams.lock().await;
        if let Some(s) = map.get(&identity.username) {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let p = &self.proxy;
        let io = p.dial(&identity.username).await?;
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .map_err(|e| {
                    Refusal::new(
                        code::UNAVAILABLE,
                        format!(
                            "vtguard: upstream {} HTTP/2 handshake failed: {e}",
                            p.upstream
                        ),
                    )
                })?;
        let listener = p.name.clone();
        let mut session = p
            .sessions
            .open_upstream(&p.label, p.upstream.port(), &identity.username);
        let username = identity.username.clone();
        tokio::spawn(async move {
            tokio::select! {
                res = conn => if let Err(e) = res {
                    debug!(listener = %listener, error = %e, "upstream connection ended");
                },
                () = session.cut_off() => {
                    info!(listener = %listener, identity = %username, "upstream connection closed: policy no longer lets this identity reach the upstream");
                }
            }
        });
        map.insert(identity.username.clone(), sender.clone());
        Ok(sender)
    }
}

impl GrpcProxy {
    /// Opens a connection to the upstream for `username`: through the kernel's registered
    /// socket path when the agent enforces in the kernel, then TLS when configured.
    async fn dial(&self, username: &str) -> Result<UpstreamIo, Refusal> {
        let unavailable = |e: String| {
            Refusal::new(
                code::UNAVAILABLE,
                format!("vtguard: upstream {} unavailable: {e}", self.upstream),
            )
        };
        let tcp = super::dial(
            self.kernel.as_deref(),
            &self.sessions,
            username,
            self.upstream,
        )
        .await
        .map_err(|e| match e {
            super::DialError::KernelRefused { .. } | super::DialError::PolicyRemoved { .. } => {
                Refusal::new(code::PERMISSION_DENIED, format!("vtguard: {e}"))
            }
            super::DialError::Unavailable { detail, .. } => unavailable(detail),
        })?;
        match &self.upstream_tls {
            None => Ok(tcp),
            Some((config, name)) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                let s = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| unavailable(format!("TLS: {e}")))?;
                Ok(Box::new(s))
            }
        }
    }
}

/// Reads the effective caller, target and SQL of a request; a field that does not decode as
/// what Vitess puts there refuses the request.
fn inspect(m: &Method, msg: &[u8], fields: &[wire::Field]) -> Result<Inspected, Refusal> {
    let bad = |field: u32, what: &str, e: String| {
        Refusal::new(
            code::INVALID_ARGUMENT,
            format!(
                "vtguard: {} request field {field} is not a valid {what}: {e}",
                m.name
            ),
        )
    };
    let mut ins = Inspected::default();
    if let Some(n) = m.effective {
        if let Some(sub) = wire::merged_submessage(msg, fields, n) {
            ins.effective = Some(
                vtrpc::CallerId::decode(sub.as_slice())
                    .map_err(|e| bad(n, "vtrpc.CallerID", e.to_string()))?,
            );
        }
    }
    if let Some(n) = m.target {
        if let Some(sub) = wire::merged_submessage(msg, fields, n) {
            ins.target = Some(
                query::Target::decode(sub.as_slice())
                    .map_err(|e| bad(n, "query.Target", e.to_string()))?,
            );
        }
    }
    for s in m.sql {
        match *s {
            Sql::Bound(n) => {
                if let Some(sub) = wire::merged_submessage(msg, fields, n) {
                    let q = query::BoundQuery::decode(sub.as_slice())
                        .map_err(|e| bad(n, "query.BoundQuery", e.to_string()))?;
                    ins.sql.push(q.sql);
                }
            }
            Sql::BoundList(n) => {
                for f in fields.iter().filter(|f| f.number == n) {
                    let q = query::BoundQuery::decode(&msg[f.payload.clone()])
                        .map_err(|e| bad(n, "query.BoundQuery", e.to_string()))?;
                    ins.sql.push(q.sql);
                }
            }
            Sql::MessageTable(n) => ins.message_tables.extend(
                wire::strings(msg, fields, n).map_err(|e| bad(n, "string", e.to_string()))?,
            ),
            Sql::Text(n) => ins.sql.extend(
                wire::strings(msg, fields, n).map_err(|e| bad(n, "string", e.to_string()))?,
            ),
        }
    }
    Ok(ins)
}

/// The request with the caller-ID field vtguard owns replaced by the proven identity.
fn rewrite(
    m: &Method,
    msg: &[u8],
    fields: &[wire::Field],
    id: &Identity,
    effective: Option<&vtrpc::CallerId>,
) -> Vec<u8> {
    match m.rewrite {
        Rewrite::None => msg.to_vec(),
        Rewrite::ImmediateCaller => {
            let ours = query::VtGateCallerId {
                username: id.username.clone(),
                groups: id.groups.clone(),
            };
            wire::replace_field(msg, fields, 2, &ours.encode_to_vec())
        }
        Rewrite::EffectiveCaller => {
            let ours = vtrpc::CallerId {
                principal: id.username.clone(),
                component: effective.map(|e| e.component.clone()).unwrap_or_default(),
                subcomponent: effective
                    .map(|e| e.subcomponent.clone())
                    .unwrap_or_default(),
                groups: id.groups.clone(),
            };
            wire::replace_field(msg, fields, 1, &ours.encode_to_vec())
        }
    }
}

/// vtgate's unary calls, which answer errors inside the response (field 1, vtrpc.RPCError).
const VTGATE_UNARY: [&str; 4] = ["Execute", "ExecuteMulti", "ExecuteBatch", "Prepare"];

/// An OK response whose message carries only `error` (field 1): how vtgate reports a failed
/// unary call.
fn vtgate_error(code: u16, message: &str) -> Response<Body> {
    let err = vtrpc::RpcError {
        message: message.to_owned(),
        code: i32::from(code),
    };
    let mut msg = Vec::new();
    wire::put_varint(&mut msg, (1 << 3) | u64::from(wire::LEN));
    let e = err.encode_to_vec();
    wire::put_varint(&mut msg, e.len() as u64);
    msg.extend_from_slice(&e);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    let frames: Vec<Result<hyper::body::Frame<Bytes>, hyper::Error>> = vec![
        Ok(hyper::body::Frame::data(Bytes::from(frame::encode(&msg)))),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    let mut r =
        Response::new(http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

/// A trailers-only gRPC error response.
fn grpc_error(code: u16, message: &str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed(),
    );
    let h = r.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    r
}

/// gRPC's grpc-message encoding: printable ASCII but '%' as is, the rest percent-encoded.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn grpc_status(h: &HeaderMap) -> Option<u16> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// A short digest of SQL text: enough to correlate, without putting data in the log.
pub fn sql_digest(sql: &[String]) -> String {
    use sha2::{Digest, Sha256};
    if sql.is_empty() {
        return String::new();
    }
    let mut h = Sha256::new();
    for s in sql {
        h.update(s.as_bytes());
        h.update([0]);
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What the query log says about a forwarded request, once its response ends.
struct LogEntry {
    listener: String,
    method: String,
    identity: Identity,
    inspected: Inspected,
    start: Instant,
}

/// The upstream's response body, passed through frame by frame; notes the grpc-status of the
/// trailers and writes the query log line when the response ends or is dropped.
struct Logged {
    inner: Incoming,
    status: Option<u16>,
    finished: bool,
    entry: Option<LogEntry>,
}

impl hyper::body::Body for Logged {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(frame))) => {
                if let Some(t) = frame.trailers_ref() {
                    self.status = grpc_status(t).or(self.status);
                    self.finished = true;
                }
            }
            std::task::Poll::Ready(None) => self.finished = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Logged {
    fn drop(&mut self) {
        if let Some(e) = self.entry.take() {
            let decision = if self.finished {
                "forwarded"
            } else {
                "forwarded, caller went away"
            };
            query_log(
                &e.listener,
                &e.method,
                Some(&e.identity),
                &e.inspected,
                decision,
                self.status,
                e.start.elapsed(),
            );
        }
    }
}

fn query_log(
    listener: &str,
    method: &str,
    id: Option<&Identity>,
    ins: &Inspected,
    decision: &str,
    status: Option<u16>,
    latency: Duration,
) {
    let eff = ins.effective.as_ref();
    let target = ins.target.as_ref().map(|t| {
        let tt = vtguard_proto::topodata::TabletType::try_from(t.tablet_type)
            .map(|x| x.as_str_name().to_ascii_lowercase())
            .unwrap_or_else(|_| t.tablet_type.to_string());
        format!("{}:{}@{tt}", t.keyspace, t.shard)
    });
    info!(
        target: "vtguard::query_log",
        listener,
        method,
        identity = id.map(|i| i.username.as_str()),
        groups = ?id.map(|i| &i.groups),
        principal = eff.map(|e| e.principal.as_str()),
        component = eff.map(|e| e.component.as_str()),
        subcomponent = eff.map(|e| e.subcomponent.as_str()),
        target = target.as_deref(),
        sql_digest = %sql_digest(&ins.sql),
        decision,
        status,
        latency_us = latency.as_micros() as u64,
        "request"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(
            percent_encode("Select denied for 'u' 100%"),
            "Select denied for 'u' 100%25"
        );
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }

    #[test]
    fn sql_digests_are_stable_and_short() {
        let a = sql_digest(&["select 1".into()]);
        assert_eq!(a.len(), 16);
        assert_eq!(a, sql_digest(&["select 1".into()]));
        assert_ne!(a, sql_digest(&["select 2".into()]));
        assert_ne!(
            sql_digest(&["ab".into(), "c".into()]),
            sql_digest(&["a".into(), "bc".into()])
        );
        assert_eq!(sql_digest(&[]), "");
    }
}
