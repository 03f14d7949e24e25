//! Installing into a running cluster (as root): two nodes, each a network namespace joined by
//! a veth pair, node A with its own cgroup, bpffs folder and vtguard. The tablet on node A
//! listens on its published port; callers keep dialling that port. vtguard intercepts every new
//! connection to it (sk_lookup), proves the caller, and reaches the tablet itself; the same
//! port number on node B is none of node A's business; with vtguard killed, connections are
//! refused, never handed to the plaintext tablet.
//!
//! The tablet is a stand-in (Vitess binaries cannot be had here): Python grpcio serving
//! `queryservice.Query/Execute` by echoing the request bytes it received. The callers are
//! Python grpcio too, with the client certificate a vtgate's `--tablet-grpc-cert` would hold.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use vtguard_tests::{
    fixtures::{kernel_section, Listener},
    free_port, kernel_tests_can_run,
    netns::*,
    pki::Pki,
    sh, skip, test_pin_dir, TestCgroup,
};

use crate::vtguard_bin;

/// Two network namespaces joined by a veth pair: A is 10.232.N.1, B is 10.232.N.2.
struct Nodes {
    a: String,
    b: String,
    a_ip: String,
    b_ip: String,
}

impl Nodes {
    fn new() -> Self {
        let pid = std::process::id();
        let n = pid % 250 + 1;
        let (a, b) = (format!("vtgA-{pid}"), format!("vtgB-{pid}"));
        let (va, vb) = (
            format!("vtgA{}", pid % 100_000),
            format!("vtgB{}", pid % 100_000),
        );
        let nodes = Nodes {
            a_ip: format!("10.232.{n}.1"),
            b_ip: format!("10.232.{n}.2"),
            a,
            b,
        };
        let ip = |args: &[&str]| {
            let (code, _, err) = sh(Command::new("ip").args(args));
            assert_eq!(code, 0, "ip {args:?}: {err}");
        };
        ip(&["netns", "add", &nodes.a]);
        ip(&["netns", "add", &nodes.b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        ip(&["link", "set", &va, "netns", &nodes.a]);
        ip(&["link", "set", &vb, "netns", &nodes.b]);
        for (ns, dev, addr, v6) in [
            (&nodes.a, &va, &nodes.a_ip, "fd00:232::1/64"),
            (&nodes.b, &vb, &nodes.b_ip, "fd00:232::2/64"),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "addr", "add", v6, "dev", dev, "nodad"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        nodes
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn a_cluster_keeps_dialling_the_published_port_and_only_vtguard_reaches_the_tablet() {
    let name = "a_cluster_keeps_dialling_the_published_port_and_only_vtguard_reaches_the_tablet";
    if !kernel_tests_can_run(name) {
        return;
    }
    let (code, _, _) = sh(Command::new("python3").args(["-c", "import grpc"]));
    if code != 0 {
        skip(name, "python3 cannot import grpc (python3 -m pip install grpcio; `cargo xtask test` does it)");
        return;
    }
    let _serial = vtguard_tests::serial();
    let nodes = Nodes::new();
    let node_a = TestCgroup::new("node-a");
    let cg = node_a.path.display().to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate();
    // The tablet's published gRPC port, a second protected port (not intercepted), and
    // vtguard's own listening port on node A.
    let (tablet, other, own) = (free_port(), free_port(), free_port());
    let log = tmp.path().join("tablet-requests.txt");
    let _tablet = spawn_ready(in_node(&nodes.a).args([
        "python3",
        "-c",
        TABLET,
        &cg,
        &tablet.to_string(),
        &log.display().to_string(),
    ]));
    let _other_a = hello_server(&nodes.a, &cg, other, "A");
    let _tablet_b = hello_server(&nodes.b, "-", tablet, "B");
    let _other_b = hello_server(&nodes.b, "-", other, "B");

    let pins = test_pin_dir();
    let config = tmp.path().join("vtguard.toml");
    std::fs::write(
        &config,
        format!(
            "{}cgroup = \"{cg}\"\n\n{}",
            kernel_section(&[tablet, other], Some(&pins), &[]),
            Listener::grpc("vttablet", ([127, 0, 0, 1], tablet).into())
                .port(own)
                .mtls(&pki)
                .extra("intercept = true\nidentities = [\"vtgate client 1\"]\n")
                .toml()
        ),
    )
    .expect("config");
    let start = || {
        let agent = agent_in(&nodes.a, vtguard_bin(), &config);
        agent.wait_for("kernel enforcement active");
        agent.wait_for("come to this listener");
        agent
    };
    let _unpin = PinGuard(pins.clone());
    let agent = start();

    let request = execute_request_hex();
    let pki_dir = pki.dir().display().to_string();
    let call = |ns: &str, cgroup: &str, host: &str, mode: &str| {
        in_ns(
            ns,
            CALLER,
            &[
                cgroup,
                &format!("{host}:{tablet}"),
                &pki_dir,
                &request,
                mode,
            ],
        )
    };

    // A vtgate on node B dials the tablet's published address with its certificate: vtguard
    // answers, proves it, and the tablet gets the request with the proven caller.
    let out = call(&nodes.b, "-", &nodes.a_ip, "tls");
    assert!(
        out.starts_with("OK "),
        "node B to the tablet's published port: {out}"
    );
    let seen = requests(&log);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].contains(&hex(b"vtgate client 1")),
        "the tablet sees the certificate's identity as the caller: {}",
        seen[0]
    );
    // The same over IPv6.
    let out = call(&nodes.b, "-", "[fd00:232::1]", "tls");
    assert!(
        out.starts_with("OK "),
        "node B to the tablet over IPv6: {out}"
    );
    assert_eq!(requests(&log).len(), 2);
    let out = call(&nodes.b, "-", "[fd00:232::1]", "plain");
    assert!(out.starts_with("ERR UNAVAILABLE"), "{out}");
    // Plaintext to the same address reaches vtguard (which wants TLS), never the tablet.
    let out = call(&nodes.b, "-", &nodes.a_ip, "plain");
    assert!(out.starts_with("ERR UNAVAILABLE"), "{out}");
    // On node A itself, from its cgroup: the same, on the node's address and on loopback.
    let out = call(&nodes.a, &cg, &nodes.a_ip, "tls");
    assert!(out.starts_with("OK "), "node A's own caller: {out}");
    let out = call(&nodes.a, &cg, "127.0.0.1", "plain");
    assert!(out.starts_with("ERR UNAVAILABLE"), "{out}");
    let out = call(&nodes.a, &cg, "[::1]", "plain");
    assert!(out.starts_with("ERR UNAVAILABLE"), "{out}");
    assert_eq!(
        requests(&log).len(),
        3,
        "only vtguard's requests reached the tablet"
    );

    // Node scope: the same port numbers on node B are node B's business.
    assert_eq!(
        in_ns(&nodes.a, PROBE, &[&cg, &nodes.b_ip, &tablet.to_string()]),
        "CONNECTED hello from B"
    );
    assert_eq!(
        in_ns(&nodes.a, PROBE, &[&cg, &nodes.b_ip, &other.to_string()]),
        "CONNECTED hello from B"
    );
    // A protected port that is not intercepted stays closed on node A, as before.
    assert_eq!(
        in_ns(&nodes.a, PROBE, &[&cg, "127.0.0.1", &other.to_string()]),
        "ERR 1"
    );
    assert_eq!(
        in_ns(&nodes.b, PROBE, &["-", &nodes.a_ip, &other.to_string()]),
        "TIMEOUT"
    );

    // Addresses come and go: one added to node A while vtguard runs is policed from then on
    // (rtnetlink), without a restart.
    let added = format!("{}.3", nodes.a_ip.rsplit_once('.').expect("dotted").0);
    let veth = format!("vtgA{}", std::process::id() % 100_000);
    let (code, _, err) = sh(Command::new("ip").args([
        "-n",
        &nodes.a,
        "addr",
        "add",
        &format!("{added}/24"),
        "dev",
        &veth,
    ]));
    assert_eq!(code, 0, "{err}");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = in_ns(&nodes.a, PROBE, &[&cg, &added, &other.to_string()]);
        if r == "ERR 1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connect() to the new address {added} is not policed: {r}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // vtguard killed: the pinned lookup finds no listener and refuses; the tablet is never
    // handed a connection.
    let mut agent = agent;
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGKILL) };
    let _ = agent.child.wait();
    let t = Instant::now();
    assert_eq!(
        in_ns(&nodes.b, PROBE, &["-", &nodes.a_ip, &tablet.to_string()]),
        "REFUSED"
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "refused at once (a reset), not a timeout"
    );
    assert_eq!(
        in_ns(&nodes.a, PROBE, &[&cg, "127.0.0.1", &tablet.to_string()]),
        "REFUSED"
    );
    let out = call(&nodes.b, "-", &nodes.a_ip, "plain");
    assert!(out.starts_with("ERR UNAVAILABLE"), "{out}");
    assert_eq!(
        requests(&log).len(),
        3,
        "nothing reached the tablet while vtguard was down"
    );
    let (code, status, err) = sh(Command::new(vtguard_bin())
        .args(["kernel", "status", "--config"])
        .arg(&config));
    assert_eq!(code, 0, "{err}");
    assert!(status.contains("vtg_lookup"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.trim_start().starts_with("lookup_refused_no_listener")
                && !l.trim_end().ends_with(" 0")),
        "{status}"
    );

    // Restarted, it takes the port back.
    let agent = start();
    let out = call(&nodes.b, "-", &nodes.a_ip, "tls");
    assert!(out.starts_with("OK "), "after the restart: {out}");
    assert_eq!(requests(&log).len(), 4);
    drop(agent);
}

/// Detaches what the test pinned, also when it fails.
struct PinGuard(std::path::PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = vtguard_agent::kernel::detach_forced(&self.0);
    }
}

