//! The MySQL listener in front of a real MariaDB, with real clients: the `mariadb` CLI,
//! PyMySQL and mysql-connector-python, each with client certificates.

use vtguard_tests::fixtures::{Acl, Listener};
use vtguard_tests::mysql::clientcert;
use vtguard_tests::{
    mysql::{
        cli, cli_tls, clientcert_setup, mariadb_available, py_client, python_has, start_listener,
        MariaDb, Setup,
    },
    pki::Pki,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_with_client_certificate_allowed_select_denied_update_session_goes_on() {
    let test = "mariadb_cli_with_client_certificate_allowed_select_denied_update_session_goes_on";
    if !mariadb_available(test) {
        return;
    }
    let Setup { db, pki, l } = clientcert_setup().await;
    let addr = l.addr;
    let mut args = cli_tls(&pki, "vtgate-client-1");
    args.extend(["-D".into(), "vt".into()]);
    let sql = "select id, msg from vt_insert_test order by id;\nupdate vt_insert_test set msg = 'x' where id = 1;\nselect msg from vt_insert_test where id = 1;\nselect current_user();\n";
    let (code, out, err) =
        tokio::task::spawn_blocking(move || cli(addr, "vtgate client 1", &args, sql))
            .await
            .expect("cli");
    assert_eq!(code, 0, "--force goes on after the error: {err}");
    assert_eq!(
        out, "1\tone\n2\ttwo\n3\tthree\none\nvtgate client 1@%\n",
        "rows before and after the denial (the UPDATE changed nothing): {err}"
    );
    assert!(
        err.contains("ERROR 1142 (42000) at line 2: Update command denied to user 'vtgate client 1', in groups [localhost, vtgate client 1], for table 'vt_insert_test' (ACL check error)"),
        "{err}"
    );
    assert_eq!(
        db.root_sql("select msg from vt.vt_insert_test where id = 1"),
        "one\n"
    );
    assert_eq!(l.denied(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_clients_with_client_certificates() {
    let test = "python_clients_with_client_certificates";
    if !mariadb_available(test)
        || !python_has(test, "pymysql")
        || !python_has(test, "mysql.connector")
    {
        return;
    }
    let Setup { db: _db, pki, l } = clientcert_setup().await;
    let addr = l.addr;
    for driver in ["pymysql", "connector"] {
        let pki_dir = &pki;
        let lines = py_client(
            driver,
            addr,
            "vtgate client 1",
            "",
            Some((pki_dir, "vtgate-client-1")),
            &[
                "select id, msg from vt.vt_insert_test order by id",
                "select * from vt.secret",
                "select msg from vt.vt_insert_test where id = 2",
            ],
        );
        assert_eq!(
            lines,
            vec![
                r#"ROWS [[1, "one"], [2, "two"], [3, "three"]]"#.to_owned(),
                "ERR 1142 Select command denied to user 'vtgate client 1', in groups [localhost, vtgate client 1], for table 'secret' (ACL check error)".to_owned(),
                r#"ROWS [["two"]]"#.to_owned(),
            ],
            "{driver}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_no_certificate_plaintext_user_not_cn_revoked() {
    let test = "refusals_no_certificate_plaintext_user_not_cn_revoked";
    if !mariadb_available(test) {
        return;
    }
    let db = MariaDb::start();
    let pki = Pki::generate();
    let toml = Listener::mysql(db.addr()).mtls(&pki).extra("mysql-auth-server-impl = \"clientcert\"\nmysql-server-require-secure-transport = true\n").toml();
    let l = start_listener(&toml, None).await;
    let addr = l.addr;
    let run = |user: &'static str, args: Vec<String>| {
        tokio::task::spawn_blocking(move || cli(addr, user, &args, "select 'in';\n"))
    };

    // TLS without a client certificate while mysql-server-ssl-ca is set: the handshake fails.
    let (code, out, err) = run(
        "vtgate client 1",
        vec![
            "--ssl".into(),
            format!("--ssl-ca={}", pki.path("root.pem").display()),
        ],
    )
    .await
    .expect("cli");
    assert_ne!(code, 0, "refused: {out}");
    assert!(
        err.contains("ERROR 2026") || err.contains("ERROR 2013"),
        "{err}"
    );
    assert!(!out.contains("in"), "{out}");

    // Plaintext under mysql-server-require-secure-transport: Vitess's text.
    let (code, _, err) = run("vtgate client 1", vec!["--skip-ssl".into()])
        .await
        .expect("cli");
    assert_ne!(code, 0);
    assert!(
        err.contains("ERROR 3159 (HY000): server does not allow insecure connections, client must use SSL/TLS"),
        "{err}"
    );

    // clientcert: the MySQL user must be the certificate's CN.
    let (code, _, err) = run("vtgate client 2", cli_tls(&pki, "vtgate-client-1"))
        .await
        .expect("cli");
    assert_ne!(code, 0);
    assert!(
        err.contains("ERROR 1045 (28000): Access denied for user 'vtgate client 2'"),
        "{err}"
    );

    // A revoked certificate (mysql-server-ssl-crl) and one from another CA: no session.
    for client in ["vtgate-client-revoked", "other-client"] {
        let (code, out, err) = run("vtgate client 1", cli_tls(&pki, client))
            .await
            .expect("cli");
        assert_ne!(code, 0, "{client}: {out}");
        assert!(err.contains("ERROR 20"), "{client}: {err}");
    }

    // And the right certificate still gets in.
    let (code, out, err) = run("vtgate client 1", cli_tls(&pki, "vtgate-client-1"))
        .await
        .expect("cli");
    assert_eq!((code, out.as_str()), (0, "in\n"), "{err}");
    assert_eq!(l.handshakes_failed(), 5);
    assert_eq!(l.logins(), 1, "only the right certificate logged in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_authenticates_against_the_upstream_password() {
    let test = "passthrough_authenticates_against_the_upstream_password";
    if !mariadb_available(test)
        || !python_has(test, "pymysql")
        || !python_has(test, "mysql.connector")
    {
        return;
    }
    let db = MariaDb::start();
    let pki = Pki::generate();
    // TLS without client certificates; identity = the MySQL user.
    let listener = Listener::mysql(db.addr())
        .tls(&pki)
        .extra("mysql-auth-server-impl = \"passthrough\"\n");
    let acl = Acl::mysql_reference().section(pki.dir());
    let toml = format!("{acl}{}", listener.toml());
    let l = start_listener(&toml, None).await;
    let addr = l.addr;
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli(
            addr,
            "pw",
            &["--ssl".into(), "--password=sekret".into()],
            "select current_user();\nupdate vt.vt_insert_test set msg = 'uno' where id = 1;\nselect msg from vt.vt_insert_test where id = 1;\nselect * from vt.secret;\n",
        )
    })
    .await
    .expect("cli");
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "pw@%\nuno\n", "{err}");
    assert!(
        err.contains("ERROR 1142 (42000) at line 4: Select command denied to user 'pw' for table 'secret' (ACL check error)"),
        "{err}"
    );
    // A wrong password: the upstream's own refusal.
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        cli(
            addr,
            "pw",
            &["--ssl".into(), "--password=wrong".into()],
            "select 1;\n",
        )
    })
    .await
    .expect("cli");
    assert_ne!(code, 0);
    assert!(
        err.contains("ERROR 1045 (28000): Access denied for user 'pw'@'"),
        "{err}"
    );
    // Plaintext is refused here: passthrough takes the user's word, so only over TLS...
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        cli(
            addr,
            "pw",
            &["--skip-ssl".into(), "--password=sekret".into()],
            "select 1;\n",
        )
    })
    .await
    .expect("cli");
    assert_ne!(code, 0);
    assert!(
        err.contains("ERROR 3159 (HY000): server does not allow insecure connections"),
        "{err}"
    );
    // ... unless the listener says so (TLS optional).
    let plain = start_listener(
        &format!(
            "{acl}{}",
            listener.extra("insecure-plaintext = true\n").toml()
        ),
        None,
    )
    .await;
    let paddr = plain.addr;
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli(
            paddr,
            "pw",
            &["--skip-ssl".into(), "--password=sekret".into()],
            "select 'plain';\n",
        )
    })
    .await
    .expect("cli");
    assert_eq!((code, out.as_str()), (0, "plain\n"), "{err}");
    // An account on another plugin: the upstream switches the client again (ed25519), and
    // vtguard relays that exchange until the OK.
    db.root_sql("INSTALL SONAME 'auth_ed25519'; CREATE USER 'ed'@'%' IDENTIFIED VIA ed25519 USING PASSWORD('edpass'); GRANT SELECT ON vt.* TO 'ed'@'%';");
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        cli(
            addr,
            "ed",
            &["--ssl".into(), "--password=edpass".into()],
            "select current_user();\n",
        )
    })
    .await
    .expect("cli");
    assert_eq!((code, out.as_str()), (0, "ed@%\n"), "{err}");
    let (code, _, err) = tokio::task::spawn_blocking(move || {
        cli(
            addr,
            "ed",
            &["--ssl".into(), "--password=wrong".into()],
            "select 1;\n",
        )
    })
    .await
    .expect("cli");
    assert_ne!(code, 0);
    assert!(
        err.contains("ERROR 1045 (28000): Access denied for user 'ed'@'"),
        "{err}"
    );
    for driver in ["pymysql", "connector"] {
        let lines = py_client(
            driver,
            addr,
            "pw",
            "sekret",
            None,
            &["select current_user()"],
        );
        assert_eq!(lines, vec![r#"ROWS [["pw@%"]]"#.to_owned()], "{driver}");
        let lines = py_client(driver, addr, "pw", "nope", None, &["select 1"]);
        assert!(
            lines[0].starts_with("CONNECT_ERR 1045 Access denied for user 'pw'"),
            "{driver}: {lines:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_result_set_arrives_intact() {
    let test = "a_100_mb_result_set_arrives_intact";
    if !mariadb_available(test) {
        return;
    }
    let Setup { db, pki, l } = clientcert_setup().await;
    let addr = l.addr;
    // ~105 MB: 100,000 rows of about 1 KB, each different.
    let sql =
        "select seq, md5(seq), repeat(char(65 + seq % 26), 1000 + seq % 7) from seq_1_to_100000;\n";
    let args = cli_tls(&pki, "vtgate-client-1");
    let (code, through, err) = tokio::task::spawn_blocking(move || {
        let mut args = args;
        args.extend(["-D".into(), "vt".into()]);
        cli(addr, "vtgate client 1", &args, sql)
    })
    .await
    .expect("cli");
    assert_eq!(code, 0, "{err}");
    let direct = db.root_sql(&format!("use vt; {sql}"));
    assert!(direct.len() > 100_000_000, "{} bytes", direct.len());
    assert_eq!(through.len(), direct.len());
    assert!(
        through == direct,
        "the result through vtguard differs from the direct one"
    );
}

/// 200 connections at once, each running 100 queries whose answers it checks.
const PY_CONCURRENT: &str = r#"
import json, sys, threading, pymysql
a = json.loads(sys.argv[1])
n, q = a["connections"], a["queries"]
barrier = threading.Barrier(n)
results = [None] * n
def worker(i):
    try:
        c = pymysql.connect(host="127.0.0.1", port=a["port"], user=a["user"], database="vt", connect_timeout=60,
                            ssl_ca=a["tls"][0], ssl_cert=a["tls"][1], ssl_key=a["tls"][2], ssl_verify_cert=True)
        barrier.wait(timeout=300)
        good = 0
        with c.cursor() as cur:
            for j in range(q):
                cur.execute("select %s * %s, concat(%s, '-', %s) from vt_insert_test where id = %s", (i, j, i, j, 1 + j % 3))
                if cur.fetchall() == ((i * j, "%d-%d" % (i, j)),):
                    good += 1
        c.close()
        results[i] = good
    except Exception as e:
        results[i] = repr(e)
        try:
            barrier.abort()
        except Exception:
            pass
ts = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps(results))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_connections_each_get_their_own_answers() {
    let test = "two_hundred_concurrent_connections_each_get_their_own_answers";
    if !mariadb_available(test) || !python_has(test, "pymysql") {
        return;
    }
    let Setup { db: _db, pki, l } = clientcert_setup().await;
    let args = serde_json::json!({
        "port": l.addr.port(), "user": "vtgate client 1", "connections": 200, "queries": 100,
        "tls": [pki.path("root.pem"), pki.path("vtgate-client-1.pem"), pki.path("vtgate-client-1.key")],
    });
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", PY_CONCURRENT, &args.to_string()])
            .output()
            .expect("python3")
    })
    .await
    .expect("python");
    let text = String::from_utf8_lossy(&out.stdout);
    let results: Vec<serde_json::Value> = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(results.len(), 200);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r, &serde_json::json!(100), "connection {i}");
    }
    assert_eq!(l.logins(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_data_local_and_prepared_statements_pass_when_the_policy_allows() {
    let test = "load_data_local_and_prepared_statements_pass_when_the_policy_allows";
    if !mariadb_available(test) || !python_has(test, "mysql.connector") {
        return;
    }
    let db = MariaDb::start();
    let pki = Pki::generate();
    // No table ACL on this listener: LOAD DATA LOCAL is the policy's to allow, and it does.
    let l = start_listener(&clientcert(&pki, db.addr()).toml(), None).await;
    let addr = l.addr;
    // Over 255 packets of file data, so that the client's sequence numbers wrap through 0.
    let csv = pki.dir().join("rows.csv");
    let mut text = String::new();
    for i in 0..300_000 {
        text.push_str(&format!("{},row {i} {}\n", 1000 + i, "y".repeat(40)));
    }
    std::fs::write(&csv, &text).expect("csv");
    let sql = format!(
        "load data local infile '{}' into table vt.vt_insert_test fields terminated by ',';\nselect count(*), sum(id) from vt.vt_insert_test;\n",
        csv.display()
    );
    let mut args = cli_tls(&pki, "vtgate-client-1");
    args.push("--local-infile=1".into());
    let (code, out, err) =
        tokio::task::spawn_blocking(move || cli(addr, "vtgate client 1", &args, &sql))
            .await
            .expect("cli");
    assert_eq!(code, 0, "{err}");
    let expected_sum: u64 = 6 + (0..300_000u64).map(|i| 1000 + i).sum::<u64>();
    assert_eq!(out, format!("300003\t{expected_sum}\n"), "{err}");

    // The binary protocol: mysql-connector's prepared cursor (COM_STMT_PREPARE/EXECUTE).
    let script = format!(
        r#"
import mysql.connector
c = mysql.connector.connect(host="127.0.0.1", port={port}, user="vtgate client 1", use_pure=True,
    ssl_ca="{ca}", ssl_cert="{cert}", ssl_key="{key}", ssl_verify_cert=True)
cur = c.cursor(prepared=True)
for i in (1, 2, 3):
    cur.execute("select id, msg from vt.vt_insert_test where id = %s", (i,))
    print(cur.fetchall())
"#,
        port = addr.port(),
        ca = pki.path("root.pem").display(),
        cert = pki.path("vtgate-client-1.pem").display(),
        key = pki.path("vtgate-client-1.key").display(),
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args(["-c", &script])
            .output()
            .expect("python3")
    })
    .await
    .expect("python");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[(1, 'one')]\n[(2, 'two')]\n[(3, 'three')]\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
