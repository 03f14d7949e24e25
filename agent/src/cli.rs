//! The command line: `vtguard run`, `vtguard kernel status|detach`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::{
    config::{Config, DEFAULT_BPFFS},
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
        /// A Vitess tableacl file to check against (offline).
        #[arg(long)]
        policy: PathBuf,
        /// `secure` (default) or `vitess`.
        #[arg(long, value_enum, default_value = "secure")]
        mode: ModeArg,
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
                    json,
                },
        } => {
            let acl = crate::acl::TableAcl::load(&policy)?;
            let settings = crate::acl::Settings {
                strict: true,
                dry_run: false,
                exempt: None,
                mode: match mode {
                    ModeArg::Secure => crate::acl::Mode::Secure,
                    ModeArg::Vitess => crate::acl::Mode::Vitess,
                },
            };
            let d = crate::acl::decide::decide(&acl, &settings, &user, &groups, &sql);
            let (decision, role, table, message) = match &d {
                crate::acl::Decision::Allow { reason } => ("allow", None, None, reason.clone()),
                crate::acl::Decision::Deny {
                    message,
                    role,
                    table,
                } => ("deny", *role, table.clone(), message.clone()),
            };
            let group = table
                .as_deref()
                .and_then(|t| acl.group_for(t))
                .map(|g| g.name.clone());
            if json {
                let v = serde_json::json!({
                    "decision": decision,
                    "role": role.map(|r| r.to_string()),
                    "table": table,
                    "group": group,
                    "message": message,
                });
                println!("{v}");
            } else {
                println!("{decision}: {message}");
                if let (Some(r), Some(t)) = (role, &table) {
                    match &group {
                        Some(g) => println!("rule: {r} on {t:?} is granted by group {g:?}, which does not list this caller"),
                        None => println!("rule: no table group covers {t:?}, so nobody holds {r} on it"),
                    }
                }
            }
            if decision == "deny" {
                std::process::exit(3);
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
