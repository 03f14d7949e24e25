//! Wiring: what starts, in what order, and how the agent stops.
//!
//! Order: kernel (attach or adopt, policy in first), then the event reader, then the
//! listeners. On SIGTERM or SIGINT the agent exits and the pinned programs stay attached: fail
//! closed. SIGHUP re-reads the config's kernel policy and every listener's certificates.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use futures_util::FutureExt;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    acl::Enforcer,
    cluster::{document::NodeView, Node},
    config::Config,
    kernel::{Attach, Kernel, KernelPolicy, Origin, PolicySummary},
    proxy::listener::{self, Deps, Listener},
    sessions::Sessions,
};

/// How often certificate files are checked for changes.
const TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

/// The agent's background tasks: one that ends has failed.
type Tasks = tokio::task::JoinSet<anyhow::Result<()>>;

/// Runs the agent until a termination signal.
pub fn run(config: Config) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(config))
}

/// What is running, for SIGHUP and shutdown.
struct Agent {
    config: Config,
    kernel: Option<Arc<Kernel>>,
    enforcer: Option<Arc<Enforcer>>,
    sessions: Arc<Sessions>,
    listeners: Vec<Arc<dyn Listener>>,
    /// `[cluster]`: the policy comes from etcd.
    cluster: Option<Arc<Node>>,
}

async fn run_async(config: Config) -> anyhow::Result<()> {
    info!(config = %config.source.display(), listeners = config.listeners.len(), kernel = config.kernel.is_some(), "starting vtguard");
    raise_open_files_limit();
    let mut tasks = Tasks::new();
    let kernel = start_kernel(&config, &mut tasks)?;
    let sessions = Arc::new(Sessions::default());
    if let Some(k) = &config.kernel {
        sessions.set_policy(&k.policy, false);
    }
    let mut cluster = None;
    let enforcer = match (&config.tableacl, &config.cluster) {
        (_, Some(c)) => {
            let enforcer = c.acl.as_ref().map(|s| {
                let e = Arc::new(Enforcer::new(crate::acl::TableAcl::default(), s.clone()));
                e.set_source("none yet (cluster)");
                e
            });
            let view = NodeView {
                cell: c.cell.clone(),
                listeners: config
                    .listeners
                    .iter()
                    .map(|l| (l.name.clone(), l.upstream.port()))
                    .collect(),
            };
            info!(node = %c.node, cell = ?c.cell, etcd = %c.etcd.endpoints.join(","), prefix = %c.etcd.prefix, state_dir = %c.state_dir.display(), "cluster config");
            let node = Node::new(
                c.clone(),
                view,
                enforcer.clone(),
                kernel.clone(),
                Arc::clone(&sessions),
                config.kernel.as_ref().map(|k| k.policy.clone()),
            );
            node.start().await?;
            tasks.spawn(Arc::clone(&node).run());
            cluster = Some(node);
            enforcer
        }
        (Some(t), None) => {
            let enforcer = t.start()?;
            if t.reload_interval.is_some() {
                let (t, e) = (t.clone(), Arc::clone(&enforcer));
                tasks.spawn(async move {
                    t.watch(e).await;
                    Ok(())
                });
            }
            Some(enforcer)
        }
        (None, None) => None,
    };
    let mut agent = Agent {
        config,
        kernel,
        enforcer,
        sessions,
        listeners: Vec::new(),
        cluster,
    };
    agent.start_listeners(&mut tasks).await?;
    agent.start_admin(&mut tasks);
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => agent.reload(),
            Some(res) = tasks.join_next() => {
                // Tasks run until the agent stops; one that ends has failed. Enforcement goes
                // on in the kernel, but stop loudly rather than run half-blind.
                return Err(match res {
                    Ok(Ok(())) => anyhow::anyhow!("a task stopped"),
                    Ok(Err(e)) => e,
                    Err(e) => anyhow::Error::from(e).context("task"),
                });
            }
        }
    }
    match &agent.kernel {
        Some(k) => info!(
            bpffs = %k.pin_dir().display(),
            "stopping; kernel programs stay attached (protected ports stay closed); `vtguard kernel detach` removes them"
        ),
        None => info!("stopping"),
    }
    Ok(())
}

