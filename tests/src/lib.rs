//! Helpers for vtguard's end-to-end tests: prerequisites, kernel guards that always detach,
//! test servers, and real clients (python3, curl) driven as separate processes.

pub mod agent;
pub mod fixtures;
pub mod grpc;
pub mod inproc;
pub mod mysql;
pub mod netns;
pub mod pki;
pub mod soak;
pub mod upstream;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use socket2::{Domain, Socket, Type};
use vtguard_agent::{
    kernel::{self, Attach, Kernel},
    kernel::{KernelConfig, KernelPolicy},
};

/// Whether a program is on PATH (or in /usr/sbin, where Debian puts mariadbd).
pub fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        || Path::new("/usr/sbin").join(program).exists()
}

/// Whether `CI` is set: then a test that cannot run fails instead of skipping.
pub fn is_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The environment variable naming the file where skipped tests are recorded, one
/// `test: reason` line each; `cargo xtask test` sets it, then reports them as skipped (and
/// not as passed, which is all the test harness knows of a test that returned early).
pub const SKIP_LOG_ENV: &str = "VTGUARD_SKIP_LOG";

/// A test that cannot run here: under CI it fails (CI has every prerequisite); otherwise it
/// prints why, and records `test: why` for `cargo xtask test`'s count of skipped tests. The
/// caller returns right after.
pub fn skip(test: &str, why: &str) {
    if is_ci() {
        panic!("{test}: cannot run under CI: {why}");
    }
    eprintln!("SKIP {test}: {why}");
    if let Some(file) = std::env::var_os(SKIP_LOG_ENV) {
        let line = format!("{test}: {}\n", why.replace('\n', " "));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&file)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!(
                "{test}: recording the skip in {}: {e}",
                Path::new(&file).display()
            );
        }
    }
}

/// Checks what kernel tests need (root, bpffs, cgroup2). Prints why it skips (see [`skip`]),
/// or panics under CI, where the machine runs as root with eBPF.
pub fn kernel_tests_can_run(test: &str) -> bool {
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("not root".to_owned())
    } else if kernel::check_bpffs(Path::new("/sys/fs/bpf/vtguard-probe")).is_err() {
        Some(
            "no bpffs at /sys/fs/bpf (`mount -t bpf bpf /sys/fs/bpf`; `cargo xtask test` does it)"
                .to_owned(),
        )
    } else if let Err(e) = kernel::resolve_cgroup(None) {
        Some(e.to_string())
    } else {
        None
    };
    match why {
        None => true,
        Some(why) => {
            skip(test, &why);
            false
        }
    }
}

