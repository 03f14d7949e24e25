//! The gRPC listener with real gRPC clients (tonic here, grpcio in grpc_python.rs) against a
//! stand-in vttablet/vtgate that records exactly what it receives.

use std::{collections::HashMap, time::Duration};

use prost::Message;
use tonic::{Code, Request};
use vtguard_proto::{
    query::{
        self, BindVariable, BoundQuery, ExecuteRequest, StreamExecuteRequest, Target,
        VtGateCallerId,
    },
    queryservice::query_client::QueryClient,
    vtgate,
    vtgateservice::vitess_client::VitessClient,
    vtrpc::CallerId,
};
use vtguard_tests::fixtures::Listener;
use vtguard_tests::{
    grpc::{
        client_config, execute_body, plain_channel, raw_connection, raw_request, start_listener,
        tls_channel, tls_handshake,
    },
    pki::Pki,
    upstream::{rows, Upstream},
};

fn execute_request(claimed: &str) -> ExecuteRequest {
    let mut binds = HashMap::new();
    binds.insert(
        "id".to_owned(),
        BindVariable {
            r#type: query::Type::Int64 as i32,
            value: b"42".to_vec(),
            values: vec![],
        },
    );
    ExecuteRequest {
        effective_caller_id: Some(CallerId {
            principal: "app-user".into(),
            component: "billing".into(),
            subcomponent: "invoices".into(),
            groups: vec!["app".into()],
        }),
        immediate_caller_id: Some(VtGateCallerId {
            username: claimed.into(),
            groups: vec!["admins".into()],
        }),
        target: Some(Target {
            keyspace: "test_keyspace".into(),
            shard: "0".into(),
            tablet_type: 1,
            cell: "zone1".into(),
        }),
        query: Some(BoundQuery {
            sql: "select * from vt_insert_test where id = :id".into(),
            bind_variables: binds,
        }),
        transaction_id: 12345,
        options: None,
        reserved_id: 0,
    }
}

