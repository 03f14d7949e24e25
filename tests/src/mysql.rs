//! A real MariaDB (Debian's `mariadbd`) in a temporary folder on a free port, a vtguard MySQL
//! listener in-process, and real MySQL clients (the `mariadb` CLI, PyMySQL,
//! mysql-connector-python) driven as separate processes.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use vtguard_agent::kernel::Kernel;

use crate::{
    fixtures::{Acl, Listener},
    free_port,
    inproc::MysqlListener,
    pki::Pki,
};

/// What a MariaDB server for tests needs on the machine.
pub const MARIADB_PROGRAMS: [&str; 3] = ["mariadbd", "mariadb-install-db", "mariadb"];

/// Whether the MariaDB server and client are installed; otherwise the test skips
/// ([`crate::skip`]: a failure under CI, where `cargo xtask test` installs them).
pub fn mariadb_available(test: &str) -> bool {
    let missing: Vec<&str> = MARIADB_PROGRAMS
        .into_iter()
        .filter(|b| !crate::installed(b))
        .collect();
    if missing.is_empty() {
        return true;
    }
    crate::skip(
        test,
        &format!(
            "{missing:?} not installed (apt-get install -y mariadb-server mariadb-client; `cargo xtask test` does it)"
        ),
    );
    false
}

/// Whether python3 has `module`; otherwise the test skips ([`crate::skip`]).
pub fn python_has(test: &str, module: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        crate::skip(test, &format!("python3 cannot import {module} (python3 -m pip install PyMySQL mysql-connector-python; `cargo xtask test` does it)"));
    }
    ok
}

/// The users every test server has: certificate CNs (no password), and one with a password.
pub const SETUP_SQL: &str = "
CREATE DATABASE vt;
CREATE TABLE vt.vt_insert_test (id INT PRIMARY KEY, msg VARCHAR(64));
INSERT INTO vt.vt_insert_test VALUES (1, 'one'), (2, 'two'), (3, 'three');
CREATE TABLE vt.secret (id INT PRIMARY KEY, msg VARCHAR(64));
INSERT INTO vt.secret VALUES (1, 'hidden');
CREATE USER 'vtgate client 1'@'%';
CREATE USER 'vtgate client 2'@'%';
CREATE USER 'pw'@'%' IDENTIFIED BY 'sekret';
GRANT ALL ON *.* TO 'vtgate client 1'@'%';
GRANT ALL ON *.* TO 'vtgate client 2'@'%';
GRANT ALL ON *.* TO 'pw'@'%';
";

/// A MariaDB server for one test; stopped and removed on drop.
pub struct MariaDb {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl MariaDb {
    /// Installs a data folder, starts `mariadbd` on 127.0.0.1 and a free port, runs
    /// [`SETUP_SQL`] as root over the Unix socket.
    pub fn start() -> MariaDb {
        Self::start_with(&[])
    }

