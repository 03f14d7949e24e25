//! Unary Execute with a 1 KB response, 16 concurrent streams on one connection: requests/s and
//! p50/p99 latency direct to the stand-in tablet (plaintext) and through a vtguard listener
//! (mTLS, caller-ID rewrite, query log off). Rounds alternate so machine noise hits both alike.
//!
//! Two clients: tonic (a full gRPC stack) and a bare hyper HTTP/2 client sending the same
//! framed request (so that both paths see the same client implementation).
//! `cargo bench -p vtguard-tests --bench grpc_proxy` (or `cargo xtask bench`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prost::Message;

use tonic::transport::Channel;
use vtguard_proto::{query::ExecuteRequest, queryservice::query_client::QueryClient};
use vtguard_tests::fixtures::Listener;
use vtguard_tests::{
    grpc::{plain_channel, raw_connection, start_listener, tls_channel, RawBody},
    pki::Pki,
    upstream::Upstream,
};

const CONCURRENCY: usize = 16;
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(4);
const ROUNDS: usize = 3;

struct Run {
    rps: f64,
    p50: Duration,
    p99: Duration,
}

#[derive(Clone)]
enum Client {
    Tonic(Channel),
    Raw(
        hyper::client::conn::http2::SendRequest<RawBody>,
        std::net::SocketAddr,
    ),
}

async fn call(c: &mut Client, req: &ExecuteRequest) {
    match c {
        Client::Tonic(ch) => {
            let r = QueryClient::new(ch.clone())
                .execute(req.clone())
                .await
                .expect("Execute");
            assert_eq!(
                r.into_inner().result.expect("result").rows[0].values.len(),
                1000
            );
        }
        Client::Raw(send, addr) => {
            let msg = req.encode_to_vec();
            let mut body = vec![0u8];
            body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
            body.extend_from_slice(&msg);
            let r = http::Request::post(format!("http://{addr}/queryservice.Query/Execute"))
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(
                    Full::new(Bytes::from(body))
                        .map_err(|never| match never {})
                        .boxed(),
                )
                .expect("request");
            send.ready().await.expect("ready");
            let resp = send.send_request(r).await.expect("response");
            let collected = resp.into_body().collect().await.expect("body");
            assert_eq!(
                collected
                    .trailers()
                    .and_then(|t| t.get("grpc-status"))
                    .map(|v| v.as_bytes()),
                Some(&b"0"[..])
            );
            assert!(collected.to_bytes().len() > 1000);
        }
    }
}

async fn run(client: Client) -> Run {
    let req = ExecuteRequest {
        target: Some(vtguard_tests::upstream::target("ks")),
        query: Some(vtguard_tests::upstream::bound("select 1kb")),
        ..Default::default()
    };
    let start = Instant::now();
    let measure_from = start + WARMUP;
    let end = measure_from + MEASURE;
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let mut client = client.clone();
        let req = req.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let t = Instant::now();
                if t >= end {
                    break;
                }
                call(&mut client, &req).await;
                if t >= measure_from {
                    lat.push(t.elapsed());
                }
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    all.sort();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)];
    Run {
        rps: all.len() as f64 / MEASURE.as_secs_f64(),
        p50: pct(0.50),
        p99: pct(0.99),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let pki = Pki::generate();
        let up = Upstream::start(0).await;
        let l = start_listener(&Listener::grpc("vttablet", up.addr).mtls(&pki).toml().replace("query-log = true", "query-log = false"), None).await;
        let clients = [
            (
                "tonic",
                Client::Tonic(plain_channel(up.addr).await),
                Client::Tonic(tls_channel(&pki, l.addr, Some("vtgate-client-1")).await.expect("mTLS")),
            ),
            (
                "hyper",
                Client::Raw(raw_connection(&pki, up.addr, None).await, up.addr),
                Client::Raw(raw_connection(&pki, l.addr, Some("vtgate-client-1")).await, l.addr),
            ),
        ];
        for (name, direct, through) in clients {
            let (mut d, mut v) = (Vec::new(), Vec::new());
            for round in 0..ROUNDS {
                let a = run(direct.clone()).await;
                let b = run(through.clone()).await;
                println!(
                    "{name} round {round}: direct {:.0} req/s p50 {:?} p99 {:?} | vtguard {:.0} req/s p50 {:?} p99 {:?}",
                    a.rps, a.p50, a.p99, b.rps, b.p50, b.p99
                );
                d.push((a.rps, a.p50.as_secs_f64() * 1e6, a.p99.as_secs_f64() * 1e6));
                v.push((b.rps, b.p50.as_secs_f64() * 1e6, b.p99.as_secs_f64() * 1e6));
            }
            let m = |x: &[(f64, f64, f64)], i: usize| median(x.iter().map(|t| [t.0, t.1, t.2][i]).collect());
            let (drps, dp50, dp99) = (m(&d, 0), m(&d, 1), m(&d, 2));
            let (vrps, vp50, vp99) = (m(&v, 0), m(&v, 1), m(&v, 2));
            println!("{name} client, unary Execute, 1 KB response, {CONCURRENCY} concurrent streams (median of {ROUNDS} rounds):");
            println!("  direct (plaintext):     {drps:>8.0} req/s  p50 {dp50:>7.0} us  p99 {dp99:>7.0} us");
            println!("  through vtguard (mTLS): {vrps:>8.0} req/s  p50 {vp50:>7.0} us  p99 {vp99:>7.0} us");
            println!(
                "  ratio vtguard/direct: throughput {:.2}, p50 {:.2}, p99 {:.2}",
                vrps / drps,
                vp50 / dp50,
                vp99 / dp99
            );
        }
        drop(l);
    });
}
