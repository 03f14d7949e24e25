//! sysbench `oltp_point_select`, 16 threads: through vtguard's MySQL listener (TLS with a
//! client certificate, clientcert identity, a strict table ACL) and straight to MariaDB with
//! TLS, in one run on one machine. Prints queries/s of both and their ratio.
//!
//! `VTGUARD_BENCH_SECONDS` sets each run's length (default 30).

use std::{path::Path, process::Command};

use vtguard_tests::{
    mysql::{mariadb_available, mtls_listener, start_listener, MariaDb},
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
        mtls_listener(&pki, db.addr(), "mysql-auth-server-impl = \"clientcert\"\n")
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

    let run = |port: u16| {
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
    sysbench(
        dir,
        &[
            "--mysql-host=127.0.0.1".into(),
            format!("--mysql-port={}", db.port),
            "--mysql-user=vtgate client 1".into(),
            "--mysql-ssl=on".into(),
            "--threads=16".into(),
            "--time=5".into(),
            "run".into(),
        ],
    );
    // The listener runs on the runtime's worker threads while sysbench runs here.
    let cpu_before = cpu_seconds();
    let through = run(l.addr.port());
    let vtguard_cpu = cpu_seconds() - cpu_before;
    let direct = run(db.port);
    println!(
        "mysql oltp_point_select, 16 threads, {seconds} s each, TLS with client certificates:"
    );
    println!("  direct to MariaDB:  {direct:.0} queries/s");
    println!("  through vtguard:    {through:.0} queries/s");
    println!(
        "  ratio:              {:.2} (target >= 0.8)",
        through / direct
    );
    println!(
        "  vtguard CPU:        {:.1} us per query ({:.0}% of one core)",
        vtguard_cpu * 1e6 / (through * f64::from(seconds)),
        vtguard_cpu * 100.0 / f64::from(seconds)
    );
    drop(l);
}

/// CPU time (user + system) this process used so far: the listener's, since sysbench and
/// MariaDB are other processes.
fn cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, u.as_mut_ptr());
        u.assume_init()
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}