/// Kernel tests attach to the same cgroup and count attachments: one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// A unique bpffs folder for one test.
pub fn test_pin_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    PathBuf::from(format!(
        "/sys/fs/bpf/vtguard-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A kernel policy from (port, identities) pairs; every listed port is protected.
pub fn policy(ports: &[u16], grants: &[(u16, &[&str])]) -> KernelPolicy {
    let mut access: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
    for (port, ids) in grants {
        access
            .entry(*port)
            .or_default()
            .extend(ids.iter().map(|s| (*s).to_owned()));
    }
    KernelPolicy {
        protected_ports: ports.iter().copied().collect(),
        access,
    }
}

/// The agent's kernel half, attached for one test; detached and unpinned on drop, also when
/// the test fails.
pub struct TestKernel {
    kernel: Option<Arc<Kernel>>,
    dir: PathBuf,
}

impl TestKernel {
    /// Attaches to `cgroup` (default: the cgroup2 root) and installs `policy`.
    pub fn start(policy: KernelPolicy, cgroup: Option<PathBuf>) -> Self {
        Self::start_with_owners(policy, cgroup, Default::default())
    }

    /// [`TestKernel::start`] with the bind guard's owners.
    pub fn start_with_owners(
        policy: KernelPolicy,
        cgroup: Option<PathBuf>,
        owners: std::collections::BTreeMap<u16, vtguard_agent::kernel::PortOwner>,
    ) -> Self {
        let dir = test_pin_dir();
        let cfg = KernelConfig {
            bpffs: dir.clone(),
            cgroup,
            policy,
            owners,
            intercept: Default::default(),
        };
        let kernel = Kernel::start(&cfg, Attach::Yes).expect("attach vtguard's programs");
        TestKernel {
            kernel: Some(Arc::new(kernel)),
            dir,
        }
    }

    /// Loads and pins the maps but attaches nothing (benchmark baselines).
    pub fn maps_only(policy: KernelPolicy) -> Self {
        let dir = test_pin_dir();
        let cfg = KernelConfig {
            bpffs: dir.clone(),
            cgroup: None,
            policy,
            owners: Default::default(),
            intercept: Default::default(),
        };
        let kernel = Kernel::start(&cfg, Attach::MapsOnly).expect("load vtguard's maps");
        TestKernel {
            kernel: Some(Arc::new(kernel)),
            dir,
        }
    }

    pub fn pin_dir(&self) -> &Path {
        &self.dir
    }

    /// The kernel handle, to hand to a listener.
    pub fn shared(&self) -> Arc<Kernel> {
        Arc::clone(self.kernel.as_ref().expect("kernel is present until drop"))
    }
}

impl std::ops::Deref for TestKernel {
    type Target = Kernel;
    fn deref(&self) -> &Kernel {
        self.kernel.as_ref().expect("kernel is present until drop")
    }
}

impl Drop for TestKernel {
    fn drop(&mut self) {
        drop(self.kernel.take());
        // Forced: a listener task being torn down may still hold the handle (and its lock);
        // the guard owns these pins and must not leave them attached.
        if let Err(e) = kernel::detach_forced(&self.dir) {
            eprintln!("detaching {}: {e}", self.dir.display());
        }
    }
}

/// Picks a TCP port free on both IPv4 and IPv6, outside the ephemeral range.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() % 500) * 16;
    for _ in 0..2000 {
        let p = (base + NEXT.fetch_add(1, Ordering::Relaxed) % 9_000) as u16;
        let v6 = Socket::new(Domain::IPV6, Type::STREAM, None).expect("socket");
        let _ = v6.set_only_v6(false);
        let addr: SocketAddr = format!("[::]:{p}").parse().expect("addr");
        if v6.bind(&addr.into()).is_ok() {
            return p;
        }
    }
    panic!("no free TCP port in 20000-29000");
}

/// A test server on [::]:port (dual stack: IPv4, IPv6 and IPv4-mapped clients) that greets
/// each client with "hello\n" and records what it received.
pub struct Server {
    pub port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub accepted: Arc<AtomicU32>,
}

impl Server {
    pub fn start(port: u16) -> Self {
        let s = Socket::new(Domain::IPV6, Type::STREAM, None).expect("socket");
        s.set_only_v6(false).expect("dual stack");
        s.set_reuse_address(true).expect("SO_REUSEADDR");
        let addr: SocketAddr = format!("[::]:{port}").parse().expect("addr");
        s.bind(&addr.into())
            .unwrap_or_else(|e| panic!("bind [::]:{port}: {e}"));
        s.listen(128).expect("listen");
        let listener: TcpListener = s.into();
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU32::new(0));
        let (stop2, accepted2) = (Arc::clone(&stop), Arc::clone(&accepted));
        let thread = thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        accepted2.fetch_add(1, Ordering::Relaxed);
                        let _ = c.set_nonblocking(false);
                        let _ = c.write_all(b"hello\n");
                    }
                    Err(_) => thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server {
            port,
            stop,
            thread: Some(thread),
            accepted,
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads the greeting from a connected stream.
pub fn read_greeting(mut s: kernel::Upstream<std::net::TcpStream>) -> String {
    s.get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).expect("greeting from the server");
    String::from_utf8_lossy(&buf).into_owned()
}

const PY_CONNECT: &str = r#"
import os, socket, sys
host, port, timeout, mode = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print("PID", os.getpid(), flush=True)
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(timeout)
try:
    if mode == "fastopen":
        s.sendto(b"x", socket.MSG_FASTOPEN, (host, port))
    else:
        s.connect((host, port))
    print("CONNECTED", s.recv(6).decode().strip())
except socket.timeout:
    print("TIMEOUT")
except OSError as e:
    print("ERR", e.errno, e.strerror)
"#;

/// What a python3 client saw connecting to host:port: "CONNECTED hello", "ERR 1 Operation not
/// permitted", or "TIMEOUT"; and its pid.
#[derive(Debug)]
pub struct PyResult {
    pub pid: u32,
    pub outcome: String,
}

/// Connects with a real python3 client, optionally inside a network namespace.
pub fn py_connect(
    netns: Option<&str>,
    host: &str,
    port: u16,
    timeout_s: f64,
    mode: &str,
) -> PyResult {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "python3"]);
            c
        }
        None => Command::new("python3"),
    };
    let out = cmd
        .args([
            "-c",
            PY_CONNECT,
            host,
            &port.to_string(),
            &timeout_s.to_string(),
            mode,
        ])
        .output()
        .expect("run python3");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let pid = lines
        .next()
        .and_then(|l| l.strip_prefix("PID "))
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "python3 printed no pid: {text:?} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    PyResult {
        pid,
        outcome: lines.next().unwrap_or("").to_owned(),
    }
}

/// Runs a command, returns (exit code, stdout, stderr).
pub fn sh(cmd: &mut Command) -> (i32, String, String) {
    match cmd.output() {
        Ok(out) => (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ),
        // A program that cannot be started fails like one that exits with an error.
        Err(e) => (-1, String::new(), format!("run {cmd:?}: {e}")),
    }
}

/// A cgroup made for one test under the cgroup2 root; its tasks are moved back to the root
/// and it is removed on drop.
pub struct TestCgroup {
    pub path: PathBuf,
}

impl TestCgroup {
    pub fn new(name: &str) -> Self {
        let root = kernel::resolve_cgroup(None).expect("cgroup2 root");
        let path = root.join(format!("vtguard-test-{name}-{}", std::process::id()));
        std::fs::create_dir(&path)
            .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
        TestCgroup { path }
    }

    /// Moves the tasks of the cgroup at `path` to the root and removes it.
    pub fn remove_dir(path: &Path) {
        let root = kernel::resolve_cgroup(None).expect("cgroup2 root");
        if let Ok(procs) = std::fs::read_to_string(path.join("cgroup.procs")) {
            for pid in procs.lines() {
                let _ = std::fs::write(root.join("cgroup.procs"), pid);
            }
        }
        for _ in 0..50 {
            if std::fs::remove_dir(path).is_ok() || !path.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        Self::remove_dir(&self.path);
    }
}

/// Lines of `bpftool cgroup tree` for `cgroup` that name one of vtguard's programs.
pub fn vtguard_attachments(cgroup: &Path) -> Vec<String> {
    let (code, out, err) = sh(Command::new("bpftool")
        .arg("cgroup")
        .arg("show")
        .arg(cgroup));
    assert_eq!(code, 0, "bpftool cgroup show {}: {err}", cgroup.display());
    out.lines()
        .filter(|l| l.contains("vtg_"))
        .map(str::to_owned)
        .collect()
}
