//! Soak: a real `vtguard run` process (the agent binary cargo built, so its RSS and open
//! descriptors are its own) with an mTLS gRPC listener in front of the stand-in tablet (h2c)
//! and a MySQL listener (TLS, client certificates, clientcert identity) in front of a real
//! MariaDB, under a strict table ACL. It holds 10 000 gRPC connections and 500 MySQL sessions
//! open while 1 000 000 requests go through them (80 % gRPC Execute, 20 % MySQL SELECT; of
//! each, every fifth names a table the ACL denies), then closes everything, then opens and
//! closes 2 000 connections five times (the churn that left glibc's arenas holding memory).
//!
//! Every answer is checked: an allowed request must get the backend's answer (the stand-in
//! tablet's rows carry the caller ID vtguard forwarded; MariaDB's row), a denied one Vitess's
//! exact refusal (PERMISSION_DENIED, ERR 1142), and the backends must have seen exactly the
//! allowed requests. Any deviation, a failed handshake or login, descriptors not back to the
//! baseline after close, or the agent dying makes the bench exit non-zero.
//!
//! Reports vtguard's RSS and descriptor count at the baseline, with everything connected and
//! idle after one request each (→ RSS per idle connection), at the end of the load, after all
//! connections closed (+5 s, +15 s) and after each churn round; requests/s and p50/p99/max
//! latency.
//!
//! `cargo bench -p vtguard-tests --bench soak` (or `cargo xtask bench`), as root (the bench
//! raises the hard open-files limit; the agent inherits it). No kernel programs: like
//! grpc_proxy and mysql_proxy, this measures the proxy. Knobs: `SOAK_REQUESTS` (1000000),
//! `SOAK_GRPC_CONNECTIONS` (10000), `SOAK_MYSQL_SESSIONS` (500), `SOAK_GRPC_WORKERS` (64) and
//! `SOAK_MYSQL_WORKERS` (16) (requests in flight), `SOAK_CHURN_ROUNDS` (5),
//! `SOAK_CHURN_CONNECTIONS` (2000). A quick try: `SOAK_REQUESTS=100000`.

use std::{
    process::ExitCode,
    sync::{atomic::AtomicU64, atomic::Ordering, Arc},
    time::{Duration, Instant},
};

use vtguard_tests::{
    free_port,
    mysql::{mariadb_available, MariaDb},
    pki::Pki,
    soak::{
        cpu_seconds, env_or, grpc_load, grpc_open, grpc_tls, mysql_load, mysql_open, mysql_tls,
        raise_open_files, wait_fds, write_config, AgentProcess, Kind, ProcStats, Tally,
    },
    upstream::Upstream,
};

/// Handshakes in flight while connections are opened.
const OPEN_PARALLEL: usize = 64;
/// How long after closing everything the agent is measured.
const SETTLE: Duration = Duration::from_secs(5);

struct Row {
    phase: String,
    stats: ProcStats,
    note: String,
}

