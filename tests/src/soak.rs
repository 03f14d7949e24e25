//! What the soak and allocator benchmarks share: a `vtguard run` process watched through /proc
//! (RSS, open descriptors), many mTLS gRPC connections and TLS MySQL sessions driven from one
//! runtime, and every answer checked against what it must be. Nothing here panics on a bad
//! answer: deviations are counted (with the first few examples kept), so that a benchmark can
//! report them all and exit non-zero.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use prost::Message as _;
use tokio::io::{AsyncWriteExt, BufReader};

use crate::{
    fixtures::{Acl, Listener},
    grpc::{framed, full, RawBody},
    mysql::{login_payload, packet},
    pki::Pki,
};

/// How long one request, handshake or login may take before it counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The identity every client proves (PKI file stem `vtgate-client-1`).
pub const USER: &str = "vtgate client 1";
/// Its groups are its certificate's DNS SANs.
const GROUPS: &str = "localhost, vtgate client 1";

/// The refusal of a SELECT on the table the ACL does not grant, as Vitess words it.
pub fn denied_text() -> String {
    format!("Select command denied to user '{USER}', in groups [{GROUPS}], for table 'secret' (ACL check error)")
}

/// The table ACL of these benchmarks: `vt_insert_test` readable by [`USER`]; `secret` is in no
/// group, so a strict ACL denies it to everyone.
pub fn acl() -> Acl {
    Acl::readers(&["vt_insert_test"], &[USER])
}

// ---------------------------------------------------------------------------------------------
// The process under test.

/// RSS and open descriptors of a process, from /proc.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcStats {
    pub rss_kib: u64,
    pub fds: u64,
}

impl ProcStats {
    pub fn of(pid: u32) -> ProcStats {
        let rss_kib = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
            })
            .unwrap_or(0);
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count() as u64)
            .unwrap_or(0);
        ProcStats { rss_kib, fds }
    }

    pub fn rss_mib(&self) -> f64 {
        self.rss_kib as f64 / 1024.0
    }
}

/// CPU time (user + system) of a process so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// Raises this process's RLIMIT_NOFILE to at least `want` (the hard limit too when root; a
/// child such as the agent inherits both). Returns the soft limit in force.
pub fn raise_open_files(want: u64) -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        if l.rlim_cur >= want {
            return l.rlim_cur;
        }
        let raised = libc::rlimit {
            rlim_cur: want,
            rlim_max: l.rlim_max.max(want),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
            return want;
        }
        // Not root: as far as the hard limit goes.
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        l.rlim_cur
    }
}

/// A `vtguard run` process (the binary cargo built), its log written to a file; stopped
/// (SIGTERM, then SIGKILL) when dropped.
pub struct AgentProcess {
    child: Child,
    pub log: PathBuf,
}

