//! The command line: `vtguard run`, `vtguard status`, `vtguard kernel status|detach`,
//! `vtguard policy load|show|check`, and against etcd `vtguard policy load --etcd|history|
//! rollback|status --cluster`.

use std::{
    fmt::Write as _,
    future::Future,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::{builder::TypedValueParser as _, Args, Parser, Subcommand};
use tonic::transport::Channel;
use vtguard_proto::admin::{
    admin_client::AdminClient, CheckPolicyRequest, LoadPolicyRequest, ShowPolicyRequest,
    StatusRequest,
};

use crate::{
    acl::{Mode, Settings, TableAcl, Verdict},
    config::Config,
    kernel::DEFAULT_BPFFS,
    kernel::{self, KernelStatus},
    status::{KernelReport, Status},
    telemetry::LogFormat,
};

/// `vtguard policy check`'s exit status when the SQL is denied.
const DENIED: u8 = 3;

/// vtguard: Vitess transport security, pinned in the kernel.
#[derive(Debug, Parser)]
#[command(name = "vtguard", version, about)]
pub struct Cli {
    /// Log line format.
    #[arg(long, value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: attach (or adopt) the kernel programs and enforce the config's policy.
    Run {
        /// The agent's TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Inspect or remove the kernel programs.
    Kernel {
        #[command(subcommand)]
        command: KernelCommand,
    },
    /// Table ACL policy.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// The running agent: listeners, open connections per identity, policy, kernel state and
    /// counters (through its admin socket).
    Status {
        /// The agent's admin socket.
        #[arg(long, default_value = crate::admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a Vitess tableacl file, print what changes, and swap it in atomically. An
    /// invalid file changes nothing. With --etcd or --config: a cluster policy document,
    /// written to etcd if nobody changed it since it was diffed.
    Load {
        file: PathBuf,
        /// Report what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// List every change (by default the first 50 and a count of the rest).
        #[arg(long)]
        full_diff: bool,
        /// The agent's admin socket.
        #[arg(long, default_value = crate::admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Cluster: write only if etcd's policy is still at this revision (the one a dry run
        /// showed).
        #[arg(long, value_name = "REV")]
        if_revision: Option<i64>,
        #[command(flatten)]
        cluster: ClusterArgs,
    },
    /// Cluster: the revisions of the policy etcd still keeps, newest first.
    History {
        #[command(flatten)]
        cluster: ClusterArgs,
        /// At most this many revisions.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Cluster: write revision REV's document again, as a new revision.
    Rollback {
        rev: i64,
        #[command(flatten)]
        cluster: ClusterArgs,
        /// Report what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Cluster: which revision every node enforces (exit 4 if one lags or refused it).
    Status {
        /// Read every node's state from etcd (required: the local agent's is `vtguard status`).
        #[arg(long, required = true)]
        cluster: bool,
        #[command(flatten)]
        etcd: ClusterArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The policy in force, as Vitess tableacl JSON.
    Show {
        /// The agent's admin socket.
        #[arg(long, default_value = crate::admin::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Would this caller be allowed to run this SQL? The decision and the rule that made it.
    Check(CheckArgs),
}

/// Where etcd is: `--etcd URL…` (with `--prefix` and TLS files) or an agent config's
/// `[cluster]`.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// etcd client URL (repeat for several).
    #[arg(long = "etcd", value_name = "URL")]
    pub etcd: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, requires = "etcd")]
    pub prefix: Option<String>,
    /// CA bundle for https:// endpoints.
    #[arg(long, requires = "etcd")]
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate for etcd.
    #[arg(long, requires = "etcd")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key for etcd.
    #[arg(long, requires = "etcd")]
    pub etcd_key: Option<PathBuf>,
    /// Take etcd's address from this agent config's [cluster].
    #[arg(long, short, conflicts_with = "etcd")]
    pub config: Option<PathBuf>,
}

impl ClusterArgs {
    fn is_set(&self) -> bool {
        !self.etcd.is_empty() || self.config.is_some()
    }

    /// The etcd to talk to.
    fn etcd(&self) -> anyhow::Result<crate::cluster::EtcdConfig> {
        if let Some(c) = &self.config {
            return Ok(Config::load(c)?
                .cluster
                .with_context(|| {
                    format!(
                        "config {} has no [cluster] section: give --etcd URL",
                        c.display()
                    )
                })?
                .etcd);
        }
        if self.etcd.is_empty() {
            anyhow::bail!("where is etcd? give --etcd URL (repeat for several) or --config with a [cluster] section");
        }
        crate::config::etcd_config(
            self.etcd.clone(),
            self.prefix.clone(),
            self.etcd_ca.clone(),
            self.etcd_cert.clone(),
            self.etcd_key.clone(),
        )
        .map_err(|m| anyhow::anyhow!("{}", m.replace("[cluster] etcd", "--etcd")))
    }
}

/// `vtguard policy check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The caller's username (a certificate CN, a MySQL user).
    #[arg(long)]
    pub user: String,
    /// A group of the caller (repeat for several).
    #[arg(long = "group")]
    pub groups: Vec<String>,
    /// The SQL to check (several statements are each checked).
    #[arg(long)]
    pub sql: String,
    /// A Vitess tableacl file to check against, offline (strict, no exempt ACL). Without
    /// it, the running agent's policy and settings decide.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// `secure` or `vitess`. Default: `secure` offline, the agent's own mode online.
    #[arg(
        long,
        value_parser = clap::builder::PossibleValuesParser::new(["secure", "vitess"])
            .try_map(|m| m.parse::<Mode>())
    )]
    pub mode: Option<Mode>,
    /// The agent's admin socket (online check).
    #[arg(long, default_value = crate::admin::DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum KernelCommand {
    /// Attached programs, pinned maps, policy, counters and the last denials.
    Status {
        #[command(flatten)]
        pins: PinArgs,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Detach every program and remove the pins: protected ports open up again.
    Detach {
        #[command(flatten)]
        pins: PinArgs,
    },
}

/// Where the pins are: from a config file, or given directly.
#[derive(Debug, Args)]
pub struct PinArgs {
    /// Take [kernel] bpffs from this agent config.
    #[arg(long, short, conflicts_with = "bpffs")]
    pub config: Option<PathBuf>,
    /// The bpffs folder holding vtguard's pins.
    #[arg(long)]
    pub bpffs: Option<PathBuf>,
}

impl PinArgs {
    fn dir(&self) -> anyhow::Result<PathBuf> {
        Ok(match (&self.config, &self.bpffs) {
            (Some(c), _) => {
                Config::load(c)?
                    .kernel
                    .with_context(|| {
                        format!(
                            "config {} has no [kernel] section: give --bpffs",
                            c.display()
                        )
                    })?
                    .bpffs
            }
            (None, Some(b)) => b.clone(),
            (None, None) => PathBuf::from(DEFAULT_BPFFS),
        })
    }
}

/// Runs a parsed command line: prints an error as one line on stderr, and says how the
/// process exits.
pub fn run(cli: Cli) -> ExitCode {
    match execute(cli) {
        Ok(code) => code,
        Err(e) => {
            // One line: what failed, on which input, and the fix (the error chain joined).
            eprintln!("vtguard: error: {}", crate::telemetry::one_line(&e));
            ExitCode::FAILURE
        }
    }
}

fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config } => {
            crate::app::run(Config::load(&config)?)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Policy { command } => match command {
            PolicyCommand::Load {
                file,
                dry_run,
                full_diff,
                socket,
                if_revision,
                cluster,
            } => {
                if cluster.is_set() {
                    crate::cluster::command::load(&cluster.etcd()?, &file, dry_run, if_revision)
                } else if if_revision.is_some() {
                    anyhow::bail!("--if-revision is for the cluster policy: give --etcd URL or --config with [cluster]")
                } else {
                    policy_load(&file, dry_run, full_diff, &socket)
                }
            }
            PolicyCommand::History {
                cluster,
                limit,
                json,
            } => crate::cluster::command::history(&cluster.etcd()?, limit, json),
            PolicyCommand::Rollback {
                rev,
                cluster,
                dry_run,
            } => crate::cluster::command::rollback(&cluster.etcd()?, rev, dry_run),
            PolicyCommand::Status { etcd, json, .. } => {
                crate::cluster::command::status(&etcd.etcd()?, json)
            }
            PolicyCommand::Show { socket } => policy_show(&socket),
            PolicyCommand::Check(args) => policy_check(args),
        },
        Command::Status { socket, json } => status(&socket, json),
        Command::Kernel { command } => match command {
            KernelCommand::Status { pins, json } => kernel_status(&pins, json),
            KernelCommand::Detach { pins } => kernel_detach(&pins),
        },
    }
}

