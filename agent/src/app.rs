//! Wiring: what starts, in what order, and how the agent stops.
//!
//! Order: kernel (attach or adopt, policy in first), then the event reader. On SIGTERM or
//! SIGINT the agent exits and the pinned programs stay attached: fail closed. SIGHUP re-reads
//! the config's kernel policy.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::{
    config::Config,
    kernel::{Attach, Kernel, Origin},
};

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
    let k = &config.kernel;
    info!(
        config = %config.source.display(),
        bpffs = %k.bpffs.display(),
        cgroup = ?k.cgroup,
        protected_ports = ?k.policy.protected_ports,
        access = ?k.policy.access,
        "starting vtguard"
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

    let events = {
        let kernel = Arc::clone(&kernel);
        tokio::spawn(async move {
            let mut reader = kernel.event_reader()?;
            reader.run().await
        })
    };

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    tokio::pin!(events);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&kernel, &config),
            res = &mut events => {
                // The reader only ends on an error; enforcement goes on in the kernel, but
                // denials would no longer be logged, so stop loudly.
                let err = match res {
                    Ok(Ok(())) => anyhow::anyhow!("event reader stopped"),
                    Ok(Err(e)) => anyhow::Error::from(e).context("reading kernel events"),
                    Err(e) => anyhow::Error::from(e).context("event reader task"),
                };
                return Err(err);
            }
        }
    }
    info!(
        bpffs = %kernel.pin_dir().display(),
        "stopping; kernel programs stay attached (protected ports stay closed); `vtguard kernel detach` removes them"
    );
    Ok(())
}

fn reload(kernel: &Kernel, config: &Config) {
    match Config::load(&config.source) {
        Ok(new) => match kernel.apply_policy(&new.kernel.policy) {
            Ok(s) => {
                info!(generation = s.generation, protected_ports = ?s.protected_ports, grants = s.grants, "kernel policy reloaded")
            }
            Err(e) => {
                error!(error = %e, "kernel policy reload failed; the previous policy stays in force")
            }
        },
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