/// What the run measured, for the report.
struct Outcome {
    base: ProcStats,
    per_grpc: f64,
    per_mysql: f64,
    end: ProcStats,
    closed: ProcStats,
    last: ProcStats,
    load_secs: f64,
    cpu: f64,
    /// CPU seconds of this process (clients, stand-in tablet) and MariaDB during the load.
    others: (f64, f64),
    lat: Vec<(&'static str, (u32, u32, u32))>,
}

fn com_select(db: &MariaDb) -> u64 {
    db.root_sql("SHOW GLOBAL STATUS LIKE 'Com_select'")
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("Com_select")
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    if !mariadb_available("soak bench") {
        return ExitCode::SUCCESS;
    }
    let wanted_grpc: usize = env_or("SOAK_GRPC_CONNECTIONS", 10_000);
    let mysql_n: usize = env_or("SOAK_MYSQL_SESSIONS", 500);
    let requests: u64 = env_or("SOAK_REQUESTS", 1_000_000);
    let grpc_workers: usize = env_or("SOAK_GRPC_WORKERS", 64);
    let mysql_workers: usize = env_or("SOAK_MYSQL_WORKERS", 16);
    let churn_rounds: usize = env_or("SOAK_CHURN_ROUNDS", 5);
    let churn_n: usize = env_or("SOAK_CHURN_CONNECTIONS", 2_000);
    let mysql_requests = requests / 5;
    let grpc_requests = requests - mysql_requests;

    // vtguard holds two descriptors per connection (the client's and its upstream); this
    // process holds every client socket and the stand-in tablet's side of vtguard's gRPC
    // upstream connections. The agent inherits this process's limit.
    let need = |g: usize| (2 * (g.max(churn_n) + mysql_n) + 400) as u64;
    let nofile = raise_open_files(need(wanted_grpc));
    let mut grpc_n = wanted_grpc;
    let mut capped = None;
    if nofile < need(grpc_n) {
        // The hard limit cannot be raised here (not root, or no CAP_SYS_RESOURCE, as in some
        // containers): hold as many gRPC connections as fit, and say so.
        grpc_n = (nofile.saturating_sub(400) as usize / 2).saturating_sub(mysql_n) / 100 * 100;
        if grpc_n == 0 || grpc_n < churn_n {
            eprintln!("soak bench: RLIMIT_NOFILE is {nofile}, too low for this bench");
            return ExitCode::FAILURE;
        }
        capped = Some(format!(
            "NOTE: RLIMIT_NOFILE is {nofile} here and cannot be raised (no CAP_SYS_RESOURCE); vtguard holds two descriptors per connection, so this run holds {grpc_n} gRPC connections, not {wanted_grpc}"
        ));
        eprintln!("soak bench: {}", capped.as_deref().unwrap_or_default());
    }

    let pki = Pki::generate();
    let db = MariaDb::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let up = rt.block_on(Upstream::start(0));
    up.stop_recording();
    let (grpc_port, mysql_port) = (free_port(), free_port());
    let max = grpc_n.max(churn_n) + mysql_n + 1000;
    let config = write_config(
        dir.path(),
        &pki,
        (grpc_port, up.addr),
        Some((mysql_port, db.addr())),
        max,
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_vtguard-under-test"));
    let mut agent = AgentProcess::spawn(bin, &config, dir.path(), &[]);
    agent.wait_listening(2);
    let pid = agent.pid();
    let grpc_addr = ([127, 0, 0, 1], grpc_port).into();
    let mysql_addr = ([127, 0, 0, 1], mysql_port).into();
    let (gtls, mtls) = (grpc_tls(&pki), mysql_tls(&pki));

    let setup = Arc::new(Tally::default());
    let load = Arc::new(Tally::default());
    let churn = Arc::new(Tally::default());
    let mut rows: Vec<Row> = Vec::new();
    let mut problems: Vec<String> = Vec::new();
    let mut row = |phase: &str, note: String| {
        let stats = ProcStats::of(pid);
        eprintln!(
            "soak: {phase}: RSS {:.1} MiB, {} fds {note}",
            stats.rss_mib(),
            stats.fds
        );
        rows.push(Row {
            phase: phase.to_owned(),
            stats,
            note,
        });
        stats
    };

    let outcome = rt.block_on(async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let base = row("baseline (listening, no connection)", String::new());

        let t = Instant::now();
        let conns = grpc_open(&gtls, grpc_addr, grpc_n, OPEN_PARALLEL, &setup).await;
        let open_secs = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let g = row(
            &format!("{} gRPC connections, idle", conns.len()),
            format!("(opened in {open_secs:.1} s, {:.0} handshakes/s)", conns.len() as f64 / open_secs),
        );
        let t = Instant::now();
        let sessions = mysql_open(&mtls, mysql_addr, mysql_n, OPEN_PARALLEL, &setup).await;
        let open_secs = t.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let all = row(
            &format!("+ {} MySQL sessions, idle", sessions.len()),
            format!("(opened in {open_secs:.1} s)"),
        );
        let per_grpc = (g.rss_kib as f64 - base.rss_kib as f64) / conns.len().max(1) as f64;
        let per_mysql = (all.rss_kib as f64 - g.rss_kib as f64) / sessions.len().max(1) as f64;

        // The load: both protocols at once, progress every 10 s.
        let done = Arc::new(AtomicU64::new(0));
        let (served0, selects0) = (up.served.load(Ordering::Relaxed), com_select(&db));
        let cpu0 = cpu_seconds(pid);
        let others0 = (cpu_seconds(std::process::id()), cpu_seconds(db.pid()));
        let t = Instant::now();
        let progress = {
            let (done, load) = (Arc::clone(&done), Arc::clone(&load));
            tokio::spawn(async move {
                let mut last = (Instant::now(), 0);
                loop {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                    let n = done.load(Ordering::Relaxed);
                    let rate = (n - last.1) as f64 / last.0.elapsed().as_secs_f64();
                    eprintln!(
                        "soak: load: {n}/{requests} requests, {rate:.0} req/s, {} failures",
                        load.total_failures()
                    );
                    last = (Instant::now(), n);
                }
            })
        };
        let (mut glat, (sessions, mut mlat)) = tokio::join!(
            grpc_load(&conns, grpc_addr, grpc_requests, grpc_workers, &load, &done),
            mysql_load(sessions, mysql_requests, mysql_workers, &load, &done),
        );
        progress.abort();
        let load_secs = t.elapsed().as_secs_f64();
        let cpu = cpu_seconds(pid) - cpu0;
        let others = (
            cpu_seconds(std::process::id()) - others0.0,
            cpu_seconds(db.pid()) - others0.1,
        );
        let end = row("end of the load", String::new());
        let served = up.served.load(Ordering::Relaxed) - served0;
        let selects = com_select(&db) - selects0;
        let sent = |k: Kind| load.oks(k) + load.failures(k);
        if served != sent(Kind::GrpcAllowed) {
            problems.push(format!(
                "the stand-in tablet received {served} requests during the load, {} allowed ones were sent",
                sent(Kind::GrpcAllowed)
            ));
        }
        if selects != sent(Kind::MysqlAllowed) {
            problems.push(format!(
                "MariaDB ran {selects} SELECTs during the load, {} allowed ones were sent",
                sent(Kind::MysqlAllowed)
            ));
        }

        // Close everything: gRPC connections dropped, MySQL sessions quit.
        let t = Instant::now();
        drop(conns);
        futures_util::future::join_all(sessions.into_iter().map(|s| s.quit())).await;
        let fds_back = wait_fds(pid, base.fds, Duration::from_secs(60)).await;
        match fds_back {
            None => problems.push(format!(
                "descriptors not back to the baseline ({}) 60 s after closing: {}",
                base.fds,
                ProcStats::of(pid).fds
            )),
            Some(_) => tokio::time::sleep(SETTLE).await,
        }
        let back = t.elapsed().as_secs_f64() - SETTLE.as_secs_f64();
        row(
            "all closed, +5 s",
            format!("(descriptors back at the baseline {back:.1} s after close)"),
        );
        // jemalloc returns unused pages over its decay time (10 s).
        tokio::time::sleep(Duration::from_secs(10)).await;
        let closed = row("all closed, +15 s", String::new());

        // Churn: the pattern of the issue.
        for r in 1..=churn_rounds {
            let conns = grpc_open(&gtls, grpc_addr, churn_n, OPEN_PARALLEL, &churn).await;
            let open = ProcStats::of(pid);
            drop(conns);
            if wait_fds(pid, base.fds, Duration::from_secs(60)).await.is_none() {
                problems.push(format!("churn round {r}: descriptors not back to the baseline"));
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            row(
                &format!("churn round {r}: {churn_n} opened, closed, +2 s"),
                format!("(open: {:.1} MiB, {} fds)", open.rss_mib(), open.fds),
            );
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        let last = row("after the churn, +10 s idle", String::new());
        let lat = vec![
            ("gRPC", glat.summary()),
            ("MySQL", mlat.summary()),
            ("all", {
                glat.extend(mlat);
                glat.summary()
            }),
        ];
        Outcome {
            base,
            per_grpc,
            per_mysql,
            end,
            closed,
            last,
            load_secs,
            cpu,
            others,
            lat,
        }
    });
    if !agent.running() {
        problems.push("vtguard exited during the run".into());
    }

    // The report.
    let Outcome {
        base,
        per_grpc,
        per_mysql,
        end,
        closed,
        last,
        load_secs,
        cpu,
        others,
        lat,
    } = outcome;
    if let Some(note) = &capped {
        println!("{note}");
    }
    println!(
        "soak: {grpc_n} mTLS gRPC connections + {mysql_n} MySQL TLS sessions (client certificates) through one vtguard process, {requests} requests, strict table ACL, no kernel programs; 2 cores shared by client, proxy and backends"
    );
    println!("  {:<44} {:>9} {:>7}", "vtguard", "RSS MiB", "fds");
    for r in &rows {
        println!(
            "  {:<44} {:>9.1} {:>7}  {}",
            r.phase,
            r.stats.rss_mib(),
            r.stats.fds,
            r.note
        );
    }
    println!(
        "  RSS per idle connection: gRPC {per_grpc:.1} KiB, MySQL session {per_mysql:.1} KiB (after one request each)"
    );
    let mib = |s: &ProcStats| s.rss_mib();
    println!(
        "  RSS 15 s after close: {:+.1} MiB over the baseline (peak {:.1} MiB at the end of the load); after the churn {:+.1} MiB",
        mib(&closed) - mib(&base),
        mib(&end),
        mib(&last) - mib(&base)
    );
    println!(
        "  load: {} requests in {load_secs:.1} s = {:.0} req/s; vtguard CPU {cpu:.1} s ({:.0} us per request, {:.0} % of 2 cores)",
        load.total(),
        load.total() as f64 / load_secs,
        cpu * 1e6 / load.total().max(1) as f64,
        cpu / load_secs * 50.0
    );
    println!(
        "  CPU during the load: clients + stand-in tablet {:.1} s, MariaDB {:.1} s; all three {:.0} % of the 2 cores",
        others.0,
        others.1,
        (cpu + others.0 + others.1) / load_secs * 50.0
    );
    for (name, (p50, p99, max)) in lat {
        println!("  latency {name:<6} p50 {p50:>6} us  p99 {p99:>6} us  max {max:>7} us");
    }
    for (what, t) in [
        ("connect + first request", &setup),
        ("load", &load),
        ("churn", &churn),
    ] {
        let counts: Vec<String> = Kind::ALL
            .iter()
            .filter(|k| t.oks(**k) + t.failures(**k) > 0)
            .map(|k| format!("{} {} ok / {} failed", k.label(), t.oks(*k), t.failures(*k)))
            .collect();
        println!(
            "  {what}: {}{}",
            counts.join(", "),
            match t.connect_failed.load(Ordering::Relaxed) {
                0 => String::new(),
                n => format!(", {n} connections failed"),
            }
        );
    }
    let failures = setup.total_failures() + load.total_failures() + churn.total_failures();
    for t in [&setup, &load, &churn] {
        for e in t.examples() {
            println!("  failure: {e}");
        }
    }
    for w in agent.warnings(10) {
        println!("  vtguard warned: {w}");
    }
    for p in &problems {
        println!("  PROBLEM: {p}");
    }
    if failures == 0 && problems.is_empty() {
        println!(
            "  result: every answer right, no protocol error, descriptors back to the baseline"
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "  result: FAILED ({failures} failed requests or connections, {} other problems)",
            problems.len()
        );
        ExitCode::FAILURE
    }
}