/// One call to the agent's admin API.
fn admin<T, F, Fut>(socket: &Path, call: F) -> anyhow::Result<T>
where
    F: FnOnce(AdminClient<Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the admin client")?;
    let reply = rt.block_on(async {
        let client = crate::admin::client(socket).await?;
        call(client)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| crate::admin::Error::Rpc(s.message().to_owned()))
    })?;
    Ok(reply)
}

/// Change lines `policy load` prints unless `--full-diff`.
const SHOWN_CHANGES: u32 = 50;

fn policy_load(
    file: &Path,
    dry_run: bool,
    full_diff: bool,
    socket: &Path,
) -> anyhow::Result<ExitCode> {
    let content =
        std::fs::read(file).with_context(|| format!("reading policy {}", file.display()))?;
    let path = file.display().to_string();
    let req = LoadPolicyRequest {
        content,
        path: path.clone(),
        dry_run,
        max_changes: if full_diff { 0 } else { SHOWN_CHANGES },
    };
    // The version before, so that a reply lost after the agent applied the policy is not
    // reported as a failure (nor a failure as success).
    let before = policy_version(socket);
    let resp = match admin(socket, |mut c| async move { c.load_policy(req).await }) {
        Ok(r) => r,
        Err(e) => {
            let after = policy_version(socket);
            return match (before, after) {
                (Some((b, _)), Some((a, source))) if !dry_run && a > b && source == path => {
                    println!("policy loaded (version {a}); the agent's reply was lost: {e:#}");
                    Ok(ExitCode::SUCCESS)
                }
                _ => Err(e),
            };
        }
    };
    for c in &resp.changes {
        println!("{c}");
    }
    let shown = resp.changes.len() as u64;
    if resp.total_changes > shown {
        println!(
            "… and {} more changes ({} in all; --full-diff lists them all)",
            resp.total_changes - shown,
            resp.total_changes
        );
    }
    if resp.total_changes == 0 {
        println!("no changes");
    }
    if resp.applied {
        println!(
            "policy loaded: version {}, {} changes",
            resp.version, resp.total_changes
        );
    } else {
        println!("dry run: nothing changed");
    }
    Ok(ExitCode::SUCCESS)
}

