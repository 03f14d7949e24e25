//! A gRPC implementation we did not write: Python grpcio, with stubs compiled from vtguard's
//! .proto files at test time, calling through vtguard over mTLS.

use std::process::Command;

use vtguard_tests::fixtures::Listener;
use vtguard_tests::{grpc::start_listener, pki::Pki, sh, skip, upstream::Upstream};

const CLIENT: &str = r#"
import sys
sys.path.insert(0, sys.argv[1])
import grpc, query_pb2, queryservice_pb2_grpc, vtrpc_pb2
addr, pki = sys.argv[2], sys.argv[3]
read = lambda n: open(f"{pki}/{n}", "rb").read()
creds = grpc.ssl_channel_credentials(
    root_certificates=read("root.pem"),
    private_key=read("vtgate-client-1.key"),
    certificate_chain=read("vtgate-client-1.pem"))
with grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", "localhost")]) as ch:
    stub = queryservice_pb2_grpc.QueryStub(ch)
    req = query_pb2.ExecuteRequest(
        effective_caller_id=vtrpc_pb2.CallerID(principal="py-app"),
        immediate_caller_id=query_pb2.VTGateCallerID(username="vtgate client 2"),
        target=query_pb2.Target(keyspace="test_keyspace", shard="0", tablet_type=1),
        query=query_pb2.BoundQuery(sql="select * from vt_insert_test"))
    res = stub.Execute(req, timeout=10).result
    for row in res.rows:
        print("ROW", row.values[: row.lengths[0]].decode())
    n = sum(len(r.result.rows) for r in stub.StreamExecute(query_pb2.StreamExecuteRequest(
        query=query_pb2.BoundQuery(sql="select * from big")), timeout=10))
    print("STREAMED", n)
    try:
        stub.Execute(query_pb2.ExecuteRequest(), metadata=(), timeout=10, compression=grpc.Compression.Gzip)
        print("GZIP OK")
    except grpc.RpcError as e:
        print("GZIP", e.code(), e.details())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_grpcio_client_works_through_vtguard() {
    let (code, _, _) = sh(Command::new("python3").args(["-c", "import grpc, grpc_tools"]));
    if code != 0 {
        skip(
            "python_grpcio_client_works_through_vtguard",
            "python3 cannot import grpc, grpc_tools (python3 -m pip install grpcio grpcio-tools; `cargo xtask test` does it)",
        );
        return;
    }
    let pki = Pki::generate();
    let up = Upstream::start(0).await;
    let l = start_listener(&Listener::grpc("vttablet", up.addr).mtls(&pki).toml(), None).await;

    let stubs = tempfile::tempdir().expect("tempdir");
    let proto_dir = vtguard_proto::PROTO_DIR;
    let (code, _, err) = sh(Command::new("python3")
        .args(["-m", "grpc_tools.protoc", "-I", proto_dir])
        .arg(format!("--python_out={}", stubs.path().display()))
        .arg(format!("--grpc_python_out={}", stubs.path().display()))
        .args([
            "vtrpc.proto",
            "topodata.proto",
            "query.proto",
            "queryservice.proto",
        ])
        .current_dir(proto_dir));
    assert_eq!(code, 0, "compiling the .proto files for Python: {err}");

    let out = tokio::task::spawn_blocking({
        let stubs = stubs.path().to_owned();
        let addr = l.addr.to_string();
        let pki_dir = pki.dir().to_owned();
        move || {
            sh(Command::new("python3")
                .args(["-c", CLIENT])
                .arg(&stubs)
                .arg(&addr)
                .arg(&pki_dir))
        }
    })
    .await
    .expect("python client");
    let (code, stdout, stderr) = out;
    assert_eq!(code, 0, "python client failed: {stdout}\n{stderr}");
    assert!(
        stdout.contains("ROW vtgate client 1|localhost,vtgate client 1"),
        "{stdout}"
    );
    assert!(stdout.contains("STREAMED 10000"), "{stdout}");
    assert!(
        stdout.contains("GZIP OK"),
        "a gzip-compressed request is inspected and forwarded: {stdout}"
    );
    let got = up.received();
    assert_eq!(got.len(), 3);
    assert_eq!(
        got[2].headers.get("grpc-encoding").map(|v| v.as_bytes()),
        Some(&b"gzip"[..])
    );
}
