//! Vitess's reference scenario (docs/VITESS.md §5, steps 4–7) through vtguard's gRPC
//! listeners with a strict table ACL.

use std::net::SocketAddr;

use tonic::Code;
use vtguard_proto::{
    query::{BoundQuery, ExecuteRequest},
    queryservice::query_client::QueryClient,
    vtgate,
    vtgateservice::vitess_client::VitessClient,
    vtrpc::CallerId,
};
use vtguard_tests::fixtures::{Acl, Listener};
use vtguard_tests::{
    grpc::{plain_channel, start_listener, tls_channel},
    pki::Pki,
    upstream::{rows, Upstream},
};

const DENIED_2: &str =
    "Select command denied to user 'vtgate client 2' for table 'vt_insert_test' (ACL check error)";

/// Vitess's example ACL (table `vt_insert_test` for "vtgate client 1"), strict, under `dir`.
fn tableacl(dir: &std::path::Path) -> String {
    Acl::vitess_example().section(dir)
}

fn select() -> BoundQuery {
    vtguard_tests::upstream::bound("select * from vt_insert_test")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vttablet_listener_client_1_allowed_client_2_denied_with_vitess_message() {
    let pki = Pki::generate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(0).await;
    let l = start_listener(
        &format!(
            "{}{}",
            tableacl(tmp.path()),
            Listener::grpc("vttablet", up.addr).mtls(&pki).toml()
        ),
        None,
    )
    .await;
    let req = || ExecuteRequest {
        target: Some(vtguard_tests::upstream::target("test_keyspace")),
        query: Some(select()),
        ..Default::default()
    };
    let mut c1 = QueryClient::new(
        tls_channel(&pki, l.addr, Some("vtgate-client-1"))
            .await
            .expect("connect"),
    );
    let r = c1
        .execute(req())
        .await
        .expect("client 1 allowed")
        .into_inner();
    assert_eq!(
        rows(&r.result.expect("result")),
        vec!["vtgate client 1|localhost,vtgate client 1"]
    );
    let mut c2 = QueryClient::new(
        tls_channel(&pki, l.addr, Some("vtgate-client-2"))
            .await
            .expect("connect"),
    );
    let e = c2.execute(req()).await.expect_err("client 2 denied");
    assert_eq!(e.code(), Code::PermissionDenied);
    // Client 2's groups are its DNS SANs, as Vitess's are.
    assert_eq!(
        e.message(),
        "Select command denied to user 'vtgate client 2', in groups [localhost, vtgate client 2], for table 'vt_insert_test' (ACL check error)"
    );
    assert_eq!(
        up.received().len(),
        1,
        "the denied request never reached the tablet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vtgate_listener_answers_denials_inside_the_response_and_effective_caller_steps() {
    let pki = Pki::generate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(0).await;
    let acl = tableacl(tmp.path());
    let mtls = start_listener(
        &format!(
            "{acl}{}",
            Listener::grpc("vtgate", up.addr).mtls(&pki).toml()
        ),
        None,
    )
    .await;
    let req = |caller: Option<CallerId>| vtgate::ExecuteRequest {
        caller_id: caller,
        session: None,
        query: Some(select()),
    };

    let mut c2 = VitessClient::new(
        tls_channel(&pki, mtls.addr, Some("vtgate-client-2"))
            .await
            .expect("connect"),
    );
    let r = c2
        .execute(req(None))
        .await
        .expect("vtgate answers unary denials with an OK status")
        .into_inner();
    let err = r
        .error
        .expect("the denial is in the response's error field");
    assert_eq!(
        err.code,
        vtguard_proto::vtrpc::Code::PermissionDenied as i32
    );
    assert!(
        err.message
            .starts_with("Select command denied to user 'vtgate client 2'"),
        "{}",
        err.message
    );
    assert!(up.received().is_empty());

    // Steps 6 and 7: vtgate without TLS, trusting the effective caller ID.
    async fn outcome(addr: SocketAddr, caller: Option<CallerId>) -> String {
        let mut c = VitessClient::new(plain_channel(addr).await);
        let r = c
            .execute(vtgate::ExecuteRequest {
                caller_id: caller,
                session: None,
                query: Some(select()),
            })
            .await
            .expect("OK status")
            .into_inner();
        match r.error {
            Some(e) => e.message,
            None => "allowed".into(),
        }
    }
    let who = |p: &str, g: &[&str]| {
        Some(CallerId {
            principal: p.into(),
            groups: g.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
    };
    let eff = start_listener(
        &format!(
            "{acl}{}",
            Listener::grpc("vtgate", up.addr)
                .plaintext()
                .extra("grpc-use-effective-callerid = true\n")
                .toml()
        ),
        None,
    )
    .await;
    assert_eq!(outcome(eff.addr, None).await, "Select command denied to user 'unsecure_grpc_client' for table 'vt_insert_test' (ACL check error)");
    assert_eq!(
        outcome(eff.addr, who("vtgate client 1", &[])).await,
        "allowed"
    );
    assert_eq!(
        outcome(eff.addr, who("vtgate client 2", &[])).await,
        DENIED_2
    );
    let groups = start_listener(
        &format!(
            "{acl}{}",
            Listener::grpc("vtgate", up.addr)
                .plaintext()
                .extra("grpc-use-effective-callerid = true\ngrpc-use-effective-groups = true\n")
                .toml()
        ),
        None,
    )
    .await;
    assert_eq!(
        outcome(groups.addr, who("my-caller", &["vtgate client 1"])).await,
        "allowed"
    );
    assert!(outcome(groups.addr, who("my-caller", &["vtgate client 2"]))
        .await
        .starts_with("Select command denied to user 'my-caller', in groups [vtgate client 2]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_stream_needs_writer_on_the_message_table() {
    use vtguard_tests::grpc::{framed, full, raw_call, raw_connection};
    let pki = Pki::generate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(0).await;
    let l = start_listener(
        &format!(
            "{}{}",
            tableacl(tmp.path()),
            Listener::grpc("vttablet", up.addr).mtls(&pki).toml()
        ),
        None,
    )
    .await;
    // MessageStreamRequest { name (field 4) = "vt_insert_test" }.
    let mut msg = vec![0x22, 14];
    msg.extend_from_slice(b"vt_insert_test");
    let body = framed(0, &msg);
    let mut c2 = raw_connection(&pki, l.addr, Some("vtgate-client-2")).await;
    let path = "/queryservice.Query/MessageStream";
    let (code, message, _) = raw_call(&mut c2, l.addr, path, full(body.clone()), None).await;
    assert_eq!(code, 7);
    assert!(
        message.starts_with("MessageStream command denied to user 'vtgate client 2'"),
        "{message}"
    );
    assert!(up.received().is_empty());
    let mut c1 = raw_connection(&pki, l.addr, Some("vtgate-client-1")).await;
    let (code, _, _) = raw_call(&mut c1, l.addr, path, full(body), None).await;
    assert_eq!(
        code, 12,
        "forwarded: the stand-in does not implement MessageStream"
    );
    assert_eq!(up.received().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_would_be_denials_and_denies_nothing() {
    let pki = Pki::generate();
    let tmp = tempfile::tempdir().expect("tempdir");
    let up = Upstream::start(0).await;
    let acl = tableacl(tmp.path()) + "queryserver-config-enable-table-acl-dry-run = true\n";
    let l = start_listener(
        &format!(
            "{acl}{}",
            Listener::grpc("vttablet", up.addr).mtls(&pki).toml()
        ),
        None,
    )
    .await;
    let mut c2 = QueryClient::new(
        tls_channel(&pki, l.addr, Some("vtgate-client-2"))
            .await
            .expect("connect"),
    );
    let r = c2
        .execute(ExecuteRequest {
            query: Some(select()),
            ..Default::default()
        })
        .await
        .expect("dry run denies nothing")
        .into_inner();
    assert_eq!(
        rows(&r.result.expect("result")),
        vec!["vtgate client 2|localhost,vtgate client 2"]
    );
    assert_eq!(l.dry_run_denials(), 1);
}
