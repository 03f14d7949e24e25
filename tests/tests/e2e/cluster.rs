//! Cluster policy through a real etcd (Debian's `etcd-server`, started here on loopback ports
//! with a temporary data folder) and real `vtguard run` agents: a load reaches every node, an
//! invalid document is refused everywhere, agents keep enforcing without etcd and catch up
//! (across a compaction), concurrent loads cannot overwrite each other, and a revocation cuts
//! open connections on every node (as root, with the kernel).

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use vtguard_agent::cluster::{store::Store, EtcdConfig};
use vtguard_tests::{agent::AgentProcess, free_port, installed, sh, skip};

use crate::vtguard_bin;

/// Whether etcd is installed: skip (saying why) without it, fail under CI.
fn etcd_available(test: &str) -> bool {
    if installed("etcd") {
        return true;
    }
    skip(
        test,
        "etcd is not installed (apt-get install etcd-server; `cargo xtask test` does it)",
    );
    false
}

/// A single-member etcd on loopback; killed on drop.
struct Etcd {
    child: Option<Child>,
    data: PathBuf,
    port: u16,
    peer: u16,
}

impl Etcd {
    fn start(dir: &Path) -> Etcd {
        let mut e = Etcd {
            child: None,
            data: dir.join("etcd"),
            port: free_port(),
            peer: free_port(),
        };
        e.restart_on(e.port);
        e
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts etcd (again, on the same data) serving clients on `port`, and waits until it
    /// answers.
    fn restart_on(&mut self, port: u16) {
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{}", self.peer);
        let child = Command::new("etcd")
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--name", "default"])
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while !healthy(port) {
            assert!(Instant::now() < deadline, "etcd did not come up on {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}

fn healthy(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /health HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}

/// A test-side etcd client (to write what the CLI never would, and compact).
fn store(url: &str) -> (tokio::runtime::Runtime, Store) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cfg = EtcdConfig {
        endpoints: vec![url.to_owned()],
        ca: None,
        cert: None,
        key: None,
        prefix: "/vtguard".into(),
    };
    let s = rt.block_on(Store::connect(&cfg)).expect("connect to etcd");
    (rt, s)
}

fn vtguard(args: &[&str]) -> (i32, String, String) {
    sh(Command::new(vtguard_bin()).args(args))
}

/// A cluster document granting READER on t1 to `reader`, and port/listener grants.
fn document(reader: &str, access: &str) -> String {
    format!(
        r#"{{"format": 1,
  "tableacl": {{"table_groups": [{{"name": "g", "table_names_or_prefixes": ["t1"], "readers": ["{reader}"]}}]}},
  "access": [{access}]}}"#
    )
}

/// One agent: its folder, config and process.
struct Node {
    name: String,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    agent: Option<AgentProcess>,
}

impl Node {
    /// A node with a plaintext gRPC listener, a strict table ACL from the cluster, and
    /// `extra` config (a `[kernel]` section, another listener).
    fn new(root: &Path, name: &str, etcd: &str, listener: &str, extra: &str) -> Node {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("node dir");
        let socket = dir.join("admin.sock");
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\netcd = [\"{etcd}\"]\nnode = \"{name}\"\ncell = \"zone1\"\nstate-dir = \"{}\"\nlease-ttl-seconds = 2\n\n[admin]\nsocket = \"{}\"\n\n{extra}\n{listener}",
                dir.join("state").display(),
                socket.display()
            ),
        )
        .expect("write config");
        Node {
            name: name.into(),
            dir,
            config,
            socket,
            agent: None,
        }
    }

    fn plain(root: &Path, name: &str, etcd: &str) -> Node {
        let listener = format!(
            "[[listener]]\nname = \"vttablet\"\nprotocol = \"grpc\"\nservice = \"vttablet\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"127.0.0.1:{}\"\ninsecure-plaintext = true\n",
            free_port(),
            free_port()
        );
        Node::new(
            root,
            name,
            etcd,
            &listener,
            "[tableacl]\nqueryserver-config-strict-table-acl = true\n",
        )
    }

    fn start(&mut self) {
        let agent =
            AgentProcess::spawn(vtguard_bin(), &[], &self.config).expect("start vtguard run");
        agent.wait_for("admin API listening");
        self.agent = Some(agent);
    }

    fn stop(&mut self) {
        drop(self.agent.take());
    }

    fn log(&self) -> String {
        self.agent
            .as_ref()
            .map(AgentProcess::log)
            .unwrap_or_default()
    }

    /// `vtguard policy check` against this agent: true when `user` may read t1.
    fn allows(&self, user: &str) -> bool {
        let socket = self.socket.display().to_string();
        let (code, out, err) = vtguard(&[
            "policy",
            "check",
            "--socket",
            &socket,
            "--user",
            user,
            "--sql",
            "select * from t1",
        ]);
        assert!(
            code == 0 || code == 3,
            "policy check on {}: {out}{err}",
            self.name
        );
        code == 0
    }

    fn status(&self) -> String {
        let socket = self.socket.display().to_string();
        let (code, out, err) = vtguard(&["status", "--socket", &socket]);
        assert_eq!(code, 0, "status on {}: {err}", self.name);
        out
    }
}

/// Waits until `f` holds, up to `within`; returns how long it took.
fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < within, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// One node in `policy status --cluster --json`: (node, revision, status, error).
type NodeRow = (String, i64, String, String);

/// `vtguard policy status --cluster --json`: (exit code, etcd revision, nodes).
fn cluster_status(etcd: &str) -> (i32, i64, Vec<NodeRow>) {
    let (code, out, err) = vtguard(&["policy", "status", "--cluster", "--etcd", etcd, "--json"]);
    assert!(code == 0 || code == 4, "policy status --cluster: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    let nodes = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["node"].as_str().expect("node").to_owned(),
                n["revision"].as_i64().expect("revision"),
                n["status"].as_str().expect("status").to_owned(),
                n["error"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    (code, v["revision"].as_i64().expect("revision"), nodes)
}

/// Loads `doc` through the CLI; returns the new revision.
fn load(etcd: &str, dir: &Path, doc: &str) -> i64 {
    let file = dir.join("policy.json");
    std::fs::write(&file, doc).expect("write policy");
    let f = file.display().to_string();
    let (code, out, err) = vtguard(&["policy", "load", &f, "--etcd", etcd]);
    assert_eq!(code, 0, "policy load: {out}{err}");
    out.split("revision ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out}"))
}

#[test]
fn a_load_reaches_every_agent_and_an_invalid_document_is_refused_by_all() {
    let test = "a_load_reaches_every_agent_and_an_invalid_document_is_refused_by_all";
    if !etcd_available(test) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(tmp.path());
    let url = etcd.url();
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node::plain(tmp.path(), &format!("node-{i}"), &url))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    // No policy yet: strict and empty, alice is denied everywhere.
    assert!(nodes.iter().all(|n| !n.allows("alice")));

    let rev = load(&url, tmp.path(), &document("alice", ""));
    let took = eventually(
        "alice allowed on every node",
        Duration::from_secs(3),
        || nodes.iter().all(|n| n.allows("alice")),
    );
    eprintln!("revision {rev} in force on 3 nodes {took:?} after `policy load` returned");
    assert!(nodes.iter().all(|n| !n.allows("bob")));
    eventually(
        "every node reports the revision",
        Duration::from_secs(3),
        || {
            let (code, current, ns) = cluster_status(&url);
            code == 0
                && current == rev
                && ns.len() == 3
                && ns.iter().all(|(_, r, s, _)| *r == rev && s == "ok")
        },
    );
    let (_, out, _) = vtguard(&["policy", "status", "--cluster", "--etcd", &url]);
    for n in &nodes {
        assert!(
            out.lines().any(|l| l.starts_with(&n.name)
                && l.contains(&format!(" {rev} "))
                && l.contains("ok")),
            "{out}"
        );
    }

    // An invalid document written straight into etcd (the CLI would refuse it): every node
    // refuses it, keeps the previous revision and says why.
    let (rt, mut s) = store(&url);
    let bad = br#"{"format": 1, "tableacl": {"table_groups": [{"name": "g", "table_names_or_prefixes": ["t1", "t1"], "readers": ["bob"]}]}}"#;
    rt.block_on(s.client.put("/vtguard/policy", bad.to_vec(), None))
        .expect("put");
    eventually(
        "every node reports the refusal",
        Duration::from_secs(3),
        || {
            let (code, current, ns) = cluster_status(&url);
            code == 4
                && current > rev
                && ns
                    .iter()
                    .all(|(_, r, s, e)| *r == rev && s == "refused" && e.contains("t1"))
        },
    );
    assert!(nodes.iter().all(|n| n.allows("alice") && !n.allows("bob")));
    let st = nodes[0].status();
    assert!(
        st.contains(&format!("enforcing revision {rev} (etcd)")) && st.contains("refused revision"),
        "{st}"
    );
    assert!(nodes[1]
        .log()
        .contains("cluster policy refused; the previous policy stays in force"));

    // A node that stops disappears from the list once its lease expires.
    nodes[2].stop();
    eventually("node-3 gone from the list", Duration::from_secs(8), || {
        cluster_status(&url).2.iter().all(|(n, ..)| n != "node-3")
    });
}

#[test]
fn agents_keep_enforcing_without_etcd_start_from_the_persisted_policy_and_catch_up_across_a_compaction(
) {
    let test = "agents_keep_enforcing_without_etcd_start_from_the_persisted_policy_and_catch_up_across_a_compaction";
    if !etcd_available(test) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut etcd = Etcd::start(tmp.path());
    let url = etcd.url();
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| Node::plain(tmp.path(), &format!("node-{i}"), &url))
        .collect();
    for n in &mut nodes {
        n.start();
    }
    let rev = load(&url, tmp.path(), &document("alice", ""));
    eventually(
        "alice allowed on every node",
        Duration::from_secs(3),
        || nodes.iter().all(|n| n.allows("alice")),
    );

