//! The agent's configuration: a TOML file whose keys are Vitess flag names without the dashes
//! (where Vitess has one), turned into a validated [`Config`].

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::Deserialize;

/// What went wrong reading or checking the configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The file it came from (for messages).
    pub source: PathBuf,
    pub kernel: KernelConfig,
}

/// The `[kernel]` part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelConfig {
    /// Folder on a BPF filesystem where programs, links and maps are pinned.
    pub bpffs: PathBuf,
    /// cgroup2 directory the programs attach to; `None` = the cgroup2 root from /proc/mounts.
    pub cgroup: Option<PathBuf>,
    /// The kernel half of policy: protected ports, and who may reach each.
    pub policy: KernelPolicy,
}

/// Which ports only vtguard may reach, and which identities its sockets may carry there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelPolicy {
    /// Ports that only sockets registered by vtguard may connect to.
    pub protected_ports: BTreeSet<u16>,
    /// For each protected port, the identities whose sockets may reach it.
    pub access: BTreeMap<u16, BTreeSet<String>>,
}

impl KernelPolicy {
    /// Whether `identity` may reach `port` under this policy.
    pub fn allows(&self, identity: &str, port: u16) -> bool {
        self.protected_ports.contains(&port)
            && self
                .access
                .get(&port)
                .is_some_and(|ids| ids.contains(identity))
    }
}

/// Default pin folder.
pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/vtguard";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    kernel: RawKernel,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawKernel {
    protected_ports: Vec<i64>,
    bpffs: Option<PathBuf>,
    cgroup: Option<PathBuf>,
    #[serde(default)]
    access: Vec<RawAccess>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    port: i64,
    identities: Vec<String>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates `text` (read from `path`, which is used in messages).
    pub fn parse(path: &Path, text: &str) -> Result<Self, Error> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| Error::Parse {
            path: path.to_owned(),
            // toml's message spans several lines (with a source excerpt); keep it on one.
            message: one_line(&e.to_string()),
        })?;
        let invalid = |message: String| Error::Invalid {
            path: path.to_owned(),
            message,
        };
        let k = raw.kernel;
        if k.protected_ports.is_empty() {
            return Err(invalid(
                "[kernel] protected-ports is empty: list the upstream ports only vtguard may reach, e.g. protected-ports = [16991]".into(),
            ));
        }
        let mut protected_ports = BTreeSet::new();
        for p in &k.protected_ports {
            let port =
                valid_port(*p).map_err(|m| invalid(format!("[kernel] protected-ports: {m}")))?;
            if !protected_ports.insert(port) {
                return Err(invalid(format!(
                    "[kernel] protected-ports lists {port} twice: list each port once"
                )));
            }
        }
        let mut access: BTreeMap<u16, BTreeSet<String>> = BTreeMap::new();
        for a in &k.access {
            let port =
                valid_port(a.port).map_err(|m| invalid(format!("[[kernel.access]] port: {m}")))?;
            if !protected_ports.contains(&port) {
                return Err(invalid(format!(
                    "[[kernel.access]] port {port} is not in [kernel] protected-ports: add it there or remove this entry"
                )));
            }
            let ids = access.entry(port).or_default();
            for id in &a.identities {
                if id.is_empty() || id.contains('\0') {
                    return Err(invalid(format!(
                        "[[kernel.access]] port {port}: identity {id:?} is empty or holds a NUL byte"
                    )));
                }
                ids.insert(id.clone());
            }
        }
        let bpffs = k.bpffs.unwrap_or_else(|| PathBuf::from(DEFAULT_BPFFS));
        if !bpffs.is_absolute() {
            return Err(invalid(format!(
                "[kernel] bpffs {} is not an absolute path: use a folder under a BPF filesystem, e.g. {DEFAULT_BPFFS}",
                bpffs.display()
            )));
        }
        if let Some(cg) = &k.cgroup {
            if !cg.is_absolute() {
                return Err(invalid(format!(
                    "[kernel] cgroup {} is not an absolute path: use a cgroup2 directory, e.g. /sys/fs/cgroup",
                    cg.display()
                )));
            }
        }
        Ok(Config {
            source: path.to_owned(),
            kernel: KernelConfig {
                bpffs,
                cgroup: k.cgroup,
                policy: KernelPolicy {
                    protected_ports,
                    access,
                },
            },
        })
    }
}