/// The policy version in force and where it came from, if the agent answers.
fn policy_version(socket: &Path) -> Option<(u64, String)> {
    let resp = admin(
        socket,
        |mut c| async move { c.status(StatusRequest {}).await },
    )
    .ok()?;
    let status: crate::status::Status = serde_json::from_str(&resp.json).ok()?;
    status.policy.map(|p| (p.version, p.source))
}

fn policy_show(socket: &Path) -> anyhow::Result<ExitCode> {
    let resp = admin(socket, |mut c| async move {
        c.show_policy(ShowPolicyRequest {}).await
    })?;
    eprintln!(
        "# from {} (loaded at unix time {})",
        resp.source, resp.loaded_at
    );
    println!("{}", resp.json);
    Ok(ExitCode::SUCCESS)
}

/// Exits [`DENIED`] when the SQL is denied, so that scripts can branch on it.
fn policy_check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let verdict = match &args.policy {
        Some(policy) => {
            let acl = TableAcl::load(policy)?;
            let settings = Settings {
                strict: true,
                dry_run: false,
                exempt: None,
                mode: args.mode.unwrap_or(Mode::Secure),
            };
            let d =
                crate::acl::decide::decide(&acl, &settings, &args.user, &args.groups, &args.sql);
            Verdict::new(&acl, &d)
        }
        None => {
            let req = CheckPolicyRequest {
                user: args.user,
                groups: args.groups,
                sql: args.sql,
                mode: args.mode.map(|m| m.to_string()).unwrap_or_default(),
            };
            let r = admin(
                &args.socket,
                |mut c| async move { c.check_policy(req).await },
            )?;
            let some = |s: String| Some(s).filter(|s| !s.is_empty());
            Verdict {
                decision: if r.decision == "allow" {
                    "allow"
                } else {
                    "deny"
                },
                role: some(r.role),
                table: some(r.table),
                group: some(r.group),
                message: r.message,
            }
        }
    };
    if args.json {
        println!("{}", serde_json::to_string(&verdict).context("encoding")?);
    } else {
        print!("{}", verdict.to_text());
    }
    Ok(if verdict.decision == "deny" {
        ExitCode::from(DENIED)
    } else {
        ExitCode::SUCCESS
    })
}

fn status(socket: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let text = admin(
        socket,
        |mut c| async move { c.status(StatusRequest {}).await },
    )?
    .json;
    let status: Status = serde_json::from_str(&text).context(
        "reading the agent's status: is the agent the same vtguard version as this CLI?",
    )?;
    if json {
        // Through a JSON value: keys sorted, as `--json` has always printed them.
        let v = serde_json::to_value(&status).context("encoding")?;
        println!("{}", serde_json::to_string_pretty(&v).context("encoding")?);
    } else {
        print!("{}", status_text(&status));
    }
    Ok(ExitCode::SUCCESS)
}

