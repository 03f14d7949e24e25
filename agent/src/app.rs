//! Wiring: what starts, in what order, and how the agent stops.
//!
//! Order: kernel (attach or adopt, policy in first), then the event reader, then the
//! listeners. On SIGTERM or SIGINT the agent exits and the pinned programs stay attached: fail
//! closed. SIGHUP re-reads the config's kernel policy and every listener's certificates.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    acl::{Enforcer, TableAcl},
    config::{Config, Protocol},
    kernel::{Attach, Kernel, Origin},
    proxy::{grpc::GrpcProxy, mysql::MysqlProxy},
    sessions::Sessions,
};

/// How often certificate files are checked for changes.
const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// Runs the agent until a termination signal.
pub fn run(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(config))
}

async fn run_async(config: Config) -> anyhow::Result<()> {
    info!(config = %config.source.display(), listeners = config.listeners.len(), kernel = config.kernel.is_some(), "starting vtguard");
    let kernel = match &config.kernel {
        Some(k) => {
            info!(
                bpffs = %k.bpffs.display(),
                cgroup = ?k.cgroup,
                protected_ports = ?k.policy.protected_ports,
                access = ?k.policy.access,
                "kernel config"
            );
            warn_ephemeral_overlap(&k.policy.protected_ports);
            let kernel = Arc::new(Kernel::start(k, Attach::Yes)?);
            for a in kernel.attachments() {
                let how = match a.origin {
                    Origin::Attached => "attached",
                    Origin::Adopted => "adopted",
                };
                info!(program = a.program, link_id = a.link_id, program_id = a.program_id, cgroup = %kernel.cgroup().display(), "{how} {}", a.program);
            }
            info!(bpffs = %kernel.pin_dir().display(), "kernel enforcement active; pins outlive this process");
            Some(kernel)
        }
        None => {
            warn!("no [kernel] section: upstream ports are not protected, so clients can bypass vtguard");
            None
        }
    };

    let mut tasks = tokio::task::JoinSet::new();
    if let Some(k) = &kernel {
        let k = Arc::clone(k);
        tasks.spawn(async move {
            let mut reader = k.event_reader()?;
            reader
                .run()
                .await
                .map_err(anyhow::Error::from)
                .context("reading kernel events")
        });
    }

    let enforcer = match &config.tableacl {
        Some(t) => {
            let acl = match TableAcl::load(&t.file) {
                Ok(acl) => {
                    info!(file = %t.file.display(), groups = acl.groups.len(), strict = t.settings.strict, dry_run = t.settings.dry_run, exempt = ?t.settings.exempt, mode = ?t.settings.mode, "table ACL loaded");
                    acl
                }
                Err(e) if t.enforce => {
                    return Err(anyhow::Error::from(e).context(
                        "enforce-tableacl-config is set and the table ACL cannot be used",
                    ))
                }
                Err(e) => {
                    error!(error = %e, "table ACL not loaded: no table is granted to anyone (strict mode denies every checked statement)");
                    TableAcl::default()
                }
            };
            let enforcer = Arc::new(Enforcer::new(acl, t.settings.clone()));
            enforcer.set_source(&t.file.display().to_string());
            if let Some(every) = t.reload_interval {
                // Reloads when the file's content changes (not when it differs from the ACL in
                // force: a policy loaded through the admin API stays until the file changes).
                let (e, file) = (Arc::clone(&enforcer), t.file.clone());
                tasks.spawn(async move {
                    let mut last = std::fs::read(&file).ok();
                    let mut tick = tokio::time::interval(every);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let now = std::fs::read(&file).ok();
                        if now == last {
                            continue;
                        }
                        last = now;
                        match TableAcl::load(&file) {
                            Ok(acl) => {
                                info!(file = %file.display(), "table ACL changed on disk; reloaded");
                                e.replace_from(acl, &file.display().to_string());
                            }
                            Err(err) => warn!(error = %err, "table ACL reload failed; the previous ACL stays in force"),
                        }
                    }
                });
            }
            Some(enforcer)
        }
        None => None,
    };

    let sessions = Arc::new(Sessions::default());
    if let Some(k) = &config.kernel {
        sessions.set_policy(&k.policy, false);
    }
    let mut proxies: Vec<Listener> = Vec::new();
    for l in &config.listeners {
        let protected = config
            .kernel
            .as_ref()
            .is_some_and(|k| k.policy.protected_ports.contains(&l.upstream.port()));
        let proxy = match &l.protocol {
            Protocol::Grpc(_) => Listener::Grpc(Arc::new(GrpcProxy::new(
                l,
                kernel.clone(),
                protected,
                enforcer.clone(),
                Arc::clone(&sessions),
            )?)),
            Protocol::Mysql(_) => Listener::Mysql(Arc::new(MysqlProxy::new(
                l,
                kernel.clone(),
                protected,
                enforcer.clone(),
                Arc::clone(&sessions),
            )?)),
        };
        let socket = proxy.bind(l.listen).await?;
        let p = proxy.clone();
        tasks.spawn(async move {
            p.serve(socket).await;
            Ok(())
        });
        info!(listener = %l.name, protocol = proxy.protocol(), listen = %l.listen, upstream = %l.upstream, upstream_protected = protected, "listening");
        proxies.push(proxy);
    }
    {
        let state = Arc::new(crate::admin::State {
            enforcer: enforcer.clone(),
            sessions: Arc::clone(&sessions),
            kernel: kernel.clone(),
            listeners: proxies.iter().map(Listener::status).collect(),
            started: crate::acl::now_unix(),
        });
        if let Some(addr) = config.metrics {
            let (k, s) = (kernel.clone(), Arc::clone(&sessions));
            tasks.spawn(async move {
                crate::metrics::serve(addr, k, s)
                    .await
                    .map_err(anyhow::Error::from)
            });
        }
        let socket = config.admin_socket.clone();
        // Without its admin socket the agent still enforces: say so, and go on.
        tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(&socket, state).await {
                error!(error = %e, "admin API not available (vtguard status, vtguard policy …); enforcement goes on");
            }
        });
    }
    if !proxies.is_empty() {
        let proxies = proxies.clone();
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(TLS_RELOAD_INTERVAL);
            loop {
                tick.tick().await;
                for p in &proxies {
                    p.reload_tls(false);
                }
            }
        });
    }

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                if let Some(k) = &kernel {
                    // Applying may wait out the previous generation's grace period: off the
                    // async workers.
                    let (k, source, sessions) = (Arc::clone(k), config.source.clone(), Arc::clone(&sessions));
                    tokio::task::spawn_blocking(move || reload_kernel(&k, &source, &sessions));
                }
                if let (Some(e), Some(t)) = (&enforcer, &config.tableacl) {
                    // A failed reload keeps the old ACL (as Vitess does).
                    match TableAcl::load(&t.file) {
                        Ok(acl) => {
                            info!(file = %t.file.display(), groups = acl.groups.len(), "table ACL reloaded");
                            e.replace_from(acl, &t.file.display().to_string());
                        }
                        Err(err) => error!(error = %err, "table ACL reload failed; the previous ACL stays in force"),
                    }
                }
                for p in &proxies {
                    p.reload_tls(true);
                }
            }
            Some(res) = tasks.join_next() => {
                // Tasks run until the agent stops; one that ends has failed. Enforcement goes
                // on in the kernel, but stop loudly rather than run half-blind.
                let err = match res {
                    Ok(Ok(())) => anyhow::anyhow!("a task stopped"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::Error::from(e).context("task"),
                };
                return Err(err);
            }
        }
    }
    match &kernel {
        Some(k) => info!(
            bpffs = %k.pin_dir().display(),
            "stopping; kernel programs stay attached (protected ports stay closed); `vtguard kernel detach` removes them"
        ),
        None => info!("stopping"),
    }
    Ok(())
}

