//! Vitess's encrypted-transport scenario end to end on loopback, through the real `vtguard`
//! binary, printing each step and its outcome. `main.rs` runs it for `cargo xtask demo`; the
//! end-to-end tests (tests/tests/e2e/demo.rs) run the same code and require every step to pass.
//!
//! The vttablet and vtgate here are stand-ins (small gRPC servers that answer Execute from an
//! in-memory table and record the caller IDs they receive): Vitess binaries cannot be had on
//! this machine. MariaDB is the real thing. As root the kernel programs are attached (under a
//! demo pin folder, detached again on every exit path); without root the kernel steps are
//! skipped, and the demo says so.

use std::{
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use vtguard_proto::{
    query, queryservice::query_client::QueryClient, vtgate,
    vtgateservice::vitess_client::VitessClient, vtrpc::CallerId,
};
use vtguard_tests::{
    agent::AgentProcess,
    fixtures::{kernel_section, tableacl_section, Acl, Listener},
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
/// The plaintext vtgate listener with `grpc-use-effective-callerid`.
pub const VTGATE_EFFECTIVE: u16 = 15998;
const VTGATE_GROUPS: u16 = 15997;
const MYSQL_LISTENER: u16 = 13306;
const METRICS: u16 = 19465;
const PIN_DIR: &str = "/sys/fs/bpf/vtguard-demo";

/// A step's outcome.
enum Outcome {
    Ok(String),
    Failed(String),
    Skipped(String),
}

/// The steps so far and everything printed.
#[derive(Default)]
pub struct Report {
    pub n: usize,
    pub failed: usize,
    pub skipped: usize,
    /// Everything the demo printed on its standard output.
    pub output: String,
}

impl Report {
    /// Prints a line (and keeps it in `output`).
    fn say(&mut self, line: &str) {
        println!("{line}");
        self.output.push_str(line);
        self.output.push('\n');
    }

    fn progress(&mut self, what: &str) {
        self.say(&format!("     … {what}"));
    }

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
        self.say(&format!("[{:>2}] {title}: {mark}", self.n));
        for line in detail.lines() {
            self.say(&format!("       {line}"));
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

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
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

    /// Stops the agent and detaches its pins; what happened, as the demo's last line.
    fn stop(&mut self) -> String {
        drop(self.process.take());
        if !self.kernel {
            return "cleanup: vtguard stopped".into();
        }
        self.kernel = false;
        match vtguard_agent::kernel::detach(Path::new(PIN_DIR)) {
            Ok(r) => format!(
                "cleanup: vtguard stopped; detached {} kernel program(s) from {PIN_DIR}",
                r.links_detached.len()
            ),
            Err(e) => format!("cleanup: detaching {PIN_DIR} failed: {e} — run `vtguard kernel detach --bpffs {PIN_DIR}`"),
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // Only when the demo did not get to its own cleanup (a panic on the way).
        if self.process.is_some() || self.kernel {
            println!("{}", self.stop());
        }
    }
}

/// What the demo runs: which ports were taken, which listeners it configured, and how.
struct Plan {
    taken: Vec<u16>,
    config: PathBuf,
    listeners: Vec<(&'static str, u16)>,
    protected: Vec<u16>,
    kernel: bool,
    metrics: bool,
}

impl Plan {
    fn busy(&self, port: u16) -> bool {
        self.taken.contains(&port)
    }
}

/// Runs the scenario with `agent_bin` as vtguard. The exit status a caller should give:
/// success when `failed` is 0.
pub async fn run(agent_bin: &Path) -> Report {
    let root = is_root();
    let mut r = Report::default();
    r.say("vtguard demo — Vitess's encrypted-transport scenario (VITESS.md §5) on loopback\n");
    if !root {
        r.say("NOTE: not running as root: kernel enforcement is skipped (attaching eBPF programs needs root), and MariaDB is used only if already installed.\n");
    }
    // Which ports can be had: a step that needs a taken one says so and the rest go on.
    let taken: Vec<u16> = [
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

    let pki = Pki::generate();
    r.step(
        "PKI made with rcgen",
        Outcome::Ok(format!(
            "root CA; intermediates vttablet-server, vttablet-client, vtgate-server, vtgate-client;\nleaves \"vttablet server instance\", \"vttablet client 1\", \"localhost\", \"vtgate client 1\", \"vtgate client 2\" (ECDSA P-256)\nin {}",
            pki.dir().display()
        )),
    );
    let (tablet, gate) = stand_ins(&mut r, &taken).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let mariadb = mysql_upstream(&mut r, root, &taken).await;
    let mut plan = plan(
        &pki,
        tmp.path(),
        taken,
        root,
        tablet.is_some(),
        gate.is_some(),
        mariadb.as_ref(),
    );
    let mut agent = agent_starts(&mut r, agent_bin, &plan);
    let up = |name: &str| agent.is_some() && plan.listeners.iter().any(|(n, _)| *n == name);
    let why = |name: &str| unavailable(&plan, agent.is_some(), name);

    if up("vtgate") {
        vtgate_certificate_steps(&mut r, &pki).await;
    } else {
        r.step("client 1 and client 2 through vtgate", why("vtgate"));
    }
    if up("vtgate-effective") {
        effective_caller_steps(&mut r).await;
    } else {
        r.step("effective caller ID steps", why("vtgate-effective"));
    }
    if up("vtgate-groups") {
        effective_groups_steps(&mut r).await;
    } else {
        r.step("effective groups steps", why("vtgate-groups"));
    }
    if up("vttablet") {
        claimed_identity_step(&mut r, &pki).await;
    } else {
        r.step("identity claimed in the request body", why("vttablet"));
    }
    match (&agent, plan.kernel && tablet.is_some()) {
        (Some(a), true) => kernel_steps(&mut r, a),
        _ => r.step(
            "a direct connection to the tablet's port is refused by the kernel",
            Outcome::Skipped(if root {
                "vtguard or the stand-in tablet is not running".into()
            } else {
                "not root: kernel enforcement skipped (attaching eBPF programs needs root)".into()
            }),
        ),
    }
    match (&mariadb, up("mysql")) {
        (Some(m), true) => mysql_steps(&mut r, &pki, m, plan.kernel).await,
        _ => r.step(
            "MySQL path (MariaDB behind vtguard's MySQL listener)",
            Outcome::Skipped(if mariadb.is_none() {
                "MariaDB is not available (see above)".into()
            } else {
                format!("the mysql listener's port {MYSQL_LISTENER} is in use")
            }),
        ),
    }
    if agent.is_some() {
        operator_steps(&mut r, agent_bin, tmp.path(), plan.metrics);
    }

    plan.taken.sort_unstable();
    if let Some(a) = agent.as_mut() {
        let line = a.stop();
        r.say(&line);
    }
    drop(agent);
    drop(mariadb);
    // After the node agent is gone: its programs on the cgroup2 root would police the
    // cluster nodes' loopback too.
    cluster_steps(&mut r, agent_bin, &pki, root);
    r.say(&format!(
        "\n{} step(s): {} ok, {} failed, {} skipped",
        r.n,
        r.n - r.failed - r.skipped,
        r.failed,
        r.skipped
    ));
    if !plan.taken.is_empty() {
        r.say(&format!("ports that were in use: {:?}", plan.taken));
    }
    r
}

/// The stand-in vttablet and vtgate, each unless its port is taken.
async fn stand_ins(r: &mut Report, taken: &[u16]) -> (Option<Upstream>, Option<Upstream>) {
    let tablet = if taken.contains(&TABLET) {
        None
    } else {
        Some(Upstream::start(TABLET).await)
    };
    let gate = if taken.contains(&VTGATE) {
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
    (tablet, gate)
}

/// Writes vtguard's config: the table ACL, admin socket, metrics, kernel section and one
/// listener per upstream that runs and port that is free.
fn plan(
    pki: &Pki,
    dir: &Path,
    taken: Vec<u16>,
    root: bool,
    tablet: bool,
    gate: bool,
    mariadb: Option<&MariaDb>,
) -> Plan {
    let acl = dir.join("acl.json");
    Acl::vitess_example().write(&acl);
    let mut config = format!(
        "{}\n[admin]\nsocket = \"{}\"\n\n",
        tableacl_section(&acl),
        dir.join("admin.sock").display()
    );
    let metrics = !taken.contains(&METRICS);
    if metrics {
        config.push_str(&format!("[metrics]\nlisten = \"127.0.0.1:{METRICS}\"\n\n"));
    }
    let protected: Vec<u16> = [(tablet, TABLET), (gate, VTGATE)]
        .into_iter()
        .filter_map(|(up, port)| up.then_some(port))
        .chain(mariadb.map(|m| m.port))
        .collect();
    let kernel = root && !protected.is_empty();
    if kernel {
        let _ = vtguard_agent::kernel::detach(Path::new(PIN_DIR));
        config.push_str(&kernel_section(&protected, Some(Path::new(PIN_DIR)), &[]));
        // The bind guard: the stand-in tablet runs in this (root) process, so its owner is
        // uid 0; on a real node it is the vttablet unit's cgroup and user.
        if tablet {
            config.push_str(&format!("[[kernel.owner]]\nport = {TABLET}\nuid = 0\n"));
        }
        config.push('\n');
    }
    let ids = |list: &[&str]| {
        if kernel {
            format!("identities = {list:?}\n")
        } else {
            String::new()
        }
    };
    let grpc = |name: &str, service: &str, port: u16, upstream: u16| {
        Listener::grpc(service, addr(upstream))
            .name(name)
            .port(port)
            .no_query_log()
    };
    let gate_ids = ids(&["vtgate client 1", "vtgate client 2", "my-caller"]);
    let server = (pki.path("localhost.pem"), pki.path("localhost.key"));
    let candidates: Vec<(&'static str, u16, bool, Listener)> = vec![
        (
            "vttablet",
            VTTABLET_LISTENER,
            tablet,
            grpc("vttablet", "vttablet", VTTABLET_LISTENER, TABLET)
                .server_cert(&server.0, &server.1)
                .client_ca_file(&pki.path("vttablet-client-ca.pem"))
                .extra(&ids(&["vttablet client 1"])),
        ),
        (
            "vtgate",
            VTGATE_LISTENER,
            gate,
            grpc("vtgate", "vtgate", VTGATE_LISTENER, VTGATE)
                .server_cert(&server.0, &server.1)
                .client_ca_file(&pki.path("vtgate-client-ca.pem"))
                .extra(&gate_ids),
        ),
        (
            "vtgate-effective",
            VTGATE_EFFECTIVE,
            gate,
            grpc("vtgate-effective", "vtgate", VTGATE_EFFECTIVE, VTGATE)
                .extra("insecure-plaintext = true\ngrpc-use-effective-callerid = true\n")
                .extra(&gate_ids),
        ),
        (
            "vtgate-groups",
            VTGATE_GROUPS,
            gate,
            grpc("vtgate-groups", "vtgate", VTGATE_GROUPS, VTGATE)
                .extra("insecure-plaintext = true\ngrpc-use-effective-callerid = true\ngrpc-use-effective-groups = true\n")
                .extra(&gate_ids),
        ),
    ]
    .into_iter()
    .chain(mariadb.map(|m| {
        (
            "mysql",
            MYSQL_LISTENER,
            true,
            vtguard_tests::mysql::clientcert(pki, m.addr())
                .port(MYSQL_LISTENER)
                .extra("mysql-server-require-secure-transport = true\n")
                .extra(&ids(&["vtgate client 1", "vtgate client 2"])),
        )
    }))
    .collect();
    let mut listeners = Vec::new();
    for (name, port, upstream_up, block) in candidates {
        if upstream_up && !taken.contains(&port) {
            config.push_str(&block.toml());
            config.push('\n');
            listeners.push((name, port));
        }
    }
    let path = dir.join("vtguard.toml");
    std::fs::write(&path, &config).expect("config");
    Plan {
        taken,
        config: path,
        listeners,
        protected,
        kernel,
        metrics,
    }
}

/// Why a listener's steps are skipped.
fn unavailable(plan: &Plan, agent_up: bool, name: &str) -> Outcome {
    let ports: [(&str, u16, u16); 4] = [
        ("vttablet", VTTABLET_LISTENER, TABLET),
        ("vtgate", VTGATE_LISTENER, VTGATE),
        ("vtgate-effective", VTGATE_EFFECTIVE, VTGATE),
        ("vtgate-groups", VTGATE_GROUPS, VTGATE),
    ];
    let why = match ports.iter().find(|(n, _, _)| *n == name) {
        _ if !agent_up => "vtguard is not running".to_owned(),
        Some((_, p, _)) if plan.busy(*p) => {
            format!("port {p}, which the {name} listener needs, is in use by another process")
        }
        Some((_, _, u)) if plan.busy(*u) => {
            format!("port {u}, which its stand-in upstream needs, is in use by another process")
        }
        _ => format!("the {name} listener is not running"),
    };
    Outcome::Skipped(why)
}

/// Starts vtguard on the plan's config (a step of its own).
fn agent_starts(r: &mut Report, agent_bin: &Path, plan: &Plan) -> Option<Agent> {
    if plan.listeners.is_empty() && !plan.kernel {
        r.step(
            "vtguard starts",
            Outcome::Skipped("no listener can run (their ports or upstreams are missing)".into()),
        );
        return None;
    }
    r.progress("starting vtguard");
    match start_agent(agent_bin, &plan.config, plan.kernel, &plan.listeners) {
        Ok(a) => {
            let attached = a.log().matches("attached vtg_").count();
            r.step(
                "vtguard starts",
                Outcome::Ok(format!(
                    "config {}\nlisteners: {}\n{}",
                    plan.config.display(),
                    plan.listeners
                        .iter()
                        .map(|(n, p)| format!("{n} on {p}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if plan.kernel {
                        format!("kernel: {attached} program(s) attached to the cgroup2 root; protected ports {:?}", plan.protected)
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
}

/// Starts `vtguard run` and waits until every listener accepts connections.
fn start_agent(
    bin: &Path,
    config: &Path,
    kernel: bool,
    listeners: &[(&str, u16)],
) -> Result<Agent, String> {
    let process =
        AgentProcess::spawn(bin, &[], config).map_err(|e| format!("starting vtguard: {e}"))?;
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
            TcpStream::connect_timeout(&addr(*p), Duration::from_millis(200)).is_ok()
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

/// Steps 4–5: client certificates through vtgate.
async fn vtgate_certificate_steps(r: &mut Report, pki: &Pki) {
    for (client, want) in [
        ("vtgate-client-1", format!("rows: {}", VT_INSERT_TEST.join("; "))),
        // A certificate's DNS SANs are its groups: ["localhost", CN] in this PKI.
        ("vtgate-client-2", "denied: Select command denied to user 'vtgate client 2', in groups [localhost, vtgate client 2], for table 'vt_insert_test' (ACL check error)".to_owned()),
    ] {
        let got = match tls_channel(pki, addr(VTGATE_LISTENER), Some(client)).await {
            Ok(ch) => {
                vtgate_outcome(&mut VitessClient::new(ch), vtgate_request(None, SELECT_TABLE)).await
            }
            Err(e) => Err(format!("connect: {e}")),
        };
        r.expect(
            &format!("{client} (certificate) runs `{SELECT_TABLE}` through vtgate"),
            &want,
            got,
        );
    }
}

/// Step 6: vtgate without TLS, grpc-use-effective-callerid.
async fn effective_caller_steps(r: &mut Report) {
    let mut c = VitessClient::new(plain_channel(addr(VTGATE_EFFECTIVE)).await);
    for (who, caller, want) in [
        ("no caller ID", None, "denied: Select command denied to user 'unsecure_grpc_client' for table 'vt_insert_test' (ACL check error)".to_owned()),
        ("principal \"vtgate client 1\"", caller("vtgate client 1", &[]), format!("rows: {}", VT_INSERT_TEST.join("; "))),
        ("principal \"vtgate client 2\"", caller("vtgate client 2", &[]), "denied: Select command denied to user 'vtgate client 2' for table 'vt_insert_test' (ACL check error)".to_owned()),
    ] {
        let got = vtgate_outcome(&mut c, vtgate_request(caller, SELECT_TABLE)).await;
        r.expect(
            &format!("plaintext vtgate with grpc-use-effective-callerid, {who}"),
            &want,
            got,
        );
    }
}

/// Step 7: and grpc-use-effective-groups.
async fn effective_groups_steps(r: &mut Report) {
    let mut c = VitessClient::new(plain_channel(addr(VTGATE_GROUPS)).await);
    for (group, want) in [
        ("vtgate client 1", format!("rows: {}", VT_INSERT_TEST.join("; "))),
        ("vtgate client 2", "denied: Select command denied to user 'my-caller', in groups [vtgate client 2], for table 'vt_insert_test' (ACL check error)".to_owned()),
    ] {
        let got = vtgate_outcome(
            &mut c,
            vtgate_request(caller("my-caller", &[group]), SELECT_TABLE),
        )
        .await;
        r.expect(
            &format!("… and grpc-use-effective-groups, principal \"my-caller\" in group \"{group}\""),
            &want,
            got,
        );
    }
}

/// A client claiming another identity in the request body.
async fn claimed_identity_step(r: &mut Report, pki: &Pki) {
    let got = async {
        let ch = tls_channel(pki, addr(VTTABLET_LISTENER), Some("vttablet-client-1"))
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
}

/// The kernel: a direct connection to the tablet's port, and vtguard's log of the denial.
fn kernel_steps(r: &mut Report, a: &Agent) {
    let got = match TcpStream::connect_timeout(&addr(TABLET), Duration::from_secs(3)) {
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

    // An impostor tablet: another user tries to listen on the tablet's port (as it could
    // while vttablet restarts). Only the owner, uid 0 here, may bind it.
    let (code, out, err) = sh(Command::new("python3").arg("-c").arg(format!(
        "import os, socket\nos.setgid(65534); os.setuid(65534)\ns=socket.socket(socket.AF_INET6)\ntry:\n s.bind(('::', {TABLET})); print('bound')\nexcept OSError as e:\n print(e.strerror)"
    )));
    r.expect(
        &format!("an impostor (python3 as uid 65534) binds [::]:{TABLET}, the tablet's port"),
        "Operation not permitted",
        if code == 0 {
            Ok(out.trim().to_owned())
        } else {
            Err(format!("exit {code}: {}", err.trim()))
        },
    );
}

/// What an operator watches: `vtguard status` and the metrics endpoint.
fn operator_steps(r: &mut Report, agent_bin: &Path, dir: &Path, metrics: bool) {
    let socket = dir.join("admin.sock");
    let (code, out, err) = sh(Command::new(agent_bin)
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
    if !metrics {
        return;
    }
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

/// Installs MariaDB when root and missing; true when its programs are there.
fn mariadb_installed(r: &mut Report, root: bool, title: &str) -> bool {
    let missing = || !MARIADB_PROGRAMS.iter().all(|b| installed(b));
    if !missing() {
        return true;
    }
    if !root {
        r.step(
            title,
            Outcome::Skipped(
                "MariaDB is not installed, and installing it needs root (apt-get install mariadb-server mariadb-client)".into(),
            ),
        );
        return false;
    }
    r.progress("installing mariadb-server and mariadb-client (apt-get; about 15 s)");
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-q", "mariadb-server", "mariadb-client"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok || missing() {
        r.step(
            title,
            Outcome::Skipped(
                "apt-get install mariadb-server mariadb-client failed: see apt's messages above"
                    .into(),
            ),
        );
        return false;
    }
    true
}

/// A MariaDB server for the MySQL path, or `None` with the step saying why.
async fn mysql_upstream(r: &mut Report, root: bool, taken: &[u16]) -> Option<MariaDb> {
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
    if !mariadb_installed(r, root, TITLE) {
        return None;
    }
    r.progress("starting mariadbd");
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

async fn mysql_steps(r: &mut Report, pki: &Pki, m: &MariaDb, kernel: bool) {
    use vtguard_tests::mysql::{cli, cli_tls};
    let listener = addr(MYSQL_LISTENER);
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
        mysql_kernel_step(r, m.port).await;
    }
}

/// `mariadb` straight to MariaDB's port, around vtguard: refused by the kernel.
async fn mysql_kernel_step(r: &mut Report, port: u16) {
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

/// A running cluster, simulated: nodes A and B (network namespaces on one switch, each with
/// its own cgroup, pins and vtguard intercepting the tablet's published port). vtgate on A
/// calls B's tablet at its published address; B's tablet calls A's (as VReplication does).
fn cluster_steps(r: &mut Report, agent_bin: &Path, pki: &Pki, root: bool) {
    use vtguard_tests::netns::{execute_request_hex, hex, in_ns, requests, Cluster, CALLER};
    const TITLE: &str =
        "a two-node cluster: vtguard on each node intercepts the tablet's published port";
    if !root {
        r.step(
            TITLE,
            Outcome::Skipped("not root: network namespaces and kernel programs need root".into()),
        );
        return;
    }
    let (code, _, _) = sh(Command::new("python3").args(["-c", "import grpc"]));
    if code != 0 {
        r.step(
            TITLE,
            Outcome::Skipped("python3 cannot import grpc (python3 -m pip install grpcio)".into()),
        );
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    r.progress("making nodes A and B (network namespaces, cgroups) and starting their tablets and vtguards");
    let own = 15991;
    let mut cluster = Cluster::new(&['A', 'B'], tmp.path(), pki, TABLET, own);
    for n in &mut cluster.nodes {
        n.start_tablet(TABLET);
        n.start_agent(agent_bin);
    }
    let (a, b) = (&cluster.nodes[0], &cluster.nodes[1]);
    r.step(
        TITLE,
        Outcome::Ok(format!(
            "node A {}, node B {}: stand-in tablets listen on {TABLET} (the port the topology publishes), vtguard on 127.0.0.1:{own} with intercept = true",
            a.ip, b.ip
        )),
    );
    let request = execute_request_hex();
    let pki_dir = pki.dir().display().to_string();
    let call = |from: &vtguard_tests::netns::ClusterNode, to: &str, client: &str, mode: &str| {
        in_ns(
            &from.ns,
            CALLER,
            &[
                &from.cg(),
                &format!("{to}:{TABLET}"),
                &pki_dir,
                &request,
                mode,
                client,
            ],
        )
    };
    let saw = |node: &vtguard_tests::netns::ClusterNode, who: &str| {
        requests(&node.log)
            .last()
            .is_some_and(|req| req.contains(&hex(who.as_bytes())))
    };
    let out = call(a, &b.ip, "vtgate-client-1", "tls");
    r.step(
        &format!("vtgate on node A calls node B's tablet at {}:{TABLET} with its certificate (--tablet-grpc-*)", b.ip),
        if out.starts_with("OK ") && saw(b, "vtgate client 1") {
            Outcome::Ok("answered through B's vtguard; tablet B saw caller \"vtgate client 1\"".into())
        } else {
            Outcome::Failed(out)
        },
    );
    let out = call(b, &a.ip, "vttablet-client-1", "tls");
    r.step(
        &format!(
            "node B's tablet calls node A's at {}:{TABLET} (as VReplication does)",
            a.ip
        ),
        if out.starts_with("OK ") && saw(a, "vttablet client 1") {
            Outcome::Ok(
                "answered through A's vtguard; tablet A saw caller \"vttablet client 1\"".into(),
            )
        } else {
            Outcome::Failed(out)
        },
    );
    let before = requests(&b.log).len();
    let out = call(a, &b.ip, "vtgate-client-1", "plain");
    r.step(
        &format!("plaintext from node A to {}:{TABLET}", b.ip),
        if out.starts_with("ERR UNAVAILABLE") && requests(&b.log).len() == before {
            Outcome::Ok("refused: B's vtguard requires TLS; tablet B received nothing".into())
        } else {
            Outcome::Failed(out)
        },
    );
}