fn kernel_status(pins: &PinArgs, json: bool) -> anyhow::Result<ExitCode> {
    let st = KernelStatus::read(&pins.dir()?)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&st).context("encoding status")?
        );
    } else {
        print!("{st}");
    }
    Ok(ExitCode::SUCCESS)
}

fn kernel_detach(pins: &PinArgs) -> anyhow::Result<ExitCode> {
    let dir = pins.dir()?;
    let report = kernel::detach(&dir)?;
    if report.pins_removed == 0 {
        println!("nothing pinned under {}: nothing to detach", dir.display());
    } else {
        println!(
            "detached {} program(s) [{}], removed {} pin(s) and {}",
            report.links_detached.len(),
            report.links_detached.join(", "),
            report.pins_removed,
            dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
pub(crate) fn table<const N: usize>(out: &mut String, head: [&str; N], rows: &[[String; N]]) {
    let mut w = head.map(str::len);
    for r in rows {
        for (w, c) in w.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let text = cells
            .zip(w)
            .map(|(c, width)| format!("{c:<width$}"))
            .collect::<Vec<_>>()
            .join("  ");
        let _ = writeln!(out, "{}", text.trim_end());
    };
    line(&mut head.iter().copied());
    for r in rows {
        line(&mut r.iter().map(String::as_str));
    }
}

/// `vtguard status` for people: a table per part.
pub fn status_text(s: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vtguard pid {}, started at unix time {}\n",
        s.pid, s.started
    );
    let listeners: Vec<[String; 8]> = s
        .listeners
        .iter()
        .map(|l| {
            [
                l.name.clone(),
                l.protocol.to_string(),
                l.listen.to_string(),
                l.upstream.to_string(),
                l.tls.to_string(),
                l.counts.connections.to_string(),
                l.counts.requests.to_string(),
                l.counts.refused.to_string(),
            ]
        })
        .collect();
    table(
        &mut out,
        [
            "LISTENER",
            "PROTOCOL",
            "LISTEN",
            "UPSTREAM",
            "TLS",
            "CONNECTIONS",
            "REQUESTS",
            "REFUSED",
        ],
        &listeners,
    );
    out.push('\n');
    let connections: Vec<[String; 4]> = s
        .connections
        .iter()
        .map(|c| {
            [
                c.listener.clone(),
                c.identity.clone(),
                c.client_connections.to_string(),
                c.upstream_connections.to_string(),
            ]
        })
        .collect();
    table(
        &mut out,
        [
            "LISTENER",
            "IDENTITY",
            "CLIENT CONNECTIONS",
            "UPSTREAM CONNECTIONS",
        ],
        &connections,
    );
    out.push('\n');
    match &s.policy {
        None => out.push_str("policy: no table ACL configured\n"),
        Some(p) => {
            let _ = writeln!(
                out,
                "policy: version {}, {} table group(s), from {}, loaded at unix time {}; mode {}, strict {}, dry run {}, exempt {}",
                p.version, p.table_groups, p.source, p.loaded_at,
                p.mode, p.strict, p.dry_run, p.exempt.as_deref().unwrap_or("-")
            );
        }
    }
    if let Some(c) = &s.cluster {
        let _ =
            writeln!(
            out,
            "cluster: {} since unix time {}, enforcing revision {} ({}); node {}{}, etcd {} {}{}",
            if c.connected { "connected" } else { "disconnected" },
            c.since,
            c.revision,
            c.source,
            c.node,
            c.cell.as_deref().map(|x| format!(" in cell {x}")).unwrap_or_default(),
            c.endpoints.join(","),
            c.prefix,
            c.error
                .as_deref()
                .map(|e| format!("; refused revision {}: {e}", c.seen))
                .unwrap_or_default(),
        );
    }
    match &s.kernel {
        None => out.push_str("kernel: not configured (upstream ports are not protected)\n"),
        Some(KernelReport::Unreadable { error }) => {
            let _ = writeln!(out, "kernel: {error}");
        }
        Some(KernelReport::Read(k)) => {
            let attached: Vec<&str> = k
                .links
                .iter()
                .filter(|l| l.attached)
                .map(|l| &*l.program)
                .collect();
            let ports: Vec<String> = k.protected_ports.iter().map(u16::to_string).collect();
            let _ = writeln!(
                out,
                "kernel: {} of {} programs attached [{}] at {}; policy generation {}, protected ports [{}], {} grant(s), {} registered socket(s), {} flow(s)",
                attached.len(), k.links.len(), attached.join(", "), k.bpffs.display(),
                k.generation.map_or("-".into(), |g| g.to_string()),
                ports.join(","), k.grants, k.registered_sockets, k.flows
            );
            let counters: Vec<String> = k
                .counters
                .iter()
                .map(|(name, n)| format!("{name} {n}"))
                .collect();
            let _ = writeln!(out, "kernel counters: {}", counters.join(", "));
            let _ = writeln!(
                out,
                "recent kernel denials: {} (vtguard kernel status lists them)",
                k.recent_denials.len()
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, collections::BTreeSet};

    use super::*;
    use crate::{
        kernel::{Denial, LinkStatus},
        status::tests::sample,
    };

    fn kernel() -> KernelReport {
        KernelReport::Read(KernelStatus {
            bpffs: "/sys/fs/bpf/vtguard".into(),
            agent_running: true,
            links: ["vtg_connect4", "vtg_connect6", "vtg_ingress"]
                .into_iter()
                .enumerate()
                .map(|(i, p)| LinkStatus {
                    program: p.into(),
                    section: "cgroup".into(),
                    attached: i != 1,
                    link_id: Some(i as u32),
                    program_id: Some(10 + i as u32),
                })
                .collect(),
            maps: vec![(Cow::Borrowed("VTG_FLOWS"), true)],
            generation: Some(1),
            protected_ports: BTreeSet::from([16991, 17100]),
            grants: 4,
            registered_sockets: 0,
            flows: 2,
            counters: vec![("connect_allowed".into(), 9), ("events_lost".into(), 0)],
            recent_denials: vec![Denial {
                seq: 1,
                ts_ns: 5,
                reason: "unregistered_socket".into(),
                hook: "connect4".into(),
                pid: 1,
                uid: 0,
                comm: "nc".into(),
                cgroup_id: 1,
                cookie: 2,
                identity: None,
                destination: "127.0.0.1:16991".parse().expect("addr"),
                source: None,
            }],
            owners: Vec::new(),
        })
    }

    /// The text the untyped status printed for the same state (before status was a type).
    #[test]
    fn text_is_as_before() {
        assert_eq!(
            status_text(&sample(Some(kernel()))),
            "\
vtguard pid 4242, started at unix time 1700000000

LISTENER       PROTOCOL  LISTEN           UPSTREAM         TLS    CONNECTIONS  REQUESTS  REFUSED
vttablet       grpc      127.0.0.1:16001  127.0.0.1:16991  true   12           2         1
mysql-primary  mysql     [::1]:3306       127.0.0.1:17100  false  0            0         0

LISTENER  IDENTITY         CLIENT CONNECTIONS  UPSTREAM CONNECTIONS
vttablet  vtgate client 1  1                   10

policy: version 2, 3 table group(s), from /etc/vtguard/acl.json, loaded at unix time 1700000100; mode secure, strict true, dry run false, exempt -
kernel: 2 of 3 programs attached [vtg_connect4, vtg_ingress] at /sys/fs/bpf/vtguard; policy generation 1, protected ports [16991,17100], 4 grant(s), 0 registered socket(s), 2 flow(s)
kernel counters: connect_allowed 9, events_lost 0
recent kernel denials: 1 (vtguard kernel status lists them)
"
        );
        let text = status_text(&Status {
            policy: None,
            kernel: Some(KernelReport::Unreadable {
                error: "not root".into(),
            }),
            ..sample(None)
        });
        assert!(
            text.ends_with("policy: no table ACL configured\nkernel: not root\n"),
            "{text}"
        );
    }

    /// What the CLI reads is what the agent sent, kernel state included.
    #[test]
    fn status_reads_back() {
        let s = sample(Some(kernel()));
        let json = serde_json::to_string(&s).expect("encodes");
        assert_eq!(serde_json::from_str::<Status>(&json).expect("reads"), s);
    }

    #[test]
    fn mode_flag_takes_the_two_modes_only() {
        let parse = |m: &str| {
            Cli::try_parse_from([
                "vtguard", "policy", "check", "--user", "u", "--sql", "s", "--mode", m,
            ])
        };
        match parse("vitess").expect("vitess").command {
            Command::Policy {
                command: PolicyCommand::Check(a),
            } => assert_eq!(a.mode, Some(Mode::Vitess)),
            other => panic!("{other:?}"),
        }
        let e = parse("lax").expect_err("lax").to_string();
        assert!(e.contains("[possible values: secure, vitess]"), "{e}");
    }
}