    // etcd goes away: enforcement stays, and status says so.
    etcd.kill();
    eventually(
        "every node reports the disconnection",
        Duration::from_secs(5),
        || {
            nodes
                .iter()
                .all(|n| n.status().contains("cluster: disconnected since unix time"))
        },
    );
    for n in &nodes {
        assert!(
            n.allows("alice") && !n.allows("bob"),
            "{} still enforces",
            n.name
        );
        assert!(
            n.status()
                .contains(&format!("enforcing revision {rev} (etcd)")),
            "{}",
            n.status()
        );
    }

    // A node restarted while etcd is down starts on the persisted policy.
    nodes[2].stop();
    nodes[2].start();
    assert!(nodes[2].allows("alice") && !nodes[2].allows("bob"));
    let st = nodes[2].status();
    assert!(
        st.contains("disconnected since unix time")
            && st.contains(&format!("enforcing revision {rev} (persisted)")),
        "{st}"
    );
    assert!(nodes[2].dir.join("state/cluster-policy.json").exists());

    // Meanwhile (etcd up on a port the agents do not know) the policy changes twice and etcd
    // compacts its history past the revision the agents would resume from.
    let private = free_port();
    etcd.restart_on(private);
    let private_url = format!("http://127.0.0.1:{private}");
    load(&private_url, tmp.path(), &document("carol", ""));
    let last = load(&private_url, tmp.path(), &document("bob", ""));
    let (rt, mut s) = store(&private_url);
    rt.block_on(s.client.compact(last, None)).expect("compact");
    drop((s, rt));
    etcd.kill();

