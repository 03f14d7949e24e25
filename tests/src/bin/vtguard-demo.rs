//! `cargo xtask demo`: Vitess's encrypted-transport scenario (VITESS.md §5) end to end on
//! loopback, through the real `vtguard` binary, printing each step and its outcome.
//!
//! The vttablet and vtgate here are stand-ins (small gRPC servers that answer Execute from an
//! in-memory table and record the caller IDs they receive): Vitess binaries cannot be had on
//! this machine. MariaDB is the real thing. As root the kernel programs are attached (under a
//! demo pin folder, detached again on every exit path); without root the kernel steps are
//! skipped, and the demo says so.
//!
//! Exit status: 0 when every step that ran had the expected outcome, 1 otherwise.

use std::{
    fmt::Write as _,
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use vtguard_proto::{
    query, queryservice::query_client::QueryClient, vtgate,
    vtgateservice::vitess_client::VitessClient, vtrpc::CallerId,
};
use vtguard_tests::{
    agent::AgentProcess,
    grpc::{plain_channel, tls_channel},
    installed,
    mysql::{MariaDb, MARIADB_PROGRAMS},
    pki::Pki,
    sh,
    upstream::{rows, Upstream, SELECT_TABLE, VT_INSERT_TEST},
};

/// Ports the demo uses (all on 127.0.0.1).
const TABLET: u16 = 16991;
const VTGATE: u16 = 16999;
const VTTABLET_LISTENER: u16 = 15991;
const VTGATE_LISTENER: u16 = 15999;
const VTGATE_EFFECTIVE: u16 = 15998;
const VTGATE_GROUPS: u16 = 15997;
const MYSQL_LISTENER: u16 = 13306;
const METRICS: u16 = 19465;
const PIN_DIR: &str = "/sys/fs/bpf/vtguard-demo";

const ACL: &str = r#"{"table_groups": [{"name": "vt_insert_test", "table_names_or_prefixes": ["vt_insert_test"],
  "readers": ["vtgate client 1"], "writers": ["vtgate client 1"], "admins": ["vtgate client 1"]}]}"#;

/// A step's outcome.
enum Outcome {
    Ok(String),
    Failed(String),
    Skipped(String),
}

#[derive(Default)]
struct Report {
    n: usize,
    failed: usize,
    skipped: usize,
}

impl Report {
    fn step(&mut self, title: &str, outcome: Outcome) {
        self.n += 1;
        let (mark, detail) = match outcome {
            Outcome::Ok(d) => ("ok", d),
            Outcome::Failed(d) => {
                self.failed += 1;
                ("FAILED", d)
            }
            Outcome::Skipped(d) => {
                self.skipped += 1;
                ("skipped", d)
            }
        };
        println!("[{:>2}] {title}: {mark}", self.n);
        for line in detail.lines() {
            println!("       {line}");
        }
    }

    /// `got` is what happened; ok if it matches `want`.
    fn expect(&mut self, title: &str, want: &str, got: Result<String, String>) {
        let outcome = match got {
            Ok(g) if g == want => Outcome::Ok(g),
            Ok(g) => Outcome::Failed(format!("expected: {want}\ngot:      {g}")),
            Err(e) => Outcome::Failed(format!("expected: {want}\nerror:    {e}")),
        };
        self.step(title, outcome);
    }
}

