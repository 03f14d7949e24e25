//! A MySQL listener from the `vtguard` binary: the agent's wiring starts it, and every refusal
//! is one JSON log line naming the reason.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use vtguard_tests::{
    free_port,
    mysql::{cli, cli_tls, mariadb_available, mtls_listener, reference_acl, MariaDb},
    pki::Pki,
    vtguard_bin,
};

/// The agent's log lines so far, collected from its stderr.
fn collect(child: &mut std::process::Child) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    let stderr = child.stderr.take().expect("stderr");
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap_or_else(|p| p.into_inner()).push(l);
        }
    });
    lines
}

/// The first log line holding every one of `needles` (waits up to 30 s).
fn line_with(lines: &Mutex<Vec<String>>, needles: &[&str]) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = lines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .cloned();
        if let Some(l) = found {
            return serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        }
        assert!(
            Instant::now() < deadline,
            "no log line with {needles:?}: {:#?}",
            lines.lock().unwrap_or_else(|p| p.into_inner())
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mysql_listener_from_the_binary_logs_each_refusal_with_its_reason() {
    let test = "a_mysql_listener_from_the_binary_logs_each_refusal_with_its_reason";
    if !mariadb_available(test) {
        return;
    }
    let db = MariaDb::start();
    let pki = Pki::generate();
    let port = free_port();
    let config = pki.dir().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\nsocket = \"{}\"\n{}{}",
            pki.dir().join("admin.sock").display(),
            reference_acl(pki.dir()),
            mtls_listener(&pki, db.addr(), "mysql-auth-server-impl = \"clientcert\"\n")
                .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        ),
    )
    .expect("config");
    let mut child = Command::new(vtguard_bin())
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start vtguard");
    let lines = collect(&mut child);
    let l = line_with(&lines, &["\"listening\"", "\"protocol\":\"mysql\""]);
    assert_eq!(l["listener"], "mysql");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");

    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let ok = cli(
            addr,
            "vtgate client 1",
            &cli_tls(&pki, "vtgate-client-1"),
            "select count(*) from vt.vt_insert_test;\ndelete from vt.vt_insert_test;\n",
        );
        // The MySQL user is not the certificate's CN.
        let _ = cli(
            addr,
            "root",
            &cli_tls(&pki, "vtgate-client-1"),
            "select 1;\n",
        );
        // Plaintext, under a client CA.
        let _ = cli(
            addr,
            "vtgate client 1",
            &["--skip-ssl".into()],
            "select 1;\n",
        );
        ok
    })
    .await
    .expect("cli");
    assert_eq!((code, out.as_str()), (0, "3\n"), "{err}");
    assert!(err.contains("ERROR 1142 (42000)"), "{err}");

    let denied = line_with(&lines, &["\"denied\"", "Delete command denied"]);
    assert_eq!(
        denied["identity"],
        "\"vtgate client 1\" (groups [\"localhost\", \"vtgate client 1\"])"
    );
    let cn = line_with(
        &lines,
        &["connection refused", "is not the certificate's common name"],
    );
    assert_eq!(
        cn["reason"],
        "MySQL user \"root\" is not the certificate's common name \"vtgate client 1\" (mysql-auth-server-impl = clientcert)"
    );
    let plain = line_with(&lines, &["connection refused", "plaintext login refused"]);
    assert!(
        plain["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{plain}"
    );
    let _ = child.kill();
    let _ = child.wait();
    drop(db);
}
