//! A stand-in vttablet / vtgate gRPC server (the Vitess binaries cannot be had here). It
//! records exactly what it receives — path, headers, the raw request body — and answers:
//!
//! - `queryservice.Query/Execute`: one row, the `immediate_caller_id` it received
//!   (username, groups joined by ","), so a client sees who the tablet thinks it is; for
//!   `select 1kb`, a 1 KB row (benchmarks); for `select id, msg from vt_insert_test`, the rows
//!   of its in-memory table [`VT_INSERT_TEST`] (the demo);
//! - `queryservice.Query/StreamExecute`: `select * from big` streams 10 000 rows in 100
//!   messages; `select sleep` sends a row every 20 ms until the caller goes away (and records
//!   that it went away);
//! - `vtgateservice.Vitess/Execute`: one row, the `caller_id` principal, groups, component;
//!   the in-memory table for `select id, msg from vt_insert_test`;
//! - `tabletmanagerservice.TabletManager/*`: an empty message;
//! - anything else: UNIMPLEMENTED.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use vtguard_proto::{query, vtgate};

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub path: String,
    pub headers: HeaderMap,
    /// The raw request body: gRPC frames, byte for byte.
    pub body: Bytes,
}

impl Recorded {
    /// The (single, uncompressed) message of the body.
    pub fn message(&self) -> &[u8] {
        assert!(self.body.len() >= 5, "body holds a gRPC frame");
        assert_eq!(self.body[0], 0, "vtguard forwards uncompressed frames");
        let len =
            u32::from_be_bytes([self.body[1], self.body[2], self.body[3], self.body[4]]) as usize;
        assert_eq!(self.body.len(), 5 + len, "one frame");
        &self.body[5..]
    }
}

/// The stand-in server; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub recorded: Arc<Mutex<Vec<Recorded>>>,
    /// Set when a `select sleep` stream saw its caller go away.
    pub cancelled: Arc<AtomicBool>,
    /// Requests received so far, recorded or not.
    pub served: Arc<AtomicU64>,
    /// Whether requests are kept in `recorded` (benchmarks sending millions turn it off).
    record: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn frame(msg: &impl Message) -> Bytes {
    let m = msg.encode_to_vec();
    let mut out = Vec::with_capacity(m.len() + 5);
    out.push(0);
    out.extend_from_slice(&(m.len() as u32).to_be_bytes());
    out.extend_from_slice(&m);
    Bytes::from(out)
}

fn trailers(code: u32, message: &str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", code.into());
    if !message.is_empty() {
        t.insert("grpc-message", message.parse().expect("ascii message"));
    }
    t
}

fn response(frames: Vec<Bytes>, code: u32, message: &str) -> Response<Body> {
    let mut items: Vec<Result<Frame<Bytes>, Infallible>> =
        frames.into_iter().map(|f| Ok(Frame::data(f))).collect();
    items.push(Ok(Frame::trailers(trailers(code, message))));
    let body = StreamBody::new(futures_util::stream::iter(items));
    Response::builder()
        .header("content-type", "application/grpc")
        .body(BodyExt::boxed(body))
        .expect("response")
}

/// A result with one VARCHAR column and the given rows.
pub fn result(column: &str, rows: &[&str]) -> query::QueryResult {
    query::QueryResult {
        fields: vec![query::Field {
            name: column.into(),
            r#type: query::Type::Varchar as i32,
            table: String::new(),
        }],
        rows: rows
            .iter()
            .map(|r| query::Row {
                lengths: vec![r.len() as i64],
                values: r.as_bytes().to_vec(),
            })
            .collect(),
        ..Default::default()
    }
}

/// A primary target in `keyspace`, shard 0.
pub fn target(keyspace: &str) -> query::Target {
    query::Target {
        keyspace: keyspace.into(),
        shard: "0".into(),
        tablet_type: 1,
        cell: String::new(),
    }
}

/// A query without bind variables.
pub fn bound(sql: &str) -> query::BoundQuery {
    query::BoundQuery {
        sql: sql.into(),
        bind_variables: Default::default(),
    }
}

/// The first column of each row of a result.
pub fn rows(r: &query::QueryResult) -> Vec<String> {
    r.rows
        .iter()
        .map(|row| {
            let n = row.lengths.first().copied().unwrap_or(0).max(0) as usize;
            String::from_utf8_lossy(&row.values[..n]).into_owned()
        })
        .collect()
}

fn decode_body<M: Message + Default>(body: &[u8]) -> Option<M> {
    (body.len() >= 5)
        .then(|| M::decode(&body[5..]).ok())
        .flatten()
}

/// The stand-ins' in-memory `vt_insert_test` (id|msg).
pub const VT_INSERT_TEST: [&str; 3] = ["1|alpha", "2|beta", "3|gamma"];

/// The SQL the stand-ins answer from [`VT_INSERT_TEST`].
pub const SELECT_TABLE: &str = "select id, msg from vt_insert_test";