fn progress(what: &str) {
    println!("     … {what}");
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// The running agent; its pins are detached after it stops, on every exit path.
struct Agent {
    process: Option<AgentProcess>,
    kernel: bool,
}

impl Agent {
    fn log(&self) -> String {
        self.process
            .as_ref()
            .map(AgentProcess::log)
            .unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        drop(self.process.take());
        if self.kernel {
            match vtguard_agent::kernel::detach(Path::new(PIN_DIR)) {
                Ok(r) => println!(
                    "cleanup: vtguard stopped; detached {} kernel program(s) from {PIN_DIR}",
                    r.links_detached.len()
                ),
                Err(e) => println!("cleanup: detaching {PIN_DIR} failed: {e} — run `vtguard kernel detach --bpffs {PIN_DIR}`"),
            }
        } else {
            println!("cleanup: vtguard stopped");
        }
    }
}

fn grpc_listener(name: &str, service: &str, port: u16, upstream: u16, extra: &str) -> String {
    format!(
        "[[listener]]\nname = \"{name}\"\nprotocol = \"grpc\"\nservice = \"{service}\"\nlisten = \"127.0.0.1:{port}\"\nupstream = \"127.0.0.1:{upstream}\"\n{extra}\n"
    )
}

fn vtgate_request(caller: Option<CallerId>, sql: &str) -> vtgate::ExecuteRequest {
    vtgate::ExecuteRequest {
        caller_id: caller,
        query: Some(vtguard_tests::upstream::bound(sql)),
        ..Default::default()
    }
}

/// A vtgate Execute's outcome as a user reads it: the rows, or the error vtgate answered.
async fn vtgate_outcome(
    client: &mut VitessClient<tonic::transport::Channel>,
    req: vtgate::ExecuteRequest,
) -> Result<String, String> {
    match client.execute(req).await {
        Ok(r) => {
            let r = r.into_inner();
            match (r.error, r.result) {
                (Some(e), _) => Ok(format!("denied: {}", e.message)),
                (None, Some(res)) => Ok(format!("rows: {}", rows(&res).join("; "))),
                (None, None) => Ok("no result".into()),
            }
        }
        Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
    }
}

fn caller(principal: &str, groups: &[&str]) -> Option<CallerId> {
    Some(CallerId {
        principal: principal.into(),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        ..Default::default()
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let root = is_root();
    let mut r = Report::default();
    println!("vtguard demo — Vitess's encrypted-transport scenario (VITESS.md §5) on loopback\n");
    if !root {
        println!("NOTE: not running as root: kernel enforcement is skipped (attaching eBPF programs needs root), and MariaDB is used only if already installed.\n");
    }

    // Which ports can be had: a step that needs a taken one says so and the rest go on.
    let mut taken: Vec<u16> = [
        TABLET,
        VTGATE,
        VTTABLET_LISTENER,
        VTGATE_LISTENER,
        VTGATE_EFFECTIVE,
        VTGATE_GROUPS,
        MYSQL_LISTENER,
        METRICS,
    ]
    .into_iter()
    .filter(|p| !port_free(*p))
    .collect();
    let busy = |p: u16, taken: &[u16]| taken.contains(&p);

    // 1. PKI.
    let pki = Pki::generate();
    r.step(
        "PKI made with rcgen",
        Outcome::Ok(format!(
            "root CA; intermediates vttablet-server, vttablet-client, vtgate-server, vtgate-client;\nleaves \"vttablet server instance\", \"vttablet client 1\", \"localhost\", \"vtgate client 1\", \"vtgate client 2\" (ECDSA P-256)\nin {}",
            pki.dir().display()
        )),
    );

    // 2. Stand-ins.
    let tablet = if busy(TABLET, &taken) {
        None
    } else {
        Some(Upstream::start(TABLET).await)
    };
    let gate = if busy(VTGATE, &taken) {
        None
    } else {
        Some(Upstream::start(VTGATE).await)
    };
    r.step(
        "stand-in vttablet and vtgate (Vitess binaries cannot be had here)",
        match (&tablet, &gate) {
            (Some(_), Some(_)) => Outcome::Ok(format!(
                "vttablet on 127.0.0.1:{TABLET}, vtgate on 127.0.0.1:{VTGATE}: plaintext, behind vtguard; in-memory vt_insert_test = {}",
                VT_INSERT_TEST.join(", ")
            )),
            _ => Outcome::Skipped(format!(
                "port {} is in use: the stand-ins need {TABLET} and {VTGATE}",
                if tablet.is_none() { TABLET } else { VTGATE }
            )),
        },
    );

    // 3. MariaDB (the MySQL path): installed when root and missing, started in a temp folder.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mariadb = mysql_upstream(&mut r, root, tmp.path(), &taken).await;

    // 4. vtguard itself.
    let acl = tmp.path().join("acl.json");
    std::fs::write(&acl, ACL).expect("acl");
    let mut config = format!(
        "[tableacl]\ntable-acl-config = \"{}\"\nqueryserver-config-strict-table-acl = true\n\n[admin]\nsocket = \"{}\"\n\n",
        acl.display(),
        tmp.path().join("admin.sock").display()
    );
    let metrics = !busy(METRICS, &taken);
    if metrics {
        let _ = writeln!(config, "[metrics]\nlisten = \"127.0.0.1:{METRICS}\"\n");
    }
    let mut protected = Vec::new();
    if tablet.is_some() {
        protected.push(TABLET);
    }
    if gate.is_some() {
        protected.push(VTGATE);
    }
    if let Some(m) = &mariadb {
        protected.push(m.port);
    }
    let kernel = root && !protected.is_empty();
    if kernel {
        let _ = vtguard_agent::kernel::detach(Path::new(PIN_DIR));
        let _ = writeln!(
            config,
            "[kernel]\nprotected-ports = {protected:?}\nbpffs = \"{PIN_DIR}\"\n"
        );
    }
    let mtls = |cert: &str, ca: &str| {
        format!(
            "grpc-cert = \"{}\"\ngrpc-key = \"{}\"\ngrpc-ca = \"{}\"",
            pki.path(&format!("{cert}.pem")).display(),
            pki.path(&format!("{cert}.key")).display(),
            pki.path(&format!("{ca}.pem")).display()
        )
    };
    let ids = |list: &[&str]| {
        if kernel {
            format!("identities = {list:?}")
        } else {
            String::new()
        }
    };
    let mut listeners = Vec::new();
    let mut want_listener = |name: &'static str, port: u16, upstream_up: bool, block: String| {
        if upstream_up && !busy(port, &taken) {
            config.push_str(&block);
            listeners.push((name, port));
        }
    };
    want_listener(
        "vttablet",
        VTTABLET_LISTENER,
        tablet.is_some(),
        grpc_listener(
            "vttablet",
            "vttablet",
            VTTABLET_LISTENER,
            TABLET,
            &format!(
                "{}\n{}",
                mtls("localhost", "vttablet-client-ca"),
                ids(&["vttablet client 1"])
            ),
        ),
    );
    let gate_ids = ids(&["vtgate client 1", "vtgate client 2", "my-caller"]);
    want_listener(
        "vtgate",
        VTGATE_LISTENER,
        gate.is_some(),
        grpc_listener(
            "vtgate",
            "vtgate",
            VTGATE_LISTENER,
            VTGATE,
            &format!("{}\n{gate_ids}", mtls("localhost", "vtgate-client-ca")),
        ),
    );
    want_listener(
        "vtgate-effective",
        VTGATE_EFFECTIVE,
        gate.is_some(),
        grpc_listener(
            "vtgate-effective",
            "vtgate",
            VTGATE_EFFECTIVE,
            VTGATE,
            &format!("insecure-plaintext = true\ngrpc-use-effective-callerid = true\n{gate_ids}"),
        ),
    );
    want_listener(
        "vtgate-groups",
        VTGATE_GROUPS,
        gate.is_some(),
        grpc_listener(
            "vtgate-groups",
            "vtgate",
            VTGATE_GROUPS,
            VTGATE,
            &format!("insecure-plaintext = true\ngrpc-use-effective-callerid = true\ngrpc-use-effective-groups = true\n{gate_ids}"),
        ),
    );
    if let Some(m) = &mariadb {
        want_listener(
            "mysql",
            MYSQL_LISTENER,
            true,
            mysql_listener_block(&pki, m, &ids(&["vtgate client 1", "vtgate client 2"])),
        );
    }
    let config_path = tmp.path().join("vtguard.toml");
    std::fs::write(&config_path, &config).expect("config");

    let agent = if listeners.is_empty() && !kernel {
        r.step(
            "vtguard starts",
            Outcome::Skipped("no listener can run (their ports or upstreams are missing)".into()),
        );
        None
    } else {
        progress("starting vtguard");
        match start_agent(&config_path, kernel, &listeners) {
            Ok(a) => {
                let log = a.log();
                let attached = log.matches("attached vtg_").count();
                r.step(
                    "vtguard starts",
                    Outcome::Ok(format!(
                        "config {}\nlisteners: {}\n{}",
                        config_path.display(),
                        listeners
                            .iter()
                            .map(|(n, p)| format!("{n} on {p}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        if kernel {
                            format!("kernel: {attached} program(s) attached to the cgroup2 root; protected ports {protected:?}")
                        } else {
                            "kernel: skipped (not root)".into()
                        }
                    )),
                );
                Some(a)
            }
            Err(e) => {
                r.step("vtguard starts", Outcome::Failed(e));
                None
            }
        }
    };
    let up = |name: &str| agent.is_some() && listeners.iter().any(|(n, _)| *n == name);
    let addr = |port: u16| -> SocketAddr { SocketAddr::from(([127, 0, 0, 1], port)) };
    let ports: [(&str, u16, u16); 4] = [
        ("vttablet", VTTABLET_LISTENER, TABLET),
        ("vtgate", VTGATE_LISTENER, VTGATE),
        ("vtgate-effective", VTGATE_EFFECTIVE, VTGATE),
        ("vtgate-groups", VTGATE_GROUPS, VTGATE),
    ];
    let unavailable = |name: &str| {
        let why = match ports.iter().find(|(n, _, _)| *n == name) {
            _ if agent.is_none() => "vtguard is not running".to_owned(),
            Some((_, p, _)) if taken.contains(p) => {
                format!("port {p}, which the {name} listener needs, is in use by another process")
            }
            Some((_, _, u)) if taken.contains(u) => {
                format!("port {u}, which its stand-in upstream needs, is in use by another process")
            }
            _ => format!("the {name} listener is not running"),
        };
        Outcome::Skipped(why)
    };

    // Steps 4–5: client certificates through vtgate.
    if up("vtgate") {
        for (client, want) in [
            ("vtgate-client-1", format!("rows: {}", VT_INSERT_TEST.join("; "))),
            // A certificate's DNS SANs are its groups: ["localhost", CN] in this PKI.
            ("vtgate-client-2", "denied: Select command denied to user 'vtgate client 2', in groups [localhost, vtgate client 2], for table 'vt_insert_test' (ACL check error)".to_owned()),
        ] {
            let got = match tls_channel(&pki, addr(VTGATE_LISTENER), Some(client)).await {
                Ok(ch) => {
                    vtgate_outcome(&mut VitessClient::new(ch), vtgate_request(None, SELECT_TABLE))
                        .await
                }
                Err(e) => Err(format!("connect: {e}")),
            };
            r.expect(
                &format!("{client} (certificate) runs `{SELECT_TABLE}` through vtgate"),
                &want,
                got,
            );
        }
    } else {
        r.step(
            "client 1 and client 2 through vtgate",
            unavailable("vtgate"),
        );
    }

    // Step 6: vtgate without TLS, grpc-use-effective-callerid.
    if up("vtgate-effective") {
        let ch = plain_channel(addr(VTGATE_EFFECTIVE)).await;
        let mut c = VitessClient::new(ch);
        for (who, caller, want) in [
            ("no caller ID", None, "denied: Select command denied to user 'unsecure_grpc_client' for table 'vt_insert_test' (ACL check error)".to_owned()),
            ("principal \"vtgate client 1\"", caller("vtgate client 1", &[]), format!("rows: {}", VT_INSERT_TEST.join("; "))),
            ("principal \"vtgate client 2\"", caller("vtgate client 2", &[]), "denied: Select command denied to user 'vtgate client 2' for table 'vt_insert_test' (ACL check error)".to_owned()),
        ] {
            let got = vtgate_outcome(&mut c, vtgate_request(caller, SELECT_TABLE)).await;
            r.expect(&format!("plaintext vtgate with grpc-use-effective-callerid, {who}"), &want, got);
        }
    } else {
        r.step("effective caller ID steps", unavailable("vtgate-effective"));
    }

    // Step 7: and grpc-use-effective-groups.
    if up("vtgate-groups") {
        let ch = plain_channel(addr(VTGATE_GROUPS)).await;
        let mut c = VitessClient::new(ch);
        for (group, want) in [
            ("vtgate client 1", format!("rows: {}", VT_INSERT_TEST.join("; "))),
            ("vtgate client 2", "denied: Select command denied to user 'my-caller', in groups [vtgate client 2], for table 'vt_insert_test' (ACL check error)".to_owned()),
        ] {
            let got = vtgate_outcome(&mut c, vtgate_request(caller("my-caller", &[group]), SELECT_TABLE)).await;
            r.expect(
                &format!("… and grpc-use-effective-groups, principal \"my-caller\" in group \"{group}\""),
                &want,
                got,
            );
        }
    } else {
        r.step("effective groups steps", unavailable("vtgate-groups"));
    }

    // A client claiming another identity in the request body.
    if up("vttablet") {
        let got = async {
            let ch = tls_channel(&pki, addr(VTTABLET_LISTENER), Some("vttablet-client-1"))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let req = query::ExecuteRequest {
                immediate_caller_id: Some(vtguard_proto::query::VtGateCallerId {
                    username: "vtgate client 1".into(),
                    groups: vec!["admins".into()],
                }),
                target: Some(vtguard_tests::upstream::target("test_keyspace")),
                query: Some(vtguard_tests::upstream::bound("select 1")),
                ..Default::default()
            };
            let resp = QueryClient::new(ch)
                .execute(req)
                .await
                .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
            let who = resp
                .into_inner()
                .result
                .map(|r| rows(&r).join(";"))
                .unwrap_or_default();
            Ok::<_, String>(format!("the tablet received immediate_caller_id {who:?}"))
        }
        .await;
        r.expect(
            "\"vttablet client 1\" (certificate) claims immediate_caller_id \"vtgate client 1\" in the request body",
            "the tablet received immediate_caller_id \"vttablet client 1|localhost,vttablet client 1\"",
            got,
        );
    } else {
        r.step(
            "identity claimed in the request body",
            unavailable("vttablet"),
        );
    }

    // The kernel: a direct connection to the tablet's port.
    match (&agent, kernel && tablet.is_some()) {
        (Some(a), true) => {
            let direct = TcpStream::connect_timeout(&addr(TABLET), Duration::from_secs(3));
            let got = match direct {
                Ok(_) => Ok("connected".to_owned()),
                Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
                    Ok("EPERM (Operation not permitted)".to_owned())
                }
                Err(e) => Ok(format!("error: {e}")),
            };
            r.expect(
                &format!("a process that is not vtguard (this demo, pid {}) connects directly to the tablet's port {TABLET}", std::process::id()),
                "EPERM (Operation not permitted)",
                got,
            );
            let needle = format!(
                "127.0.0.1:{TABLET} refused (unregistered_socket): pid {}",
                std::process::id()
            );
            let line = a
                .process
                .as_ref()
                .and_then(|p| p.find(&[&needle], Duration::from_secs(5)));
            r.step(
                "vtguard logged the kernel's denial event",
                match line {
                    Some(l) => Outcome::Ok(l),
                    None => Outcome::Failed(format!("no log line containing {needle:?}")),
                },
            );
        }
        _ => r.step(
            "a direct connection to the tablet's port is refused by the kernel",
            Outcome::Skipped(if root {
                "vtguard or the stand-in tablet is not running".into()
            } else {
                "not root: kernel enforcement skipped (attaching eBPF programs needs root)".into()
            }),
        ),
    }

    // The MySQL path.
    match (&mariadb, up("mysql")) {
        (Some(m), true) => mysql_steps(&mut r, &pki, m, kernel).await,
        _ => r.step(
            "MySQL path (MariaDB behind vtguard's MySQL listener)",
            Outcome::Skipped(if mariadb.is_none() {
                "MariaDB is not available (see above)".into()
            } else {
                format!("the mysql listener's port {MYSQL_LISTENER} is in use")
            }),
        ),
    }

    // What an operator watches: `vtguard status` and the metrics endpoint.
    if agent.is_some() {
        let socket = tmp.path().join("admin.sock");
        let (code, out, err) = sh(Command::new(vtguard_tests::vtguard_bin())
            .arg("status")
            .arg("--socket")
            .arg(&socket));
        r.step(
            &format!("vtguard status --socket {}", socket.display()),
            if code == 0 && out.contains("LISTENER") {
                Outcome::Ok(out.trim_end().to_owned())
            } else {
                Outcome::Failed(format!("exit {code}: {err}"))
            },
        );
        if metrics {
            let (code, out, err) = sh(Command::new("curl").args([
                "-sS",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:{METRICS}/metrics"),
            ]));
            let denials: Vec<&str> = out
                .lines()
                .filter(|l| l.starts_with("vtguard_acl_denials_total{"))
                .collect();
            r.step(
                &format!("curl http://127.0.0.1:{METRICS}/metrics: the ACL denials so far"),
                if code == 0 && !denials.is_empty() {
                    Outcome::Ok(denials.join("\n"))
                } else if code != 0 {
                    Outcome::Skipped(format!("curl failed (exit {code}): {}", err.trim()))
                } else {
                    Outcome::Failed(format!("no vtguard_acl_denials_total series in:\n{out}"))
                },
            );
        }
    }

    taken.sort_unstable();
    drop(agent);
    drop(mariadb);
    println!(
        "\n{} step(s): {} ok, {} failed, {} skipped",
        r.n,
        r.n - r.failed - r.skipped,
        r.failed,
        r.skipped
    );
    if !taken.is_empty() {
        println!("ports that were in use: {taken:?}");
    }
    if r.failed > 0 {
        std::process::exit(1);
    }
}

/// Starts `vtguard run` and waits until every listener accepts connections.
fn start_agent(config: &Path, kernel: bool, listeners: &[(&str, u16)]) -> Result<Agent, String> {
    let process = AgentProcess::spawn(&[], config).map_err(|e| format!("starting vtguard: {e}"))?;
    let mut agent = Agent {
        process: Some(process),
        kernel,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(Ok(Some(status))) = agent.process.as_mut().map(|p| p.child.try_wait()) {
            return Err(format!("vtguard exited ({status}):\n{}", agent.log()));
        }
        let ready = listeners.iter().all(|(_, p)| {
            TcpStream::connect_timeout(
                &SocketAddr::from(([127, 0, 0, 1], *p)),
                Duration::from_millis(200),
            )
            .is_ok()
        });
        if ready && (!kernel || agent.log().contains("kernel enforcement active")) {
            return Ok(agent);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "vtguard did not become ready in 30 s:\n{}",
                agent.log()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A MariaDB server for the MySQL path, or `None` with the step saying why.
async fn mysql_upstream(r: &mut Report, root: bool, _dir: &Path, taken: &[u16]) -> Option<MariaDb> {
    const TITLE: &str = "MariaDB for the MySQL path (real mariadbd, in a temporary folder)";
    if taken.contains(&MYSQL_LISTENER) {
        r.step(
            TITLE,
            Outcome::Skipped(format!(
                "port {MYSQL_LISTENER}, which the mysql listener needs, is in use by another process"
            )),
        );
        return None;
    }
    let missing = || !MARIADB_PROGRAMS.iter().all(|b| installed(b));
    if missing() {
        if !root {
            r.step(
                TITLE,
                Outcome::Skipped(
                    "MariaDB is not installed, and installing it needs root (apt-get install mariadb-server mariadb-client)".into(),
                ),
            );
            return None;
        }
        progress("installing mariadb-server and mariadb-client (apt-get; about 15 s)");
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "mariadb-server", "mariadb-client"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok || missing() {
            r.step(
                TITLE,
                Outcome::Skipped(
                    "apt-get install mariadb-server mariadb-client failed: see apt's messages above".into(),
                ),
            );
            return None;
        }
    }
    progress("starting mariadbd");
    // MariaDb::start panics with mariadbd's own error log when the server cannot start.
    match tokio::task::spawn_blocking(|| std::panic::catch_unwind(MariaDb::start)).await {
        Ok(Ok(db)) => {
            r.step(
                TITLE,
                Outcome::Ok(format!(
                    "mariadbd on 127.0.0.1:{}; table vt.vt_insert_test (id, msg) = (1, one), (2, two), (3, three); users \"vtgate client 1\", \"vtgate client 2\" with every MariaDB privilege",
                    db.port
                )),
            );
            Some(db)
        }
        _ => {
            r.step(
                TITLE,
                Outcome::Failed("mariadbd did not start (its error log is printed above)".into()),
            );
            None
        }
    }
}

fn mysql_listener_block(pki: &Pki, m: &MariaDb, ids: &str) -> String {
    vtguard_tests::mysql::mtls_listener(
        pki,
        m.addr(),
        &format!("mysql-auth-server-impl = \"clientcert\"\nmysql-server-require-secure-transport = true\n{ids}\n"),
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{MYSQL_LISTENER}"))
}

async fn mysql_steps(r: &mut Report, pki: &Pki, m: &MariaDb, kernel: bool) {
    use vtguard_tests::mysql::{cli, cli_tls};
    let listener = SocketAddr::from(([127, 0, 0, 1], MYSQL_LISTENER));
    let run = |user: &'static str, cert: &str, sql: &'static str| {
        let tls = cli_tls(pki, cert);
        tokio::task::spawn_blocking(move || cli(listener, user, &tls, sql))
    };
    let (code, out, err) = run(
        "vtgate client 1",
        "vtgate-client-1",
        "select id, msg from vt.vt_insert_test order by id;\n",
    )
    .await
    .expect("mariadb client");
    r.expect(
        "mariadb --ssl-cert vtgate-client-1 through vtguard: select id, msg from vt.vt_insert_test",
        "1\tone | 2\ttwo | 3\tthree",
        if code == 0 {
            Ok(out.lines().collect::<Vec<_>>().join(" | "))
        } else {
            Err(err)
        },
    );
    let (_, out, err) = run(
        "vtgate client 2",
        "vtgate-client-2",
        "update vt.vt_insert_test set msg = 'changed' where id = 1;\nselect 'session still open';\n",
    )
    .await
    .expect("mariadb client");
    r.expect(
        "mariadb --ssl-cert vtgate-client-2: update vt.vt_insert_test (MariaDB would allow it; the table ACL does not)",
        "ERROR 1142 (42000) at line 1: Update command denied to user 'vtgate client 2', in groups [localhost, vtgate client 2], for table 'vt_insert_test' (ACL check error)",
        Ok(err.lines().find(|l| l.starts_with("ERROR")).unwrap_or("(no error)").to_owned()),
    );
    r.expect(
        "… the same session goes on",
        "session still open",
        Ok(out.trim().to_owned()),
    );
    if kernel {
        let port = m.port;
        let (code, _, err) = tokio::task::spawn_blocking(move || {
            sh(Command::new("mariadb").args([
                "--no-defaults",
                "-h",
                "127.0.0.1",
                "-P",
                &port.to_string(),
                "-uroot",
                "--connect-timeout=5",
                "-e",
                "select 1",
            ]))
        })
        .await
        .expect("mariadb client");
        let first = err.lines().next().unwrap_or("").to_owned();
        r.step(
            &format!("mariadb (not vtguard) connects straight to MariaDB's port {port}"),
            if code != 0 && (first.contains("(1)") || first.contains("not permitted")) {
                Outcome::Ok(format!("refused by the kernel: {first}"))
            } else {
                Outcome::Failed(format!(
                    "expected a refusal with errno 1 (EPERM); exit {code}: {first}"
                ))
            },
        );
    }
}
