//! Which global allocator gives memory back after connections close: the agent
//! (src/bin/vtguard-alloc-under-test.rs: the agent with its allocator chosen at start) under
//! glibc malloc, jemalloc and mimalloc, same build, same run, in alternating order.
//!
//! Each run starts a `vtguard run` process with an mTLS gRPC listener in front of the stand-in
//! tablet and repeats, five times, the pattern that left glibc's arenas holding memory: open
//! 2 000 mTLS connections (one request each), send 10 000 Execute requests over them (64 in
//! flight, every fifth denied by the table ACL; every answer checked), close them all, wait
//! until the agent's descriptors are back at the baseline, +2 s. Reports the agent's RSS at the
//! baseline, with the connections open, after the first and the last round and 10 s later, and
//! requests/s, p50/p99 latency, the agent's CPU per request and handshakes/s, the median of the
//! runs of each variant.
//!
//! `cargo bench -p vtguard-tests --bench allocator`, as root (open-files limit). Knobs:
//! `ALLOC_RUNS` (runs per variant, 2), `ALLOC_ROUNDS` (5), `ALLOC_CONNECTIONS` (2000),
//! `ALLOC_REQUESTS` (per round, 10000), `ALLOC_VARIANTS` (comma-separated names, all).

use std::{
    process::ExitCode,
    sync::{atomic::AtomicU64, Arc},
    time::{Duration, Instant},
};

use vtguard_tests::{
    free_port,
    pki::Pki,
    soak::{
        cpu_seconds, env_or, grpc_load, grpc_open, grpc_tls, raise_open_files, wait_fds,
        write_config, AgentProcess, Latencies, ProcStats, Tally,
    },
    upstream::Upstream,
};

/// (name, environment of the agent). jemalloc's options are spelled out in each variant (they
/// override whatever the build compiled in).
const VARIANTS: &[(&str, &[(&str, &str)])] = &[
    ("glibc", &[("VTGUARD_ALLOCATOR", "glibc")]),
    (
        "glibc arena_max=2",
        &[
            ("VTGUARD_ALLOCATOR", "glibc"),
            ("GLIBC_TUNABLES", "glibc.malloc.arena_max=2"),
        ],
    ),
    (
        "jemalloc",
        &[
            ("VTGUARD_ALLOCATOR", "jemalloc"),
            ("_RJEM_MALLOC_CONF", "background_thread:false"),
        ],
    ),
    (
        "jemalloc bg",
        &[
            ("VTGUARD_ALLOCATOR", "jemalloc"),
            ("_RJEM_MALLOC_CONF", "background_thread:true"),
        ],
    ),
    (
        "jemalloc bg decay 1s",
        &[
            ("VTGUARD_ALLOCATOR", "jemalloc"),
            (
                "_RJEM_MALLOC_CONF",
                "background_thread:true,dirty_decay_ms:1000",
            ),
        ],
    ),
    ("mimalloc", &[("VTGUARD_ALLOCATOR", "mimalloc")]),
    (
        "mimalloc purge_delay=0",
        &[
            ("VTGUARD_ALLOCATOR", "mimalloc"),
            ("MIMALLOC_PURGE_DELAY", "0"),
        ],
    ),
];

const WORKERS: usize = 64;
const OPEN_PARALLEL: usize = 64;

#[derive(Clone, Default)]
struct Run {
    base: f64,
    open: f64,
    after_first: f64,
    after_last: f64,
    idle: f64,
    rps: f64,
    p50: f64,
    p99: f64,
    cpu_us: f64,
    handshakes: f64,
}

/// The median (of an even count, the mean of the middle two).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    match v.len() {
        0 => 0.0,
        n if n % 2 == 0 => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        n => v[n / 2],
    }
}

