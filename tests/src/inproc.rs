//! The one place that builds vtguard listeners in-process from agent internals (the config
//! parser, the table-ACL enforcer, `GrpcProxy` / `MysqlProxy` and their counters). Tests go
//! through [`crate::grpc::start_listener`] and [`crate::mysql::start_listener`]; when the
//! agent's listener types change, this file is what follows them.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use vtguard_agent::{
    acl::{Enforcer, TableAcl},
    config::Config,
    kernel::Kernel,
    proxy::listener::{self, Deps, Listener},
    sessions::Sessions,
    status::ListenerCounts,
};

/// A listener serving on 127.0.0.1 (any free port); stops when dropped.
pub struct TestListener {
    pub addr: SocketAddr,
    pub proxy: Arc<dyn Listener>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An in-process gRPC listener.
pub type GrpcListener = TestListener;
/// An in-process MySQL listener.
pub type MysqlListener = TestListener;

/// What a test listener is built from: the config of `toml` (its first `[[listener]]`),
/// whether its upstream port is kernel-protected, and its table ACL.
fn parts(toml: &str) -> (Config, bool, Option<Arc<Enforcer>>) {
    let mut config = Config::parse(Path::new("test.toml"), toml)
        .unwrap_or_else(|e| panic!("test config: {e}\n{toml}"));
    // A listener counts into the process's metrics under its name, as `vtguard status` reads
    // them; an agent's listener names are unique, and so are those of the listeners the tests
    // of this one process start.
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let l = &mut config.listeners[0];
    l.name = format!("{}-{}", l.name, NEXT.fetch_add(1, Ordering::Relaxed));
    let l = &config.listeners[0];
    let protected = config
        .kernel
        .as_ref()
        .is_some_and(|k| k.policy.protected_ports.contains(&l.upstream.port()));
    let acl = config.tableacl.as_ref().map(|t| {
        let acl = TableAcl::load(&t.file).expect("test table ACL");
        Arc::new(Enforcer::new(acl, t.settings.clone()))
    });
    (config, protected, acl)
}

/// Starts the `[[listener]]` described by `toml` (its `listen` may use port 0), of either
/// protocol, registering its connections in `sessions`.
async fn start(toml: &str, kernel: Option<Arc<Kernel>>, sessions: Arc<Sessions>) -> TestListener {
    let (config, protected, acl) = parts(toml);
    let deps = Deps {
        kernel,
        protected,
        acl,
        sessions,
    };
    let proxy = listener::build(&config.listeners[0], deps).expect("listener starts");
    let socket = listener::bind(&*proxy).await.expect("bind listener");
    let addr = socket.local_addr().expect("addr");
    let task = tokio::spawn(Arc::clone(&proxy).serve(socket));
    TestListener { addr, proxy, task }
}

/// Starts the gRPC `[[listener]]` described by `toml` (its `listen` may use port 0).
pub async fn start_grpc(toml: &str, kernel: Option<Arc<Kernel>>) -> GrpcListener {
    start(toml, kernel, Default::default()).await
}

/// Starts the MySQL `[[listener]]` described by `toml`, registering its connections in
/// `sessions`.
pub async fn start_mysql(
    toml: &str,
    kernel: Option<Arc<Kernel>>,
    sessions: Arc<Sessions>,
) -> MysqlListener {
    start(toml, kernel, sessions).await
}

impl TestListener {
    fn counts(&self) -> ListenerCounts {
        self.proxy.status().counts
    }

    /// Connections whose TLS handshake (MySQL: login) was refused or timed out.
    pub fn handshakes_failed(&self) -> u64 {
        self.counts().handshakes_failed
    }

    /// Requests a dry-run table ACL would have denied.
    pub fn dry_run_denials(&self) -> u64 {
        self.counts().acl_dry_run_denials
    }

    /// MySQL sessions that logged in.
    pub fn logins(&self) -> u64 {
        self.counts().logins.unwrap_or(0)
    }

    /// Requests (MySQL: commands) vtguard refused.
    pub fn denied(&self) -> u64 {
        self.counts().refused
    }
}