/// The reference scenario of a cluster: vtgate on A calls the tablets on A, B and C at their
/// published address; B's tablet streams from C's (as VReplication does); every call arrives
/// through that node's vtguard with the certificate's identity; plaintext never reaches a
/// tablet; an impostor cannot bind B's port while B's tablet is down; B's vtguard killed
/// closes B's port to everyone while A and C keep working.
#[test]
fn three_nodes_reach_each_others_tablets_only_through_their_vtguard() {
    let name = "three_nodes_reach_each_others_tablets_only_through_their_vtguard";
    if !kernel_tests_can_run(name) {
        return;
    }
    let (code, _, _) = sh(Command::new("python3").args(["-c", "import grpc"]));
    if code != 0 {
        skip(name, "python3 cannot import grpc (python3 -m pip install grpcio; `cargo xtask test` does it)");
        return;
    }
    let _serial = vtguard_tests::serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate();
    let (tablet, own) = (free_port(), free_port());
    let mut cluster = Cluster::new(&['A', 'B', 'C'], tmp.path(), &pki, tablet, own);
    for n in &mut cluster.nodes {
        n.start_tablet(tablet);
        n.start_agent(vtguard_bin());
    }
    let request = execute_request_hex();
    let pki_dir = pki.dir().display().to_string();
    let ip = |c: &Cluster, n: char| {
        c.nodes
            .iter()
            .find(|x| x.name == n)
            .expect("node")
            .ip
            .clone()
    };
    let (a_ip, b_ip, c_ip) = (ip(&cluster, 'A'), ip(&cluster, 'B'), ip(&cluster, 'C'));
    let call = |c: &Cluster, from: char, client: &str, to_ip: &str, mode: &str| {
        let n = c.nodes.iter().find(|x| x.name == from).expect("node");
        in_ns(
            &n.ns,
            CALLER,
            &[
                &n.cg(),
                &format!("{to_ip}:{tablet}"),
                &pki_dir,
                &request,
                mode,
                client,
            ],
        )
    };
    let seen =
        |c: &Cluster, n: char| requests(&c.nodes.iter().find(|x| x.name == n).expect("node").log);

    // vtgate on A dials every tablet at its published address, as --tablet-grpc-* would.
    for (to, to_ip) in [('A', &a_ip), ('B', &b_ip), ('C', &c_ip)] {
        let out = call(&cluster, 'A', "vtgate-client-1", to_ip, "tls");
        assert!(out.starts_with("OK "), "vtgate on A to tablet {to}: {out}");
        let got = seen(&cluster, to);
        assert_eq!(got.len(), 1, "tablet {to} got the call: {got:?}");
        assert!(
            got[0].contains(&hex(b"vtgate client 1")),
            "tablet {to} sees the proven caller"
        );
    }
    // VReplication: B's tablet opens a call to C's, with its own certificate.
    let out = call(&cluster, 'B', "vttablet-client-1", &c_ip, "tls");
    assert!(out.starts_with("OK "), "tablet B to tablet C: {out}");
    let got = seen(&cluster, 'C');
    assert_eq!(got.len(), 2);
    assert!(
        got[1].contains(&hex(b"vttablet client 1")),
        "C sees tablet B's identity"
    );

    // Plaintext from A to B's published port reaches B's vtguard (which wants TLS), not B's
    // tablet. A local process on B dialling B's port is handed to vtguard too (it is not
    // refused at connect(): an intercepted port is vtguard's, and vtguard asks it for a
    // certificate), while the same process reaches C's port unhindered.
    let out = call(&cluster, 'A', "vtgate-client-1", &b_ip, "plain");
    assert!(out.starts_with("ERR UNAVAILABLE"), "{out}");
    let out = call(&cluster, 'B', "vtgate-client-1", "127.0.0.1", "plain");
    assert!(out.starts_with("ERR UNAVAILABLE"), "{out}");
    assert_eq!(
        seen(&cluster, 'B').len(),
        1,
        "no plaintext call reached tablet B"
    );
    let b = cluster.node('B');
    let (b_ns, b_cg) = (b.ns.clone(), b.cg());
    assert_eq!(
        in_ns(&b_ns, CONNECT, &[&b_cg, &c_ip, &tablet.to_string()]),
        "CONNECTED"
    );

    // B's tablet goes down: an impostor (uid 65534, in B's cgroup) cannot take its port.
    cluster.node('B').tablet.take();
    let impostor = format!(
        "import os, socket\nopen('{b_cg}/cgroup.procs','w').write(str(os.getpid()))\nos.setgid(65534); os.setuid(65534)\ns=socket.socket()\ntry:\n s.bind(('0.0.0.0', {tablet})); print('BOUND')\nexcept OSError as e:\n print('ERR', e.errno)"
    );
    assert_eq!(in_ns(&b_ns, &impostor, &[]), "ERR 1", "impostor bind on B");
    cluster.node('B').start_tablet(tablet);

    // B's vtguard killed: B's port refuses everyone; A and C keep working.
    cluster.node('B').kill_agent();
    assert_eq!(
        in_ns(
            &cluster.nodes[0].ns,
            CONNECT,
            &["-", &b_ip, &tablet.to_string()]
        ),
        "REFUSED"
    );
    assert_eq!(
        in_ns(&b_ns, CONNECT, &[&b_cg, "127.0.0.1", &tablet.to_string()]),
        "REFUSED"
    );
    let out = call(&cluster, 'A', "vtgate-client-1", &b_ip, "tls");
    assert!(out.starts_with("ERR UNAVAILABLE"), "{out}");
    let out = call(&cluster, 'A', "vtgate-client-1", &c_ip, "tls");
    assert!(
        out.starts_with("OK "),
        "A to C while B's vtguard is down: {out}"
    );
    assert_eq!(
        seen(&cluster, 'B').len(),
        1,
        "nothing reached tablet B meanwhile"
    );

    // Restarted, B serves again.
    cluster.node('B').start_agent(vtguard_bin());
    let out = call(&cluster, 'A', "vtgate-client-1", &b_ip, "tls");
    assert!(out.starts_with("OK "), "A to B after the restart: {out}");
    assert_eq!(seen(&cluster, 'B').len(), 2);
}

