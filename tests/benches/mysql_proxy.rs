//! sysbench `oltp_point_select`, 16 threads: through vtguard's MySQL listener (TLS with a
//! client certificate, clientcert identity, a strict table ACL) and straight to MariaDB with
//! TLS, in one run on one machine. Prints queries/s of both and their ratio.
//!
//! `VTGUARD_BENCH_SECONDS` sets each side's length (default 30), split into
//! `VTGUARD_BENCH_ROUNDS` alternating rounds (default 3).

use std::{path::Path, process::Command};

use libc::{RUSAGE_CHILDREN, RUSAGE_SELF};
use vtguard_tests::{
    mysql::{mariadb_available, start_listener, MariaDb},
    pki::Pki,
};

const TABLES: &str = "--tables=4";
const TABLE_SIZE: &str = "--table-size=10000";

fn sysbench(dir: &Path, args: &[String]) -> String {
    let out = Command::new("sysbench")
        .current_dir(dir)
        .arg("oltp_point_select")
        .args(["--db-driver=mysql", "--mysql-db=sbtest", TABLES, TABLE_SIZE])
        .args(args)
        .output()
        .expect("run sysbench");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "sysbench failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// "queries: 123 (4567.89 per sec.)" → 4567.89
fn qps(report: &str) -> f64 {
    report
        .lines()
        .find(|l| l.trim_start().starts_with("queries:"))
        .and_then(|l| l.split('(').nth(1))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no queries/s in the sysbench report:\n{report}"))
}

fn main() {
    if !mariadb_available("mysql_proxy bench") {
        return;
    }
    let seconds: u32 = std::env::var("VTGUARD_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let pki = Pki::generate();
    // MariaDB's own TLS, with the same server certificate vtguard serves.
    let db = MariaDb::start_with(&[
        format!("--ssl-cert={}", pki.path("localhost.pem").display()),
        format!("--ssl-key={}", pki.path("localhost.key").display()),
        format!("--ssl-ca={}", pki.path("root.pem").display()),
    ]);
    db.root_sql("CREATE DATABASE sbtest");
    // sysbench --mysql-ssl=on reads these names from its working folder.
    let dir = pki.dir();
    std::fs::copy(pki.path("vtgate-client-1.pem"), dir.join("client-cert.pem")).expect("cert");
    std::fs::copy(pki.path("vtgate-client-1.key"), dir.join("client-key.pem")).expect("key");
    std::fs::copy(pki.path("root.pem"), dir.join("cacert.pem")).expect("ca");
    sysbench(
        dir,
        &[
            "--mysql-user=root".into(),
            format!("--mysql-socket={}", db.socket().display()),
            "prepare".into(),
        ],
    );

    let acl = dir.join("acl.json");
    std::fs::write(
        &acl,
        r#"{"table_groups": [{"name": "sb", "table_names_or_prefixes": ["sbtest%"], "readers": ["vtgate client 1"], "writers": ["vtgate client 1"]}]}"#,
    )
    .expect("acl");
    let toml = format!(
        "[tableacl]\ntable-acl-config = \"{}\"\nqueryserver-config-strict-table-acl = true\n{}",
        acl.display(),
        vtguard_tests::mysql::clientcert(&pki, db.addr()).toml()
    );
    // As many worker threads as the agent's runtime (app.rs), unless told otherwise.
    let workers = std::env::var("VTGUARD_BENCH_WORKERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("runtime");
    let l = rt.block_on(start_listener(&toml, None));

    let run = |port: u16, seconds: u32| {
        let report = sysbench(
            dir,
            &[
                "--mysql-host=127.0.0.1".into(),
                format!("--mysql-port={port}"),
                "--mysql-user=vtgate client 1".into(),
                "--mysql-ssl=on".into(),
                "--threads=16".into(),
                format!("--time={seconds}"),
                "run".into(),
            ],
        );
        qps(&report)
    };
    // Warm MariaDB up first (buffer pool, thread cache), so that neither measured run pays it.
    run(db.port, 5);
    // The listener runs on the runtime's worker threads while sysbench runs here.
    let measure = |port: u16, seconds: u32| {
        let before = (
            cpu_seconds(RUSAGE_SELF),
            cpu_seconds(RUSAGE_CHILDREN),
            process_cpu(db.pid()),
        );
        let q = run(port, seconds);
        let n = q * f64::from(seconds);
        let per_query = |a: f64, b: f64| (b - a) * 1e6 / n;
        let cpu = [
            per_query(before.0, cpu_seconds(RUSAGE_SELF)),
            per_query(before.1, cpu_seconds(RUSAGE_CHILDREN)),
            per_query(before.2, process_cpu(db.pid())),
        ];
        (q, cpu)
    };
    // Alternating rounds (through, direct, through, ...): load from elsewhere on the machine
    // falls on both sides alike. Each side runs `seconds` in all.
    let rounds: u32 = std::env::var("VTGUARD_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let (mut t, mut d) = ((0.0, [0.0; 3]), (0.0, [0.0; 3]));
    for _ in 0..rounds {
        for (port, acc) in [(l.addr.port(), &mut t), (db.port, &mut d)] {
            let (q, cpu) = measure(port, seconds / rounds);
            acc.0 += q / f64::from(rounds);
            for (a, c) in acc.1.iter_mut().zip(cpu) {
                *a += c / f64::from(rounds);
            }
        }
    }
    let (through, [vtguard, sb_t, maria_t]) = t;
    let (direct, [_, sb_d, maria_d]) = d;
    println!(
        "mysql oltp_point_select, 16 threads, {seconds} s each ({rounds} alternating rounds), TLS with client certificates:"
    );
    println!("  direct to MariaDB:  {direct:.0} queries/s");
    println!("  through vtguard:    {through:.0} queries/s");
    println!(
        "  ratio:              {:.2} (target >= 0.8)",
        through / direct
    );
    println!("  CPU per query (us): direct: sysbench {sb_d:.1}, MariaDB {maria_d:.1}; through: sysbench {sb_t:.1}, vtguard {vtguard:.1}, MariaDB {maria_t:.1}");
    drop(l);
}

/// CPU time (user + system) of this process (the listener; sysbench and MariaDB are other
/// processes), or of its finished children (the sysbench runs).
fn cpu_seconds(who: libc::c_int) -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let u = unsafe {
        libc::getrusage(who, u.as_mut_ptr());
        u.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// CPU time of a running process, from /proc.
fn process_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let rest = stat.rsplit(") ").next().unwrap_or_default();
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)) / hz
}
