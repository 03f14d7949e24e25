//! A MySQL listener from the `vtguard` binary: the agent's wiring starts it, and every refusal
//! is one JSON log line naming the reason.

use std::time::Duration;

use vtguard_tests::fixtures::Acl;
use vtguard_tests::mysql::clientcert;
use vtguard_tests::{
    agent::AgentProcess,
    free_port,
    mysql::{cli, cli_tls, mariadb_available, MariaDb},
    pki::Pki,
};

/// The first log line holding every one of `needles`, as JSON (waits up to 30 s).
fn line_with(agent: &AgentProcess, needles: &[&str]) -> serde_json::Value {
    let l = agent
        .find(needles, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no log line with {needles:?}:\n{}", agent.log()));
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
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
            Acl::mysql_reference().section(pki.dir()),
            clientcert(&pki, db.addr())
                .toml()
                .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"))
        ),
    )
    .expect("config");
    let agent = crate::spawn_agent(&["--log-format", "json"], &config).expect("start vtguard");
    let l = line_with(&agent, &["\"listening\"", "\"protocol\":\"mysql\""]);
    assert_eq!(l["listener"], "mysql");
    let addr = format!("127.0.0.1:{port}").parse().expect("addr");

    let (ok, root, plain) = tokio::task::spawn_blocking(move || {
        let ok = cli(
            addr,
            "vtgate client 1",
            &cli_tls(&pki, "vtgate-client-1"),
            "select count(*) from vt.vt_insert_test;\ndelete from vt.vt_insert_test;\n",
        );
        // The MySQL user is not the certificate's CN.
        let root = cli(
            addr,
            "root",
            &cli_tls(&pki, "vtgate-client-1"),
            "select 1;\n",
        );
        // Plaintext, under a client CA.
        let plain = cli(
            addr,
            "vtgate client 1",
            &["--skip-ssl".into()],
            "select 1;\n",
        );
        (ok, root, plain)
    })
    .await
    .expect("cli");
    let (code, out, err) = ok;
    assert_eq!((code, out.as_str()), (0, "3\n"), "{err}");
    assert!(err.contains("ERROR 1142 (42000)"), "{err}");
    let (code, out, err) = root;
    assert_ne!(code, 0, "the login as root is refused: {out}");
    assert!(
        err.contains("ERROR 1045 (28000): Access denied for user 'root'"),
        "{err}"
    );
    let (code, out, err) = plain;
    assert_ne!(code, 0, "the plaintext login is refused: {out}");
    assert!(err.contains("ERROR "), "{err}");

    let denied = line_with(&agent, &["\"denied\"", "Delete command denied"]);
    assert_eq!(
        denied["identity"],
        "\"vtgate client 1\" (groups [\"localhost\", \"vtgate client 1\"])"
    );
    let cn = line_with(
        &agent,
        &["connection refused", "is not the certificate's common name"],
    );
    assert_eq!(
        cn["reason"],
        "MySQL user \"root\" is not the certificate's common name \"vtgate client 1\" (mysql-auth-server-impl = clientcert)"
    );
    let plain = line_with(&agent, &["connection refused", "plaintext login refused"]);
    assert!(
        plain["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with("127.0.0.1:")),
        "{plain}"
    );
    drop(agent);
    drop(db);
}
