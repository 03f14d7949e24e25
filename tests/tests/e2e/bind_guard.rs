//! The bind guard (as root): while the real service is down, nobody but the port's owner can
//! listen on a protected port, on any address; and where the kernel guard does not reach (a
//! process outside the policed cgroup), vtguard's own check of the listening socket refuses
//! the impostor before a byte is sent to it.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::Path,
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{io::AsyncReadExt, net::TcpListener};
use tonic::Code;
use vtguard_agent::kernel::PortOwner;
use vtguard_common::Counter;
use vtguard_proto::{query::ExecuteRequest, queryservice::query_client::QueryClient};
use vtguard_tests::{
    fixtures::Listener,
    free_port,
    grpc::{start_listener, tls_channel},
    kernel_tests_can_run,
    mysql::{clientcert, py_client, python_has},
    pki::Pki,
    policy, sh, TestCgroup, TestKernel,
};

/// Tries, in a fresh python3 (in `cgroup` when given, as `uid` when given), to bind and listen
/// on each `host` at `port`; returns one line per host: "OK" or "ERR <errno>".
fn try_binds(cgroup: Option<&Path>, uid: Option<u32>, port: u16, hosts: &[&str]) -> Vec<String> {
    let script = r#"
import os, socket, sys
cg, uid, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if cg != "-":
    with open(os.path.join(cg, "cgroup.procs"), "w") as f:
        f.write(str(os.getpid()))
if uid != "-":
    os.setgid(int(uid)); os.setuid(int(uid))
for spec in sys.argv[4:]:
    reuse = spec.startswith("reuseport:")
    host = spec.split(":", 1)[1] if reuse else spec
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    if reuse:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        s.bind((host, port)); s.listen(1); print("OK", flush=True)
    except OSError as e:
        print("ERR %d" % e.errno, flush=True)
    s.close()
"#;
    let cg = cgroup.map_or("-".to_owned(), |c| c.display().to_string());
    let uid = uid.map_or("-".to_owned(), |u| u.to_string());
    let (code, out, err) = sh(Command::new("python3")
        .args(["-c", script, &cg, &uid, &port.to_string()])
        .args(hosts));
    assert_eq!(code, 0, "python3 binder: {err}");
    out.lines().map(str::to_owned).collect()
}

const EVERY_ADDRESS: [&str; 6] = [
    "127.0.0.1",
    "0.0.0.0",
    "::",
    "::1",
    "::ffff:127.0.0.1",
    "reuseport:0.0.0.0",
];

#[test]
fn only_the_owner_binds_a_protected_port_on_any_address() {
    if !kernel_tests_can_run("only_the_owner_binds_a_protected_port_on_any_address") {
        return;
    }
    let _serial = vtguard_tests::serial();
    let owner_cg = TestCgroup::new("owner");
    let (by_cgroup, by_uid, open) = (free_port(), free_port(), free_port());
    let owners = BTreeMap::from([
        (
            by_cgroup,
            PortOwner {
                cgroup: Some(owner_cg.path.clone()),
                uid: None,
            },
        ),
        (
            by_uid,
            PortOwner {
                cgroup: None,
                uid: Some(65534),
            },
        ),
    ]);
    let k = TestKernel::start_with_owners(policy(&[by_cgroup, by_uid], &[]), None, owners);
    let refused = vec!["ERR 1".to_owned(); EVERY_ADDRESS.len()];

    // Outside the owner cgroup: refused on every address, as root and as nobody.
    assert_eq!(
        try_binds(None, None, by_cgroup, &EVERY_ADDRESS),
        refused,
        "root"
    );
    assert_eq!(
        try_binds(None, Some(65534), by_cgroup, &EVERY_ADDRESS),
        refused,
        "uid 65534"
    );
    // Inside it: bound.
    assert_eq!(
        try_binds(Some(&owner_cg.path), None, by_cgroup, &["127.0.0.1", "::"]),
        ["OK", "OK"]
    );
    // The uid owner: nobody binds, root does not.
    assert_eq!(
        try_binds(None, None, by_uid, &EVERY_ADDRESS),
        refused,
        "root"
    );
    assert_eq!(
        try_binds(None, Some(65534), by_uid, &["127.0.0.1", "::"]),
        ["OK", "OK"]
    );
    // Unprotected ports are none of the guard's business.
    assert_eq!(try_binds(None, Some(65534), open, &["127.0.0.1"]), ["OK"]);

    let c = k.counters().expect("counters");
    assert_eq!(
        c[Counter::BindDenied as usize],
        3 * EVERY_ADDRESS.len() as u64,
        "{c:?}"
    );
    assert_eq!(c[Counter::BindAllowed as usize], 4, "{c:?}");

    // Each refusal is an event that names the process.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut reader = k.event_reader().expect("event reader");
        let _ = tokio::time::timeout(Duration::from_millis(500), reader.run()).await;
    });
    let denials = k.recent_denials();
    let d = denials
        .iter()
        .find(|d| d.uid == 65534 && d.destination.to_string() == format!("127.0.0.1:{by_cgroup}"))
        .unwrap_or_else(|| panic!("no bind denial for uid 65534 in {denials:#?}"));
    assert_eq!(d.reason, "bind_not_owner");
    assert_eq!(d.hook, "bind4");
    assert_eq!(d.comm, "python3");
    assert!(d.pid != 0 && d.cgroup_id != 0, "{d:?}");
    assert!(
        denials
            .iter()
            .any(|d| d.hook == "bind6" && d.destination.to_string() == format!("[::]:{by_cgroup}")),
        "[::] is refused by bind6: {denials:#?}"
    );

    // A service restart makes its cgroup anew (a new id): the agent follows, the new cgroup's
    // tasks bind again, and in between nobody can.
    let path = owner_cg.path.clone();
    TestCgroup::remove_dir(&path);
    assert!(!path.exists());
    std::fs::create_dir(&path).expect("owner cgroup again");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = try_binds(Some(&path), None, by_cgroup, &["127.0.0.1"]);
        if r == ["OK"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the re-created owner cgroup never got the port: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(try_binds(None, None, by_cgroup, &["127.0.0.1"]), ["ERR 1"]);
}

