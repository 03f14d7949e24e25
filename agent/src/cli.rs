//! The command line: `vtguard run`, `vtguard status`, `vtguard kernel status|detach`,
//! `vtguard policy load|show|check`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::{
    config::Config,
    kernel::DEFAULT_BPFFS,
    kernel::{self, KernelStatus},
    telemetry::LogFormat,
};

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
    /// invalid file changes nothing.
    Load {
        file: PathBuf,
        /// Report what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// The agent's admin socket.
        #[arg(long, default_value = crate::admin::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// The policy in force, as Vitess tableacl JSON.
    Show {
        /// The agent's admin socket.
        #[arg(long, default_value = crate::admin::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Would this caller be allowed to run this SQL? The decision and the rule that made it.
    Check {
        /// The caller's username (a certificate CN, a MySQL user).
        #[arg(long)]
        user: String,
        /// A group of the caller (repeat for several).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// The SQL to check (several statements are each checked).
        #[arg(long)]
        sql: String,
        /// A Vitess tableacl file to check against, offline (strict, no exempt ACL). Without
        /// it, the running agent's policy and settings decide.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// `secure` or `vitess`. Default: `secure` offline, the agent's own mode online.
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// The agent's admin socket (online check).
        #[arg(long, default_value = crate::admin::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `--mode`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ModeArg {
    Secure,
    Vitess,
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

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let config = Config::load(&config)?;
            crate::app::run(config)
        }
        Command::Policy {
            command:
                PolicyCommand::Load {
                    file,
                    dry_run,
                    socket,
                },
        } => {
            let content = std::fs::read(&file)
                .with_context(|| format!("reading policy {}", file.display()))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let resp = rt.block_on(async {
                let mut c = crate::admin::client(&socket).await?;
                c.load_policy(vtguard_proto::admin::LoadPolicyRequest {
                    content,
                    path: file.display().to_string(),
                    dry_run,
                })
                .await
                .map(|r| r.into_inner())
                .map_err(|s| crate::admin::Error::Rpc(s.message().to_owned()))
            })?;
            for c in &resp.changes {
                println!("{c}");
            }
            if resp.changes.is_empty() {
                println!("no changes");
            }
            println!(
                "{}",
                if resp.applied {
                    "policy loaded"
                } else {
                    "dry run: nothing changed"
                }
            );
            Ok(())
        }
        Command::Policy {
            command: PolicyCommand::Show { socket },
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let resp = rt.block_on(async {
                let mut c = crate::admin::client(&socket).await?;
                c.show_policy(vtguard_proto::admin::ShowPolicyRequest {})
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| crate::admin::Error::Rpc(s.message().to_owned()))
            })?;
            eprintln!(
                "# from {} (loaded at unix time {})",
                resp.source, resp.loaded_at
            );
            println!("{}", resp.json);
            Ok(())
        }
        Command::Policy {
            command:
                PolicyCommand::Check {
                    user,
                    groups,
                    sql,
                    policy,
                    mode,
                    socket,
                    json,
                },
        } => {
            let mode_name = |m: ModeArg| match m {
                ModeArg::Secure => "secure",
                ModeArg::Vitess => "vitess",
            };
            let verdict = match policy {
                Some(policy) => {
                    let acl = crate::acl::TableAcl::load(&policy)?;
                    let settings = crate::acl::Settings {
                        strict: true,
                        dry_run: false,
                        exempt: None,
                        mode: match mode {
                            Some(ModeArg::Vitess) => crate::acl::Mode::Vitess,
                            _ => crate::acl::Mode::Secure,
                        },
                    };
                    let d = crate::acl::decide::decide(&acl, &settings, &user, &groups, &sql);
                    crate::acl::Verdict::new(&acl, &d)
                }
                None => {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let r = rt.block_on(async {
                        let mut c = crate::admin::client(&socket).await?;
                        c.check_policy(vtguard_proto::admin::CheckPolicyRequest {
                            user,
                            groups,
                            sql,
                            mode: mode.map(mode_name).unwrap_or_default().to_owned(),
                        })
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| crate::admin::Error::Rpc(s.message().to_owned()))
                    })?;
                    let some = |s: String| Some(s).filter(|s| !s.is_empty());
                    crate::acl::Verdict {
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
            if json {
                println!("{}", serde_json::to_string(&verdict).context("encoding")?);
            } else {
                print!("{}", verdict.to_text());
            }
            if verdict.decision == "deny" {
                std::process::exit(3);
            }
            Ok(())
        }
        Command::Status { socket, json } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let text = rt.block_on(async {
                let mut c = crate::admin::client(&socket).await?;
                c.status(vtguard_proto::admin::StatusRequest {})
                    .await
                    .map(|r| r.into_inner().json)
                    .map_err(|s| crate::admin::Error::Rpc(s.message().to_owned()))
            })?;
            let v: serde_json::Value =
                serde_json::from_str(&text).context("the agent's status is not JSON")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).context("encoding")?);
            } else {
                print!("{}", status_text(&v));
            }
            Ok(())
        }
        Command::Kernel {
            command: KernelCommand::Status { pins, json },
        } => {
            let dir = pins.dir()?;
            let st = KernelStatus::read(&dir)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&st).context("encoding status")?
                );
            } else {
                print!("{st}");
            }
            Ok(())
        }
        Command::Kernel {
            command: KernelCommand::Detach { pins },
        } => {
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
            Ok(())
        }
    }
}

