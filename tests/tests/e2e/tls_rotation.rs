//! Certificate rotation as an operator does it: the files on disk are replaced under a running
//! `vtguard`, which picks them up through its own file watch (every 2 s) or on SIGHUP. Nothing
//! here calls a reload function.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use vtguard_proto::{query::StreamExecuteRequest, queryservice::query_client::QueryClient};
use vtguard_tests::{
    agent::AgentProcess,
    fixtures::Listener,
    free_port,
    grpc::{served_serial, tls_channel},
    mysql::{clientcert, mariadb_available, tls_login, MariaDb},
    pki::Pki,
    upstream::Upstream,
};

/// The agent checks certificate files this often (app.rs); waits allow for two checks.
const WATCH: Duration = Duration::from_secs(2);

/// Writes `content` to `path`, padded with newlines (which PEM readers skip) to `size` bytes,
/// so that two different pairs can have the same file sizes.
fn write_padded(path: &Path, content: &[u8], size: usize) {
    assert!(
        content.len() <= size,
        "{} holds more than {size} bytes",
        path.display()
    );
    let mut bytes = content.to_vec();
    bytes.resize(size, b'\n');
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn mtime(path: &Path) -> SystemTime {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("mtime of {}: {e}", path.display()))
}

fn set_mtime(path: &Path, t: SystemTime) {
    fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .unwrap_or_else(|e| panic!("set mtime of {}: {e}", path.display()));
}

/// Starts `vtguard run` on `config` (JSON log) and waits until its listener is up.
async fn start(config: &Path) -> AgentProcess {
    let config = config.to_owned();
    tokio::task::spawn_blocking(move || {
        let agent =
            crate::spawn_agent(&["--log-format", "json"], &config).expect("start vtguard run");
        agent.wait_for("\"listening\"");
        agent
    })
    .await
    .expect("agent starts")
}

