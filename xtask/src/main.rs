//! Project tasks: `cargo xtask build-ebpf [--check]`, `test`, `fuzz`, `demo`, `bench`.

use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

/// The variable naming the file where the tests record what they skipped (see
/// vtguard_tests::SKIP_LOG_ENV).
const SKIP_LOG_ENV: &str = "VTGUARD_SKIP_LOG";
/// The bpf-linker release that loads rustc's own LLVM (20-22) on these machines.
const BPF_LINKER_VERSION: &str = "0.10.4";
/// The cargo-fuzz release the fuzz passes install (built on stable, run with nightly).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// The fuzz targets (agent/fuzz/fuzz_targets) and their committed seeds (agent/fuzz/seeds).
const FUZZ_TARGETS: [&str; 6] = [
    "differential",
    "classify_no_panic",
    "caller_id_rewrite",
    "grpc_frames",
    "mysql_packets",
    "policy_and_config",
];
/// Seconds each target runs in `cargo xtask test`: with the sanitizer build (about 4 minutes on
/// 2 cores) the six runs keep the step near 6 minutes of CI time (agent/fuzz/README.md); long
/// runs use `cargo xtask fuzz --release --keep-going --seconds N`.
const TEST_FUZZ_SECONDS: u64 = 10;
/// Where the built eBPF object is committed (the agent embeds it from here).
const OBJECT: &str = "ebpf/prebuilt/vtguard.bpf.o";
/// Debian packages the tests drive: bpftool (attachment checks), iproute2 (network
/// namespaces), curl and python3 (real clients), util-linux (setpriv, to run as non-root).
const APT_PACKAGES: [(&str, &str); 12] = [
    ("bpftool", "bpftool"),
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("setpriv", "util-linux"),
    // The MySQL listener's tests and benchmark: a real MariaDB, its CLI, sysbench.
    ("mariadbd", "mariadb-server"),
    ("mariadb", "mariadb-client"),
    ("sysbench", "sysbench"),
    // The cluster policy: etcd-client's build script compiles etcd's protos with protoc, and
    // the cluster tests start a real etcd.
    ("protoc", "protobuf-compiler"),
    // protoc's well-known types (google/protobuf/descriptor.proto), which etcd's protos
    // import: a Recommends of protobuf-compiler, so not there with --no-install-recommends.
    (
        "/usr/include/google/protobuf/descriptor.proto",
        "libprotobuf-dev",
    ),
    ("etcd", "etcd-server"),
    // The agent's allocator: tikv-jemalloc-sys builds jemalloc from source with make.
    ("make", "make"),
];

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Build the kernel programs (nightly, bpf-linker) into the committed object.
    BuildEbpf {
        /// Rebuild and fail if the committed object differs; write nothing.
        #[arg(long)]
        check: bool,
    },
    /// Run every test: installs what is missing, fmt, clippy, eBPF check, unit and end-to-end
    /// tests (the root-only kernel tests included), and a short run of each fuzz target.
    Test,
    /// Run fuzz targets (agent/fuzz) from their committed seeds, one after the other; a crash
    /// fails with the path of its input.
    Fuzz {
        /// Seconds per target.
        #[arg(long, default_value_t = TEST_FUZZ_SECONDS)]
        seconds: u64,
        /// Keep fuzzing after a crash (libFuzzer's -fork=1 -ignore_crashes=1) and report every
        /// crashing input at the end.
        #[arg(long)]
        keep_going: bool,
        /// Build optimized (cargo fuzz -O -a: a few times the executions per second, twice the
        /// build time), for long runs; the default is the smoke-run build `test` uses.
        #[arg(long)]
        release: bool,
        /// Targets to run (default: all of them).
        targets: Vec<String>,
    },
    /// Vitess's encrypted-transport scenario through the real binary (as root for the kernel
    /// steps): the vtguard-demo example (tests/examples/vtguard-demo).
    Demo,
    /// Benchmarks (as root): the kernel hook's cost per connect(), gRPC and MySQL proxy costs
    /// against direct connections, table-ACL decisions, cluster propagation, and the soak.
    Bench,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = project_root();
    match cli.task {
        Task::BuildEbpf { check } => build_ebpf(&root, check).map(|_| ()),
        Task::Test => test(&root),
        Task::Fuzz {
            seconds,
            keep_going,
            release,
            targets,
        } => {
            let targets = if targets.is_empty() {
                FUZZ_TARGETS.iter().map(|t| t.to_string()).collect()
            } else {
                targets
            };
            if let Some(why) = fuzz_toolchain_missing() {
                bail!("cargo xtask fuzz: {why}");
            }
            let runs = fuzz(
                &root,
                &targets,
                &FuzzOptions {
                    seconds,
                    keep_going,
                    release,
                },
            )?;
            println!("{}", fuzz_summary(&runs, seconds));
            Ok(())
        }
        Task::Demo => demo(&root),
        Task::Bench => bench(&root),
    }
}

fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the project root")
        .to_owned()
}

fn is_ci() -> bool {
    env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("+ {}", show(cmd));
    let status = cmd
        .status()
        .with_context(|| format!("starting {}", show(cmd)))?;
    if !status.success() {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok(())
}

/// Runs `cargo test`, echoing its output, and adds up its "test result:" lines.
fn run_counting(cmd: &mut Command) -> Result<(u64, u64)> {
    use std::io::{BufRead, BufReader};
    eprintln!("+ {}", show(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", show(cmd)))?;
    let (mut passed, mut failed) = (0, 0);
    let stdout = child.stdout.take().context("cargo test stdout")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading cargo test output")?;
        println!("{line}");
        if let Some((p, f)) = test_result(&line) {
            passed += p;
            failed += f;
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    if !status.success() && failed == 0 {
        bail!("{} failed ({status})", show(cmd));
    }
    Ok((passed, failed))
}

/// (passed, failed) of a libtest summary line ("test result: ok. 3 passed; 0 failed; …").
fn test_result(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("test result: ")?;
    let (mut passed, mut failed) = (0, 0);
    for part in rest.split(['.', ';']) {
        let mut words = part.split_whitespace();
        match (words.next().map(str::parse::<u64>), words.next()) {
            (Some(Ok(n)), Some("passed")) => passed += n,
            (Some(Ok(n)), Some("failed")) => failed += n,
            _ => {}
        }
    }
    Some((passed, failed))
}

fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Why the eBPF toolchain cannot be used here, with the command that fixes it.
fn ebpf_toolchain_missing() -> Option<String> {
    let sysroot = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(sysroot) = sysroot else {
        return Some(
            "the nightly toolchain is missing: install it with `rustup toolchain install nightly`"
                .into(),
        );
    };
    if !sysroot.join("lib/rustlib/src/rust/library").is_dir() {
        return Some("rust-src is missing for nightly (needed by build-std): install it with `rustup component add rust-src --toolchain nightly`".into());
    }
    None
}

/// Installs bpf-linker into the project-local .tools/ when it is missing; returns its bin dir.
fn ensure_bpf_linker(root: &Path) -> Result<PathBuf> {
    let tools = root.join(".tools/bpf-linker");
    let bin = tools.join("bin");
    let current = Command::new(bin.join("bpf-linker"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
        .unwrap_or(false);
    if !current {
        eprintln!(
            "installing bpf-linker {BPF_LINKER_VERSION} into {} (about 2 minutes)",
            tools.display()
        );
        run(Command::new("cargo")
            .args(["+stable", "install", &format!("bpf-linker@{BPF_LINKER_VERSION}"), "--locked", "--root"])
            .arg(&tools))
        .with_context(|| {
            format!("installing bpf-linker; by hand: cargo +stable install bpf-linker@{BPF_LINKER_VERSION} --locked --root {}", tools.display())
        })?;
    }
    Ok(bin)
}

/// Why the fuzz targets cannot be built here, with the command that fixes it. cargo-fuzz needs
/// nightly for the sanitizer flags (-Zsanitizer); it does not use rust-src (no build-std).
fn fuzz_toolchain_missing() -> Option<String> {
    let nightly = Command::new("rustc")
        .args(["+nightly", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    (!nightly).then(|| {
        "the nightly toolchain is missing (cargo-fuzz builds with its sanitizer flags): install it with `rustup toolchain install nightly`".into()
    })
}

/// Installs cargo-fuzz into the project-local .tools/ when it is missing; returns its bin dir.
fn ensure_cargo_fuzz(root: &Path) -> Result<PathBuf> {
    let tools = root.join(".tools/cargo-fuzz");
    let bin = tools.join("bin");
    let current = Command::new(bin.join("cargo-fuzz"))
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION))
        .unwrap_or(false);
    if !current {
        eprintln!(
            "installing cargo-fuzz {CARGO_FUZZ_VERSION} into {} (about 2 minutes)",
            tools.display()
        );
        run(Command::new("cargo")
            .args(["+stable", "install", &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"), "--locked", "--root"])
            .arg(&tools))
        .with_context(|| {
            format!("installing cargo-fuzz; by hand: cargo +stable install cargo-fuzz@{CARGO_FUZZ_VERSION} --locked --root {}", tools.display())
        })?;
    }
    Ok(bin)
}

/// How `fuzz` runs the targets.
struct FuzzOptions {
    seconds: u64,
    keep_going: bool,
    release: bool,
}

/// What one fuzz target's run did.
struct FuzzRun {
    target: String,
    /// libFuzzer's count of inputs run (its last `#N` status line, or its final stats).
    executions: u64,
    /// Inputs it wrote for crashes, leaks, timeouts or out-of-memory.
    findings: Vec<String>,
}

/// Runs each target for `seconds` from its committed seeds (agent/fuzz/seeds/<target>) and a
/// working corpus that persists in the fuzz build's target dir, with AddressSanitizer, overflow
/// checks and debug assertions (where length arithmetic goes wrong). Fails at the first target
/// that finds something (with `keep_going`, after all of them).
fn fuzz(root: &Path, targets: &[String], o: &FuzzOptions) -> Result<Vec<FuzzRun>> {
    let FuzzOptions {
        seconds,
        keep_going,
        release,
    } = *o;
    if let Some(t) = targets.iter().find(|t| !FUZZ_TARGETS.contains(&t.as_str())) {
        bail!(
            "no fuzz target {t:?}: use one of {} (agent/fuzz/Cargo.toml)",
            FUZZ_TARGETS.join(", ")
        );
    }
    let bin = ensure_cargo_fuzz(root)?;
    let mut path = OsString::from(&bin);
    path.push(":");
    path.push(env::var_os("PATH").unwrap_or_default());
    let fuzz_dir = root.join("agent/fuzz");
    // A CARGO_TARGET_DIR holds the root workspace's build: the fuzz build (other flags, other
    // workspace) goes to a directory of its own below it instead of thrashing it.
    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(d) => PathBuf::from(d).join("fuzz"),
        None => fuzz_dir.join("target"),
    };
    let mut runs = Vec::new();
    for t in targets {
        let corpus = target_dir.join("corpus").join(t);
        fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&fuzz_dir)
            .env("PATH", &path)
            .args(["+nightly", "fuzz", "run"])
            // The dev profile (agent/fuzz/Cargo.toml) builds in half the time; -O -a is
            // cargo-fuzz's optimized build with the same checks.
            .args(if release {
                &["-O", "-a"][..]
            } else {
                &["--dev"][..]
            })
            .arg("--target-dir")
            .arg(&target_dir)
            .arg(t)
            .arg(&corpus)
            .arg(root.join("agent/fuzz/seeds").join(t))
            .args([
                "--",
                &format!("-max_total_time={seconds}"),
                // A hang is a finding too, and must surface within the run.
                "-timeout=10",
                "-print_final_stats=1",
            ]);
        if keep_going {
            cmd.args(["-fork=1", "-ignore_crashes=1"]);
        }
        // cargo-fuzz writes findings to agent/fuzz/artifacts/<target>/.
        let run = fuzz_one(t, &mut cmd, &fuzz_dir.join("artifacts").join(t))?;
        let found = !run.findings.is_empty();
        runs.push(run);
        if found && !keep_going {
            break;
        }
    }
    let findings: Vec<String> = runs
        .iter()
        .flat_map(|r| r.findings.iter().map(move |f| format!("{}: {f}", r.target)))
        .collect();
    if !findings.is_empty() {
        bail!(
            "fuzzing found {} crashing input(s): {}. Reproduce one with `cargo +nightly fuzz run <target> <input>` in agent/fuzz, fix it, and keep it as a regression test next to the code it found (agent/fuzz/README.md)",
            findings.len(),
            findings.join(", ")
        );
    }
    Ok(runs)
}

/// Runs one `cargo fuzz run`, echoing libFuzzer's output (stderr) and reading the execution
/// count from it; the findings are the files that appeared in `artifacts` meanwhile (in fork
/// mode, libFuzzer does not print where it wrote them).
fn fuzz_one(target: &str, cmd: &mut Command, artifacts: &Path) -> Result<FuzzRun> {
    use std::io::{BufRead, BufReader};
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        match fs::read_dir(dir) {
            Ok(entries) => entries
                .map(|e| Ok(e?.path()))
                .collect::<std::io::Result<_>>()
                .with_context(|| format!("listing {}", dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e).with_context(|| format!("listing {}", dir.display())),
        }
    };
    let before = list(artifacts)?;
    eprintln!("+ {}", show(cmd));
    let mut child = cmd
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", show(cmd)))?;
    let stderr = child.stderr.take().context("cargo fuzz stderr")?;
    let mut run = FuzzRun {
        target: target.to_owned(),
        executions: 0,
        findings: Vec::new(),
    };
    for line in BufReader::new(stderr).split(b'\n') {
        let line = line.context("reading cargo fuzz output")?;
        let line = String::from_utf8_lossy(&line);
        eprintln!("{line}");
        if let Some(n) = fuzz_executions(&line) {
            run.executions = run.executions.max(n);
        }
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    run.findings = list(artifacts)?
        .into_iter()
        .filter(|p| !before.contains(p))
        .map(|p| p.display().to_string())
        .collect();
    run.findings.sort();
    if !status.success() && run.findings.is_empty() {
        bail!(
            "{} failed ({status}) without writing a crashing input: see its output above",
            show(cmd)
        );
    }
    Ok(run)
}

/// The inputs run so far, from a libFuzzer status line (`#1234\tNEW cov: …`, `#1234: cov: …`
/// in fork mode) or its final stats (`stat::number_of_executed_units: 1234`).
fn fuzz_executions(line: &str) -> Option<u64> {
    if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
        return n.trim().parse().ok();
    }
    let rest = line.strip_prefix('#')?;
    let end = rest.find(|c: char| !c.is_ascii_digit())?;
    rest[..end].parse().ok()
}

fn fuzz_summary(runs: &[FuzzRun], seconds: u64) -> String {
    let total: u64 = runs.iter().map(|r| r.executions).sum();
    let each: Vec<String> = runs
        .iter()
        .map(|r| format!("{} {}", r.target, r.executions))
        .collect();
    format!(
        "fuzz: {} target(s), {seconds} s each, no crash; {total} executions ({})",
        runs.len(),
        each.join(", ")
    )
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Builds the eBPF object. Returns false when the toolchain is missing (the committed object
/// keeps serving); with `check`, fails when the committed object does not match the sources.
fn build_ebpf(root: &Path, check: bool) -> Result<bool> {
    if let Some(why) = ebpf_toolchain_missing() {
        eprintln!("build-ebpf: {why}; the committed {OBJECT} keeps serving");
        return Ok(false);
    }
    let linker_bin = ensure_bpf_linker(root)?;
    let crate_dir = root.join("ebpf");
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    // The object must not depend on where the project or the cargo registry lives, so that a
    // fresh clone anywhere rebuilds it byte for byte.
    let flags = [
        "-C".to_owned(),
        "debuginfo=2".to_owned(),
        "-C".to_owned(),
        "link-arg=--btf".to_owned(),
        format!("--remap-path-prefix={}=/vtguard", root.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ]
    .join("\x1f");
    let mut path = OsString::from(&linker_bin);
    path.push(":");
    path.push(env::var_os("PATH").unwrap_or_default());
    // Run from ebpf/ so that its .cargo/config.toml (target, build-std) applies.
    run(Command::new("cargo")
        .args([
            "+nightly",
            "build",
            "--package",
            "vtguard-ebpf",
            "--profile",
            "bpf",
            "--locked",
        ])
        .current_dir(&crate_dir)
        .env("PATH", path)
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR"))
    .context("building ebpf/ (cargo +nightly build --profile bpf)")?;
    let built = fs::read(root.join("target/bpfel-unknown-none/bpf/vtguard"))
        .context("reading the built eBPF object")?;
    let committed_path = root.join(OBJECT);
    if check {
        let committed = fs::read(&committed_path).with_context(|| format!("reading {OBJECT}"))?;
        if committed != built {
            bail!(
                "{OBJECT} does not match the kernel sources (committed sha256 {}, rebuilt {}): run `cargo xtask build-ebpf` and commit the object",
                sha256(&committed),
                sha256(&built)
            );
        }
        eprintln!(
            "build-ebpf --check: {OBJECT} matches the sources (sha256 {})",
            sha256(&built)
        );
    } else {
        fs::write(&committed_path, &built).with_context(|| format!("writing {OBJECT}"))?;
        eprintln!(
            "wrote {OBJECT} ({} bytes, sha256 {})",
            built.len(),
            sha256(&built)
        );
    }
    Ok(true)
}

/// Installs the Debian packages the tests need (as root), mounts bpffs.
fn prepare_machine() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .filter(|(cmd, _)| {
            if cmd.starts_with('/') {
                !Path::new(cmd).exists()
            } else {
                !have(cmd)
            }
        })
        .map(|(_, pkg)| *pkg)
        .collect();
    if !missing.is_empty() {
        if !is_root() {
            bail!(
                "missing packages {missing:?}: install them with `sudo apt-get install -y {}`",
                missing.join(" ")
            );
        }
        run(Command::new("apt-get").args(["update", "-qq"]))?;
        run(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"))?;
    }
    // Python clients vtguard did not write, for the interop tests: grpcio (gRPC), PyMySQL and
    // mysql-connector-python (MySQL protocol; its pure-Python mode).
    for (import, packages) in [
        ("import grpc, grpc_tools", &["grpcio", "grpcio-tools"][..]),
        (
            "import pymysql, mysql.connector",
            &["PyMySQL", "mysql-connector-python"][..],
        ),
    ] {
        let has = Command::new("python3")
            .args(["-c", import])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            run(Command::new("python3")
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "--disable-pip-version-check",
                ])
                .args(packages))
            .with_context(|| {
                format!(
                    "installing Python {} (by hand: python3 -m pip install {})",
                    packages.join(", "),
                    packages.join(" ")
                )
            })?;
        }
    }
    if is_root() {
        let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
        let bpffs_mounted = mounts.lines().any(|l| {
            l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
                && l.split_whitespace().nth(2) == Some("bpf")
        });
        if !bpffs_mounted {
            run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
        }
    }
    Ok(())
}

fn test(root: &Path) -> Result<()> {
    prepare_machine()?;
    // The eBPF toolchain: nightly's rust-src (bpf-linker is installed by build-ebpf).
    if ebpf_toolchain_missing().is_some() {
        let _ = run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]));
    }
    let cargo = || {
        let mut c = Command::new("cargo");
        c.current_dir(root);
        c
    };
    run(cargo().args(["fmt", "--all", "--check"]))?;
    // Pass 1: the workspace on stable.
    run(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "vtguard-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // Pass 2: the kernel crate, on nightly for its own target, and the committed object.
    match ebpf_toolchain_missing() {
        None => {
            let bin = ensure_bpf_linker(root)?;
            let mut path = OsString::from(&bin);
            path.push(":");
            path.push(env::var_os("PATH").unwrap_or_default());
            run(Command::new("cargo")
                .args([
                    "+nightly",
                    "clippy",
                    "--package",
                    "vtguard-ebpf",
                    "--profile",
                    "bpf",
                    "--locked",
                    "--",
                    "-D",
                    "warnings",
                ])
                .current_dir(root.join("ebpf"))
                .env("PATH", &path))?;
            build_ebpf(root, true)?;
        }
        Some(why) if is_ci() => {
            bail!("CI needs the eBPF toolchain to check the committed object: {why}")
        }
        Some(why) => eprintln!("skipping the eBPF clippy pass and object check: {why}"),
    }
    run(cargo().args(["build", "--bins"]))?;
    // A test that cannot run here returns early, which the harness counts as passed; it also
    // writes `name: reason` to this file (vtguard_tests::skip), so the summary can say so.
    let skip_log = target_dir(root).join("vtguard-skipped-tests.txt");
    if skip_log.exists() {
        fs::remove_file(&skip_log).with_context(|| format!("removing {}", skip_log.display()))?;
    }
    // Doc tests are left out (there are none): their empty "0 passed" would close the log.
    let (passed, failed) =
        // --no-fail-fast: every test binary runs, and the summary counts them all.
        run_counting(cargo().env(SKIP_LOG_ENV, &skip_log).args([
            "test",
            "--no-fail-fast",
            "--lib",
            "--bins",
            "--tests",
            "--",
            "--nocapture",
        ]))?;
    let skipped: Vec<String> = match fs::read_to_string(&skip_log) {
        Ok(text) => text.lines().map(str::to_owned).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", skip_log.display())),
    };
    let skipped_n = skipped.len() as u64;
    println!(
        "tests: {} passed, {failed} failed, {skipped_n} skipped",
        passed.saturating_sub(skipped_n)
    );
    for s in &skipped {
        println!("  skipped {s}");
    }
    if failed > 0 {
        bail!("{failed} test(s) failed");
    }
    if skipped_n > 0 && is_ci() {
        bail!("{skipped_n} test(s) skipped under CI, where every prerequisite must be present");
    }
    // The fuzz targets, briefly, from their seeds: their own summary line (runs, not tests).
    match fuzz_toolchain_missing() {
        None => {
            let targets: Vec<String> = FUZZ_TARGETS.iter().map(|t| t.to_string()).collect();
            let o = FuzzOptions {
                seconds: TEST_FUZZ_SECONDS,
                keep_going: false,
                release: false,
            };
            let runs = fuzz(root, &targets, &o)?;
            println!("{}", fuzz_summary(&runs, TEST_FUZZ_SECONDS));
        }
        Some(why) if is_ci() => bail!("CI needs the fuzz toolchain: {why}"),
        Some(why) => println!("fuzz: skipped: {why}"),
    }
    Ok(())
}

/// Where cargo builds (CARGO_TARGET_DIR, or target/ in the project).
fn target_dir(root: &Path) -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

/// Builds with `cargo build <args>` and returns the path of the executable cargo reports for
/// `name` (from its JSON messages), so what runs is what was just built.
fn build_executable(root: &Path, args: &[&str], name: &str) -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .arg("build")
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stdout(Stdio::piped());
    eprintln!("+ {}", show(&cmd));
    let out = cmd
        .spawn()
        .and_then(|c| c.wait_with_output())
        .with_context(|| format!("starting {}", show(&cmd)))?;
    if !out.status.success() {
        bail!("{} failed ({})", show(&cmd), out.status);
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact" && msg["target"]["name"] == name {
            if let Some(exe) = msg["executable"].as_str() {
                return Ok(PathBuf::from(exe));
            }
        }
    }
    bail!("{} built no executable named {name}", show(&cmd))
}

fn demo(root: &Path) -> Result<()> {
    if is_root() {
        prepare_machine()?;
    } else {
        println!("xtask demo: not root: the demo runs without the kernel programs (run it with sudo for the whole scenario)");
        if !have("protoc") {
            bail!("building the agent needs protoc (etcd-client compiles etcd's API with it): run `sudo apt-get install protobuf-compiler`, or run `sudo cargo xtask demo`, which installs it");
        }
    }
    let agent = build_executable(
        root,
        &["-p", "vtguard-agent", "--bin", "vtguard"],
        "vtguard",
    )?;
    let demo = build_executable(
        root,
        &["-p", "vtguard-tests", "--example", "vtguard-demo"],
        "vtguard-demo",
    )?;
    // The demo runs the agent binary it is given, never one it finds on its own.
    run(Command::new(demo).env("VTGUARD_BIN", agent))
}

fn bench(root: &Path) -> Result<()> {
    if !is_root() {
        bail!("benchmarks attach kernel programs: run `cargo xtask bench` as root");
    }
    prepare_machine()?;
    // kernel_hook: the hooks' cost per connect(); grpc_proxy: unary Execute through a gRPC
    // listener vs direct; acl: table-ACL decisions and loads; mysql_proxy: sysbench
    // oltp_point_select, 16 threads, through vtguard's MySQL listener (TLS with a client
    // certificate) and straight to MariaDB with TLS, in one run.
    // cluster: 100 agents and a real etcd, time from `policy load` to the last agent applying.
    // soak: one agent process holding 10 000 gRPC connections and 500 MySQL sessions through
    // 1 000 000 checked requests; its RSS and descriptors before, during and after.
    for bench in [
        "kernel_hook",
        "grpc_proxy",
        "acl",
        "mysql_proxy",
        "cluster",
        "intercept",
        "soak",
    ] {
        run(Command::new("cargo").current_dir(root).args([
            "bench",
            "-p",
            "vtguard-tests",
            "--bench",
            bench,
        ]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{fuzz_executions, test_result};

    #[test]
    fn fuzz_executions_are_read_from_status_lines_and_final_stats() {
        assert_eq!(
            fuzz_executions(
                "#65536\tpulse  cov: 1540 ft: 5210 corp: 310/20Kb exec/s: 21845 rss: 90Mb"
            ),
            Some(65536)
        );
        assert_eq!(
            fuzz_executions("#1282633: cov: 3011 ft: 13520 corp: 1771 exec/s: 1424 oom/timeout/crash: 0/0/0 time: 900s job: 64 dft_time: 0"),
            Some(1282633)
        );
        assert_eq!(
            fuzz_executions("stat::number_of_executed_units: 421337"),
            Some(421337)
        );
        assert_eq!(fuzz_executions("INFO: Seed: 1234"), None);
    }

    #[test]
    fn test_result_lines_are_counted() {
        assert_eq!(
            test_result("test result: FAILED. 44 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 84.26s"),
            Some((44, 1))
        );
        assert_eq!(
            test_result("test result: ok. 0 passed; 0 failed; 0 ignored"),
            Some((0, 0))
        );
        assert_eq!(test_result("test agent::x ... ok"), None);
    }
}