fn main() -> ExitCode {
    if std::env::args().any(|a| a == "--list") {
        return ExitCode::SUCCESS;
    }
    let runs: usize = env_or("ALLOC_RUNS", 2);
    let rounds: usize = env_or("ALLOC_ROUNDS", 5);
    let conns_n: usize = env_or("ALLOC_CONNECTIONS", 2_000);
    let requests: u64 = env_or("ALLOC_REQUESTS", 10_000);
    let only = std::env::var("ALLOC_VARIANTS").ok();
    let variants: Vec<_> = VARIANTS
        .iter()
        .filter(|(name, _)| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|x| x.trim() == *name))
        })
        .collect();
    let need = 2 * conns_n as u64 + 4096;
    let nofile = raise_open_files(need);
    if nofile < need {
        eprintln!("allocator bench: RLIMIT_NOFILE is {nofile}, {need} needed (run as root)");
        return ExitCode::FAILURE;
    }
    let pki = Pki::generate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let up = rt.block_on(Upstream::start(0));
    up.stop_recording();
    let tls = grpc_tls(&pki);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_vtguard-alloc-under-test"));
    let tally = Arc::new(Tally::default());
    let mut results: Vec<Vec<Run>> = vec![Vec::new(); variants.len()];
    let mut n = 0;
    for run in 0..runs {
        // Alternating, and each variant in another position on each run.
        for k in 0..variants.len() {
            let v = (k + run) % variants.len();
            let (name, env) = variants[v];
            let dir = tmp.path().join(format!("run{n}"));
            n += 1;
            std::fs::create_dir(&dir).expect("run dir");
            let port = free_port();
            let config = write_config(&dir, &pki, (port, up.addr), None, conns_n + 1000);
            let mut agent = AgentProcess::spawn(bin, &config, &dir, env);
            agent.wait_listening(1);
            let pid = agent.pid();
            let addr = ([127, 0, 0, 1], port).into();
            let r = rt.block_on(async {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let base = ProcStats::of(pid);
                let (mut lat, mut load_secs, mut sent) = (Latencies::default(), 0.0, 0);
                let (mut open_secs, mut opened) = (0.0, 0);
                let (mut open_max, mut after) = (0u64, Vec::new());
                let cpu0 = cpu_seconds(pid);
                let mut cpu_open = 0.0;
                for _ in 0..rounds {
                    let t = Instant::now();
                    let c0 = cpu_seconds(pid);
                    let conns = grpc_open(&tls, addr, conns_n, OPEN_PARALLEL, &tally).await;
                    cpu_open += cpu_seconds(pid) - c0;
                    open_secs += t.elapsed().as_secs_f64();
                    opened += conns.len();
                    let done = Arc::new(AtomicU64::new(0));
                    let t = Instant::now();
                    lat.extend(grpc_load(&conns, addr, requests, WORKERS, &tally, &done).await);
                    load_secs += t.elapsed().as_secs_f64();
                    sent += requests;
                    open_max = open_max.max(ProcStats::of(pid).rss_kib);
                    drop(conns);
                    if wait_fds(pid, base.fds, Duration::from_secs(60))
                        .await
                        .is_none()
                    {
                        tally.fail(
                            None,
                            format!("{name}: descriptors not back at the baseline"),
                        );
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    after.push(ProcStats::of(pid).rss_kib);
                }
                // CPU of the requests only: the handshakes' is left out.
                let cpu = cpu_seconds(pid) - cpu0 - cpu_open;
                tokio::time::sleep(Duration::from_secs(10)).await;
                let idle = ProcStats::of(pid);
                let (p50, p99, _) = lat.summary();
                let mib = |k: u64| k as f64 / 1024.0;
                Run {
                    base: base.rss_mib(),
                    open: mib(open_max),
                    after_first: mib(after[0]),
                    after_last: mib(*after.last().expect("a round")),
                    idle: idle.rss_mib(),
                    rps: sent as f64 / load_secs,
                    p50: f64::from(p50),
                    p99: f64::from(p99),
                    cpu_us: cpu * 1e6 / sent as f64,
                    handshakes: opened as f64 / open_secs,
                }
            });
            if !agent.running() {
                tally.fail(None, format!("{name}: vtguard exited"));
            }
            eprintln!(
                "allocator: {name} (run {}): RSS base {:.1} MiB, open {:.1}, after round 1 {:.1}, after round {rounds} {:.1}, +10 s {:.1}; {:.0} req/s, p50 {:.0} us, p99 {:.0} us, {:.0} us CPU/request, {:.0} handshakes/s",
                run + 1, r.base, r.open, r.after_first, r.after_last, r.idle, r.rps, r.p50, r.p99, r.cpu_us, r.handshakes
            );
            results[v].push(r);
        }
    }
    println!(
        "allocator: vtguard with {conns_n} mTLS gRPC connections opened, {requests} requests, closed, {rounds} rounds; median of {runs} runs per allocator, alternating; 2 cores shared by client, proxy and backend"
    );
    println!(
        "  {:<28} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7} {:>7} {:>8} {:>8}",
        "allocator",
        "base",
        "open",
        "after 1",
        format!("after {rounds}"),
        "+10 s",
        "kept",
        "req/s",
        "p50 us",
        "p99 us",
        "CPU us",
        "hs/s"
    );
    for (i, (name, _)) in variants.iter().enumerate() {
        let m = |f: fn(&Run) -> f64| median(results[i].iter().map(f).collect());
        println!(
            "  {:<28} {:>8.1} {:>8.1} {:>9.1} {:>9.1} {:>9.1} {:>+9.1} {:>8.0} {:>7.0} {:>7.0} {:>8.1} {:>8.0}",
            name,
            m(|r| r.base),
            m(|r| r.open),
            m(|r| r.after_first),
            m(|r| r.after_last),
            m(|r| r.idle),
            m(|r| r.idle - r.base),
            m(|r| r.rps),
            m(|r| r.p50),
            m(|r| r.p99),
            m(|r| r.cpu_us),
            m(|r| r.handshakes),
        );
    }
    println!("  (RSS in MiB; kept = RSS 10 s after the last close minus the baseline; CPU = vtguard's per request, handshakes excluded; hs/s = mTLS handshakes per second)");
    let failures = tally.total_failures();
    for e in tally.examples() {
        println!("  failure: {e}");
    }
    if failures == 0 {
        println!("  every answer right");
        ExitCode::SUCCESS
    } else {
        println!("  FAILED: {failures} failed requests or connections");
        ExitCode::FAILURE
    }
}
