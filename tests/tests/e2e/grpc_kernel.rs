//! The gRPC listener with the kernel programs attached (as root): the upstream is reachable
//! only through vtguard, on a connection registered under the caller's proven identity.

use std::sync::Arc;

use tonic::Code;
use vtguard_proto::{query::ExecuteRequest, queryservice::query_client::QueryClient};
use vtguard_tests::fixtures::Listener;
use vtguard_tests::{
    free_port,
    grpc::{start_listener, tls_channel},
    kernel_tests_can_run,
    pki::Pki,
    policy, py_connect,
    upstream::{rows, Upstream},
    TestKernel,
};

#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_vtguard_reaches_the_tablet_and_only_for_identities_the_kernel_allows() {
    if !kernel_tests_can_run(
        "only_vtguard_reaches_the_tablet_and_only_for_identities_the_kernel_allows",
    ) {
        return;
    }
    // Attaches to the cgroup2 root: one kernel test at a time (held across awaits on purpose).
    let _serial = vtguard_tests::serial();
    let port = free_port();
    let up = Upstream::start(port).await;
    let k = Arc::new(TestKernel::start(
        policy(&[port], &[(port, &["vtgate client 1"])]),
        None,
    ));
    let pki = Pki::generate();
    let toml = format!(
        "{}{}",
        vtguard_tests::fixtures::kernel_section(&[port], None, &[]),
        Listener::grpc("vttablet", up.addr)
            .mtls(&pki)
            .extra("grpc-use-effective-callerid = true\n")
            .toml()
    );
    let l = start_listener(&toml, Some(k.shared())).await;

    let req = || ExecuteRequest {
        query: Some(vtguard_tests::upstream::bound(
            "select * from vt_insert_test",
        )),
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
        .expect("client 1 through vtguard")
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
    let e = c2
        .execute(req())
        .await
        .expect_err("the kernel refuses client 2's upstream socket");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message()
            .contains("the kernel refused identity \"vtgate client 2\""),
        "{}",
        e.message()
    );

    // Straight to the tablet's port, around vtguard: refused by the kernel.
    let direct =
        tokio::task::spawn_blocking(move || py_connect(None, "127.0.0.1", port, 3.0, "connect"))
            .await
            .expect("python");
    assert_eq!(direct.outcome, "ERR 1 Operation not permitted");
    assert_eq!(
        up.received().len(),
        1,
        "only client 1's request reached the tablet"
    );
    drop(l);
}