/// An impostor listening on 127.0.0.1:`port`: accepts every connection and keeps the bytes.
async fn impostor(port: u16) -> (SocketAddr, Arc<Mutex<Vec<u8>>>) {
    let l = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("impostor bind");
    let addr = l.local_addr().expect("addr");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let keep = Arc::clone(&keep);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    keep.lock().expect("bytes").extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (addr, seen)
}

#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_the_kernel_guard_does_not_see_gets_nothing_from_vtguard() {
    let name = "an_impostor_the_kernel_guard_does_not_see_gets_nothing_from_vtguard";
    if !kernel_tests_can_run(name) || !python_has(name, "pymysql") {
        return;
    }
    let _serial = vtguard_tests::serial();
    // The programs police a test cgroup this process is not in: the impostor below (this
    // process, uid 0) binds the protected port unhindered, as one outside the guard would.
    let policed = TestCgroup::new("policed");
    let (grpc_port, mysql_port) = (free_port(), free_port());
    let not_root = PortOwner {
        cgroup: None,
        uid: Some(4242),
    };
    let owners = BTreeMap::from([(grpc_port, not_root.clone()), (mysql_port, not_root)]);
    let k = TestKernel::start_with_owners(
        policy(
            &[grpc_port, mysql_port],
            &[
                (grpc_port, &["vtgate client 1"]),
                (mysql_port, &["vtgate client 1"]),
            ],
        ),
        Some(policed.path.clone()),
        owners,
    );
    let (grpc_up, grpc_seen) = impostor(grpc_port).await;
    let (mysql_up, mysql_seen) = impostor(mysql_port).await;
    let pki = Arc::new(Pki::generate());

    let toml = format!(
        "{}{}",
        vtguard_tests::fixtures::kernel_section(&[grpc_port], None, &[]),
        Listener::grpc("vttablet", grpc_up).mtls(&pki).toml()
    );
    let g = start_listener(&toml, Some(k.shared())).await;
    let mut client = QueryClient::new(
        tls_channel(&pki, g.addr, Some("vtgate-client-1"))
            .await
            .expect("connect"),
    );
    let execute = || ExecuteRequest {
        query: Some(vtguard_tests::upstream::bound("select secret from t")),
        ..Default::default()
    };
    let e = client
        .execute(execute())
        .await
        .expect_err("the impostor's socket is refused");
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains(&format!(
            "the socket listening on 127.0.0.1:{grpc_port} belongs to uid 0; its owner is uid 4242"
        )),
        "{}",
        e.message()
    );

    let m =
        vtguard_tests::mysql::start_listener(&clientcert(&pki, mysql_up).toml(), Some(k.shared()))
            .await;
    let addr = m.addr;
    let pki2 = Arc::clone(&pki);
    let out = tokio::task::spawn_blocking(move || {
        py_client(
            "pymysql",
            addr,
            "vtgate client 1",
            "s3cret",
            Some((&pki2, "vtgate-client-1")),
            &["select 1"],
        )
    })
    .await
    .expect("python client");
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(
        out[0].starts_with("CONNECT_ERR 2013 ") && out[0].contains("not the port's owner"),
        "{out:?}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        grpc_seen.lock().expect("bytes").is_empty(),
        "gRPC bytes reached the impostor"
    );
    assert!(
        mysql_seen.lock().expect("bytes").is_empty(),
        "MySQL bytes reached the impostor"
    );
    assert_eq!(g.proxy.status().counts.upstream_not_owner, 1);
    assert_eq!(m.proxy.status().counts.upstream_not_owner, 1);

    // The control: owned by uid 0, the same listener is trusted and the request reaches it
    // (so the check above is what kept the bytes back).
    k.shared()
        .set_owners(&BTreeMap::from([(
            grpc_port,
            PortOwner {
                cgroup: None,
                uid: Some(0),
            },
        )]))
        .expect("owners");
    let _ = tokio::time::timeout(Duration::from_secs(2), client.execute(execute())).await;
    assert!(
        !grpc_seen.lock().expect("bytes").is_empty(),
        "with the impostor's uid as owner, the request reaches it"
    );
}
