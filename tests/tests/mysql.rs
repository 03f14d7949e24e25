//! The MySQL listener in front of a real MariaDB, with real clients: the `mariadb` CLI,
//! PyMySQL and mysql-connector-python, each with client certificates.

use vtguard_tests::{
    mysql::{
        cli, cli_tls, mariadb_available, mtls_listener, py_client, python_has, reference_acl,
        start_listener, MariaDb,
    },
    pki::Pki,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_cli_with_client_certificate_allowed_select_denied_update_session_goes_on() {
    let test = "mariadb_cli_with_client_certificate_allowed_select_denied_update_session_goes_on";
    if !mariadb_available(test) {
        return;
    }
    let db = MariaDb::start();
    let pki = Pki::generate();
    let toml = format!(
        "{}{}",
        reference_acl(pki.dir()),
        mtls_listener(&pki, db.addr(), "mysql-auth-server-impl = \"clientcert\"\n")
    );
    let l = start_listener(&toml, None).await;
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
    assert_eq!(
        l.proxy
            .stats
            .denied
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
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
    let db = MariaDb::start();
    let pki = Pki::generate();
    let toml = format!(
        "{}{}",
        reference_acl(pki.dir()),
        mtls_listener(&pki, db.addr(), "mysql-auth-server-impl = \"clientcert\"\n")
    );
    let l = start_listener(&toml, None).await;
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