/// Top-level fields other than `skip`, byte for byte, in order.
fn other_fields(msg: &[u8], skip: u32) -> Vec<Vec<u8>> {
    vtguard_agent::proxy::grpc::wire::fields(msg)
        .expect("valid protobuf")
        .into_iter()
        .filter(|f| f.number != skip)
        .map(|f| msg[f.span].to_vec())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_identity_replaces_the_claimed_immediate_caller() {
    let pki = Pki::generate();
    let up = Upstream::start(0).await;
    let l = start_listener(&Listener::grpc("vttablet", up.addr).mtls(&pki).toml(), None).await;
    let mut client = QueryClient::new(
        tls_channel(&pki, l.addr, Some("vtgate-client-1"))
            .await
            .expect("mTLS connect"),
    );

    let sent = execute_request("vtgate client 2");
    let resp = client
        .execute(Request::new(sent.clone()))
        .await
        .expect("Execute through vtguard")
        .into_inner();
    // The tablet answered with the caller it received.
    assert_eq!(
        rows(&resp.result.expect("result")),
        vec!["vtgate client 1|localhost,vtgate client 1"]
    );

    let got = up.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].path, "/queryservice.Query/Execute");
    let received = ExecuteRequest::decode(got[0].message()).expect("upstream decodes the request");
    let imm = received
        .immediate_caller_id
        .clone()
        .expect("immediate caller set");
    assert_eq!(imm.username, "vtgate client 1");
    assert_eq!(imm.groups, vec!["localhost", "vtgate client 1"]);
    // Every other field arrives byte-identical.
    assert_eq!(
        other_fields(got[0].message(), 2),
        other_fields(&sent.encode_to_vec(), 2)
    );
    assert_eq!(received.effective_caller_id, sent.effective_caller_id);
    assert_eq!(
        got[0].headers.get("te").map(|v| v.as_bytes()),
        Some(&b"trailers"[..])
    );

    // A second client on the same listener is told apart.
    let mut client2 = QueryClient::new(
        tls_channel(&pki, l.addr, Some("vtgate-client-2"))
            .await
            .expect("connect"),
    );
    let resp = client2
        .execute(execute_request("vtgate client 1"))
        .await
        .expect("Execute")
        .into_inner();
    assert_eq!(
        rows(&resp.result.expect("result")),
        vec!["vtgate client 2|localhost,vtgate client 2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_without_a_good_certificate_are_refused_and_nothing_reaches_the_upstream() {
    let pki = Pki::generate();
    let up = Upstream::start(0).await;
    let l = start_listener(&Listener::grpc("vttablet", up.addr).mtls(&pki).toml(), None).await;
    for (client, why) in [
        (None, "no client certificate"),
        (Some("other-client"), "a certificate from another CA"),
        (Some("vtgate-client-revoked"), "a revoked certificate"),
        (Some("vtgate-client-expired"), "an expired certificate"),
    ] {
        let failed = || l.handshakes_failed();
        let before = failed();
        let outcome = match tls_channel(&pki, l.addr, client).await {
            Err(e) => format!("connect error: {e}"),
            Ok(ch) => match QueryClient::new(ch)
                .execute(execute_request("vtgate client 1"))
                .await
            {
                Ok(_) => panic!("{why}: the call must not succeed"),
                Err(status) => format!("call error: {status}"),
            },
        };
        assert!(!outcome.is_empty(), "{why}");
        // Refused at the handshake (not later, by a request check).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while failed() == before && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            failed() > before,
            "{why}: the TLS handshake must be refused ({outcome})"
        );
    }
    // The same listener lets a good certificate in.
    let ok = QueryClient::new(
        tls_channel(&pki, l.addr, Some("vtgate-client-1"))
            .await
            .expect("connect"),
    )
    .execute(execute_request("x"))
    .await;
    assert!(ok.is_ok(), "{ok:?}");
    let upstream_seen = up.received().len();
    assert_eq!(upstream_seen, 1);
    // Plaintext to a TLS listener.
    let ch = tonic::transport::Channel::from_shared(format!("http://{}", l.addr))
        .expect("uri")
        .connect()
        .await;
    if let Ok(ch) = ch {
        assert!(
            QueryClient::new(ch)
                .execute(execute_request("x"))
                .await
                .is_err(),
            "plaintext to a TLS listener"
        );
    }
    assert_eq!(
        up.received().len(),
        1,
        "only the good client's call reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effective_caller_id_override_on_a_plaintext_listener() {
    let up = Upstream::start(0).await;
    let principal_only = start_listener(
        &Listener::grpc("vttablet", up.addr)
            .plaintext()
            .extra("grpc-use-effective-callerid = true\n")
            .toml(),
        None,
    )
    .await;
    let with_groups = start_listener(
        &Listener::grpc("vttablet", up.addr)
            .plaintext()
            .extra("grpc-use-effective-callerid = true\ngrpc-use-effective-groups = true\n")
            .toml(),
        None,
    )
    .await;
    let neither = start_listener(
        &Listener::grpc("vttablet", up.addr).plaintext().toml(),
        None,
    )
    .await;

    let call = |addr, req: ExecuteRequest| async move {
        let mut c = QueryClient::new(plain_channel(addr).await);
        rows(
            &c.execute(req)
                .await
                .expect("Execute")
                .into_inner()
                .result
                .expect("result"),
        )
    };
    let mut req = execute_request("vtgate client 2");
    req.effective_caller_id = Some(CallerId {
        principal: "my-caller".into(),
        groups: vec!["vtgate client 1".into()],
        ..Default::default()
    });
    assert_eq!(
        call(principal_only.addr, req.clone()).await,
        vec!["my-caller|"]
    );
    assert_eq!(
        call(with_groups.addr, req.clone()).await,
        vec!["my-caller|vtgate client 1"]
    );
    assert_eq!(
        call(neither.addr, req.clone()).await,
        vec!["unsecure_grpc_client|"]
    );
    req.effective_caller_id = None;
    assert_eq!(
        call(principal_only.addr, req.clone()).await,
        vec!["unsecure_grpc_client|"]
    );
    assert_eq!(
        call(with_groups.addr, req).await,
        vec!["unsecure_grpc_client|"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vtgate_listener_writes_the_proven_identity_into_the_effective_caller() {
    let pki = Pki::generate();
    let up = Upstream::start(0).await;
    let l = start_listener(&Listener::grpc("vtgate", up.addr).mtls(&pki).toml(), None).await;
    let mut client = VitessClient::new(
        tls_channel(&pki, l.addr, Some("vtgate-client-2"))
            .await
            .expect("connect"),
    );
    let sent = vtgate::ExecuteRequest {
        caller_id: Some(CallerId {
            principal: "vtgate client 1".into(),
            component: "app".into(),
            subcomponent: "sub".into(),
            groups: vec!["admins".into()],
        }),
        session: Some(vtgate::Session {
            in_transaction: false,
            autocommit: true,
        }),
        query: Some(vtguard_tests::upstream::bound(
            "select * from vt_insert_test",
        )),
    };
    let resp = client
        .execute(sent.clone())
        .await
        .expect("vtgate Execute")
        .into_inner();
    assert_eq!(
        rows(&resp.result.expect("result")),
        vec!["vtgate client 2|localhost,vtgate client 2|app"]
    );
    let got = up.received();
    let received = vtgate::ExecuteRequest::decode(got[0].message()).expect("decodes");
    let c = received.caller_id.expect("caller id");
    assert_eq!(
        (
            c.principal.as_str(),
            c.component.as_str(),
            c.subcomponent.as_str()
        ),
        ("vtgate client 2", "app", "sub")
    );
    assert_eq!(
        other_fields(got[0].message(), 1),
        other_fields(&sent.encode_to_vec(), 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_cancellation_and_an_unreachable_upstream() {
    let pki = Pki::generate();
    let up = Upstream::start(0).await;
    let l = start_listener(&Listener::grpc("vttablet", up.addr).mtls(&pki).toml(), None).await;
    let mut client = QueryClient::new(
        tls_channel(&pki, l.addr, Some("vtgate-client-1"))
            .await
            .expect("connect"),
    );

    let stream_req = |sql: &str| StreamExecuteRequest {
        target: Some(vtguard_tests::upstream::target("ks")),
        query: Some(vtguard_tests::upstream::bound(sql)),
        ..Default::default()
    };
    let mut stream = client
        .stream_execute(stream_req("select * from big"))
        .await
        .expect("stream")
        .into_inner();
    let mut n = 0;
    let mut last = String::new();
    while let Some(msg) = stream.message().await.expect("stream message") {
        let r = rows(&msg.result.expect("result"));
        n += r.len();
        last = r.last().cloned().unwrap_or_default();
    }
    assert_eq!(n, 10_000, "every row streamed through");
    assert_eq!(last, "9999");

    // A cancelled client cancels the upstream call.
    let mut stream = client
        .stream_execute(stream_req("select sleep"))
        .await
        .expect("stream")
        .into_inner();
    for _ in 0..3 {
        stream.message().await.expect("row").expect("a row");
    }
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !up.cancelled.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream stream was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Deadlines pass through unchanged: the upstream (which enforces them) gets grpc-timeout
    // with the value the client sent (tonic writes 1.5 s as 1500000 microseconds).
    let mut req = Request::new(stream_req("select * from big"));
    req.set_timeout(Duration::from_millis(1500));
    let mut stream = client
        .stream_execute(req)
        .await
        .expect("stream")
        .into_inner();
    while stream.message().await.expect("message").is_some() {}
    let last = up.received().pop().expect("recorded");
    let timeout = last
        .headers
        .get("grpc-timeout")
        .expect("grpc-timeout reached the upstream");
    assert_eq!(timeout.to_str().expect("ascii"), "1500000u");
    // Any unit, any value, byte for byte (a raw client: seconds, which tonic never writes).
    let mut raw = raw_connection(&pki, l.addr, Some("vtgate-client-1")).await;
    let (status, message, _) = raw_request(
        &mut raw,
        l.addr,
        "/queryservice.Query/Execute",
        execute_body("select 1"),
        &[("grpc-timeout", "7S")],
    )
    .await;
    assert_eq!((status, message.as_str()), (0, ""));
    let last = up.received().pop().expect("recorded");
    assert_eq!(
        last.headers.get("grpc-timeout").map(|v| v.as_bytes()),
        Some(&b"7S"[..]),
        "the raw client's deadline reached the upstream unchanged"
    );

    // Upstream down.
    let addr = up.addr;
    drop(up);
    let down = start_listener(&Listener::grpc("vttablet", addr).mtls(&pki).toml(), None).await;
    let mut client = QueryClient::new(
        tls_channel(&pki, down.addr, Some("vtgate-client-1"))
            .await
            .expect("connect"),
    );
    let err = client
        .execute(execute_request("x"))
        .await
        .expect_err("upstream is down");
    assert_eq!(err.code(), Code::Unavailable, "{err}");
    assert!(
        err.message()
            .contains(&format!("upstream {addr} unavailable")),
        "{}",
        err.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_query_services_only_for_named_identities_and_unknown_rpcs_refused() {
    let pki = Pki::generate();
    let up = Upstream::start(0).await;
    let l = start_listener(
        &Listener::grpc("vttablet", up.addr).mtls(&pki).extra("[listener.services]\n\"tabletmanagerservice.TabletManager\" = [\"vtgate client 1\"]\n").toml(),
        None,
    )
    .await;
    async fn raw_call(
        ch: tonic::transport::Channel,
        path: &'static str,
    ) -> Result<(), tonic::Status> {
        let mut g = tonic::client::Grpc::new(ch);
        g.ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = tonic_prost::ProstCodec::<query::StreamHealthRequest, query::StreamHealthRequest>::default();
        g.unary(
            Request::new(query::StreamHealthRequest {}),
            http::uri::PathAndQuery::from_static(path),
            codec,
        )
        .await
        .map(|_| ())
    }
    let ch1 = tls_channel(&pki, l.addr, Some("vtgate-client-1"))
        .await
        .expect("connect");
    let ch2 = tls_channel(&pki, l.addr, Some("vtgate-client-2"))
        .await
        .expect("connect");
    raw_call(ch1.clone(), "/tabletmanagerservice.TabletManager/Ping")
        .await
        .expect("named identity may call TabletManager");
    let e = raw_call(
        ch2.clone(),
        "/tabletmanagerservice.TabletManager/ExecuteFetchAsDba",
    )
    .await
    .expect_err("not named");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message().contains(
            "identity \"vtgate client 2\" may not call tabletmanagerservice.TabletManager"
        ),
        "{}",
        e.message()
    );
    let e = raw_call(ch1.clone(), "/throttlerservice.Throttler/CheckThrottler")
        .await
        .expect_err("not opened");
    assert_eq!(e.code(), Code::PermissionDenied);
    let e = raw_call(ch1.clone(), "/queryservice.Query/SomethingNew")
        .await
        .expect_err("unknown method");
    assert_eq!(e.code(), Code::Unimplemented);
    assert!(
        e.message()
            .contains("queryservice.Query/SomethingNew is not a method this listener knows"),
        "{}",
        e.message()
    );
    let e = raw_call(ch1, "/grpc.health.v1.Health/Check")
        .await
        .expect_err("unknown service");
    assert_eq!(e.code(), Code::PermissionDenied);
    let paths: Vec<String> = up.received().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        vec!["/tabletmanagerservice.TabletManager/Ping"],
        "only the allowed call was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_and_minimum_tls_version() {
    use tokio::io::AsyncReadExt;
    let pki = Pki::generate();
    let up = Upstream::start(0).await;
    let l = start_listener(
        &Listener::grpc("vttablet", up.addr)
            .mtls(&pki)
            .extra("handshake-timeout-seconds = 0.3\ngrpc-tls-min-version = \"TLSv1.3\"\n")
            .toml(),
        None,
    )
    .await;

    // A client that connects and says nothing is dropped after the handshake timeout.
    let mut idle = tokio::net::TcpStream::connect(l.addr)
        .await
        .expect("connect");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf))
        .await
        .expect("the listener closes an idle handshake")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a word");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(2),
        "closed at the 0.3 s handshake timeout, not {waited:?}"
    );

    // A TLS 1.2-only client is refused by a TLSv1.3 listener, with the protocol_version alert.
    let e = tls_handshake(
        client_config(&pki, &[&rustls::version::TLS12], Some("vtgate-client-1")),
        l.addr,
    )
    .await
    .expect_err("TLS 1.2 refused");
    assert_eq!(
        e,
        rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion),
        "{e}"
    );
    // TLS 1.3 clients get in.
    let mut c = QueryClient::new(
        tls_channel(&pki, l.addr, Some("vtgate-client-1"))
            .await
            .expect("connect"),
    );
    c.execute(execute_request("x"))
        .await
        .expect("TLS 1.3 client");
}