/// Polls `probe` until it returns `want` or `within` passes; how long it took.
async fn until<F, Fut>(within: Duration, want: &[u8], mut probe: F) -> Result<Duration, Vec<u8>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<u8>>,
{
    let start = Instant::now();
    loop {
        let got = probe().await;
        if got == want {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            return Err(got);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_certificates_rotate_through_the_file_watch_and_on_sighup() {
    let pki = Pki::generate();
    let up = Upstream::start(0).await;
    let live = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (
        live.path().join("server.pem"),
        live.path().join("server.key"),
    );
    // Both pairs are written padded to one size per file, so a swap can keep (mtime, size).
    let [orig_cert, orig_key, rot_cert, rot_key] = [
        "localhost.pem",
        "localhost.key",
        "localhost-rotated.pem",
        "localhost-rotated.key",
    ]
    .map(|f| fs::read(pki.path(f)).expect("PKI file"));
    let cert_size = orig_cert.len().max(rot_cert.len()) + 64;
    let key_size = orig_key.len().max(rot_key.len()) + 64;
    write_padded(&cert, &orig_cert, cert_size);
    write_padded(&key, &orig_key, key_size);
    let listener = Listener::grpc("vttablet", up.addr)
        .mtls(&pki)
        .server_cert(&cert, &key)
        .port(free_port());
    let addr = listener.addr();
    let config = live.path().join("agent.toml");
    fs::write(&config, listener.toml()).expect("config");
    let agent = start(&config).await;
    let (original, rotated) = (pki.serial("localhost"), pki.serial("localhost-rotated"));
    assert_eq!(served_serial(&pki, addr).await, original);

    // A stream opened before the rotation.
    let mut client = QueryClient::new(
        tls_channel(&pki, addr, Some("vtgate-client-1"))
            .await
            .expect("connect"),
    );
    let mut stream = client
        .stream_execute(StreamExecuteRequest {
            query: Some(vtguard_tests::upstream::bound("select sleep")),
            ..Default::default()
        })
        .await
        .expect("stream")
        .into_inner();
    stream.message().await.expect("row").expect("a row");

    // 1. The file watch: the new pair, written as an operator's tooling would, is served to
    // new handshakes within two checks.
    write_padded(&key, &rot_key, key_size);
    write_padded(&cert, &rot_cert, cert_size);
    let stamp = (mtime(&cert), mtime(&key));
    let took = until(2 * WATCH + Duration::from_secs(1), &rotated, || {
        served_serial(&pki, addr)
    })
    .await
    .unwrap_or_else(|got| panic!("the watch did not publish the new certificate: still {got:?}"));
    eprintln!("the file watch served the new certificate after {took:?}");
    let line = agent
        .find(&["TLS certificates reloaded"], Duration::from_secs(5))
        .unwrap_or_else(|| panic!("no reload logged:\n{}", agent.log()));
    assert!(line.contains("\"listener\":\"test\""), "{line}");
    // The stream opened before goes on, on its old session.
    for _ in 0..5 {
        stream
            .message()
            .await
            .expect("row after rotation")
            .expect("a row");
    }

    // 2. A half-written rotation (a key that does not match) is refused by the watch: the
    // working certificate stays.
    fs::copy(pki.path("vtgate-client-2.key"), &key).expect("bad key");
    let failed = agent
        .find(&["TLS reload failed"], 2 * WATCH + Duration::from_secs(1))
        .unwrap_or_else(|| panic!("the watch did not try the bad pair:\n{}", agent.log()));
    assert!(failed.contains("\"listener\":\"test\""), "{failed}");
    assert_eq!(
        served_serial(&pki, addr).await,
        rotated,
        "a bad pair is not published"
    );

    // 3. SIGHUP: the original pair goes back with the sizes and times the watch last loaded,
    // so the watch sees no change; only SIGHUP makes the agent read the files again.
    write_padded(&key, &orig_key, key_size);
    write_padded(&cert, &orig_cert, cert_size);
    set_mtime(&cert, stamp.0);
    set_mtime(&key, stamp.1);
    let reloads = || agent.log().matches("TLS certificates reloaded").count();
    let before = reloads();
    tokio::time::sleep(WATCH + Duration::from_millis(500)).await;
    assert_eq!(
        served_serial(&pki, addr).await,
        rotated,
        "the watch cannot see this change"
    );
    assert_eq!(reloads(), before, "no reload without SIGHUP");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    let took = until(Duration::from_secs(2), &original, || {
        served_serial(&pki, addr)
    })
    .await
    .unwrap_or_else(|got| panic!("SIGHUP did not reload the certificate: still {got:?}"));
    eprintln!("SIGHUP served the original certificate after {took:?}");
    assert_eq!(reloads(), before + 1, "{}", agent.log());
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_certificates_rotate_through_the_file_watch() {
    let test = "mysql_certificates_rotate_through_the_file_watch";
    if !mariadb_available(test) {
        return;
    }
    let db = MariaDb::start();
    let pki = std::sync::Arc::new(Pki::generate());
    let (cert, key) = (pki.dir().join("served.pem"), pki.dir().join("served.key"));
    fs::copy(pki.path("localhost.pem"), &cert).expect("cert");
    fs::copy(pki.path("localhost.key"), &key).expect("key");
    let listener = clientcert(&pki, db.addr())
        .server_cert(&cert, &key)
        .port(free_port());
    let addr = listener.addr();
    let config = pki.dir().join("agent.toml");
    fs::write(&config, listener.toml()).expect("config");
    let agent = start(&config).await;
    let served = || {
        let pki = std::sync::Arc::clone(&pki);
        async move {
            tokio::task::spawn_blocking(move || {
                tls_login(&pki, addr, "vtgate-client-1", "vtgate client 1", false)
                    .map(|(_, c)| c)
                    .expect("login")
            })
            .await
            .expect("task")
        }
    };
    assert_eq!(served().await, pki.leaf_der("localhost"));

    fs::copy(pki.path("localhost-rotated.key"), &key).expect("rotate key");
    fs::copy(pki.path("localhost-rotated.pem"), &cert).expect("rotate cert");
    let rotated = pki.leaf_der("localhost-rotated");
    let took = until(2 * WATCH + Duration::from_secs(1), &rotated, served)
        .await
        .unwrap_or_else(|_| panic!("the watch did not publish the new certificate"));
    eprintln!("the file watch served the new certificate after {took:?}");
    agent
        .find(
            &["TLS certificates reloaded", "\"listener\":\"mysql\""],
            Duration::from_secs(5),
        )
        .unwrap_or_else(|| panic!("no reload logged:\n{}", agent.log()));

    fs::copy(pki.path("vtgate-client-2.key"), &key).expect("bad key");
    agent
        .find(&["TLS reload failed"], 2 * WATCH + Duration::from_secs(1))
        .unwrap_or_else(|| panic!("the watch did not try the bad pair:\n{}", agent.log()));
    assert_eq!(served().await, rotated, "a bad pair is not published");
    drop(agent);
}
