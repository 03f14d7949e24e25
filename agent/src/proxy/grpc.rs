//! The gRPC listener: terminates TLS, proves who the caller is, and forwards each request to
//! the upstream over a connection of that caller's own, with the caller-ID fields vtguard
//! owns rewritten at the wire level and every other byte as it came.

pub mod frame;
pub mod methods;
pub mod wire;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    convert::Infallible,
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
use tokio::{net::TcpStream, sync::Mutex as AsyncMutex};
use tonic::{Code, Status};
use tracing::{debug, info, warn};
use vtguard_proto::{query, vtrpc};

use self::methods::{Method, Rewrite, Route, Sql};
use super::{
    listener::{self, Core, Deps, DialError, ListenerConfig, Serve, TlsRefusal},
    AsyncReadWrite,
};
use crate::{
    acl::Decision,
    identity::{self, EffectiveCallerId, Identity},
    metrics::{Handshake, RequestDecision},
    status::{ListenerStatus, Protocol},
    tls::{self, ServerTls, UpstreamTls},
};

/// Which Vitess gRPC service sits behind a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrpcService {
    /// vttablet: queryservice.Query (and TabletManager, UpdateStream, Throttler).
    Vttablet,
    /// vtgate: vtgateservice.Vitess.
    Vtgate,
}

impl GrpcService {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vttablet => "vttablet",
            Self::Vtgate => "vtgate",
        }
    }
}

/// The non-query services a vttablet port also serves; table ACLs do not cover them.
pub const VTTABLET_OTHER_SERVICES: [&str; 3] = [
    "tabletmanagerservice.TabletManager",
    "binlogservice.UpdateStream",
    "throttlerservice.Throttler",
];

/// Vitess's default `grpc-max-message-size`.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// What a gRPC listener does beyond what every listener does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcConfig {
    pub service: GrpcService,
    /// `None`: plaintext (only with `insecure-plaintext = true`).
    pub tls: Option<ServerTls>,
    pub effective_callerid: EffectiveCallerId,
    pub upstream_tls: Option<UpstreamTls>,
    pub handshake_timeout: Duration,
    pub max_message_size: usize,
    pub query_log: bool,
    /// `grpc-server-keepalive-time` / `-timeout`: HTTP/2 pings to an idle client, and how long
    /// to wait for its answer before closing.
    pub keepalive_time: Duration,
    pub keepalive_timeout: Duration,
    /// `grpc-max-connection-idle`: a connection without a request for this long is closed
    /// (GOAWAY).
    pub max_connection_idle: Duration,
    /// `grpc-max-connection-age`: a connection older than this (±10 % jitter, so that clients
    /// do not reconnect in step) gets GOAWAY; `None`: no limit.
    pub max_connection_age: Option<Duration>,
    /// `grpc-max-connection-age-grace`: how long requests in flight may still run after that
    /// GOAWAY before the connection is closed; `None`: as long as they take.
    pub max_connection_age_grace: Option<Duration>,
    /// Non-query services (vttablet only) and the identities (user or group) allowed on each.
    pub services: BTreeMap<String, BTreeSet<String>>,
}

type Body = BoxBody<Bytes, hyper::Error>;
type UpstreamIo = Box<dyn AsyncReadWrite>;

/// A gRPC listener, ready to serve.
pub struct GrpcProxy {
    core: Core,
    cfg: GrpcConfig,
    upstream_tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
}

