//! Connection limits and idle timeouts: one certificate holder cannot take every connection
//! of a listener, and idle connections do not stay open forever.

use std::time::{Duration, Instant};

use vtguard_tests::{
    fixtures::Listener,
    free_port,
    grpc::{execute_body, raw_call, raw_connection, start_listener},
    mysql::{self, mariadb_available, raw_login, MariaDb},
    pki::Pki,
    upstream::Upstream,
};

const EXECUTE: &str = "/queryservice.Query/Execute";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_over_its_limit_is_refused_while_another_identity_is_served() {
    let pki = Pki::generate();
    let up_port = free_port();
    let _up = Upstream::start(up_port).await;
    let toml = Listener::grpc("vttablet", ([127, 0, 0, 1], up_port).into())
        .mtls(&pki)
        .extra("max-connections-per-identity = 2\n")
        .toml();
    let l = start_listener(&toml, None).await;
    let addr = l.addr;
    let mut first = raw_connection(&pki, addr, Some("vtgate-client-1")).await;
    let mut second = raw_connection(&pki, addr, Some("vtgate-client-1")).await;
    for send in [&mut first, &mut second] {
        let (status, message, _) =
            raw_call(send, addr, EXECUTE, execute_body("select 1"), None).await;
        assert_eq!(status, 0, "{message}");
    }
    // The third connection of the same certificate: told why, with the key to change.
    let mut third = raw_connection(&pki, addr, Some("vtgate-client-1")).await;
    let (status, message, _) =
        raw_call(&mut third, addr, EXECUTE, execute_body("select 1"), None).await;
    assert_eq!(status, 8, "RESOURCE_EXHAUSTED: {message}");
    assert!(
        message.contains("\"vtgate client 1\" already has 2 connections open")
            && message.contains("max-connections-per-identity = 2"),
        "{message}"
    );
    // Another identity is served meanwhile, and the first two keep working.
    let mut other = raw_connection(&pki, addr, Some("vtgate-client-2")).await;
    let (status, message, _) =
        raw_call(&mut other, addr, EXECUTE, execute_body("select 1"), None).await;
    assert_eq!(status, 0, "{message}");
    let (status, _, _) = raw_call(&mut first, addr, EXECUTE, execute_body("select 1"), None).await;
    assert_eq!(status, 0);
    assert_eq!(l.proxy.status().counts.limit_refused, 1);

    // A connection that closes gives its place back.
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut again = raw_connection(&pki, addr, Some("vtgate-client-1")).await;
        let (status, _, _) =
            raw_call(&mut again, addr, EXECUTE, execute_body("select 1"), None).await;
        if status == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's place never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_grpc_connection_is_closed_at_grpc_max_connection_idle() {
    let pki = Pki::generate();
    let up_port = free_port();
    let _up = Upstream::start(up_port).await;
    let toml = Listener::grpc("vttablet", ([127, 0, 0, 1], up_port).into())
        .mtls(&pki)
        .extra("grpc-max-connection-idle = 1\n")
        .toml();
    let l = start_listener(&toml, None).await;
    let mut send = raw_connection(&pki, l.addr, Some("vtgate-client-1")).await;
    let (status, _, _) = raw_call(&mut send, l.addr, EXECUTE, execute_body("select 1"), None).await;
    assert_eq!(status, 0);
    let idle_from = Instant::now();
    while !send.is_closed() {
        assert!(
            idle_from.elapsed() < Duration::from_secs(5),
            "the idle connection is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = idle_from.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "closed after {after:?}, configured 1 s"
    );
}

/// A busy connection is replaced at `grpc-max-connection-age` (GOAWAY, then the grace), and a
/// gRPC client does not lose a call over it: it reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_grpc_connection_is_replaced_at_its_maximum_age_without_a_failed_call() {
    use vtguard_proto::{query::ExecuteRequest, queryservice::query_client::QueryClient};
    let pki = Pki::generate();
    let up_port = free_port();
    let _up = Upstream::start(up_port).await;
    let toml = Listener::grpc("vttablet", ([127, 0, 0, 1], up_port).into())
        .mtls(&pki)
        .extra("grpc-max-connection-age = 1\ngrpc-max-connection-age-grace = 1\n")
        .toml();
    let l = start_listener(&toml, None).await;
    let mut client = QueryClient::new(
        vtguard_tests::grpc::tls_channel(&pki, l.addr, Some("vtgate-client-1"))
            .await
            .expect("connect"),
    );
    let started = Instant::now();
    let mut calls = 0;
    while started.elapsed() < Duration::from_millis(3500) {
        client
            .execute(ExecuteRequest {
                query: Some(vtguard_tests::upstream::bound("select 1")),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("call {calls} failed across the age limit: {e}"));
        calls += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connections = l.proxy.status().counts.connections;
    assert!(
        (3..=5).contains(&connections),
        "a connection aged out about once a second over 3.5 s: {connections} connections for {calls} calls"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_mysql_session_is_closed_at_mysql_server_read_timeout_and_told_why() {
    if !mariadb_available(
        "an_idle_mysql_session_is_closed_at_mysql_server_read_timeout_and_told_why",
    ) {
        return;
    }
    let db = MariaDb::start();
    let toml = Listener::mysql(db.addr())
        .plaintext()
        .extra("mysql-server-read-timeout = 1\nmax-connections-per-identity = 1\n")
        .toml();
    let l = mysql::start_listener(&toml, None).await;
    let mut s = raw_login(l.addr, "vtgate client 1").await;
    // A second session of the same user is over its limit: ERR 1040, naming the key.
    let mut extra = tokio::net::TcpStream::connect(l.addr)
        .await
        .expect("connect");
    {
        use tokio::io::AsyncWriteExt;
        let (_, _greeting) = mysql::read_packet(&mut extra).await.expect("greeting");
        extra
            .write_all(&mysql::packet(
                1,
                &mysql::login_payload("vtgate client 1", 0),
            ))
            .await
            .expect("login");
        let (_, err) = mysql::read_packet(&mut extra).await.expect("reply");
        let (code, message) = mysql::err_of(&err);
        assert_eq!(code, 1040, "{message}");
        assert!(
            message.contains("max-connections-per-identity = 1"),
            "{message}"
        );
    }
    // The session goes idle: closed after the timeout, with ERR 4031 first.
    let idle_from = Instant::now();
    let bytes = mysql::until_closed(&mut s).await;
    let after = idle_from.elapsed();
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(3),
        "closed after {after:?}, configured 1 s"
    );
    let (code, message) = mysql::err_of(&bytes[4..]);
    assert_eq!(code, 4031, "{message}");
    assert!(message.contains("mysql-server-read-timeout"), "{message}");
}