/// PyMySQL to `host`:`port`: with the PKI's vtgate-client-1 certificate (`tls`) or without
/// TLS; prints `ROWS <rows>` or `ERR <code> <message>`.
const PYMYSQL: &str = r#"
import sys, pymysql
host, port, pki, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
ssl = {"ca": f"{pki}/root.pem", "cert": f"{pki}/vtgate-client-1.pem",
       "key": f"{pki}/vtgate-client-1.key", "check_hostname": False} if mode == "tls" else None
try:
    c = pymysql.connect(host=host, port=port, user="vtgate client 1", password="", ssl=ssl,
                        connect_timeout=5)
    cur = c.cursor()
    cur.execute("select id, msg from vt.vt_insert_test order by id")
    print("ROWS", "; ".join(f"{i}|{m}" for i, m in cur.fetchall()))
except pymysql.err.MySQLError as e:
    print("ERR", e.args[0], e.args[1] if len(e.args) > 1 else "")
"#;

/// The same for the MySQL protocol: MariaDB on node A keeps its port; a MySQL client on node B
/// dials node A's address at that port and gets vtguard's MySQL listener (TLS, client
/// certificate, identity = CN), which reaches MariaDB; without TLS the client gets no rows.
#[test]
fn a_mysql_client_on_another_node_reaches_mariadb_at_its_port_only_through_vtguard() {
    let name = "a_mysql_client_on_another_node_reaches_mariadb_at_its_port_only_through_vtguard";
    if !kernel_tests_can_run(name)
        || !vtguard_tests::mysql::mariadb_available(name)
        || !vtguard_tests::mysql::python_has(name, "pymysql")
    {
        return;
    }
    let _serial = vtguard_tests::serial();
    let nodes = Nodes::new();
    let node_a = TestCgroup::new("node-a-mysql");
    let cg = node_a.path.display().to_string();
    let tmp = tempfile::tempdir().expect("tempdir");
    let pki = Pki::generate();
    // MariaDB started from a thread inside node A: mariadbd (a child) lives there.
    let ns_file = format!("/var/run/netns/{}", nodes.a);
    let db = std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(&ns_file).expect("netns");
        // SAFETY: setns(2) on this thread with a namespace descriptor we hold.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        vtguard_tests::mysql::MariaDb::start()
    })
    .join()
    .expect("mariadb in node A");
    let own = free_port();
    let pins = test_pin_dir();
    let config = tmp.path().join("vtguard.toml");
    std::fs::write(
        &config,
        format!(
            "{}cgroup = \"{cg}\"\n\n{}",
            kernel_section(&[db.port], Some(&pins), &[]),
            vtguard_tests::mysql::clientcert(&pki, db.addr())
                .port(own)
                .extra("intercept = true\nidentities = [\"vtgate client 1\"]\n")
                .toml()
        ),
    )
    .expect("config");
    let _unpin = PinGuard(pins.clone());
    let agent = agent_in(&nodes.a, vtguard_bin(), &config);
    agent.wait_for("come to this listener");
    let pki_dir = pki.dir().display().to_string();
    let port = db.port.to_string();
    let out = in_ns(&nodes.b, PYMYSQL, &[&nodes.a_ip, &port, &pki_dir, "tls"]);
    assert_eq!(
        out, "ROWS 1|one; 2|two; 3|three",
        "PyMySQL on node B through vtguard"
    );
    let out = in_ns(&nodes.b, PYMYSQL, &[&nodes.a_ip, &port, &pki_dir, "plain"]);
    assert!(out.starts_with("ERR "), "without TLS: {out}");
    drop(agent);
    drop(db);
}
