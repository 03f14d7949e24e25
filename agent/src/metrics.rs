//! Prometheus metrics and `/healthz`, on `[metrics] listen` (off by default).
//!
//! The proxies count into process-wide families ([`metrics`]); kernel counters and open
//! connections are read at scrape time.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, LazyLock, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use parking_lot::{Mutex, RwLock};
use prometheus_client::{
    collector::Collector,
    encoding::{
        DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
    },
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};
use tracing::{info, warn};
use vtguard_common::Counter as KernelCounter;

use crate::{
    kernel::Kernel,
    sessions::Sessions,
    status::{ListenerCounts, Protocol},
};

/// Label values from a fixed set: an enum, written as the text the README documents.
macro_rules! label_values {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// The label value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}

label_values! {
    /// How a handshake ended (`outcome`); on MySQL listeners, the whole login.
    Handshake { Ok => "ok", Refused => "refused", Timeout => "timeout" }
}

label_values! {
    /// What became of a request (`decision`).
    RequestDecision { Forwarded => "forwarded", Refused => "refused" }
}

label_values! {
    /// Why the table ACL denied (`reason` of `vtguard_acl_denials_total`).
    DenialReason { Acl => "acl", DryRun => "dry_run", Statement => "statement" }
}

label_values! {
    /// Which end of vtguard a connection is on (`side`).
    Side { Client => "client", Upstream => "upstream" }
}

impl EncodeLabelValue for Protocol {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: Arc<str>,
    protocol: Protocol,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: Arc<str>,
    outcome: Handshake,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: Arc<str>,
    method: String,
    decision: RequestDecision,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    listener: Arc<str>,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AclLabels {
    listener: Arc<str>,
    table: String,
    identity: String,
    reason: DenialReason,
}

type Latency = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// The families the listeners count into, through their [`ListenerMetrics`].
#[derive(Clone)]
pub struct Metrics {
    connections: Family<ListenerLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
    latency: Latency,
    acl_denials: Family<AclLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    // 50 µs … ~26 s.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            connections: Family::default(),
            handshakes: Family::default(),
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            acl_denials: Family::default(),
        }
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::default);

/// The cluster policy's metrics (`[cluster]`), exposed only on agents that have one.
pub struct ClusterMetrics {
    /// `vtguard_policy_revision`: the etcd revision of the policy in force (0: none).
    pub revision: prometheus_client::metrics::gauge::Gauge,
    /// `vtguard_cluster_connected`: 1 while the agent holds a working connection to etcd.
    pub connected: prometheus_client::metrics::gauge::Gauge,
    /// `vtguard_policy_apply_duration_seconds`: from a revision read in etcd to it being in
    /// force (table ACL swapped, kernel grants flipped, removed identities cut off).
    pub apply_seconds: Histogram,
}

static CLUSTER: LazyLock<ClusterMetrics> = LazyLock::new(|| ClusterMetrics {
    revision: Default::default(),
    connected: Default::default(),
    // 100 µs … ~6.5 s.
    apply_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 17)),
});

/// The process-wide cluster metrics.
pub fn cluster() -> &'static ClusterMetrics {
    &CLUSTER
}

fn register_cluster(r: &mut Registry) {
    let c = cluster();
    r.register(
        "vtguard_policy_revision",
        "etcd revision of the cluster policy in force (0: none)",
        c.revision.clone(),
    );
    r.register(
        "vtguard_cluster_connected",
        "1 while the agent is connected to etcd, 0 otherwise",
        c.connected.clone(),
    );
    r.register(
        "vtguard_policy_apply_duration_seconds",
        "Time from a cluster policy revision read in etcd to it being in force",
        c.apply_seconds.clone(),
    );
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// The handle one listener counts through.
    pub fn listener(&self, name: &str, protocol: Protocol) -> ListenerMetrics {
        ListenerMetrics {
            name: Arc::from(name),
            protocol,
            families: self.clone(),
            connections: OnceLock::new(),
            handshakes: Default::default(),
            methods: RwLock::default(),
            dry_run: Mutex::default(),
            refused_outright: Counter::default(),
            limit_refused: Counter::default(),
            upstream_not_owner: Counter::default(),
        }
    }
}