/// `vtguard status` for people: a table per part.
pub fn status_text(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let s = |x: &serde_json::Value| match x {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    };
    let table = |out: &mut String, head: &[&str], rows: Vec<Vec<String>>| {
        let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
        for r in &rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.len());
            }
        }
        let line = |cells: Vec<String>| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| format!("{c:<width$}", width = w[i]))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
        };
        let _ = writeln!(
            out,
            "{}",
            line(head.iter().map(|h| h.to_string()).collect())
        );
        for r in rows {
            let _ = writeln!(out, "{}", line(r));
        }
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "vtguard pid {}, started at unix time {}\n",
        s(&v["pid"]),
        s(&v["started"])
    );
    let listeners = v["listeners"].as_array().cloned().unwrap_or_default();
    table(
        &mut out,
        &[
            "LISTENER",
            "PROTOCOL",
            "LISTEN",
            "UPSTREAM",
            "TLS",
            "CONNECTIONS",
            "REQUESTS",
            "REFUSED",
        ],
        listeners
            .iter()
            .map(|l| {
                [
                    "name",
                    "protocol",
                    "listen",
                    "upstream",
                    "tls",
                    "connections",
                    "requests",
                    "refused",
                ]
                .iter()
                .map(|k| s(&l[*k]))
                .collect()
            })
            .collect(),
    );
    out.push('\n');
    let conns = v["connections"].as_array().cloned().unwrap_or_default();
    table(
        &mut out,
        &[
            "LISTENER",
            "IDENTITY",
            "CLIENT CONNECTIONS",
            "UPSTREAM CONNECTIONS",
        ],
        conns
            .iter()
            .map(|c| {
                vec![
                    s(&c["listener"]),
                    s(&c["identity"]),
                    s(&c["client_connections"]),
                    s(&c["upstream_connections"]),
                ]
            })
            .collect(),
    );
    out.push('\n');
    match &v["policy"] {
        serde_json::Value::Null => out.push_str("policy: no table ACL configured\n"),
        p => {
            let _ = writeln!(
                out,
                "policy: version {}, {} table group(s), from {}, loaded at unix time {}; mode {}, strict {}, dry run {}, exempt {}",
                s(&p["version"]), s(&p["table_groups"]), s(&p["source"]), s(&p["loaded_at"]),
                s(&p["mode"]), s(&p["strict"]), s(&p["dry_run"]), s(&p["exempt"])
            );
        }
    }
    match &v["kernel"] {
        serde_json::Value::Null => {
            out.push_str("kernel: not configured (upstream ports are not protected)\n")
        }
        k if !k["error"].is_null() => {
            let _ = writeln!(out, "kernel: {}", s(&k["error"]));
        }
        k => {
            let links = k["links"].as_array().cloned().unwrap_or_default();
            let attached: Vec<String> = links
                .iter()
                .filter(|l| l["attached"] == true)
                .map(|l| s(&l["program"]))
                .collect();
            let _ = writeln!(
                out,
                "kernel: {} of {} programs attached [{}] at {}; policy generation {}, protected ports {}, {} grant(s), {} registered socket(s), {} flow(s)",
                attached.len(), links.len(), attached.join(", "), s(&k["bpffs"]), s(&k["generation"]),
                s(&k["protected_ports"]), s(&k["grants"]), s(&k["registered_sockets"]), s(&k["flows"])
            );
            let counters: Vec<String> = k["counters"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|c| format!("{} {}", s(&c[0]), s(&c[1])))
                .collect();
            let _ = writeln!(out, "kernel counters: {}", counters.join(", "));
            let _ = writeln!(
                out,
                "recent kernel denials: {} (vtguard kernel status lists them)",
                k["recent_denials"].as_array().map_or(0, Vec::len)
            );
        }
    }
    out
}
