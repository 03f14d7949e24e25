//! Bad input on the MySQL listener, from a raw client: each bad connection ends with an ERR or
//! a close (and a log line naming the reason); the other connections carry on.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use vtguard_agent::proxy::mysql::handshake::cap;
use vtguard_tests::fixtures::{Acl, Listener};
use vtguard_tests::mysql::clientcert;
use vtguard_tests::{
    mysql::{
        err_of, first_value, login_payload, mariadb_available, packet, raw_login, raw_query,
        read_packet, start_listener, tls_login, until_closed, MariaDb,
    },
    pki::Pki,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_packets_end_only_their_own_connection() {
    let test = "bad_packets_end_only_their_own_connection";
    if !mariadb_available(test) {
        return;
    }
    let db = MariaDb::start();
    let l = start_listener(
        &Listener::mysql(db.addr())
            .plaintext()
            .extra("max-allowed-packet = 1048576\nhandshake-timeout-seconds = 1\n")
            .toml(),
        None,
    )
    .await;
    let addr = l.addr;
    // A session open through all of it.
    let mut good = raw_login(addr, "vtgate client 1").await;
    assert_eq!(raw_query(&mut good, "select 40 + 2").await, Ok("42".into()));

    // A client that stalls after the greeting: closed at the handshake timeout (1 s).
    let started = std::time::Instant::now();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.expect("connect");
    read_packet(&mut stalled).await.expect("greeting");
    assert_eq!(
        until_closed(&mut stalled).await,
        b"",
        "closed without a word"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "closed at the 1 s handshake timeout, not after {waited:?}"
    );

    // A login cut short: closed.
    let mut cut = tokio::net::TcpStream::connect(addr).await.expect("connect");
    read_packet(&mut cut).await.expect("greeting");
    let login = packet(1, &login_payload("vtgate client 1", 0));
    cut.write_all(&login[..20]).await.expect("write");
    cut.shutdown().await.expect("half close");
    assert_eq!(until_closed(&mut cut).await, b"");

    // A login that is not one: ERR 1043.
    let mut bad = tokio::net::TcpStream::connect(addr).await.expect("connect");
    read_packet(&mut bad).await.expect("greeting");
    bad.write_all(&packet(1, &[0x55; 40])).await.expect("write");
    let (seq, e) = read_packet(&mut bad).await.expect("ERR");
    assert_eq!(seq, 2);
    assert_eq!(err_of(&e).0, 1043);
    assert!(err_of(&e).1.contains("Bad handshake"));
    assert_eq!(until_closed(&mut bad).await, b"");

    // The compressed protocol: refused at negotiation.
    let mut z = tokio::net::TcpStream::connect(addr).await.expect("connect");
    read_packet(&mut z).await.expect("greeting");
    z.write_all(&packet(1, &login_payload("vtgate client 1", cap::COMPRESS)))
        .await
        .expect("write");
    let (_, e) = read_packet(&mut z).await.expect("ERR");
    assert_eq!(
        err_of(&e),
        (
            1235,
            "vtguard does not support the compressed protocol: connect without compression".into()
        )
    );

    // A user name that is not UTF-8: two spellings must never be one identity.
    let mut u = tokio::net::TcpStream::connect(addr).await.expect("connect");
    read_packet(&mut u).await.expect("greeting");
    let mut login = login_payload("vtgate client 1", 0);
    login[32] = 0xff;
    u.write_all(&packet(1, &login)).await.expect("write");
    let (_, e) = read_packet(&mut u).await.expect("ERR");
    assert_eq!(err_of(&e).0, 1045);

    // A command over max-allowed-packet: ERR 1153, then the connection ends.
    let mut big = raw_login(addr, "vtgate client 1").await;
    let mut header = packet(0, &[]);
    header[..3].copy_from_slice(&[0x00, 0x00, 0x20]); // 2 MiB
    header.extend_from_slice(b"\x03select '");
    header.extend_from_slice(&[b'x'; 1000]);
    big.write_all(&header).await.expect("write");
    let (_, e) = read_packet(&mut big).await.expect("ERR");
    let (code, msg) = err_of(&e);
    assert_eq!(code, 1153);
    assert!(
        msg.starts_with("Got a packet bigger than 'max_allowed_packet' bytes"),
        "{msg}"
    );
    assert_eq!(until_closed(&mut big).await, b"");

    // An empty command packet: ERR, closed.
    let mut empty = raw_login(addr, "vtgate client 1").await;
    empty.write_all(&packet(0, &[])).await.expect("write");
    let (_, e) = read_packet(&mut empty).await.expect("ERR");
    assert_eq!(err_of(&e).0, 1047);
    assert_eq!(until_closed(&mut empty).await, b"");

    // A truncated command: closed, nothing of it forwarded.
    let mut trunc = raw_login(addr, "vtgate client 1").await;
    let q = packet(0, b"\x03insert into vt.vt_insert_test values (9, 'nine')");
    trunc.write_all(&q[..q.len() - 3]).await.expect("write");
    trunc.shutdown().await.expect("half close");
    assert_eq!(until_closed(&mut trunc).await, b"");

    // A packet out of sequence where a command belongs (it would reach the upstream unchecked):
    // ERR 1156, closed.
    let mut ooo = raw_login(addr, "vtgate client 1").await;
    ooo.write_all(&packet(1, b"\x03select * from vt.secret"))
        .await
        .expect("write");
    let (_, e) = read_packet(&mut ooo).await.expect("ERR");
    assert_eq!(err_of(&e), (1156, "Got packets out of order".into()));
    assert_eq!(until_closed(&mut ooo).await, b"");

    // COM_CHANGE_USER would change the identity mid-session: refused, the session goes on.
    let mut cu = raw_login(addr, "vtgate client 1").await;
    cu.write_all(&packet(0, b"\x11root\x00\x00"))
        .await
        .expect("write");
    let (_, e) = read_packet(&mut cu).await.expect("ERR");
    assert!(err_of(&e).1.contains("COM_CHANGE_USER is refused"), "{e:?}");
    assert_eq!(
        raw_query(&mut cu, "select current_user()").await,
        Ok("vtgate client 1@%".into())
    );

    // And the first session never noticed.
    assert_eq!(raw_query(&mut good, "select 6 * 7").await, Ok("42".into()));
    assert_eq!(
        db.root_sql("select count(*) from vt.vt_insert_test where id = 9"),
        "0\n"
    );
    // Stalled, cut short, not a login, compressed, user not UTF-8: five connections that
    // never became sessions; the others logged in first.
    assert_eq!(l.handshakes_failed(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packets_split_at_every_byte() {
    let test = "packets_split_at_every_byte";
    if !mariadb_available(test) {
        return;
    }
    let db = MariaDb::start();
    let l = start_listener(&Listener::mysql(db.addr()).plaintext().toml(), None).await;
    let mut s = tokio::net::TcpStream::connect(l.addr)
        .await
        .expect("connect");
    s.set_nodelay(true).expect("nodelay");
    read_packet(&mut s).await.expect("greeting");
    let mut bytes = packet(1, &login_payload("vtgate client 1", 0));
    for b in &bytes {
        s.write_all(&[*b]).await.expect("write");
        s.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    let (_, ok) = read_packet(&mut s).await.expect("OK");
    assert_eq!(ok[0], 0);
    bytes = packet(0, b"\x03select concat('split', ' ', 'ok')");
    for b in &bytes {
        s.write_all(&[*b]).await.expect("write");
        s.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    assert_eq!(first_value(&mut s).await, Ok("split ok".into()));
}

/// The SSLRequest and the TLS ClientHello in one write (as some clients send them): vtguard
/// must not lose the ClientHello's bytes when it switches to TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hello_in_the_same_write_as_the_ssl_request() {
    let test = "client_hello_in_the_same_write_as_the_ssl_request";
    if !mariadb_available(test) {
        return;
    }
    let db = MariaDb::start();
    let pki = Pki::generate();
    let l = start_listener(&clientcert(&pki, db.addr()).toml(), None).await;
    let addr = l.addr;
    let value = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let (mut tls, _) =
            tls_login(&pki, addr, "vtgate-client-1", "vtgate client 1", false).expect("login");
        tls.write_all(&packet(0, b"\x03select current_user()"))
            .expect("query");
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&all).contains("vtgate client 1@%") {
            let n = tls.read(&mut buf).expect("result");
            assert!(n > 0, "closed before the row");
            all.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&all).contains("vtgate client 1@%")
    })
    .await
    .expect("client");
    assert!(value);
}

/// Every command that names tables goes through the table ACL; a denial is ERR 1142 and the
/// session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn field_list_init_db_prepare_and_multi_statements_are_checked() {
    let test = "field_list_init_db_prepare_and_multi_statements_are_checked";
    if !mariadb_available(test) {
        return;
    }
    let db = MariaDb::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let toml = format!(
        "{}{}",
        Acl::mysql_reference().section(dir.path()),
        Listener::mysql(db.addr()).plaintext().toml()
    );
    let l = start_listener(&toml, None).await;
    let mut s = raw_login(l.addr, "vtgate client 1").await;
    let denied = |table: &str| {
        format!(
            "Select command denied to user 'vtgate client 1' for table '{table}' (ACL check error)"
        )
    };
    async fn command(s: &mut tokio::net::TcpStream, payload: &[u8]) -> Vec<u8> {
        s.write_all(&packet(0, payload)).await.expect("write");
        read_packet(s).await.expect("reply").1
    }
    // COM_FIELD_LIST: READER on the table.
    let e = command(&mut s, b"\x04secret\x00").await;
    assert_eq!(err_of(&e), (1142, denied("secret")));
    // COM_STMT_PREPARE: the statement's tables.
    let e = command(&mut s, b"\x16select * from secret where id = ?").await;
    assert_eq!(err_of(&e), (1142, denied("secret")));
    // A multi-statement string: every statement is checked.
    let e = command(
        &mut s,
        b"\x03select 1 from vt_insert_test; select * from secret",
    )
    .await;
    assert_eq!(err_of(&e), (1142, denied("secret")));
    // A statement that cannot be read is a syntax error to the client (ERR 1064), not an ACL
    // denial, and the session goes on.
    let e = command(&mut s, b"\x03selec * frm vt_insert_test").await;
    let (code, message) = err_of(&e);
    assert_eq!(code, 1064, "{message}");
    assert!(!message.contains("ACL check error"), "{message}");
    // COM_INIT_DB is `USE db`: not a table, allowed (Vitess checks tables, not databases).
    let ok = command(&mut s, b"\x02vt").await;
    assert_eq!(ok[0], 0, "OK");
    // COM_FIELD_LIST on an allowed table: column definitions, then EOF.
    s.write_all(&packet(0, b"\x04vt_insert_test\x00"))
        .await
        .expect("write");
    let mut n = 0;
    loop {
        let (_, p) = read_packet(&mut s).await.expect("field");
        if p[0] == 0xfe {
            break;
        }
        n += 1;
    }
    assert_eq!(n, 2, "id and msg");
    // The session goes on.
    assert_eq!(
        raw_query(&mut s, "select msg from vt_insert_test where id = 3").await,
        Ok("three".into())
    );
    assert_eq!(l.denied(), 4, "three denials and the unreadable statement");
}

/// mysql-server-tls-min-version refuses older clients with TLS's protocol_version alert.
/// (Certificate rotation is tested through the binary's own file watch: tls_rotation.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minimum_tls_version_refuses_older_clients_with_the_protocol_version_alert() {
    let test = "minimum_tls_version_refuses_older_clients_with_the_protocol_version_alert";
    if !mariadb_available(test) {
        return;
    }
    let db = MariaDb::start();
    let pki = std::sync::Arc::new(Pki::generate());
    let toml = vtguard_tests::mysql::clientcert(&pki, db.addr())
        .extra("mysql-server-tls-min-version = \"TLSv1.3\"\n")
        .toml();
    let l = start_listener(&toml, None).await;
    let addr = l.addr;
    let login = |tls12: bool| {
        let pki = std::sync::Arc::clone(&pki);
        tokio::task::spawn_blocking(move || {
            tls_login(&pki, addr, "vtgate-client-1", "vtgate client 1", tls12).map(|(_, c)| c)
        })
    };
    let served = login(false).await.expect("task").expect("TLS 1.3 login");
    assert_eq!(served, pki.leaf_der("localhost"));
    let e = login(true)
        .await
        .expect("task")
        .expect_err("TLS 1.2 is under the minimum");
    let tls_error = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("a TLS error, not an I/O one: {e}"));
    assert_eq!(
        tls_error,
        &rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion),
        "{e}"
    );
    assert_eq!(l.logins(), 1, "only the TLS 1.3 client logged in");
}