/// A running listener, of either protocol.
#[derive(Clone)]
enum Listener {
    Grpc(Arc<GrpcProxy>),
    Mysql(Arc<MysqlProxy>),
}

impl Listener {
    fn protocol(&self) -> &'static str {
        match self {
            Listener::Grpc(_) => "grpc",
            Listener::Mysql(_) => "mysql",
        }
    }

    /// What `vtguard status` reads of it.
    fn status(&self) -> Arc<dyn crate::status::ReportStatus> {
        match self {
            Listener::Grpc(p) => Arc::clone(p) as _,
            Listener::Mysql(p) => Arc::clone(p) as _,
        }
    }

    fn reload_tls(&self, force: bool) {
        match self {
            Listener::Grpc(p) => p.reload_tls(force),
            Listener::Mysql(p) => p.reload_tls(force),
        }
    }

    async fn bind(&self, addr: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
        Ok(match self {
            Listener::Grpc(p) => p.bind(addr).await?,
            Listener::Mysql(p) => p.bind(addr).await?,
        })
    }

    /// Accepts connections until the task is dropped.
    async fn serve(self, socket: tokio::net::TcpListener) {
        match self {
            Listener::Grpc(p) => p.serve(socket).await,
            Listener::Mysql(p) => p.serve(socket).await,
        }
    }
}

/// Re-reads the config's kernel policy (with the listeners' identities) and applies it. The
/// open connections of identities it no longer lets through are closed at once, and again
/// after the kernel has the new policy (a reconnect in between went through the old one).
fn reload_kernel(kernel: &Kernel, source: &std::path::Path, sessions: &Sessions) {
    match Config::load(source) {
        Ok(Config { kernel: Some(new), .. }) => {
            for c in sessions.set_policy(&new.policy, true) {
                warn!(listener = %c.listener, identity = %c.identity, port = c.port, connections = c.connections, "identity lost access to the upstream: its open connections are closed");
            }
            match kernel.apply_policy(&new.policy) {
                Ok(s) => {
                    info!(generation = s.generation, protected_ports = ?s.protected_ports, grants = s.grants, "kernel policy reloaded");
                    sessions.applied();
                }
                // The kernel keeps the previous policy; vtguard goes on refusing, at its own
                // door, the identities the new one removed.
                Err(e) => error!(error = %e, "kernel policy reload failed; the kernel keeps the previous policy and vtguard refuses the identities the new one removed"),
            }
        }
        Ok(_) => error!("config reload: the [kernel] section is gone; the previous policy stays in force (detach with `vtguard kernel detach`)"),
        Err(e) => error!(error = %e, "config reload failed; the previous policy stays in force"),
    }
}

/// A protected port inside the ephemeral range could be picked as the local port of an
/// outgoing connection, whose replies would then be dropped.
fn warn_ephemeral_overlap(ports: &std::collections::BTreeSet<u16>) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let mut it = text
        .split_whitespace()
        .filter_map(|s| s.parse::<u16>().ok());
    if let (Some(lo), Some(hi)) = (it.next(), it.next()) {
        for p in ports.iter().filter(|p| (lo..=hi).contains(*p)) {
            warn!(port = p, range = %format!("{lo}-{hi}"), "protected port lies in the ephemeral port range: outgoing connections may be given it as their local port; move the service or narrow net.ipv4.ip_local_port_range");
        }
    }
}