impl GrpcProxy {
    /// Loads the listener's certificates and those it dials the upstream with.
    pub fn new(
        listener: &ListenerConfig,
        cfg: &GrpcConfig,
        deps: Deps,
    ) -> Result<Self, listener::Error> {
        let core = Core::new(listener, Protocol::Grpc, cfg.tls.as_ref(), |e| e, deps)?;
        let prefix = match cfg.service {
            GrpcService::Vttablet => "tablet-grpc",
            GrpcService::Vtgate => "vtgate-grpc",
        };
        let upstream_tls = cfg
            .upstream_tls
            .as_ref()
            .map(|u| {
                tls::client_config(u, &listener.upstream.ip().to_string(), prefix)
                    .map(|(c, name)| (Arc::new(c), name))
            })
            .transpose()
            .map_err(|source| listener::Error::Tls {
                listener: listener.name.clone(),
                source,
            })?;
        if cfg.tls.is_none() {
            warn!(listener = %listener.name, listen = %listener.listen, "serving plaintext (insecure-plaintext = true): callers have no certificate to prove who they are");
        }
        if cfg.effective_callerid != EffectiveCallerId::Off {
            let port = listener.upstream.port();
            if core.protected {
                warn!(listener = %listener.name, "grpc-use-effective-callerid: callers without a verified certificate name themselves in the request, which is not secure; upstream port {port} is kernel-protected, so this listener is the only way to it and the identity it forwards is the one vtguard decided");
            } else {
                warn!(listener = %listener.name, "grpc-use-effective-callerid is not secure: any client can put any principal in the request, and upstream port {port} is not kernel-protected, so clients can also bypass vtguard: add it to [kernel] protected-ports");
            }
        }
        Ok(Self {
            core,
            cfg: cfg.clone(),
            upstream_tls,
        })
    }

    /// The TLS handshake, within the listener's timeout, and the identity of the caller's
    /// certificate; `None` when the connection is refused (counted and logged here).
    async fn handshake(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Box<dyn AsyncReadWrite>, Option<Identity>)> {
        if !self.core.serves_tls() {
            return Some((Box::new(tcp), None));
        }
        let (name, timeout) = (&self.core.name, self.cfg.handshake_timeout);
        match tokio::time::timeout(timeout, self.core.accept_tls(tcp)).await {
            Ok(Ok((tls, identity))) => {
                self.core.metrics.handshake(Handshake::Ok);
                Some((Box::new(tls), identity))
            }
            Ok(Err(e)) => {
                self.core.metrics.handshake(Handshake::Refused);
                match e {
                    TlsRefusal::Handshake(e) => {
                        info!(listener = %name, %peer, error = %e, "TLS handshake refused")
                    }
                    TlsRefusal::Certificate(e) => {
                        info!(listener = %name, %peer, error = %e, "client certificate refused")
                    }
                }
                None
            }
            Err(_) => {
                self.core.metrics.handshake(Handshake::Timeout);
                info!(listener = %name, %peer, ?timeout, "TLS handshake timed out");
                None
            }
        }
    }