    /// [`MariaDb::start`] with more `mariadbd` options (e.g. its own TLS files).
    pub fn start_with(extra: &[String]) -> MariaDb {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        // A temporary folder of its own: bootstraps running side by side in /tmp collide.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("tmpdir");
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                "--user=root",
                &format!("--datadir={}", data.display()),
                &format!("--tmpdir={}", tmp.display()),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .expect("run mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let sock = dir.path().join("sock");
        let child = Command::new("mariadbd")
            .args([
                "--no-defaults",
                "--user=root",
                &format!("--datadir={}", data.display()),
                &format!("--port={port}"),
                "--bind-address=127.0.0.1",
                &format!("--socket={}", sock.display()),
                &format!("--tmpdir={}", tmp.display()),
                &format!("--pid-file={}", dir.path().join("pid").display()),
                &format!("--log-error={}", dir.path().join("error.log").display()),
                "--skip-name-resolve",
                "--max-connections=1000",
                "--max-allowed-packet=256M",
                "--local-infile=1",
                "--innodb-buffer-pool-size=64M",
                "--innodb-flush-log-at-trx-commit=0",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let mut db = MariaDb { port, dir, child };
        // Ready when the socket answers (a couple of seconds on these machines).
        for _ in 0..600 {
            if let Ok(Some(status)) = db.child.try_wait() {
                panic!(
                    "mariadbd exited ({status}): {}",
                    std::fs::read_to_string(db.dir.path().join("error.log")).unwrap_or_default()
                );
            }
            if sock.exists() && db.root(&["-e", "select 1"]).0 == 0 {
                db.root_sql(SETUP_SQL);
                return db;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "mariadbd did not answer within 60 s: {}",
            std::fs::read_to_string(db.dir.path().join("error.log")).unwrap_or_default()
        );
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Runs the `mariadb` CLI as root over the Unix socket: (exit code, stdout, stderr).
    pub fn root(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-uroot", "-S"])
            .arg(self.socket())
            .args(["-N", "-B"])
            .args(args)
            .output()
            .expect("run mariadb");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Runs SQL as root; panics on failure.
    pub fn root_sql(&self, sql: &str) -> String {
        let (code, out, err) = self.root(&["-e", sql]);
        assert_eq!(code, 0, "root SQL failed: {err}\n{sql}");
        out
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the MySQL `[[listener]]` described by `toml` (built with
/// [`crate::fixtures::Listener`]; its `listen` may use port 0).
pub async fn start_listener(toml: &str, kernel: Option<Arc<Kernel>>) -> MysqlListener {
    start_listener_with(toml, kernel, Default::default()).await
}

/// [`start_listener`] registering its connections in `sessions`.
pub async fn start_listener_with(
    toml: &str,
    kernel: Option<Arc<Kernel>>,
    sessions: Arc<vtguard_agent::sessions::Sessions>,
) -> MysqlListener {
    crate::inproc::start_mysql(toml, kernel, sessions).await
}

/// A MySQL mTLS listener in front of `upstream` whose identity is the client certificate's
/// CN (`mysql-auth-server-impl = "clientcert"`).
pub fn clientcert(pki: &Pki, upstream: SocketAddr) -> Listener {
    Listener::mysql(upstream)
        .mtls(pki)
        .extra("mysql-auth-server-impl = \"clientcert\"\n")
}

/// A test's MariaDB, PKI, and listener.
pub struct Setup {
    pub db: MariaDb,
    pub pki: Pki,
    pub l: MysqlListener,
}

/// MariaDB and, in front of it, a clientcert mTLS listener with the MySQL reference table ACL
/// ([`Acl::mysql_reference`]).
pub async fn clientcert_setup() -> Setup {
    let db = MariaDb::start();
    let pki = Pki::generate();
    let toml = format!(
        "{}{}",
        Acl::mysql_reference().section(pki.dir()),
        clientcert(&pki, db.addr()).toml()
    );
    let l = start_listener(&toml, None).await;
    Setup { db, pki, l }
}

/// Client TLS files for the `mariadb` CLI: (`--ssl-ca`, `--ssl-cert`, `--ssl-key`).
pub fn cli_tls(pki: &Pki, client: &str) -> Vec<String> {
    vec![
        format!("--ssl-ca={}", pki.path("root.pem").display()),
        format!(
            "--ssl-cert={}",
            pki.path(&format!("{client}.pem")).display()
        ),
        format!("--ssl-key={}", pki.path(&format!("{client}.key")).display()),
    ]
}

/// Runs the real `mariadb` CLI against `addr` as `user` with `args` (TLS options …), the
/// statements of `sql` given on its standard input, one session for all of them: (exit code,
/// stdout, stderr). `--force` keeps the session going after an error.
pub fn cli(addr: SocketAddr, user: &str, args: &[String], sql: &str) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new("mariadb")
        .args(["--no-defaults", "-h", "127.0.0.1", "-P"])
        .arg(addr.port().to_string())
        .arg(format!("--user={user}"))
        .args(["-N", "-B", "--force", "--connect-timeout=30"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mariadb");
    let mut stdin = child.stdin.take().expect("stdin");
    let sql = sql.to_owned();
    // Written from a thread: a large result fills stdout while stdin is still being written.
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(sql.as_bytes());
    });
    let out = child.wait_with_output().expect("run mariadb");
    let _ = writer.join();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A Python MySQL client run: connects with `driver` ("pymysql" or "connector") and runs
/// each query; prints one line per query: `ROWS <json>` or `ERR <code> <message>`, or a
/// single `CONNECT_ERR <code> <message>`.
pub const PY_CLIENT: &str = r#"
import json, sys
a = json.loads(sys.argv[1])
tls = a.get("tls")
try:
    if a["driver"] == "pymysql":
        import pymysql
        kw = dict(host="127.0.0.1", port=a["port"], user=a["user"], password=a.get("password", ""), connect_timeout=30)
        if tls:
            kw["ssl"] = {"ca": tls[0], "cert": tls[1], "key": tls[2], "check_hostname": False}
        conn = pymysql.connect(**kw)
        Err = pymysql.err.MySQLError
        code = lambda e: e.args[0]
        msg = lambda e: e.args[1]
    else:
        import mysql.connector
        kw = dict(host="127.0.0.1", port=a["port"], user=a["user"], password=a.get("password", ""), use_pure=True, connection_timeout=30)
        if tls:
            kw.update(ssl_ca=tls[0], ssl_cert=tls[1], ssl_key=tls[2], ssl_verify_cert=True, ssl_verify_identity=False)
        conn = mysql.connector.connect(**kw)
        Err = mysql.connector.Error
        code = lambda e: e.errno
        msg = lambda e: e.msg
except Exception as e:
    c = getattr(e, "errno", None) or (e.args[0] if e.args and isinstance(e.args[0], int) else 0)
    m = getattr(e, "msg", None) or (e.args[1] if len(e.args) > 1 else str(e))
    print("CONNECT_ERR", c, m)
    sys.exit(0)
for q in a["queries"]:
    cur = conn.cursor()
    try:
        cur.execute(q)
        rows = [list(r) for r in cur.fetchall()] if cur.description else []
        print("ROWS", json.dumps(rows, default=str))
    except Err as e:
        print("ERR", code(e), msg(e))
    finally:
        cur.close()
conn.close()
"#;

/// Runs [`PY_CLIENT`]; returns its output lines. Without `tls`, the driver's default applies
/// (both use TLS when the server offers it, without checking its certificate).
pub fn py_client(
    driver: &str,
    addr: SocketAddr,
    user: &str,
    password: &str,
    tls: Option<(&Pki, &str)>,
    queries: &[&str],
) -> Vec<String> {
    let tls = tls.map(|(pki, client)| {
        vec![
            pki.path("root.pem").display().to_string(),
            pki.path(&format!("{client}.pem")).display().to_string(),
            pki.path(&format!("{client}.key")).display().to_string(),
        ]
    });
    let args = serde_json::json!({
        "driver": driver, "port": addr.port(), "user": user, "password": password,
        "tls": tls, "queries": queries,
    });
    let out = Command::new("python3")
        .args(["-c", PY_CLIENT, &args.to_string()])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "python client failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines().map(str::to_owned).collect()
}

/// A login payload for `user` without a password (no auth switch needed), with `extra`
/// capability flags.
pub fn login_payload(user: &str, extra: u32) -> Vec<u8> {
    use vtguard_agent::proxy::mysql::handshake::{cap, Login};
    Login {
        capabilities: cap::LONG_PASSWORD
            | cap::PROTOCOL_41
            | cap::SECURE_CONNECTION
            | cap::PLUGIN_AUTH
            | cap::PLUGIN_AUTH_LENENC
            | cap::TRANSACTIONS
            | cap::MULTI_RESULTS
            | extra,
        max_packet: 1 << 24,
        charset: 33,
        mariadb_ext: 0,
        user: user.as_bytes().to_vec(),
        auth_response: Vec::new(),
        database: None,
        auth_plugin: Some(b"mysql_native_password".to_vec()),
        attributes: None,
    }
    .encode()
}

/// One packet as bytes.
pub fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    vtguard_agent::proxy::mysql::packet::encode(&mut out, seq, payload);
    out
}

/// A raw plaintext client, logged in as `user` (no password).
pub async fn raw_login(addr: SocketAddr, user: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (_, greeting) = read_packet(&mut s).await.expect("greeting");
    assert_eq!(greeting[0], 10, "a HandshakeV10");
    s.write_all(&packet(1, &login_payload(user, 0)))
        .await
        .expect("login");
    let (seq, ok) = read_packet(&mut s).await.expect("login reply");
    assert_eq!(
        (seq, ok[0]),
        (2, 0),
        "OK: {:?}",
        String::from_utf8_lossy(&ok)
    );
    s
}

/// How long a test waits for bytes a peer should send: long enough for a loaded machine, short
/// enough that a regression fails the test instead of hanging CI.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads one packet (up to 64 MiB); panics when none arrives within [`READ_TIMEOUT`].
pub async fn read_packet(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<(u8, Vec<u8>), vtguard_agent::proxy::mysql::packet::Error> {
    tokio::time::timeout(
        READ_TIMEOUT,
        vtguard_agent::proxy::mysql::packet::read(s, 64 << 20),
    )
    .await
    .unwrap_or_else(|_| panic!("no MySQL packet within {READ_TIMEOUT:?}"))
}

/// Reads until the peer closes: what came before the close. Panics when the peer keeps the
/// connection open past [`READ_TIMEOUT`].
pub async fn until_closed(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut all = Vec::new();
    // A reset counts as closed (what came before it is returned).
    let _ = tokio::time::timeout(READ_TIMEOUT, s.read_to_end(&mut all))
        .await
        .unwrap_or_else(|_| panic!("the connection was still open after {READ_TIMEOUT:?}"));
    all
}

/// Sends COM_QUERY and returns the first row's first column (text protocol, EOF packets),
/// or the ERR payload's message.
pub async fn raw_query(s: &mut tokio::net::TcpStream, sql: &str) -> Result<String, (u16, String)> {
    use tokio::io::AsyncWriteExt;
    let mut q = vec![0x03];
    q.extend_from_slice(sql.as_bytes());
    s.write_all(&packet(0, &q)).await.expect("query");
    first_value(s).await
}

/// Reads a text result set's first value, or an ERR (code, message).
pub async fn first_value(
    s: &mut (impl tokio::io::AsyncRead + Unpin),
) -> Result<String, (u16, String)> {
    let (_, head) = read_packet(s).await.expect("response");
    if head[0] == 0xff {
        return Err(err_of(&head));
    }
    let columns = usize::from(head[0]);
    for _ in 0..columns {
        read_packet(s).await.expect("column definition");
    }
    let (_, eof) = read_packet(s).await.expect("EOF");
    assert_eq!(eof[0], 0xfe, "EOF after the columns");
    let (_, row) = read_packet(s).await.expect("row");
    let value = String::from_utf8_lossy(&row[1..1 + usize::from(row[0])]).into_owned();
    loop {
        let (_, p) = read_packet(s).await.expect("rest");
        if p[0] == 0xfe && p.len() < 9 {
            return Ok(value);
        }
    }
}

/// (code, message) of an ERR payload.
pub fn err_of(p: &[u8]) -> (u16, String) {
    assert_eq!(
        p[0],
        0xff,
        "an ERR packet: {:?}",
        String::from_utf8_lossy(p)
    );
    let code = u16::from_le_bytes([p[1], p[2]]);
    let msg = if p.get(3) == Some(&b'#') {
        &p[9..]
    } else {
        &p[3..]
    };
    (code, String::from_utf8_lossy(msg).into_owned())
}

/// A blocking TLS client for the MySQL listener (rustls): greeting, then the SSLRequest and
/// the ClientHello in one write, the login as `user` (no password) inside TLS, and its OK.
/// Returns the session and the leaf certificate the listener served. `tls12_only` offers only
/// TLS 1.2.
pub fn tls_login(
    pki: &Pki,
    addr: SocketAddr,
    client: &str,
    user: &str,
    tls12_only: bool,
) -> std::io::Result<(
    rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    Vec<u8>,
)> {
    tls_login_with(pki, addr, client, user, tls12_only, 0)
}

/// [`tls_login`] asking for `extra` capability flags too (e.g. CLIENT_MULTI_STATEMENTS).
pub fn tls_login_with(
    pki: &Pki,
    addr: SocketAddr,
    client: &str,
    user: &str,
    tls12_only: bool,
    extra: u32,
) -> std::io::Result<(
    rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    Vec<u8>,
)> {
    use std::io::{Read, Write};
    use vtguard_agent::{proxy::mysql::handshake::cap, tls};
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::load_certs("ca", &pki.path("root.pem")).expect("root") {
        roots.add(c).expect("root");
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let config = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(
            tls::load_certs("cert", &pki.path(&format!("{client}.pem"))).expect("cert"),
            tls::load_key("key", &pki.path(&format!("{client}.key"))).expect("key"),
        )
        .expect("client config");
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().expect("name"))
            .expect("client");
    let mut tcp = std::net::TcpStream::connect(addr)?;
    // Every read of this session (the caller's too) fails instead of hanging.
    tcp.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut h = [0u8; 4];
    tcp.read_exact(&mut h)?;
    let mut g = vec![0u8; usize::from(h[0]) | usize::from(h[1]) << 8];
    tcp.read_exact(&mut g)?;
    let login = login_payload(user, cap::SSL | extra);
    let mut first = packet(1, &login[..32]);
    conn.write_tls(&mut first)?;
    assert!(
        first.len() > 36 + 100,
        "SSLRequest and ClientHello together"
    );
    tcp.write_all(&first)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(&packet(2, &login))?;
    let mut reply = [0u8; 5];
    tls.read_exact(&mut reply)?;
    assert_eq!((reply[3], reply[4]), (3, 0), "OK with sequence 3");
    let mut rest = vec![0u8; usize::from(reply[0]) - 1];
    tls.read_exact(&mut rest)?;
    let served = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server certificate")
        .to_vec();
    Ok((tls, served))
}