fn valid_port(p: i64) -> Result<u16, String> {
    match u16::try_from(p) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("{p} is not a TCP port: use 1-65535")),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(Path::new("/etc/vtguard/agent.toml"), text)
    }

    #[test]
    fn full_kernel_section() {
        let c = parse(
            r#"
            [kernel]
            protected-ports = [16991, 13306]
            bpffs = "/sys/fs/bpf/vtg"
            cgroup = "/sys/fs/cgroup"
            [[kernel.access]]
            port = 16991
            identities = ["vtgate client 1", "vtgate client 1"]
            "#,
        )
        .expect("valid config");
        assert_eq!(c.kernel.bpffs, PathBuf::from("/sys/fs/bpf/vtg"));
        assert_eq!(c.kernel.cgroup, Some(PathBuf::from("/sys/fs/cgroup")));
        let p = &c.kernel.policy;
        assert_eq!(p.protected_ports, BTreeSet::from([13306, 16991]));
        assert!(p.allows("vtgate client 1", 16991));
        assert!(!p.allows("vtgate client 1", 13306));
        assert!(!p.allows("vtgate client 2", 16991));
    }

    #[test]
    fn defaults() {
        let c = parse("[kernel]\nprotected-ports = [1]\n").expect("valid config");
        assert_eq!(c.kernel.bpffs, PathBuf::from(DEFAULT_BPFFS));
        assert_eq!(c.kernel.cgroup, None);
        assert!(c.kernel.policy.access.is_empty());
    }

    fn err(text: &str) -> String {
        let e = parse(text).expect_err("config must be refused").to_string();
        assert!(!e.contains('\n'), "error must be one line: {e}");
        assert!(e.starts_with("config /etc/vtguard/agent.toml: "), "{e}");
        e
    }

    #[test]
    fn bad_configs_name_the_key_and_the_fix() {
        let e = err("[kernel]\nprotected-ports = [16991]\nprotected-port = 3\n");
        assert!(e.contains("unknown field `protected-port`"), "{e}");
        let e = err("[kernel]\nprotected-ports = [0]\n");
        assert!(
            e.contains("protected-ports: 0 is not a TCP port: use 1-65535"),
            "{e}"
        );
        let e = err("[kernel]\nprotected-ports = [70000]\n");
        assert!(e.contains("70000 is not a TCP port"), "{e}");
        let e = err("[kernel]\nprotected-ports = []\n");
        assert!(e.contains("protected-ports is empty"), "{e}");
        let e = err("[kernel]\nprotected-ports = [5, 5]\n");
        assert!(e.contains("lists 5 twice"), "{e}");
        let e = err("[kernel]\nprotected-ports = [5]\nbpffs = \"vtg\"\n");
        assert!(e.contains("bpffs vtg is not an absolute path"), "{e}");
        let e = err(
            "[kernel]\nprotected-ports = [5]\n[[kernel.access]]\nport = 6\nidentities = [\"a\"]\n",
        );
        assert!(
            e.contains("port 6 is not in [kernel] protected-ports"),
            "{e}"
        );
        let e = err(
            "[kernel]\nprotected-ports = [5]\n[[kernel.access]]\nport = 5\nidentities = [\"\"]\n",
        );
        assert!(e.contains("identity \"\" is empty"), "{e}");
        let e = err("[kernel]\nprotected-ports = \"16991\"\n");
        assert!(e.contains("protected-ports"), "{e}");
        let e = err("");
        assert!(e.contains("missing field `kernel`"), "{e}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let e = Config::load(Path::new("/nonexistent/vtguard.toml"))
            .expect_err("missing file")
            .to_string();
        assert!(
            e.starts_with("reading config /nonexistent/vtguard.toml: "),
            "{e}"
        );
    }
}