    // etcd back where the agents look: every node catches up to the last revision.
    etcd.restart_on(etcd.port);
    let took = eventually(
        "every node enforces the last revision",
        Duration::from_secs(10),
        || nodes.iter().all(|n| n.allows("bob") && !n.allows("alice")),
    );
    eprintln!("caught up {took:?} after etcd came back");
    eventually("every node reports it", Duration::from_secs(5), || {
        let (code, current, ns) = cluster_status(&url);
        code == 0 && current == last && ns.len() == 3
    });
    for n in &nodes {
        let log = n.log();
        assert!(
            log.contains("compacted away; reading the policy afresh")
                || n.name == "node-3" && log.contains("connected to etcd"),
            "{}: {log}",
            n.name
        );
        assert!(n.status().contains("cluster: connected since"));
    }
}

#[test]
fn two_concurrent_loads_exactly_one_wins() {
    if !etcd_available("two_concurrent_loads_exactly_one_wins") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(tmp.path());
    let url = etcd.url();
    let base = load(&url, tmp.path(), &document("alice", ""));

    // Both operators reviewed the diff against `base` and load at the same time.
    let files: Vec<PathBuf> = ["bob", "carol"]
        .iter()
        .map(|who| {
            let f = tmp.path().join(format!("{who}.json"));
            std::fs::write(&f, document(who, "")).expect("write");
            f
        })
        .collect();
    let children: Vec<Child> = files
        .iter()
        .map(|f| {
            Command::new(vtguard_bin())
                .args(["policy", "load"])
                .arg(f)
                .args(["--etcd", &url, "--if-revision", &base.to_string()])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn policy load")
        })
        .collect();
    let results: Vec<(bool, String)> = children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().expect("wait");
            (
                o.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
            )
        })
        .collect();
    let winners = results.iter().filter(|(ok, _)| *ok).count();
    assert_eq!(winners, 1, "exactly one load wins: {results:?}");
    let (_, current, _) = cluster_status(&url);
    assert!(current > base);
    let loser = &results.iter().find(|(ok, _)| !ok).expect("a loser").1;
    assert!(
        loser.contains(&format!(
            "the policy in etcd is at revision {current}, not {base} as diffed"
        )),
        "{loser}"
    );

    // Without --if-revision a load diffs against what is there now; a stale review is caught.
    let f = files[0].display().to_string();
    let (code, _, err) = vtguard(&[
        "policy",
        "load",
        &f,
        "--etcd",
        &url,
        "--if-revision",
        &base.to_string(),
    ]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("is at revision {current}")), "{err}");
    let (code, out, _) = vtguard(&["policy", "history", "--etcd", &url]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&format!("{current} *")) && out.contains(&base.to_string()),
        "{out}"
    );

    // Rollback writes the old document again as a new revision.
    let (code, out, err) = vtguard(&["policy", "rollback", &base.to_string(), "--etcd", &url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("+ \"alice\" gains READER on \"t1\""), "{out}");

    // A bare tableacl file is refused with the fix; nothing is written.
    let bare = tmp.path().join("bare.json");
    std::fs::write(&bare, r#"{"table_groups": []}"#).expect("write");
    let (code, _, err) = vtguard(&[
        "policy",
        "load",
        &bare.display().to_string(),
        "--etcd",
        &url,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("bare Vitess tableacl file: wrap it"), "{err}");
}

// The serial guard is held across awaits on purpose: it keeps other kernel tests out.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_cuts_the_identitys_open_connection_on_every_node() {
    use vtguard_tests::{
        fixtures::Listener,
        grpc::{execute_body, raw_call, raw_connection},
    };
    const EXECUTE: &str = "/queryservice.Query/Execute";
    let test = "a_revocation_cuts_the_identitys_open_connection_on_every_node";
    if !etcd_available(test) || !vtguard_tests::kernel_tests_can_run(test) {
        return;
    }
    let _serial = vtguard_tests::serial();
    let pki = vtguard_tests::pki::Pki::generate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let etcd = Etcd::start(tmp.path());
    let url = etcd.url();
    let grants = |ids: &str| format!(r#"{{"listener": "vttablet", "identities": [{ids}]}}"#);
    load(
        &url,
        tmp.path(),
        &document("alice", &grants("\"vtgate client 1\", \"vtgate client 2\"")),
    );

    // Three nodes, each protecting its own stand-in vttablet; the grant names the listener.
    let mut nodes = Vec::new();
    let mut guards = Vec::new();
    let mut upstreams = Vec::new();
    let mut addrs = Vec::new();
    for i in 1..=3 {
        let up = free_port();
        upstreams.push(vtguard_tests::upstream::Upstream::start(up).await);
        let port = free_port();
        let pins = vtguard_tests::test_pin_dir();
        guards.push(PinGuard(pins.clone()));
        let listener = Listener::grpc("vttablet", ([127, 0, 0, 1], up).into())
            .mtls(&pki)
            .name("vttablet")
            .port(port)
            .toml();
        let kernel = format!(
            "[kernel]\nprotected-ports = [{up}]\nbpffs = \"{}\"\n",
            pins.display()
        );
        let mut n = Node::new(tmp.path(), &format!("node-{i}"), &url, &listener, &kernel);
        n = tokio::task::spawn_blocking(move || {
            n.start();
            n
        })
        .await
        .expect("agent starts");
        nodes.push(n);
        addrs.push(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }

    // Client 2 holds an open connection on every node, served.
    let mut conns = Vec::new();
    for addr in &addrs {
        let mut c = raw_connection(&pki, *addr, Some("vtgate-client-2")).await;
        let (status, message, _) =
            raw_call(&mut c, *addr, EXECUTE, execute_body("select 1"), None).await;
        assert_eq!((status, message.as_str()), (0, ""), "client 2 before");
        conns.push(c);
    }

    // The cluster takes client 2's grant away: its connection is cut on every node.
    let dir = tmp.path().to_owned();
    let url2 = url.clone();
    tokio::task::spawn_blocking(move || {
        load(
            &url2,
            &dir,
            &document("alice", &grants("\"vtgate client 1\"")),
        )
    })
    .await
    .expect("load");
    let start = Instant::now();
    while conns.iter().any(|c| !c.is_closed()) && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        conns.iter().all(|c| c.is_closed()),
        "client 2's connection still open on some node after 3 s"
    );
    eprintln!(
        "client 2 cut off on 3 nodes {:?} after the load",
        start.elapsed()
    );
    for n in &nodes {
        assert!(
            n.log().contains("identity lost access to the upstream"),
            "{}",
            n.log()
        );
    }
    // Client 1 is still served everywhere.
    for addr in &addrs {
        let mut c = raw_connection(&pki, *addr, Some("vtgate-client-1")).await;
        let (status, _, _) = raw_call(&mut c, *addr, EXECUTE, execute_body("select 1"), None).await;
        assert_eq!(status, 0, "client 1 after");
    }
    drop(nodes);
    drop(guards);
}

/// Detaches what a node left under its pin folder, also when the test fails.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = vtguard_agent::kernel::detach(&self.0);
    }
}
