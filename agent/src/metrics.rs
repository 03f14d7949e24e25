//! Prometheus metrics and `/healthz`, on `[metrics] listen` (off by default).
//!
//! The proxies count into process-wide families ([`metrics`]); kernel counters and open
//! connections are read at scrape time.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, LazyLock},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
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

use crate::{kernel::Kernel, sessions::Sessions};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    listener: String,
    protocol: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    listener: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    listener: String,
    method: String,
    decision: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    listener: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AclLabels {
    listener: String,
    table: String,
    identity: String,
    reason: String,
}

type Latency = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// The families the proxies count into.
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

static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    connections: Family::default(),
    handshakes: Family::default(),
    requests: Family::default(),
    latency: Family::new_with_constructor(latency_histogram),
    acl_denials: Family::default(),
});

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// A client connection accepted.
    pub fn connection(&self, listener: &str, protocol: &str) {
        self.connections
            .get_or_create(&ListenerLabels {
                listener: listener.to_owned(),
                protocol: protocol.to_owned(),
            })
            .inc();
    }

    /// A TLS handshake ended: `ok`, `refused`, `timeout` (and the MySQL listener's own outcomes).
    pub fn handshake(&self, listener: &str, outcome: &str) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                listener: listener.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// A request (gRPC call, MySQL command) ended with `decision`, taking `latency`.
    pub fn request(&self, listener: &str, method: &str, decision: &str, latency: Duration) {
        self.command(listener, method, decision);
        self.latency
            .get_or_create(&LatencyLabels {
                listener: listener.to_owned(),
                method: method.to_owned(),
            })
            .observe(latency.as_secs_f64());
    }

    /// A MySQL command the table ACL checked, by decision (no latency: the response streams
    /// past vtguard unparsed).
    pub fn command(&self, listener: &str, command: &str, decision: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                listener: listener.to_owned(),
                method: command.to_owned(),
                decision: decision.to_owned(),
            })
            .inc();
    }

    /// A table-ACL denial (`reason`: `acl`, `dry_run`, `statement`).
    pub fn acl_denial(&self, listener: &str, table: &str, identity: &str, reason: &str) {
        self.acl_denials
            .get_or_create(&AclLabels {
                listener: listener.to_owned(),
                table: table.to_owned(),
                identity: identity.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
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
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpenLabels {
    listener: String,
    identity: String,
    side: String,
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
                        reason: kc.as_str().to_owned(),
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
            for (side, n) in [("client", clients), ("upstream", upstreams)] {
                if n == 0 {
                    continue;
                }
                let labels = OpenLabels {
                    listener: listener.clone(),
                    identity: identity.clone(),
                    side: side.to_owned(),
                };
                ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// The registry of one endpoint: the process-wide families plus what is read at scrape time.
fn registry(kernel: Option<Arc<Kernel>>, sessions: Arc<Sessions>) -> Registry {
    let m = metrics();
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
) -> Result<(), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error { addr, source })?;
    info!(listen = %addr, "metrics endpoint listening (/metrics, /healthz)");
    let registry = Arc::new(registry(kernel.clone(), sessions));
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
                    .map(|l| l.program)
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