/// Attaches (or adopts) the kernel programs with the configured policy, and reads their
/// events on a task.
fn start_kernel(config: &Config, tasks: &mut Tasks) -> anyhow::Result<Option<Arc<Kernel>>> {
    let Some(k) = &config.kernel else {
        warn!(
            "no [kernel] section: upstream ports are not protected, so clients can bypass vtguard"
        );
        return Ok(None);
    };
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
    let k = Arc::clone(&kernel);
    tasks.spawn(async move {
        let mut reader = k.event_reader()?;
        reader
            .run()
            .await
            .map_err(anyhow::Error::from)
            .context("reading kernel events")
    });
    Ok(Some(kernel))
}

impl Agent {
    /// Builds, binds and serves every listener; watches their certificate files.
    async fn start_listeners(&mut self, tasks: &mut Tasks) -> anyhow::Result<()> {
        for l in &self.config.listeners {
            let protected = self
                .config
                .kernel
                .as_ref()
                .is_some_and(|k| k.policy.protected_ports.contains(&l.upstream.port()));
            let deps = Deps {
                kernel: self.kernel.clone(),
                protected,
                acl: self.enforcer.clone(),
                sessions: Arc::clone(&self.sessions),
            };
            let listener = listener::build(l, deps)?;
            let socket = listener::bind(&*listener).await?;
            if l.intercept {
                let kernel = self
                    .kernel
                    .as_ref()
                    .context("intercept needs the kernel programs")?;
                let port = l.upstream.port();
                let at = || format!("listener {}: intercepting port {port}", l.name);
                use std::os::fd::AsFd;
                // The listener's own socket takes its family's connections; a second one on
                // the other family's loopback takes the rest (a socket of one family cannot
                // take the other's; an IPv6 wildcard that is dual-stack takes both).
                let v6 = l.listen.is_ipv6();
                kernel
                    .intercept_with(port, v6, socket.as_fd())
                    .with_context(at)?;
                let dual = v6 && l.listen.ip().is_unspecified();
                if dual {
                    kernel
                        .intercept_with(port, false, socket.as_fd())
                        .with_context(at)?;
                } else {
                    let other: std::net::IpAddr = if v6 {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    };
                    match tokio::net::TcpListener::bind((other, l.listen.port())).await {
                        Ok(extra) => {
                            kernel
                                .intercept_with(port, !v6, extra.as_fd())
                                .with_context(at)?;
                            tasks.spawn(Arc::clone(&listener).serve(extra).map(Ok));
                        }
                        Err(e) => {
                            warn!(listener = %l.name, error = %e, "no {} socket for interception (binding {other}:{}): new {} connections to port {port} are refused", if v6 { "IPv4" } else { "IPv6" }, l.listen.port(), if v6 { "IPv4" } else { "IPv6" })
                        }
                    }
                }
                info!(listener = %l.name, port, "new connections to port {port} on this node's addresses come to this listener");
            }
            tasks.spawn(Arc::clone(&listener).serve(socket).map(Ok));
            let protocol = match l.protocol {
                listener::ProtocolConfig::Grpc(_) => "grpc",
                listener::ProtocolConfig::Mysql(_) => "mysql",
            };
            info!(listener = %l.name, protocol, listen = %l.listen, upstream = %l.upstream, upstream_protected = protected, "listening");
            self.listeners.push(listener);
        }
        if !self.listeners.is_empty() {
            let listeners = self.listeners.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(TLS_RELOAD_INTERVAL);
                loop {
                    tick.tick().await;
                    for l in &listeners {
                        l.core().reload_tls(false);
                    }
                }
            });
        }
        Ok(())
    }

    /// The metrics endpoint (when configured) and the admin API. Without its admin socket the
    /// agent still enforces: it says so, and goes on.
    fn start_admin(&self, tasks: &mut Tasks) {
        let state = Arc::new(crate::admin::State {
            enforcer: self.enforcer.clone(),
            sessions: Arc::clone(&self.sessions),
            kernel: self.kernel.clone(),
            listeners: self.listeners.clone(),
            started: crate::acl::now_unix(),
            cluster: self.cluster.clone(),
        });
        if let Some(addr) = self.config.metrics {
            let (k, s) = (self.kernel.clone(), Arc::clone(&self.sessions));
            let cluster = self.cluster.is_some();
            tasks.spawn(async move {
                crate::metrics::serve(addr, k, s, cluster)
                    .await
                    .map_err(anyhow::Error::from)
            });
        }
        let socket = self.config.admin_socket.clone();
        tokio::spawn(async move {
            if let Err(e) = crate::admin::serve(&socket, state).await {
                error!(error = %e, "admin API not available (vtguard status, vtguard policy …); enforcement goes on");
            }
        });
    }

    /// SIGHUP: the kernel policy from the config file, the table ACL file, certificates.
    fn reload(&self) {
        if let Some(k) = &self.kernel {
            // Applying may wait out the previous generation's grace period: off the async
            // workers.
            let (k, source, sessions, cluster) = (
                Arc::clone(k),
                self.config.source.clone(),
                Arc::clone(&self.sessions),
                self.cluster.clone(),
            );
            tokio::task::spawn_blocking(move || {
                reload_kernel(&k, &source, &sessions, cluster.as_deref())
            });
        }
        if let (Some(e), Some(t)) = (&self.enforcer, &self.config.tableacl) {
            t.reload(e);
        }
        for l in &self.listeners {
            l.core().reload_tls(true);
        }
    }
}

