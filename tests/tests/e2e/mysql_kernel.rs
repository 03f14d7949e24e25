//! The MySQL listener with the kernel programs attached (as root): MariaDB's port is reachable
//! only through vtguard, on a connection registered under the caller's proven identity.

use std::{
    io::Read,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use vtguard_agent::sessions::Sessions;
use vtguard_tests::{
    kernel_tests_can_run,
    mysql::{cli, cli_tls, mariadb_available, start_listener_with, tls_login, MariaDb},
    pki::Pki,
    policy, py_connect, TestKernel,
};

#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_vtguard_reaches_mariadb_and_only_for_identities_the_kernel_allows() {
    let test = "only_vtguard_reaches_mariadb_and_only_for_identities_the_kernel_allows";
    if !kernel_tests_can_run(test) || !mariadb_available(test) {
        return;
    }
    // Attaches to the cgroup2 root: one kernel test at a time (held across awaits on purpose).
    let _serial = vtguard_tests::serial();
    let db = MariaDb::start();
    let port = db.port;
    let k = TestKernel::start(policy(&[port], &[(port, &["vtgate client 1"])]), None);
    let pki = Arc::new(Pki::generate());
    let toml = format!(
        "{}{}",
        vtguard_tests::fixtures::kernel_section(&[port], None, &[]),
        vtguard_tests::mysql::clientcert(&pki, db.addr()).toml()
    );
    let sessions = Arc::new(Sessions::default());
    let l = start_listener_with(&toml, Some(k.shared()), Arc::clone(&sessions)).await;
    let addr = l.addr;

    // Through vtguard, as an identity the kernel allows: rows.
    let args = cli_tls(&pki, "vtgate-client-1");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli(
            addr,
            "vtgate client 1",
            &args,
            "select count(*) from vt.vt_insert_test;\n",
        )
    })
    .await
    .expect("cli");
    assert_eq!((code, out.as_str()), (0, "3\n"), "{err}");

    // Through vtguard, as an identity the kernel does not allow on this port: refused.
    let args = cli_tls(&pki, "vtgate-client-2");
    let (code, _, err) =
        tokio::task::spawn_blocking(move || cli(addr, "vtgate client 2", &args, "select 1;\n"))
            .await
            .expect("cli");
    assert_ne!(code, 0);
    assert!(
        err.contains("ERROR 1045 (28000): Access denied for user 'vtgate client 2': vtguard: the kernel refused this identity a connection to the upstream"),
        "{err}"
    );

    // Straight to MariaDB's port, around vtguard: EPERM from the kernel, for any process.
    let direct =
        tokio::task::spawn_blocking(move || py_connect(None, "127.0.0.1", port, 3.0, "connect"))
            .await
            .expect("python");
    assert_eq!(direct.outcome, "ERR 1 Operation not permitted");
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-h",
            "127.0.0.1",
            "-P",
            &port.to_string(),
            "-u",
            "vtgate client 1",
            "-e",
            "select 1",
        ])
        .output()
        .expect("mariadb");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ERROR 2002") && err.contains("(1)"),
        "errno 1 (EPERM): {err}"
    );

    // Client 1 loses access (as SIGHUP applies a config without it): its open session is
    // closed at once; once the kernel has the policy, its new login is refused by the kernel.
    let p = Arc::clone(&pki);
    let (mut session, _) = tokio::task::spawn_blocking(move || {
        tls_login(&p, addr, "vtgate-client-1", "vtgate client 1", false)
    })
    .await
    .expect("login")
    .expect("client 1 logs in");
    let without = policy(&[port], &[(port, &[])]);
    let start = Instant::now();
    sessions.set_policy(&without, true);
    let closed = tokio::task::spawn_blocking(move || {
        session
            .sock
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut b = [0u8; 1];
        match session.read(&mut b) {
            Ok(0) => Ok(()),
            Ok(_) => Err("data".to_owned()),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                Err("still open after 2 s".to_owned())
            }
            Err(_) => Ok(()),
        }
    })
    .await
    .expect("read");
    let took = start.elapsed();
    assert_eq!(closed, Ok(()), "client 1's session must be closed");
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    eprintln!("client 1's MySQL session closed {took:?} after the policy change");
    k.shared().apply_policy(&without).expect("kernel policy");
    sessions.applied();
    let args = cli_tls(&pki, "vtgate-client-1");
    let (code, _, err) =
        tokio::task::spawn_blocking(move || cli(addr, "vtgate client 1", &args, "select 1;\n"))
            .await
            .expect("cli");
    assert_ne!(code, 0);
    assert!(
        err.contains("ERROR 1045 (28000): Access denied for user 'vtgate client 1': vtguard: the kernel refused this identity a connection to the upstream"),
        "{err}"
    );
    drop(l);
}