/// One listener's counters: the only place its events are counted. `/metrics` exposes them
/// through the families, and `vtguard status` sums them ([`ListenerMetrics::counts`]).
///
/// Each series is resolved once, on its first event (a listener's series appear when they
/// first count, as they always have), and kept here: after that an event is an atomic add,
/// without building a label set.
pub struct ListenerMetrics {
    name: Arc<str>,
    protocol: Protocol,
    families: Metrics,
    connections: OnceLock<Counter>,
    /// By [`Handshake`] outcome.
    handshakes: [OnceLock<Counter>; 3],
    /// By method (a gRPC path, a MySQL command name).
    methods: RwLock<HashMap<String, MethodSeries>>,
    /// `vtguard_acl_denials_total{reason="dry_run"}` by identity, for the status total.
    dry_run: Mutex<HashMap<String, Counter>>,
    /// MySQL commands refused without a table check (`COM_CHANGE_USER`, replication, …): not
    /// a method of `vtguard_requests_total`, so counted here alone.
    refused_outright: Counter,
    /// Connections refused by the listener's connection limits.
    limit_refused: Counter,
    /// Upstream connections refused because the socket listening there was not the port's
    /// owner's.
    upstream_not_owner: Counter,
}

/// The series of one method.
#[derive(Default)]
struct MethodSeries {
    forwarded: OnceLock<Counter>,
    refused: OnceLock<Counter>,
    latency: OnceLock<Histogram>,
}

impl ListenerMetrics {
    /// The listener's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A client connection accepted.
    pub fn connection(&self) {
        self.connections
            .get_or_init(|| {
                self.families
                    .connections
                    .get_or_create_owned(&ListenerLabels {
                        listener: Arc::clone(&self.name),
                        protocol: self.protocol,
                    })
            })
            .inc();
    }

    /// A handshake (on MySQL, the login) ended.
    pub fn handshake(&self, outcome: Handshake) {
        self.handshakes[outcome as usize]
            .get_or_init(|| {
                self.families
                    .handshakes
                    .get_or_create_owned(&HandshakeLabels {
                        listener: Arc::clone(&self.name),
                        outcome,
                    })
            })
            .inc();
    }

    /// A gRPC request ended with `decision`, taking `latency`.
    pub fn request(&self, method: &str, decision: RequestDecision, latency: Duration) {
        self.with_method(method, |s| {
            self.count(s, method, decision);
            s.latency
                .get_or_init(|| {
                    self.families.latency.get_or_create_owned(&LatencyLabels {
                        listener: Arc::clone(&self.name),
                        method: method.to_owned(),
                    })
                })
                .observe(latency.as_secs_f64());
        });
    }

    /// A MySQL command the table ACL checks, by decision (no latency: the response streams
    /// past vtguard unparsed).
    pub fn command(&self, command: &str, decision: RequestDecision) {
        self.with_method(command, |s| self.count(s, command, decision));
    }

    /// A connection refused by `max-connections` or `max-connections-per-identity`.
    pub fn limit_refused(&self) {
        self.limit_refused.inc();
    }

    /// An upstream connection dropped before anything was sent: not the owner's listener.
    pub fn upstream_not_owner(&self) {
        self.upstream_not_owner.inc();
    }

    /// A MySQL command vtguard refuses without checking it.
    pub fn refused_outright(&self) {
        self.refused_outright.inc();
    }

    /// A table-ACL denial: of `table`, or of a statement it cannot check (`table` `None`).
    pub fn acl_denial(&self, table: Option<&str>, identity: &str) {
        let reason = match table {
            Some(_) => DenialReason::Acl,
            None => DenialReason::Statement,
        };
        self.families
            .acl_denials
            .get_or_create(&self.acl_labels(table.unwrap_or(""), identity, reason))
            .inc();
    }

    /// A request a dry-run table ACL would have denied.
    pub fn dry_run_denial(&self, identity: &str) {
        let mut by_identity = self.dry_run.lock();
        match by_identity.get(identity) {
            Some(c) => {
                c.inc();
            }
            None => {
                let c = self
                    .families
                    .acl_denials
                    .get_or_create_owned(&self.acl_labels("", identity, DenialReason::DryRun));
                c.inc();
                by_identity.insert(identity.to_owned(), c);
            }
        }
    }

    /// What the listener has counted, for `vtguard status`.
    pub fn counts(&self) -> ListenerCounts {
        let get = |c: &OnceLock<Counter>| c.get().map_or(0, Counter::get);
        let outright = self.refused_outright.get();
        let (mut forwarded, mut refused) = (0, outright);
        for s in self.methods.read().values() {
            forwarded += get(&s.forwarded);
            refused += get(&s.refused);
        }
        ListenerCounts {
            connections: get(&self.connections),
            handshakes_failed: get(&self.handshakes[Handshake::Refused as usize])
                + get(&self.handshakes[Handshake::Timeout as usize]),
            logins: (self.protocol == Protocol::Mysql)
                .then(|| get(&self.handshakes[Handshake::Ok as usize])),
            requests: forwarded + refused,
            refused,
            acl_dry_run_denials: self.dry_run.lock().values().map(Counter::get).sum(),
            limit_refused: self.limit_refused.get(),
            upstream_not_owner: self.upstream_not_owner.get(),
        }
    }