/// Re-reads the config's kernel policy (with the listeners' identities) and applies it (with
/// the cluster policy's grants, under `[cluster]`).
fn reload_kernel(
    kernel: &Kernel,
    source: &std::path::Path,
    sessions: &Sessions,
    cluster: Option<&Node>,
) {
    match Config::load(source) {
        Ok(Config { kernel: Some(new), .. }) => match cluster {
            Some(node) => node.reload_base(new.policy),
            None => {
                apply_kernel_policy(kernel, sessions, &new.policy, "SIGHUP");
            }
        },
        Ok(_) => error!("config reload: the [kernel] section is gone; the previous policy stays in force (detach with `vtguard kernel detach`)"),
        Err(e) => error!(error = %e, "config reload failed; the previous policy stays in force"),
    }
}

/// Puts a kernel policy in force: the one path for SIGHUP and the cluster policy. The open
/// connections of identities it no longer lets through are closed at once, and again after
/// the kernel has the new policy (a reconnect in between went through the old one). Blocking:
/// the kernel may wait out the previous generation's grace period.
pub(crate) fn apply_kernel_policy(
    kernel: &Kernel,
    sessions: &Sessions,
    policy: &KernelPolicy,
    why: &str,
) -> Option<PolicySummary> {
    for c in sessions.set_policy(policy, true) {
        warn!(listener = %c.listener, identity = %c.identity, port = c.port, connections = c.connections, "identity lost access to the upstream: its open connections are closed");
    }
    match kernel.apply_policy(policy) {
        Ok(s) => {
            info!(generation = s.generation, protected_ports = ?s.protected_ports, grants = s.grants, by = why, "kernel policy reloaded");
            sessions.applied();
            Some(s)
        }
        // The kernel keeps the previous policy; vtguard goes on refusing, at its own door, the
        // identities the new one removed.
        Err(e) => {
            error!(error = %e, by = why, "kernel policy reload failed; the kernel keeps the previous policy and vtguard refuses the identities the new one removed");
            None
        }
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

/// Every connection is a descriptor (two with its upstream): the soft RLIMIT_NOFILE (often
/// 1024) is raised to the hard limit, so that the listeners' `max-connections` are the limit
/// that bites, not the process's.
fn raise_open_files_limit() {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return;
        }
        if l.rlim_cur < l.rlim_max {
            let before = l.rlim_cur;
            l.rlim_cur = l.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) == 0 {
                info!(from = before, to = l.rlim_cur, "open-file limit raised");
            } else {
                warn!(limit = before, "cannot raise the open-file limit; connections beyond it are refused by the system");
            }
        }
    }
}

/// The open-file limit in force (what `vtguard status` reports).
pub fn open_files_limit() -> u64 {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid pointer to a local rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } == 0 {
        l.rlim_cur
    } else {
        0
    }
}