    /// One downstream connection: HTTP/2 over it until it ends, or until policy takes the
    /// identity of its certificate away.
    async fn serve_connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        let Some((io, identity)) = self.handshake(tcp, peer).await else {
            return;
        };
        let name = self.core.name.clone();
        // A certificate identity counts against its limit for the connection's life.
        let _slot = match identity
            .as_ref()
            .map(|id| self.core.admit_identity(&id.username))
        {
            Some(Err(e)) => {
                info!(listener = %name, %peer, "connection refused: {e}");
                self.refuse(io, Status::resource_exhausted(format!("vtguard: {e}")))
                    .await;
                return;
            }
            Some(Ok(slot)) => Some(slot),
            None => None,
        };
        let mut session = match &identity {
            Some(id) => {
                info!(listener = %name, %peer, identity = %id, "accepted");
                Some(self.core.client_session(&id.username))
            }
            None => {
                debug!(listener = %name, %peer, "accepted without a certificate identity");
                None
            }
        };
        let who = identity.as_ref().map(|i| i.username.clone());
        let conn_state = Arc::new(Activity::default());
        let conn = Arc::new(Conn {
            proxy: Arc::clone(&self),
            identity,
            upstreams: AsyncMutex::new(HashMap::new()),
            activity: Arc::clone(&conn_state),
        });
        let service = hyper::service::service_fn(move |req| {
            let conn = Arc::clone(&conn);
            async move { Ok::<_, Infallible>(conn.handle(req).await) }
        });
        let serve = self.http2().serve_connection(TokioIo::new(io), service);
        tokio::pin!(serve);
        let cut = async {
            match session.as_mut() {
                Some(s) => s.cut_off().await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(cut);
        let idle = self.cfg.max_connection_idle;
        // Checked a few times per idle period (not every second on every connection).
        let period = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        let mut tick = tokio::time::interval(period);
        let age = self.cfg.max_connection_age.map(jittered);
        let aged = async {
            match age {
                Some(age) => tokio::time::sleep(age).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(aged);
        loop {
            tokio::select! {
                res = serve.as_mut() => {
                    if let Err(e) = res {
                        debug!(listener = %name, %peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                () = cut.as_mut() => {
                    info!(listener = %name, %peer, identity = who.as_deref().unwrap_or(""), "connection closed: policy no longer lets this identity reach the upstream");
                    return;
                }
                () = aged.as_mut() => {
                    info!(listener = %name, %peer, ?age, "closing a connection at its maximum age (grpc-max-connection-age)");
                    serve.as_mut().graceful_shutdown();
                    match self.cfg.max_connection_age_grace {
                        Some(grace) => {
                            if tokio::time::timeout(grace, serve.as_mut()).await.is_err() {
                                info!(listener = %name, %peer, ?grace, "requests still in flight after grpc-max-connection-age-grace: connection closed");
                            }
                        }
                        None => {
                            let _ = serve.as_mut().await;
                        }
                    }
                    return;
                }
                _ = tick.tick() => {
                    if conn_state.idle_for() >= idle {
                        // GOAWAY: the client finishes what it has in flight and reconnects
                        // when it needs to.
                        info!(listener = %name, %peer, ?idle, "closing an idle connection (grpc-max-connection-idle)");
                        serve.as_mut().graceful_shutdown();
                        if tokio::time::timeout(Duration::from_secs(10), serve.as_mut()).await.is_err() {
                            debug!(listener = %name, %peer, "idle connection did not close in time");
                        }
                        return;
                    }
                }
            }
        }
    }

    /// The HTTP/2 server side of a client connection: concurrent streams bounded, keepalive
    /// pings (`grpc-server-keepalive-time`/`-timeout`) to find peers that are gone.
    fn http2(&self) -> hyper::server::conn::http2::Builder<TokioExecutor> {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .max_concurrent_streams(1000)
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(self.cfg.keepalive_time))
            .keep_alive_timeout(self.cfg.keepalive_timeout);
        builder
    }

    /// Answers every request of a refused connection with `status` for a short while, then
    /// closes it: the client learns why instead of seeing a dropped connection.
    async fn refuse(&self, io: Box<dyn AsyncReadWrite>, status: Status) {
        let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
            let status = status.clone();
            async move { Ok::<_, Infallible>(status.into_http::<Body>()) }
        });
        let serve = self.http2().serve_connection(TokioIo::new(io), service);
        let _ = tokio::time::timeout(self.cfg.handshake_timeout, serve).await;
    }

    /// Opens a connection to the upstream for `username`: through the kernel's registered
    /// socket path when the agent enforces in the kernel, then TLS when configured.
    async fn dial(&self, username: &str) -> Result<UpstreamIo, Status> {
        let upstream = self.core.upstream;
        let unavailable = |e: String| {
            Status::unavailable(format!("vtguard: upstream {upstream} unavailable: {e}"))
        };
        let tcp = self.core.dial(username).await.map_err(|e| match e {
            DialError::KernelRefused { .. } | DialError::PolicyRemoved { .. } => {
                Status::permission_denied(format!("vtguard: {e}"))
            }
            DialError::Unavailable { detail, .. } => unavailable(detail),
            DialError::NotOwner { .. } => Status::unavailable(format!("vtguard: {e}")),
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

impl Serve for GrpcProxy {
    fn core(&self) -> &Core {
        &self.core
    }

    async fn connection(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr) {
        self.serve_connection(tcp, peer).await
    }

    fn status_extra(&self, status: &mut ListenerStatus) {
        status.service = Some(self.cfg.service.as_str().to_owned());
    }
}

/// One downstream connection: its proven identity and its own upstream connections.
struct Conn {
    proxy: Arc<GrpcProxy>,
    identity: Option<Identity>,
    /// By identity username: with the effective-caller override, callers on one connection
    /// may name different identities, and no upstream socket is ever shared between them.
    upstreams: AsyncMutex<HashMap<String, hyper::client::conn::http2::SendRequest<Full<Bytes>>>>,
    activity: Arc<Activity>,
}

/// `age` ± 10 %, from the clock's sub-second digits (spreading reconnects needs no real
/// randomness).
fn jittered(age: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    // 0.9 ..= 1.1
    let factor = 0.9 + f64::from(nanos % 1_000_001) / 1_000_000.0 * 0.2;
    age.mul_f64(factor)
}

/// Requests in flight on a connection and when the last one ended: how long it has been idle.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    since: parking_lot::Mutex<Instant>,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: Default::default(),
            since: parking_lot::Mutex::new(Instant::now()),
        }
    }
}

impl Activity {
    fn start(&self) {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn end(&self) {
        *self.since.lock() = Instant::now();
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Zero while requests are in flight.
    fn idle_for(&self) -> Duration {
        if self.in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        self.since.lock().elapsed()
    }
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

/// A request on its way upstream: the upstream's response, and whose it is.
struct Forwarded {
    response: Response<Incoming>,
    identity: Identity,
    inspected: Inspected,
}

/// A request vtguard answers itself, and what it knew of it by then.
struct Refused {
    status: Status,
    /// Answer as vtgate does for unary calls: an OK status with the error inside the response
    /// message (field 1, vtrpc.RPCError).
    in_body: bool,
    identity: Option<Identity>,
    inspected: Inspected,
}

impl Refused {
    /// Boxed: a refusal is the rare path, and large next to what the common path returns.
    fn new(status: Status, identity: Option<Identity>, inspected: Inspected) -> Box<Self> {
        Box::new(Self {
            status,
            in_body: false,
            identity,
            inspected,
        })
    }
}

impl Conn {
    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        self.activity.start();
        let response = self.respond(req).await;
        self.activity.end();
        response
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Body> {
        let start = Instant::now();
        let p = &self.proxy;
        let name = &p.core.name;
        let path = req.uri().path().to_owned();
        let route = methods::route(p.cfg.service, &path, &VTTABLET_OTHER_SERVICES);
        let result = self.forward(req, &route).await;
        let latency = start.elapsed();
        // A bounded label: the method path only for methods the listener knows.
        let method = match &route {
            Route::Query(_) | Route::Other { .. } => path.as_str(),
            Route::Refused(_) => "unknown",
        };
        let decision = if result.is_ok() {
            RequestDecision::Forwarded
        } else {
            RequestDecision::Refused
        };
        p.core.metrics.request(method, decision, latency);
        match result {
            Ok(f) => {
                if !p.cfg.query_log {
                    return f.response.map(|b| b.boxed());
                }
                // Logged when the response ends (or the caller goes away), with its status.
                let status = grpc_status(f.response.headers());
                f.response.map(|inner| {
                    Logged {
                        inner,
                        status,
                        finished: false,
                        entry: Some(LogEntry {
                            listener: name.clone(),
                            method: path,
                            identity: f.identity,
                            inspected: f.inspected,
                            start,
                        }),
                    }
                    .boxed()
                })
            }
            Err(r) => {
                let code = r.status.code() as u16;
                if p.cfg.query_log {
                    query_log(
                        name,
                        &path,
                        r.identity.as_ref(),
                        &r.inspected,
                        "refused",
                        Some(code),
                        latency,
                    );
                }
                debug!(listener = %name, path = %path, code, message = %r.status.message(), "refused");
                if r.in_body {
                    vtgate_error(&r.status)
                } else {
                    r.status.into_http()
                }
            }
        }
    }

    /// Reads, checks and forwards one request.
    async fn forward(
        &self,
        req: Request<Incoming>,
        route: &Route,
    ) -> Result<Forwarded, Box<Refused>> {
        let refused = |status| Refused::new(status, self.identity.clone(), Inspected::default());
        if let Route::Refused(status) = route {
            return Err(refused(status.clone()));
        }
        let (parts, body) = req.into_parts();
        let msg = self
            .read_message(&parts.headers, body)
            .await
            .map_err(refused)?;
        let fields = wire::fields(&msg).map_err(|e| {
            refused(Status::invalid_argument(format!(
                "vtguard: request is not valid protobuf: {e}"
            )))
        })?;
        let (outgoing, identity, inspected) = match route {
            Route::Query(m) => self.authorize_query(m, &msg, &fields)?,
            Route::Other { service } => {
                let identity = self.authorize_service(service)?;
                (msg.clone(), identity, Inspected::default())
            }
            Route::Refused(_) => unreachable!("handled above"),
        };
        match self.send(parts, outgoing, &identity).await {
            Ok(response) => Ok(Forwarded {
                response,
                identity,
                inspected,
            }),
            Err(status) => Err(Refused::new(status, Some(identity), inspected)),
        }
    }

    /// The request's one message, read whole (bounded by grpc-max-message-size) and
    /// decompressed: requests are unary.
    async fn read_message(&self, headers: &HeaderMap, body: Incoming) -> Result<Vec<u8>, Status> {
        let max = self.proxy.cfg.max_message_size;
        let body = match Limited::new(body, max + 5).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(frame::too_large(max + 5, max));
            }
            Err(e) => {
                return Err(Status::invalid_argument(format!(
                    "vtguard: reading the request body: {e}"
                )))
            }
        };
        let frames = frame::split(&body, max)?;
        let [only] = frames.as_slice() else {
            return Err(Status::invalid_argument(format!(
                "vtguard: expected one request message, got {}",
                frames.len()
            )));
        };
        let encoding = headers.get("grpc-encoding").and_then(|v| v.to_str().ok());
        frame::decompress(only, encoding, max)
    }

    /// A query-service request: the caller, the table-ACL decision on every table it names,
    /// and the message with the caller ID vtguard owns rewritten.
    fn authorize_query(
        &self,
        m: &Method,
        msg: &[u8],
        fields: &[wire::Field],
    ) -> Result<(Vec<u8>, Identity, Inspected), Box<Refused>> {
        let p = &self.proxy;
        let ins = inspect(m, msg, fields)
            .map_err(|s| Refused::new(s, self.identity.clone(), Inspected::default()))?;
        let identity = self.caller(ins.effective.as_ref());
        if let Some(acl) = &p.core.acl {
            let tables = ins.message_tables.iter().map(|table| {
                acl.check_table(
                    &identity.username,
                    &identity.groups,
                    m.name,
                    crate::acl::Role::Writer,
                    table,
                )
            });
            let statements = ins
                .sql
                .iter()
                .map(|sql| acl.check(&identity.username, &identity.groups, sql));
            for decision in tables.chain(statements) {
                p.core.account(&identity.username, &decision);
                if let Decision::Deny { message, .. } = decision {
                    let mut r =
                        Refused::new(Status::permission_denied(message), Some(identity), ins);
                    r.in_body =
                        p.cfg.service == GrpcService::Vtgate && VTGATE_UNARY.contains(&m.name);
                    return Err(r);
                }
            }
        }
        let out = rewrite(m, msg, fields, &identity, ins.effective.as_ref());
        Ok((out, identity, ins))
    }

    /// A non-query service (TabletManager, ...): open only to the identities listed for it.
    fn authorize_service(&self, service: &str) -> Result<Identity, Box<Refused>> {
        let p = &self.proxy;
        let identity = self.caller(None);
        let member = p.cfg.services.get(service).is_some_and(|ids| {
            ids.contains(&identity.username) || identity.groups.iter().any(|g| ids.contains(g))
        });
        if member {
            return Ok(identity);
        }
        let status = Status::permission_denied(format!(
            "vtguard: identity {:?} may not call {service} on listener {} (list it under [listener.services])",
            identity.username, p.core.name
        ));
        Err(Refused::new(status, Some(identity), Inspected::default()))
    }

    /// Sends the checked message upstream on `identity`'s connection, headers as they came.
    async fn send(
        &self,
        parts: http::request::Parts,
        outgoing: Vec<u8>,
        identity: &Identity,
    ) -> Result<Response<Incoming>, Status> {
        let p = &self.proxy;
        let mut sender = self.upstream(identity).await?;
        let scheme = if p.upstream_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let uri = format!(
            "{scheme}://{}{}",
            p.core.upstream,
            parts.uri.path_and_query().map_or("/", |x| x.as_str())
        );
        let mut up = Request::builder().method(parts.method).uri(uri);
        for (k, v) in &parts.headers {
            if k != http::header::CONTENT_LENGTH && k != http::header::HOST {
                up = up.header(k, v);
            }
        }
        let up = up
            .body(Full::new(Bytes::from(frame::encode(&outgoing))))
            .map_err(|e| {
                Status::internal(format!("vtguard: building the upstream request: {e}"))
            })?;
        match sender.send_request(up).await {
            Ok(resp) => Ok(resp),
            Err(e) => {
                self.upstreams.lock().await.remove(&identity.username);
                Err(Status::unavailable(format!(
                    "vtguard: upstream {} failed: {e}",
                    p.core.upstream
                )))
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
    ) -> Result<hyper::client::conn::http2::SendRequest<Full<Bytes>>, Status> {
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
                    Status::unavailable(format!(
                        "vtguard: upstream {} HTTP/2 handshake failed: {e}",
                        p.core.upstream
                    ))
                })?;
        let listener = p.core.name.clone();
        let mut session = p.core.upstream_session(&identity.username);
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

/// Reads the effective caller, target and SQL of a request; a field that does not decode as
/// what Vitess puts there refuses the request.
fn inspect(m: &Method, msg: &[u8], fields: &[wire::Field]) -> Result<Inspected, Status> {
    let bad = |field: u32, what: &str, e: String| {
        Status::invalid_argument(format!(
            "vtguard: {} request field {field} is not a valid {what}: {e}",
            m.name
        ))
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
/// unary call (vtrpc.Code numbers are gRPC's).
fn vtgate_error(status: &Status) -> Response<Body> {
    let err = vtrpc::RpcError {
        message: status.message().to_owned(),
        code: status.code() as i32,
    };
    let mut msg = Vec::new();
    wire::put_varint(&mut msg, (1 << 3) | u64::from(wire::LEN));
    let e = err.encode_to_vec();
    wire::put_varint(&mut msg, e.len() as u64);
    msg.extend_from_slice(&e);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(Code::Ok as i32));
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
    fn refusals_are_trailers_only_responses_with_an_encoded_message() {
        let r: Response<Body> =
            Status::permission_denied("Select denied for 'u' 100% é\n").into_http();
        let h = r.headers();
        assert_eq!(h["content-type"], "application/grpc");
        assert_eq!(h["grpc-status"], "7");
        let encoded = h["grpc-message"].to_str().expect("grpc-message is ASCII");
        assert!(
            encoded.contains("100%25") && encoded.contains("%C3%A9%0A"),
            "{encoded}"
        );
        let back = Status::from_header_map(h).expect("a status");
        assert_eq!(back.message(), "Select denied for 'u' 100% é\n");
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