impl AgentProcess {
    /// Starts `bin run --config config` with `env`, logging (JSON) to `dir/agent.log`.
    pub fn spawn(bin: &Path, config: &Path, dir: &Path, env: &[(&str, &str)]) -> AgentProcess {
        let log = dir.join("agent.log");
        let file = std::fs::File::create(&log).expect("agent log file");
        let child = Command::new(bin)
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        AgentProcess { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stats(&self) -> ProcStats {
        ProcStats::of(self.pid())
    }

    /// Waits until the agent has logged `listeners` "listening" lines; panics with its log if
    /// it exits or takes more than 30 s.
    pub fn wait_listening(&mut self, listeners: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.lines().filter(|l| l.contains("\"listening\"")).count() >= listeners {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("vtguard exited ({status}):\n{log}");
            }
            assert!(
                Instant::now() < deadline,
                "vtguard not listening after 30 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the agent is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Log lines at WARN or ERROR level (the first `max`).
    pub fn warnings(&self, max: usize) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
            .take(max)
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The agent's config: the strict table ACL of [`acl`] and an mTLS gRPC listener ("vttablet",
/// query log off) in front of `grpc_upstream`, plus, given `mysql`, a MySQL listener
/// (clientcert) in front of that upstream. Limits as given (`max-connections` and
/// `max-connections-per-identity` alike). Returns the config file's path.
pub fn write_config(
    dir: &Path,
    pki: &Pki,
    grpc: (u16, SocketAddr),
    mysql: Option<(u16, SocketAddr)>,
    max_connections: usize,
) -> PathBuf {
    let limits = format!(
        "max-connections = {max_connections}\nmax-connections-per-identity = {max_connections}\n"
    );
    let mut toml = acl().section(dir);
    let _ = write!(
        toml,
        "\n[admin]\nsocket = \"{}\"\n\n",
        dir.join("admin.sock").display()
    );
    toml.push_str(
        &Listener::grpc("vttablet", grpc.1)
            .name("vttablet")
            .port(grpc.0)
            .mtls(pki)
            .no_query_log()
            .extra(&limits)
            .toml(),
    );
    if let Some((port, upstream)) = mysql {
        toml.push('\n');
        toml.push_str(
            &crate::mysql::clientcert(pki, upstream)
                .port(port)
                .extra(&limits)
                .toml(),
        );
    }
    let path = dir.join("agent.toml");
    std::fs::write(&path, toml).expect("write agent config");
    path
}

// ---------------------------------------------------------------------------------------------
// Counting outcomes.

/// The kinds of request the benchmarks send.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    GrpcAllowed,
    GrpcDenied,
    MysqlAllowed,
    MysqlDenied,
}

impl Kind {
    pub const ALL: [Kind; 4] = [
        Kind::GrpcAllowed,
        Kind::GrpcDenied,
        Kind::MysqlAllowed,
        Kind::MysqlDenied,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::GrpcAllowed => "gRPC Execute, allowed",
            Kind::GrpcDenied => "gRPC Execute, denied",
            Kind::MysqlAllowed => "MySQL SELECT, allowed",
            Kind::MysqlDenied => "MySQL SELECT, denied",
        }
    }

    /// The request of this kind with sequence number `i` (literals vary, tables do not).
    pub fn sql(self, i: u64) -> String {
        let id = i % 3 + 1;
        match self {
            Kind::GrpcAllowed => format!("select id, msg from vt_insert_test where id = {id}"),
            Kind::GrpcDenied => format!("select id, msg from secret where id = {id}"),
            Kind::MysqlAllowed => format!("select msg from vt.vt_insert_test where id = {id}"),
            Kind::MysqlDenied => format!("select msg from vt.secret where id = {id}"),
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Answers per kind: right ones, and deviations (wrong answer, protocol error, timeout).
#[derive(Default)]
pub struct Tally {
    ok: [AtomicU64; 4],
    failed: [AtomicU64; 4],
    /// Failed handshakes and logins (not requests).
    pub connect_failed: AtomicU64,
    examples: Mutex<Vec<String>>,
}

impl Tally {
    pub fn ok(&self, kind: Kind) {
        self.ok[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn fail(&self, kind: Option<Kind>, what: String) {
        match kind {
            Some(k) => self.failed[k.index()].fetch_add(1, Ordering::Relaxed),
            None => self.connect_failed.fetch_add(1, Ordering::Relaxed),
        };
        let mut ex = self.examples.lock().unwrap_or_else(|p| p.into_inner());
        if ex.len() < 10 {
            ex.push(what);
        }
    }

    /// Checks one outcome; a deviation is counted and described.
    pub fn check(&self, kind: Kind, outcome: Result<(), String>) {
        match outcome {
            Ok(()) => self.ok(kind),
            Err(e) => self.fail(Some(kind), format!("{}: {e}", kind.label())),
        }
    }

    pub fn oks(&self, kind: Kind) -> u64 {
        self.ok[kind.index()].load(Ordering::Relaxed)
    }

    pub fn failures(&self, kind: Kind) -> u64 {
        self.failed[kind.index()].load(Ordering::Relaxed)
    }

    pub fn total_failures(&self) -> u64 {
        Kind::ALL.iter().map(|k| self.failures(*k)).sum::<u64>()
            + self.connect_failed.load(Ordering::Relaxed)
    }

    pub fn total(&self) -> u64 {
        Kind::ALL
            .iter()
            .map(|k| self.oks(*k) + self.failures(*k))
            .sum()
    }

    pub fn examples(&self) -> Vec<String> {
        self.examples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Latencies in microseconds, sorted on demand.
#[derive(Default)]
pub struct Latencies(pub Vec<u32>);

impl Latencies {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_micros().min(u128::from(u32::MAX)) as u32);
    }

    pub fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    /// (p50, p99, max) in microseconds.
    pub fn summary(&mut self) -> (u32, u32, u32) {
        if self.0.is_empty() {
            return (0, 0, 0);
        }
        self.0.sort_unstable();
        let pct = |p: f64| self.0[((self.0.len() as f64 * p) as usize).min(self.0.len() - 1)];
        (pct(0.50), pct(0.99), *self.0.last().expect("not empty"))
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC: many mTLS connections.

const EXECUTE: &str = "/queryservice.Query/Execute";

/// The client TLS config: trusts the PKI's root, presents `vtgate-client-1`, offers h2, and
/// never resumes a session (every connection pays a full mTLS handshake).
pub fn grpc_tls(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let mut cfg =
        crate::grpc::client_config(pki, rustls::DEFAULT_VERSIONS, Some("vtgate-client-1"));
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// One HTTP/2 connection over mTLS; closed (its task aborted, the socket dropped) on drop.
pub struct GrpcConn {
    pub send: hyper::client::conn::http2::SendRequest<RawBody>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to the listener at `addr`: TCP, the TLS handshake, HTTP/2.
pub async fn grpc_connect(
    tls: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Result<GrpcConn, String> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let go = async {
        let tcp = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(
                rustls::pki_types::ServerName::try_from("localhost").expect("name"),
                tcp,
            )
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(GrpcConn { send, task })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, go)
        .await
        .unwrap_or_else(|_| Err(format!("no connection within {REQUEST_TIMEOUT:?}")))
}

/// Opens `n` connections, at most `parallel` handshakes at a time, and sends one allowed
/// request on each (checked, counted in `tally`). Failed connections are counted and left out.
pub async fn grpc_open(
    tls: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    n: usize,
    parallel: usize,
    tally: &Arc<Tally>,
) -> Vec<GrpcConn> {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (tls, tally) = (Arc::clone(tls), Arc::clone(tally));
            async move {
                match grpc_connect(tls, addr).await {
                    Ok(mut c) => {
                        let r = grpc_request(&mut c.send, addr, Kind::GrpcAllowed, i as u64).await;
                        tally.check(Kind::GrpcAllowed, r);
                        Some(c)
                    }
                    Err(e) => {
                        tally.fail(None, format!("gRPC connection: {e}"));
                        None
                    }
                }
            }
        })
        .buffer_unordered(parallel)
        .filter_map(|c| async move { c })
        .collect()
        .await
}

/// Sends the request of `kind` number `i` and checks the answer: for an allowed one, the
/// stand-in tablet's (the caller ID it received, as vtguard rewrote it); for a denied one,
/// PERMISSION_DENIED with Vitess's exact text.
pub async fn grpc_request(
    send: &mut hyper::client::conn::http2::SendRequest<RawBody>,
    addr: SocketAddr,
    kind: Kind,
    i: u64,
) -> Result<(), String> {
    let msg = vtguard_proto::query::ExecuteRequest {
        target: Some(crate::upstream::target("ks")),
        query: Some(crate::upstream::bound(&kind.sql(i))),
        ..Default::default()
    }
    .encode_to_vec();
    let req = http::Request::post(format!("https://{addr}{EXECUTE}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(full(framed(0, &msg)))
        .expect("request");
    let go = async {
        send.ready()
            .await
            .map_err(|e| format!("connection unusable: {e}"))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("no response: {e}"))?;
        let (parts, body) = resp.into_parts();
        let collected = http_body_util::BodyExt::collect(body)
            .await
            .map_err(|e| format!("response body: {e}"))?;
        let trailers = collected.trailers().cloned().unwrap_or_default();
        let get = |k: &str| {
            parts
                .headers
                .get(k)
                .or_else(|| trailers.get(k))
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let status = get("grpc-status").ok_or("no grpc-status")?;
        let message = percent_decode(&get("grpc-message").unwrap_or_default());
        let data = collected.to_bytes();
        match kind {
            Kind::GrpcDenied => {
                if status != "7" || message != denied_text() {
                    return Err(format!(
                        "expected status 7 {:?}, got {status} {message:?}",
                        denied_text()
                    ));
                }
                Ok(())
            }
            _ => {
                if status != "0" {
                    return Err(format!("status {status}: {message}"));
                }
                let result = (data.len() >= 5)
                    .then(|| vtguard_proto::query::ExecuteResponse::decode(&data[5..]).ok())
                    .flatten()
                    .and_then(|r| r.result)
                    .ok_or_else(|| format!("undecodable response ({} bytes)", data.len()))?;
                let rows = crate::upstream::rows(&result);
                let want = format!("{USER}|{}", GROUPS.replace(", ", ","));
                if rows != [want.as_str()] {
                    return Err(format!("rows {rows:?}, expected [{want:?}]"));
                }
                Ok(())
            }
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, go)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// MySQL: TLS sessions with a client certificate.

/// The client TLS config for MySQL sessions: `vtgate-client-1`'s certificate, no resumption.
pub fn mysql_tls(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let mut cfg =
        crate::grpc::client_config(pki, rustls::DEFAULT_VERSIONS, Some("vtgate-client-1"));
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

type MysqlStream = BufReader<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A logged-in MySQL session over TLS.
pub struct MysqlSession {
    s: MysqlStream,
}

const MAX_PACKET: usize = 1 << 24;

async fn read_packet(s: &mut (impl tokio::io::AsyncRead + Unpin)) -> Result<(u8, Vec<u8>), String> {
    vtguard_agent::proxy::mysql::packet::read(s, MAX_PACKET)
        .await
        .map_err(|e| format!("reading a packet: {e}"))
}

/// What a query got: the first column of each row, or an ERR (code, SQL state, message).
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    Rows(Vec<String>),
    Err(u16, String, String),
}

impl MysqlSession {
    /// Greeting, SSLRequest, TLS handshake, login as [`USER`] (no password), its OK.
    pub async fn connect(
        tls: Arc<rustls::ClientConfig>,
        addr: SocketAddr,
    ) -> Result<MysqlSession, String> {
        use vtguard_agent::proxy::mysql::handshake::cap;
        let go = async {
            let mut tcp = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            let (_, greeting) = read_packet(&mut tcp).await?;
            if greeting.first() != Some(&10) {
                return Err(format!(
                    "not a greeting: {:?}",
                    String::from_utf8_lossy(&greeting)
                ));
            }
            let login = login_payload(USER, cap::SSL);
            tcp.write_all(&packet(1, &login[..32]))
                .await
                .map_err(|e| format!("SSLRequest: {e}"))?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(
                    rustls::pki_types::ServerName::try_from("localhost").expect("name"),
                    tcp,
                )
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            let mut s = BufReader::new(stream);
            s.write_all(&packet(2, &login))
                .await
                .map_err(|e| format!("login: {e}"))?;
            s.flush().await.map_err(|e| format!("login: {e}"))?;
            let (seq, ok) = read_packet(&mut s).await?;
            if (seq, ok.first()) != (3, Some(&0)) {
                return Err(format!(
                    "login not OK (sequence {seq}): {:?}",
                    String::from_utf8_lossy(&ok)
                ));
            }
            Ok(MysqlSession { s })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, go)
            .await
            .unwrap_or_else(|_| Err(format!("no session within {REQUEST_TIMEOUT:?}")))
    }

    /// Sends COM_QUERY and reads the whole response.
    pub async fn query(&mut self, sql: &str) -> Result<Answer, String> {
        let go = async {
            let mut q = Vec::with_capacity(sql.len() + 1);
            q.push(0x03);
            q.extend_from_slice(sql.as_bytes());
            self.s
                .write_all(&packet(0, &q))
                .await
                .map_err(|e| format!("sending: {e}"))?;
            self.s.flush().await.map_err(|e| format!("sending: {e}"))?;
            let (_, head) = read_packet(&mut self.s).await?;
            match head.first() {
                Some(0xff) => return Ok(err_packet(&head)),
                Some(0x00) => return Ok(Answer::Rows(Vec::new())),
                Some(&n) if n < 0xfb => {
                    for _ in 0..n {
                        read_packet(&mut self.s).await?;
                    }
                }
                _ => return Err(format!("unexpected response head {head:?}")),
            }
            let (_, eof) = read_packet(&mut self.s).await?;
            if eof.first() != Some(&0xfe) {
                return Err("no EOF after the column definitions".into());
            }
            let mut rows = Vec::new();
            loop {
                let (_, p) = read_packet(&mut self.s).await?;
                match p.first() {
                    Some(0xfe) if p.len() < 9 => return Ok(Answer::Rows(rows)),
                    Some(0xff) => return Ok(err_packet(&p)),
                    Some(&len) if len < 0xfb && p.len() > usize::from(len) => {
                        rows.push(
                            String::from_utf8_lossy(&p[1..1 + usize::from(len)]).into_owned(),
                        );
                    }
                    _ => return Err(format!("unexpected row {p:?}")),
                }
            }
        };
        tokio::time::timeout(REQUEST_TIMEOUT, go)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
    }

    /// Sends the query of `kind` number `i` and checks the answer: MariaDB's row for an allowed
    /// one, ERR 1142 (42000) with Vitess's exact text for a denied one.
    pub async fn request(&mut self, kind: Kind, i: u64) -> Result<(), String> {
        let got = self.query(&kind.sql(i)).await?;
        let want = match kind {
            Kind::MysqlDenied => Answer::Err(1142, "42000".into(), denied_text()),
            _ => Answer::Rows(vec![["one", "two", "three"][(i % 3) as usize].to_owned()]),
        };
        if got == want {
            Ok(())
        } else {
            Err(format!("got {got:?}, expected {want:?}"))
        }
    }

    /// COM_QUIT, then the socket closes.
    pub async fn quit(mut self) {
        let _ = self.s.write_all(&packet(0, &[0x01])).await;
        let _ = self.s.flush().await;
        let _ = self.s.get_mut().shutdown().await;
    }
}

fn err_packet(p: &[u8]) -> Answer {
    if p.len() < 3 {
        return Answer::Err(0, String::new(), format!("short ERR {p:?}"));
    }
    let code = u16::from_le_bytes([p[1], p[2]]);
    let (state, msg) = if p.get(3) == Some(&b'#') && p.len() >= 9 {
        (String::from_utf8_lossy(&p[4..9]).into_owned(), &p[9..])
    } else {
        (String::new(), &p[3..])
    };
    Answer::Err(code, state, String::from_utf8_lossy(msg).into_owned())
}

/// Opens `n` sessions, at most `parallel` logins at a time, and sends one allowed query on
/// each (checked, counted in `tally`). Failed logins are counted and left out.
pub async fn mysql_open(
    tls: &Arc<rustls::ClientConfig>,
    addr: SocketAddr,
    n: usize,
    parallel: usize,
    tally: &Arc<Tally>,
) -> Vec<MysqlSession> {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..n)
        .map(|i| {
            let (tls, tally) = (Arc::clone(tls), Arc::clone(tally));
            async move {
                match MysqlSession::connect(tls, addr).await {
                    Ok(mut s) => {
                        let r = s.request(Kind::MysqlAllowed, i as u64).await;
                        tally.check(Kind::MysqlAllowed, r);
                        Some(s)
                    }
                    Err(e) => {
                        tally.fail(None, format!("MySQL login: {e}"));
                        None
                    }
                }
            }
        })
        .buffer_unordered(parallel)
        .filter_map(|c| async move { c })
        .collect()
        .await
}

// ---------------------------------------------------------------------------------------------
// Load.

/// Every `DENY_EVERY`-th request is one the ACL denies (20 %).
pub const DENY_EVERY: u64 = 5;

/// Sends `total` gRPC requests over `conns` from `workers` tasks (so at most `workers` in
/// flight), worker w using connections w, w + workers, … in turn; request i is denied when
/// i % [`DENY_EVERY`] == DENY_EVERY - 1. Returns the latencies; outcomes go to `tally`.
pub async fn grpc_load(
    conns: &[GrpcConn],
    addr: SocketAddr,
    total: u64,
    workers: usize,
    tally: &Arc<Tally>,
    done: &Arc<AtomicU64>,
) -> Latencies {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..workers.min(conns.len()) {
        let mut mine: Vec<_> = conns
            .iter()
            .skip(w)
            .step_by(workers)
            .map(|c| c.send.clone())
            .collect();
        let (next, tally, done) = (Arc::clone(&next), Arc::clone(tally), Arc::clone(done));
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut turn = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return lat;
                }
                let kind = if i % DENY_EVERY == DENY_EVERY - 1 {
                    Kind::GrpcDenied
                } else {
                    Kind::GrpcAllowed
                };
                let n = mine.len();
                let send = &mut mine[turn % n];
                turn += 1;
                let t = Instant::now();
                let r = grpc_request(send, addr, kind, i).await;
                lat.push(t.elapsed());
                tally.check(kind, r);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut all = Latencies::default();
    for t in tasks {
        all.extend(t.await.expect("gRPC load task"));
    }
    all
}

/// Sends `total` MySQL queries over `sessions` from `workers` tasks, each owning every
/// `workers`-th session and using them in turn; denied as in [`grpc_load`]. Hands the
/// sessions back with the latencies.
pub async fn mysql_load(
    sessions: Vec<MysqlSession>,
    total: u64,
    workers: usize,
    tally: &Arc<Tally>,
    done: &Arc<AtomicU64>,
) -> (Vec<MysqlSession>, Latencies) {
    let next = Arc::new(AtomicU64::new(0));
    let workers = workers.min(sessions.len()).max(1);
    let mut owned: Vec<Vec<MysqlSession>> = (0..workers).map(|_| Vec::new()).collect();
    for (i, s) in sessions.into_iter().enumerate() {
        owned[i % workers].push(s);
    }
    let mut tasks = Vec::new();
    for mut mine in owned.into_iter().filter(|v| !v.is_empty()) {
        let (next, tally, done) = (Arc::clone(&next), Arc::clone(tally), Arc::clone(done));
        tasks.push(tokio::spawn(async move {
            let mut lat = Latencies::default();
            let mut turn = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    return (mine, lat);
                }
                let kind = if i % DENY_EVERY == DENY_EVERY - 1 {
                    Kind::MysqlDenied
                } else {
                    Kind::MysqlAllowed
                };
                let n = mine.len();
                let s = &mut mine[turn % n];
                turn += 1;
                let t = Instant::now();
                let r = s.request(kind, i).await;
                lat.push(t.elapsed());
                tally.check(kind, r);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let (mut back, mut all) = (Vec::new(), Latencies::default());
    for t in tasks {
        let (s, l) = t.await.expect("MySQL load task");
        back.extend(s);
        all.extend(l);
    }
    (back, all)
}

/// Polls the agent until its descriptor count is at most `fds` or `within` passes: how long
/// it took, or None.
pub async fn wait_fds(pid: u32, fds: u64, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if ProcStats::of(pid).fds <= fds {
            return Some(start.elapsed());
        }
        if start.elapsed() > within {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An environment variable as a number, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}