    fn acl_labels(&self, table: &str, identity: &str, reason: DenialReason) -> AclLabels {
        AclLabels {
            listener: Arc::clone(&self.name),
            table: table.to_owned(),
            identity: identity.to_owned(),
            reason,
        }
    }

    fn count(&self, s: &MethodSeries, method: &str, decision: RequestDecision) {
        let slot = match decision {
            RequestDecision::Forwarded => &s.forwarded,
            RequestDecision::Refused => &s.refused,
        };
        slot.get_or_init(|| {
            self.families.requests.get_or_create_owned(&RequestLabels {
                listener: Arc::clone(&self.name),
                method: method.to_owned(),
                decision,
            })
        })
        .inc();
    }

    fn with_method<R>(&self, method: &str, f: impl FnOnce(&MethodSeries) -> R) -> R {
        if let Some(s) = self.methods.read().get(method) {
            return f(s);
        }
        let mut methods = self.methods.write();
        f(methods.entry(method.to_owned()).or_default())
    }
}

/// What is read at scrape time.
#[derive(Debug)]
struct Live {
    kernel: Option<Arc<Kernel>>,
    sessions: Arc<Sessions>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpenLabels {
    listener: String,
    identity: String,
    side: Side,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(k) = &self.kernel {
            if let Ok(counters) = k.counters() {
                let c = ConstCounter::new(0u64);
                let mut family = encoder.encode_descriptor(
                    "vtguard_kernel_events",
                    "Kernel decisions by outcome: connect() allowed or denied, packets admitted or dropped, events lost",
                    None,
                    c.metric_type(),
                )?;
                for kc in KernelCounter::ALL {
                    let labels = ReasonLabels {
                        reason: kc.as_str(),
                    };
                    ConstCounter::new(counters[kc as usize])
                        .encode(family.encode_family(&labels)?)?;
                }
            }
            let flows = ConstGauge::new(k.flow_count() as i64);
            flows.encode(encoder.encode_descriptor(
                "vtguard_kernel_flows",
                "Connections vtguard recorded for the kernel's ingress filter",
                None,
                flows.metric_type(),
            )?)?;
        }
        let open = self.sessions.by_identity();
        let g = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor(
            "vtguard_open_connections",
            "Open connections by listener, identity and side (client or upstream)",
            None,
            g.metric_type(),
        )?;
        for ((listener, identity), (clients, upstreams)) in open {
            for (side, n) in [(Side::Client, clients), (Side::Upstream, upstreams)] {
                if n == 0 {
                    continue;
                }
                let labels = OpenLabels {
                    listener: listener.clone(),
                    identity: identity.clone(),
                    side,
                };
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The registry of one endpoint: the families `m` plus what is read at scrape time.
fn registry(m: &Metrics, kernel: Option<Arc<Kernel>>, sessions: Arc<Sessions>) -> Registry {
    let mut r = Registry::default();
    r.register(
        "vtguard_connections",
        "Client connections accepted, by listener and protocol",
        m.connections.clone(),
    );
    r.register(
        "vtguard_handshakes",
        "TLS handshakes by listener and outcome",
        m.handshakes.clone(),
    );
    r.register(
        "vtguard_requests",
        "Requests (gRPC calls, MySQL commands) by listener, method and decision",
        m.requests.clone(),
    );
    r.register(
        "vtguard_request_duration_seconds",
        "Request latency through vtguard, by listener and method",
        m.latency.clone(),
    );
    r.register(
        "vtguard_acl_denials",
        "Table-ACL denials by listener, table, identity and reason",
        m.acl_denials.clone(),
    );
    r.register_collector(Box::new(Live { kernel, sessions }));
    r
}

/// What stops the endpoint.
#[derive(Debug, thiserror::Error)]
#[error("[metrics] listen {addr}: {source}: pick a free address or leave [metrics] out")]
pub struct Error {
    addr: SocketAddr,
    source: std::io::Error,
}

/// Serves `/metrics` and `/healthz` on `addr` until the task is dropped.
pub async fn serve(
    addr: SocketAddr,
    kernel: Option<Arc<Kernel>>,
    sessions: Arc<Sessions>,
    cluster: bool,
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error { addr, source })?;
    info!(listen = %addr, "metrics endpoint listening (/metrics, /healthz)");
    let mut registry = registry(metrics(), kernel.clone(), sessions);
    if cluster {
        register_cluster(&mut registry);
    }
    let registry = Arc::new(registry);
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (registry, kernel) = (Arc::clone(&registry), kernel.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (registry, kernel) = (Arc::clone(&registry), kernel.clone());
                async move { Ok::<_, Infallible>(answer(&req, &registry, kernel.as_deref())) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

fn answer<B>(
    req: &Request<B>,
    registry: &Registry,
    kernel: Option<&Kernel>,
) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match req.uri().path() {
        "/metrics" => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => reply(
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("encoding metrics: {e}\n"),
                ),
            }
        }
        // Healthy = serving, and (with a kernel) every program still attached.
        "/healthz" => match kernel.map(|k| crate::kernel::KernelStatus::read(k.pin_dir())) {
            None => reply(StatusCode::OK, "text/plain", "ok\n".into()),
            Some(Ok(st)) if st.links.iter().all(|l| l.attached) => {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            }
            Some(Ok(st)) => {
                let missing: Vec<&str> = st
                    .links
                    .iter()
                    .filter(|l| !l.attached)
                    .map(|l| &*l.program)
                    .collect();
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("kernel programs not attached: {}\n", missing.join(", ")),
                )
            }
            Some(Err(e)) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("kernel state unreadable: {e}\n"),
            ),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: use /metrics or /healthz\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `/metrics` after a known set of events, with its own families (not the process-wide
    /// ones other tests count into).
    fn scrape(events: impl FnOnce(&Metrics)) -> (String, Metrics) {
        let m = Metrics::default();
        events(&m);
        let sessions = Arc::new(Sessions::default());
        let l: Arc<str> = Arc::from("g1");
        let _client = sessions.open(&l, 5, "alice");
        let _upstream = sessions.open_upstream(&l, 5, "alice");
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &registry(&m, None, sessions))
            .expect("encodes");
        (body, m)
    }

    fn sorted(text: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        lines
    }

    /// Names, labels, values and order of labels as the README documents them: the expected
    /// text was written by the untyped metrics (string labels) before the typed ones replaced
    /// them. Series order within a family is a hash map's, so lines are compared sorted.
    #[test]
    fn exposition_is_unchanged_and_status_reads_the_same_counters() {
        const EXECUTE: &str = "/queryservice.Query/Execute";
        let (g1, m1) = (std::cell::OnceCell::new(), std::cell::OnceCell::new());
        let (body, _m) = scrape(|m| {
            let g = g1.get_or_init(|| m.listener("g1", Protocol::Grpc));
            let my = m1.get_or_init(|| m.listener("m1", Protocol::Mysql));
            g.connection();
            g.connection();
            my.connection();
            g.handshake(Handshake::Ok);
            g.handshake(Handshake::Refused);
            my.handshake(Handshake::Timeout);
            g.request(
                EXECUTE,
                RequestDecision::Forwarded,
                Duration::from_millis(3),
            );
            g.request(EXECUTE, RequestDecision::Refused, Duration::from_micros(30));
            g.request(
                "unknown",
                RequestDecision::Refused,
                Duration::from_micros(30),
            );
            my.command("COM_QUERY", RequestDecision::Forwarded);
            my.command("COM_QUERY", RequestDecision::Refused);
            g.acl_denial(Some("t2"), "vtgate client 1");
            my.acl_denial(None, "vtgate client 2");
            my.dry_run_denial("vtgate client 2");
        });
        assert_eq!(
            sorted(&body),
            sorted(include_str!("metrics/exposition.txt"))
        );

        let g = g1.get().expect("g1").counts();
        assert_eq!(
            g,
            ListenerCounts {
                connections: 2,
                handshakes_failed: 1,
                logins: None,
                requests: 3,
                refused: 2,
                acl_dry_run_denials: 0,
                limit_refused: 0,
                upstream_not_owner: 0,
            }
        );
        let my = m1.get().expect("m1");
        my.refused_outright();
        my.dry_run_denial("vtgate client 2");
        my.dry_run_denial("vtgate client 3");
        assert_eq!(
            my.counts(),
            ListenerCounts {
                connections: 1,
                handshakes_failed: 1,
                logins: Some(0),
                requests: 3,
                refused: 2,
                acl_dry_run_denials: 3,
                limit_refused: 0,
                upstream_not_owner: 0,
            }
        );
    }
}
