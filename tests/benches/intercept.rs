//! Interception's cost (as root). Two nodes (network namespaces on one switch): node A runs the
//! stand-in tablet on its published port and a vtguard intercepting it, whose listener also
//! listens on A's address at its own port; the client runs in node B.
//!
//! 1. The same unary Execute (tonic, mTLS, one connection), through the published port
//!    (intercepted by sk_lookup) and through vtguard's own port (the separate-port path): p50,
//!    p99 and vtguard's CPU per request, alternating rounds.
//! 2. The lookup program's run time per new connection (kernel BPF statistics), for connections
//!    it intercepts and for connections to a port it leaves alone, with 1 and with 10 000
//!    intercepted connections on record.
//!
//! `cargo bench -p vtguard-tests --bench intercept` (or `cargo xtask bench`).

use std::{
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd,
    process::Command,
    time::{Duration, Instant},
};

use vtguard_proto::{query::ExecuteRequest, queryservice::query_client::QueryClient};
use vtguard_tests::{
    free_port,
    grpc::tls_channel,
    netns::{hello_server, Cluster},
    pki::Pki,
    sh,
    upstream::Upstream,
};

const ROUNDS: usize = 5;
const REQUESTS: usize = 2_000;

/// Runs `f` on a thread that has entered network namespace `ns` (sockets it makes live there).
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("netns file");
        // SAFETY: setns(2) on this thread with a namespace descriptor we hold.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread")
}

/// User + system CPU of process `pid`, from /proc.
fn cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15 (1-based), 11 and 12 after the comm.
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    Duration::from_nanos(ticks * 1_000_000_000 / hz)
}

/// `(run_time_ns, run_cnt)` of the lookup program.
fn lookup_stats() -> (u64, u64) {
    let (code, out, err) =
        sh(Command::new("bpftool").args(["prog", "show", "name", "vtg_lookup", "-j"]));
    assert_eq!(code, 0, "bpftool: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("bpftool json");
    let p = if v.is_array() { v[0].clone() } else { v };
    (
        p["run_time_ns"].as_u64().unwrap_or(0),
        p["run_cnt"].as_u64().unwrap_or(0),
    )
}

struct Round {
    p50: Duration,
    p99: Duration,
    cpu_per_request: Duration,
}

fn round(ns: &str, pki: std::sync::Arc<Pki>, addr: SocketAddr, agent: u32) -> Round {
    in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let ch = tls_channel(&pki, addr, Some("vtgate-client-1"))
                .await
                .expect("connect");
            let mut client = QueryClient::new(ch);
            let req = ExecuteRequest {
                query: Some(vtguard_tests::upstream::bound("select 1")),
                ..Default::default()
            };
            for _ in 0..100 {
                client.execute(req.clone()).await.expect("warm-up");
            }
            let before = cpu(agent);
            let mut lat = Vec::with_capacity(REQUESTS);
            for _ in 0..REQUESTS {
                let t = Instant::now();
                client.execute(req.clone()).await.expect("Execute");
                lat.push(t.elapsed());
            }
            let used = cpu(agent) - before;
            lat.sort();
            Round {
                p50: lat[lat.len() / 2],
                p99: lat[lat.len() * 99 / 100],
                cpu_per_request: used / REQUESTS as u32,
            }
        })
    })
}

fn connects(ns: &str, addr: SocketAddr, n: usize) {
    in_netns(ns, move || {
        for _ in 0..n {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
        }
    });
}

fn per_connection(ns: &str, addr: SocketAddr, n: usize) -> f64 {
    let (t0, c0) = lookup_stats();
    connects(ns, addr, n);
    let (t1, c1) = lookup_stats();
    (t1 - t0) as f64 / (c1 - c0).max(1) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("intercept: skipped (network namespaces and kernel programs need root)");
        return;
    }
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_vtguard-under-test"));
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = std::sync::Arc::new(Pki::generate());
    let (tablet, own, open) = (free_port(), free_port(), free_port());
    // vtguard's listener on every address of A (so that B can also dial it directly).
    let mut cluster =
        Cluster::new_with_listen(&['A', 'B'], tmp.path(), &pki, tablet, own, "0.0.0.0");
    let a_ns = cluster.nodes[0].ns.clone();
    let b_ns = cluster.nodes[1].ns.clone();
    let a_ip: std::net::IpAddr = cluster.nodes[0].ip.parse().expect("ip");
    // The stand-in tablet (Rust, h2c) inside node A.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let ns = a_ns.clone();
    std::thread::spawn(move || {
        in_netns(&ns, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let _up = Upstream::start(tablet).await;
                ready_tx.send(()).expect("ready");
                std::future::pending::<()>().await;
            })
        })
    });
    ready_rx.recv().expect("tablet started");
    let _open = hello_server(&a_ns, "-", open, "A");
    cluster.nodes[0].start_agent(bin);
    let agent = cluster.nodes[0].agent.as_ref().expect("agent").child.id();

    let published = SocketAddr::new(a_ip, tablet);
    let separate = SocketAddr::new(a_ip, own);
    let (mut lat_ratio50, mut lat_ratio99, mut cpu_ratio) = (Vec::new(), Vec::new(), Vec::new());
    println!("round  path          p50       p99       vtguard CPU/request");
    for i in 0..ROUNDS {
        let d = round(&b_ns, std::sync::Arc::clone(&pki), separate, agent);
        let x = round(&b_ns, std::sync::Arc::clone(&pki), published, agent);
        for (name, r) in [("separate port", &d), ("intercepted", &x)] {
            println!(
                "{i:>5}  {name:<13} {:>8.1?} {:>8.1?}  {:>8.1?}",
                r.p50, r.p99, r.cpu_per_request
            );
        }
        lat_ratio50.push(x.p50.as_secs_f64() / d.p50.as_secs_f64());
        lat_ratio99.push(x.p99.as_secs_f64() / d.p99.as_secs_f64());
        cpu_ratio.push(x.cpu_per_request.as_secs_f64() / d.cpu_per_request.as_secs_f64().max(1e-9));
    }
    println!(
        "intercepted / separate port, medians of {ROUNDS} rounds: p50 {:.3}x, p99 {:.3}x, vtguard CPU per request {:.3}x",
        median(lat_ratio50),
        median(lat_ratio99),
        median(cpu_ratio)
    );

    // The lookup program's own cost per new connection.
    let _ = sh(Command::new("sysctl").args(["-w", "kernel.bpf_stats_enabled=1"]));
    let open_addr = SocketAddr::new(a_ip, open);
    let few_i = per_connection(&b_ns, published, 1_000);
    let few_o = per_connection(&b_ns, open_addr, 1_000);
    connects(&b_ns, published, 10_000);
    let many_i = per_connection(&b_ns, published, 1_000);
    let many_o = per_connection(&b_ns, open_addr, 1_000);
    let _ = sh(Command::new("sysctl").args(["-w", "kernel.bpf_stats_enabled=0"]));
    println!("lookup program run time per new connection (ns): intercepted {few_i:.0} with few on record, {many_i:.0} with 10 000+; not intercepted {few_o:.0} / {many_o:.0}");
}