/// What every connection's handler shares.
#[derive(Clone)]
struct Shared {
    recorded: Arc<Mutex<Vec<Recorded>>>,
    cancelled: Arc<AtomicBool>,
    served: Arc<AtomicU64>,
    record: Arc<AtomicBool>,
}

async fn handle(req: Request<Incoming>, shared: Shared) -> Result<Response<Body>, Infallible> {
    let cancelled = shared.cancelled;
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    shared.served.fetch_add(1, Ordering::Relaxed);
    if shared.record.load(Ordering::Relaxed) {
        shared
            .recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Recorded {
                path: path.clone(),
                headers,
                body: body.clone(),
            });
    }
    let resp = match path.as_str() {
        "/queryservice.Query/Execute" => {
            let req: query::ExecuteRequest = decode_body(&body).unwrap_or_default();
            if req.query.as_ref().is_some_and(|q| q.sql == SELECT_TABLE) {
                return Ok(response(
                    vec![frame(&query::ExecuteResponse {
                        result: Some(result("id|msg", &VT_INSERT_TEST)),
                    })],
                    0,
                    "",
                ));
            }
            if req.query.as_ref().is_some_and(|q| q.sql == "select 1kb") {
                let row = "x".repeat(1000);
                return Ok(response(
                    vec![frame(&query::ExecuteResponse {
                        result: Some(result("payload", &[&row])),
                    })],
                    0,
                    "",
                ));
            }
            let who = req
                .immediate_caller_id
                .map(|c| format!("{}|{}", c.username, c.groups.join(",")))
                .unwrap_or_default();
            response(
                vec![frame(&query::ExecuteResponse {
                    result: Some(result("caller", &[&who])),
                })],
                0,
                "",
            )
        }
        "/queryservice.Query/StreamExecute" => {
            let req: query::StreamExecuteRequest = decode_body(&body).unwrap_or_default();
            let sql = req.query.map(|q| q.sql).unwrap_or_default();
            if sql == "select sleep" {
                let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1);
                tokio::spawn(async move {
                    for i in 0u64.. {
                        let row = i.to_string();
                        let msg = frame(&query::StreamExecuteResponse {
                            result: Some(result("n", &[&row])),
                        });
                        if tx.send(Ok(Frame::data(msg))).await.is_err() {
                            cancelled.store(true, Ordering::SeqCst);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        if tx.is_closed() {
                            cancelled.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                });
                let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|f| (f, rx))
                });
                Response::builder()
                    .header("content-type", "application/grpc")
                    .body(BodyExt::boxed(StreamBody::new(stream)))
                    .expect("response")
            } else {
                let frames = (0..100)
                    .map(|m| {
                        let rows: Vec<String> =
                            (0..100).map(|r| (m * 100 + r).to_string()).collect();
                        let refs: Vec<&str> = rows.iter().map(String::as_str).collect();
                        frame(&query::StreamExecuteResponse {
                            result: Some(result("n", &refs)),
                        })
                    })
                    .collect();
                response(frames, 0, "")
            }
        }
        "/vtgateservice.Vitess/Execute" => {
            let req: vtgate::ExecuteRequest = decode_body(&body).unwrap_or_default();
            let table = req.query.as_ref().is_some_and(|q| q.sql == SELECT_TABLE);
            let c = req.caller_id.unwrap_or_default();
            let who = format!("{}|{}|{}", c.principal, c.groups.join(","), c.component);
            response(
                vec![frame(&vtgate::ExecuteResponse {
                    error: None,
                    session: req.session,
                    result: Some(if table {
                        result("id|msg", &VT_INSERT_TEST)
                    } else {
                        result("caller", &[&who])
                    }),
                })],
                0,
                "",
            )
        }
        p if p.starts_with("/tabletmanagerservice.TabletManager/") => {
            response(vec![Bytes::from_static(&[0, 0, 0, 0, 0])], 0, "")
        }
        _ => response(vec![], 12, "stand-in upstream: unknown method"),
    };
    Ok(resp)
}

impl Upstream {
    /// Starts the stand-in on 127.0.0.1 (`port` 0: any free port).
    pub async fn start(port: u16) -> Upstream {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind stand-in upstream");
        let addr = listener.local_addr().expect("addr");
        let shared = Shared {
            recorded: Arc::new(Mutex::new(Vec::new())),
            cancelled: Arc::new(AtomicBool::new(false)),
            served: Arc::new(AtomicU64::new(0)),
            record: Arc::new(AtomicBool::new(true)),
        };
        let s = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                // As grpc-go (vttablet, vtgate) does on every connection: without it, a
                // response written in pieces waits for the peer's delayed ACK.
                let _ = tcp.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(req, s.clone()));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            recorded: shared.recorded,
            cancelled: shared.cancelled,
            served: shared.served,
            record: shared.record,
            task,
        }
    }

    /// Stops keeping requests in `recorded` (only `served` counts them from now on).
    pub fn stop_recording(&self) {
        self.record.store(false, Ordering::Relaxed);
    }

    /// What it received so far.
    pub fn received(&self) -> Vec<Recorded> {
        self.recorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
