//! The one place that builds vtguard listeners in-process from agent internals (the config
//! parser, the table-ACL enforcer, `GrpcProxy` / `MysqlProxy` and their counters). Tests go
//! through [`crate::grpc::start_listener`] and [`crate::mysql::start_listener`]; when the
//! agent's listener types change, this file is what follows them.

use std::{
    net::SocketAddr,
    path::Path,
    sync::{atomic::Ordering, Arc},
};

use vtguard_agent::{
    acl::{Enforcer, TableAcl},
    config::Config,
    kernel::Kernel,
    proxy::{grpc::GrpcProxy, mysql::MysqlProxy},
    sessions::Sessions,
};

/// A listener serving on 127.0.0.1 (any free port); stops when dropped.
pub struct TestListener<P> {
    pub addr: SocketAddr,
    pub proxy: Arc<P>,
    task: tokio::task::JoinHandle<()>,
}

impl<P> Drop for TestListener<P> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An in-process gRPC listener.
pub type GrpcListener = TestListener<GrpcProxy>;
/// An in-process MySQL listener.
pub type MysqlListener = TestListener<MysqlProxy>;

/// What a test listener is built from: the config of `toml` (its first `[[listener]]`),
/// whether its upstream port is kernel-protected, and its table ACL.
fn parts(toml: &str) -> (Config, bool, Option<Arc<Enforcer>>) {
    let config = Config::parse(Path::new("test.toml"), toml)
        .unwrap_or_else(|e| panic!("test config: {e}\n{toml}"));
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

/// Starts the gRPC `[[listener]]` described by `toml` (its `listen` may use port 0).
pub async fn start_grpc(toml: &str, kernel: Option<Arc<Kernel>>) -> GrpcListener {
    let (config, protected, acl) = parts(toml);
    let l = &config.listeners[0];
    let proxy = Arc::new(
        GrpcProxy::new(l, kernel, protected, acl, Default::default()).expect("listener starts"),
    );
    let socket = proxy.bind(l.listen).await.expect("bind listener");
    let addr = socket.local_addr().expect("addr");
    let task = tokio::spawn(Arc::clone(&proxy).serve(socket));
    TestListener { addr, proxy, task }
}

/// Starts the MySQL `[[listener]]` described by `toml`, registering its connections in
/// `sessions`.
pub async fn start_mysql(
    toml: &str,
    kernel: Option<Arc<Kernel>>,
    sessions: Arc<Sessions>,
) -> MysqlListener {
    let (config, protected, acl) = parts(toml);
    let l = &config.listeners[0];
    let proxy =
        Arc::new(MysqlProxy::new(l, kernel, protected, acl, sessions).expect("listener starts"));
    let socket = proxy.bind(l.listen).await.expect("bind listener");
    let addr = socket.local_addr().expect("addr");
    let task = tokio::spawn(Arc::clone(&proxy).serve(socket));
    TestListener { addr, proxy, task }
}

impl GrpcListener {
    /// TLS handshakes refused so far.
    pub fn handshakes_failed(&self) -> u64 {
        self.proxy.stats.handshakes_failed.load(Ordering::Relaxed)
    }

    /// Requests a dry-run table ACL would have denied.
    pub fn dry_run_denials(&self) -> u64 {
        self.proxy.stats.acl_dry_run_denials.load(Ordering::Relaxed)
    }
}

impl MysqlListener {
    /// Connections that ended before a session (TLS or login refused, cut short, timed out).
    pub fn handshakes_failed(&self) -> u64 {
        self.proxy.stats.handshakes_failed.load(Ordering::Relaxed)
    }

    /// Sessions that logged in.
    pub fn logins(&self) -> u64 {
        self.proxy.stats.logins.load(Ordering::Relaxed)
    }

    /// Commands the table ACL denied.
    pub fn denied(&self) -> u64 {
        self.proxy.stats.denied.load(Ordering::Relaxed)
    }
}
