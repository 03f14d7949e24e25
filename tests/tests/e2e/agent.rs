//! The `vtguard` binary as an operator runs it: fail closed after `kill -9`, adopt pins on
//! restart, log each denial, detach explicitly, and refuse bad input with a one-line error.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use vtguard_tests::{
    fixtures::{kernel_section, tableacl_section, Listener},
    *,
};

use crate::{spawn_agent, vtguard_bin};

/// The agent as these tests run it: JSON log lines.
type Agent = vtguard_tests::agent::AgentProcess;

/// Starts `vtguard run` and waits until it logs `ready`.
fn start_until(config: &Path, ready: &str) -> Agent {
    let agent = spawn_agent(&["--log-format", "json"], config).expect("start vtguard run");
    agent.wait_for(ready);
    agent
}

fn start(config: &Path) -> Agent {
    start_until(config, "kernel enforcement active")
}

fn kill_9(mut agent: Agent) {
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGKILL) };
    let status = agent.child.wait().expect("wait for the agent");
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}

/// Detaches whatever the test left under `dir`, also when it fails.
struct PinGuard(PathBuf);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = vtguard_agent::kernel::detach(&self.0);
    }
}

fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("agent.toml");
    fs::write(&path, body).expect("write config");
    path
}

fn vtguard(args: &[&str]) -> (i32, String, String) {
    sh(Command::new(vtguard_bin()).args(args))
}

/// Every kernel program vtguard attaches.
const PROGRAMS: [&str; 5] = vtguard_common::programs::ALL;

/// python3 (uid 0, this cgroup) binding 127.0.0.1:`port`: "OK" or "ERR <errno>".
fn bind_errno(port: u16) -> String {
    let (code, out, err) = sh(Command::new("python3").args([
        "-c",
        "import socket,sys\ns=socket.socket()\ntry:\n s.bind(('127.0.0.1',int(sys.argv[1]))); print('OK')\nexcept OSError as e:\n print('ERR %d' % e.errno)",
        &port.to_string(),
    ]));
    assert_eq!(code, 0, "{err}");
    out.trim().to_owned()
}

fn link_ids(status_json: &str) -> Vec<u64> {
    let v: serde_json::Value = serde_json::from_str(status_json).expect("status is JSON");
    v["links"]
        .as_array()
        .expect("links")
        .iter()
        .map(|l| l["link_id"].as_u64().expect("every program attached"))
        .collect()
}

#[test]
fn kill_9_keeps_ports_closed_and_a_restart_adopts_the_pins() {
    if !kernel_tests_can_run("kill_9_keeps_ports_closed_and_a_restart_adopts_the_pins") {
        return;
    }
    let _serial = serial();
    let tmp = tempfile::tempdir().expect("tempdir");
    let (protected, open) = (free_port(), free_port());
    let _s1 = Server::start(protected);
    let _s2 = Server::start(open);
    let pins = test_pin_dir();
    let _guard = PinGuard(pins.clone());
    let config = write_config(
        tmp.path(),
        &format!(
            "{}[[kernel.owner]]\nport = {protected}\nuid = 4242\n",
            kernel_section(
                &[protected],
                Some(&pins),
                &[(protected, &["vtgate client 1"])],
            )
        ),
    );
    let cfg = config.to_str().expect("utf-8 path");
    let cgroup = vtguard_agent::kernel::resolve_cgroup(None).expect("cgroup2 root");

    let agent = start(&config);
    assert_eq!(
        vtguard_attachments(&cgroup).len(),
        PROGRAMS.len(),
        "one attachment per hook"
    );
    let r = py_connect(None, "127.0.0.1", protected, 3.0, "connect");
    assert_eq!(r.outcome, "ERR 1 Operation not permitted");
    // The refused connect shows up in the agent's log with its pid and destination.
    let line = agent.wait_for(&format!("\"pid\":{}", r.pid));
    assert!(
        line.contains(&format!("\"dst\":\"127.0.0.1:{protected}\"")),
        "{line}"
    );
    assert!(
        line.contains("\"reason\":\"unregistered_socket\""),
        "{line}"
    );
    assert!(line.contains("\"comm\":\"python3\""), "{line}");

    // Detach is refused while the agent runs: it would go on enforcing nothing.
    let (code, _, err) = vtguard(&["kernel", "detach", "--config", cfg]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("in use by another running vtguard agent: stop it first"),
        "{err}"
    );

    // The bind guard: only uid 4242 may bind the port; the refusal is logged like a connect's.
    assert_eq!(bind_errno(protected), "ERR 1", "bind of the protected port");
    let line = agent.wait_for("\"reason\":\"bind_not_owner\"");
    assert!(line.contains("\"comm\":\"python3\""), "{line}");

    let (code, before, err) = vtguard(&["kernel", "status", "--config", cfg, "--json"]);
    assert_eq!(code, 0, "{err}");
    let ids_before = link_ids(&before);

    kill_9(agent);
    // Fail closed: the pinned programs still refuse plain connects, on every family.
    for host in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        let r = py_connect(None, host, protected, 3.0, "connect");
        assert_eq!(
            r.outcome, "ERR 1 Operation not permitted",
            "after kill -9, {host}"
        );
    }
    assert_eq!(
        py_connect(None, "127.0.0.1", open, 3.0, "connect").outcome,
        "CONNECTED hello"
    );
    // The bind guard too, agent or no agent.
    assert_eq!(bind_errno(protected), "ERR 1", "bind after kill -9");
    let (code, text, err) = vtguard(&["kernel", "status", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("not running (pinned programs keep enforcing)"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "bind guard: port {protected}: any cgroup, uid 4242"
        )),
        "{text}"
    );
    assert!(text.contains("refused (bind_not_owner): pid"), "{text}");
    assert!(
        text.contains(&format!("protected ports [{protected}]")),
        "{text}"
    );
    assert!(
        text.contains("refused (unregistered_socket): pid"),
        "{text}"
    );

    // A restarted agent adopts the pins: same links, still one attachment per hook.
    let agent = start(&config);
    for prog in PROGRAMS {
        agent.wait_for(&format!("adopted {prog}"));
    }
    let attachments = vtguard_attachments(&cgroup);
    assert_eq!(
        attachments.len(),
        PROGRAMS.len(),
        "no second attachment: {attachments:#?}"
    );
    let (code, after, err) = vtguard(&["kernel", "status", "--config", cfg, "--json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(link_ids(&after), ids_before, "the same links were adopted");
    assert_eq!(
        py_connect(None, "::1", protected, 3.0, "connect").outcome,
        "ERR 1 Operation not permitted"
    );

    // A clean stop leaves them attached too; only detach opens the port.
    drop(agent);
    assert_eq!(
        py_connect(None, "127.0.0.1", protected, 3.0, "connect").outcome,
        "ERR 1 Operation not permitted"
    );
    let (code, out, err) = vtguard(&["kernel", "detach", "--config", cfg]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("detached 5 program(s)"), "{out}");
    assert!(
        vtguard_attachments(&cgroup).is_empty(),
        "detach removed every attachment"
    );
    assert!(!pins.exists(), "detach removed the pin folder");
    for host in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
        assert_eq!(
            py_connect(None, host, protected, 3.0, "connect").outcome,
            "CONNECTED hello",
            "after detach, {host}"
        );
    }
    let (code, out, _) = vtguard(&["kernel", "detach", "--config", cfg]);
    assert_eq!(code, 0);
    assert!(out.starts_with("nothing pinned under"), "{out}");
}

/// Runs `vtguard run` on a config that must be refused; checks the one-line error and that
/// nothing was attached or pinned.
fn refused(body: &str, expect: &[&str]) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_config(tmp.path(), body);
    let (code, out, err) = vtguard(&["run", "--config", config.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "exit status for {body:?}: {err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("vtguard: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {err}");
    for e in expect {
        assert!(errors[0].contains(e), "{e:?} not in {:?}", errors[0]);
    }
    assert!(out.is_empty(), "{out}");
}

#[test]
fn bad_input_gets_one_line_naming_the_cause_and_the_fix() {
    // Config errors come before any kernel work, so they need no root.
    refused(
        "[kernel]\nprotected-ports = [16991]\nprotected-port = 1\n",
        &["agent.toml", "unknown field `protected-port`"],
    );
    refused(
        "[kernel]\nprotected-ports = [0]\n",
        &["protected-ports: 0 is not a TCP port: use 1-65535"],
    );
    refused(
        "[kernel]\nprotected-ports = [1]\n[telemetry]\nlisten = 1\n",
        &["unknown field `telemetry`"],
    );
    refused(
        "[kernel]\nprotected-ports = [1]\n[metrics]\nlisten = \"9465\"\n",
        &["[metrics] listen \"9465\" is not an address: use ip:port"],
    );
    let (code, _, err) = vtguard(&["run", "--config", "/nonexistent/agent.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("reading config /nonexistent/agent.toml: No such file or directory"),
        "{err}"
    );
}

#[test]
fn bad_kernel_input_gets_one_line_naming_the_cause_and_the_fix() {
    if !kernel_tests_can_run("bad_kernel_input_gets_one_line_naming_the_cause_and_the_fix") {
        return;
    }
    let _serial = serial();
    let cgroup = vtguard_agent::kernel::resolve_cgroup(None).expect("cgroup2 root");
    let port = free_port();

    // bpffs folder not on a BPF filesystem.
    let tmp = tempfile::tempdir().expect("tempdir");
    let not_bpffs = tmp.path().join("pins");
    refused(
        &format!(
            "[kernel]\nprotected-ports = [{port}]\nbpffs = \"{}\"\n",
            not_bpffs.display()
        ),
        &["is not a BPF filesystem", "mount -t bpf bpf"],
    );
    assert!(!not_bpffs.exists(), "nothing created");

    // cgroup that is not cgroup2.
    let pins = test_pin_dir();
    let _guard = PinGuard(pins.clone());
    refused(
        &format!(
            "[kernel]\nprotected-ports = [{port}]\nbpffs = \"{}\"\ncgroup = \"{}\"\n",
            pins.display(),
            tmp.path().display()
        ),
        &["is not a cgroup2 directory", "grep cgroup2 /proc/mounts"],
    );
    assert!(!pins.exists(), "no pins left behind");

    // Not root.
    let body = format!(
        "[kernel]\nprotected-ports = [{port}]\nbpffs = \"{}\"\n",
        pins.display()
    );
    let config = write_config(tmp.path(), &body);
    let (code, _, err) = sh(Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(vtguard_bin())
        .args(["run", "--config"])
        .arg(&config));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("vtguard needs root") && err.contains("run it as root"),
        "{err}"
    );

    // A second agent on the same pins.
    let agent = start(&config);
    refused(&body, &["in use by another running vtguard agent"]);
    assert_eq!(
        vtguard_attachments(&cgroup).len(),
        PROGRAMS.len(),
        "the second agent attached nothing"
    );
    drop(agent);

    // Status of a folder with nothing pinned.
    let (code, _, err) = vtguard(&[
        "kernel",
        "status",
        "--bpffs",
        "/sys/fs/bpf/vtguard-nothing-here",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("nothing is pinned there"), "{err}");

    assert!(vtguard_agent::kernel::detach(&pins).is_ok());
    assert!(
        vtguard_attachments(&cgroup).is_empty(),
        "nothing left attached"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_listener_from_the_binary_logs_one_structured_line_per_request() {
    use vtguard_proto::{
        query::ExecuteRequest, queryservice::query_client::QueryClient, vtrpc::CallerId,
    };
    let up = vtguard_tests::upstream::Upstream::start(0).await;
    let port = free_port();
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = write_config(
        tmp.path(),
        &Listener::grpc("vttablet", up.addr)
            .plaintext()
            .name("tablet")
            .port(port)
            .extra("grpc-use-effective-callerid = true\n")
            .toml(),
    );
    let agent = tokio::task::spawn_blocking(move || start_until(&config, "\"listening\""))
        .await
        .expect("agent starts");
    agent.wait_for("grpc-use-effective-callerid is not secure");
    agent.wait_for("no [kernel] section: upstream ports are not protected");

    let ch = vtguard_tests::grpc::plain_channel(format!("127.0.0.1:{port}").parse().expect("addr"))
        .await;
    let req = ExecuteRequest {
        effective_caller_id: Some(CallerId {
            principal: "app-user".into(),
            component: "billing".into(),
            subcomponent: "invoices".into(),
            groups: vec![],
        }),
        target: Some(vtguard_tests::upstream::target("test_keyspace")),
        query: Some(vtguard_tests::upstream::bound(
            "select * from vt_insert_test",
        )),
        ..Default::default()
    };
    let rows = QueryClient::new(ch)
        .execute(req)
        .await
        .expect("Execute through the binary")
        .into_inner();
    assert_eq!(
        vtguard_tests::upstream::rows(&rows.result.expect("result")),
        vec!["app-user|"]
    );

    let line = tokio::task::spawn_blocking(move || {
        let l = agent.wait_for("\"method\":\"/queryservice.Query/Execute\"");
        drop(agent);
        l
    })
    .await
    .expect("log");
    let v: serde_json::Value = serde_json::from_str(&line).expect("query log line is JSON");
    assert_eq!(v["listener"], "tablet");
    assert_eq!(v["identity"], "app-user");
    assert_eq!(v["principal"], "app-user");
    assert_eq!(v["component"], "billing");
    assert_eq!(v["subcomponent"], "invoices");
    assert_eq!(v["target"], "test_keyspace:0@primary");
    assert_eq!(v["decision"], "forwarded");
    assert_eq!(v["status"], 0);
    assert_eq!(v["sql_digest"].as_str().map(str::len), Some(16));
    assert!(v["latency_us"].as_u64().is_some(), "{line}");
    assert!(
        !line.contains("vt_insert_test"),
        "the SQL itself stays out of the log: {line}"
    );
}

#[test]
fn policy_check_offline_gives_the_decision_and_the_rule() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let acl = tmp.path().join("acl.json");
    fs::write(
        &acl,
        r#"{"table_groups": [{"name": "vt_insert_test", "table_names_or_prefixes": ["vt_insert_test"], "readers": ["vtgate client 1"]}]}"#,
    )
    .expect("acl");
    let acl_s = acl.to_str().expect("utf-8");
    let (code, out, _) = vtguard(&[
        "policy",
        "check",
        "--user",
        "vtgate client 2",
        "--sql",
        "select * from vt_insert_test",
        "--policy",
        acl_s,
        "--json",
    ]);
    assert_eq!(code, 3, "deny exits 3");
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON object");
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["role"], "READER");
    assert_eq!(v["table"], "vt_insert_test");
    assert_eq!(v["group"], "vt_insert_test");
    assert_eq!(v["message"], "Select command denied to user 'vtgate client 2' for table 'vt_insert_test' (ACL check error)");
    let (code, out, _) = vtguard(&[
        "policy",
        "check",
        "--user",
        "x",
        "--group",
        "vtgate client 1",
        "--sql",
        "select * from vt_insert_test",
        "--policy",
        acl_s,
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("allow:"), "{out}");
    // CALL is refused in secure mode and passed unchecked in vitess mode.
    let (code, _, _) = vtguard(&[
        "policy",
        "check",
        "--user",
        "vtgate client 1",
        "--sql",
        "call p()",
        "--policy",
        acl_s,
    ]);
    assert_eq!(code, 3);
    let (code, _, _) = vtguard(&[
        "policy",
        "check",
        "--user",
        "vtgate client 1",
        "--sql",
        "call p()",
        "--policy",
        acl_s,
        "--mode",
        "vitess",
    ]);
    assert_eq!(code, 0);
    // An invalid policy names the entries.
    fs::write(
        &acl,
        r#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["b%c"]}]}"#,
    )
    .expect("acl");
    let (code, _, err) = vtguard(&[
        "policy", "check", "--user", "u", "--sql", "select 1", "--policy", acl_s,
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("group \"g\": entry \"b%c\" has '%' before its end"),
        "{err}"
    );
}

#[test]
fn policy_load_through_the_cli_swaps_valid_files_and_refuses_invalid_ones() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let acl = tmp.path().join("acl.json");
    fs::write(&acl, r#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["t1"], "readers": ["alice"]}]}"#).expect("acl");
    let socket = tmp.path().join("admin.sock");
    let up_port = free_port();
    let config = write_config(
        tmp.path(),
        &format!(
            "{}table-acl-config-reload-interval = 0.2\n[admin]\nsocket = \"{}\"\n{}",
            tableacl_section(&acl),
            socket.display(),
            Listener::grpc("vttablet", ([127, 0, 0, 1], up_port).into())
                .plaintext()
                .name("t")
                .port(free_port())
                .no_query_log()
                .toml()
        ),
    );
    let agent = start_until(&config, "admin API listening");
    let sock = socket.to_str().expect("utf-8");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(
            &fs::metadata(&socket).expect("socket").permissions()
        ) & 0o777,
        0o600,
        "root only"
    );

    // An invalid file: refused with the reason, and the running policy stays.
    let bad = tmp.path().join("bad.json");
    fs::write(
        &bad,
        r#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["a", "aa%", "aaab"]}]}"#,
    )
    .expect("bad");
    let (code, _, err) = vtguard(&[
        "policy",
        "load",
        bad.to_str().expect("utf-8"),
        "--socket",
        sock,
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("overlap") && err.contains("the policy in force is unchanged"),
        "{err}"
    );
    let (code, out, _) = vtguard(&["policy", "show", "--socket", sock]);
    assert_eq!(code, 0);
    assert!(out.contains("\"alice\"") && !out.contains("aaab"), "{out}");

    // A valid one: the changes, then the swap.
    let good = tmp.path().join("good.json");
    fs::write(&good, r#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["t1", "t2"], "readers": ["bob"]}]}"#).expect("good");
    let (code, out, err) = vtguard(&[
        "policy",
        "load",
        good.to_str().expect("utf-8"),
        "--socket",
        sock,
        "--dry-run",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("+ table \"t2\"")
            && out.contains("- \"alice\" loses READER on \"t1\"")
            && out.contains("dry run: nothing changed"),
        "{out}"
    );
    let (_, out, _) = vtguard(&["policy", "show", "--socket", sock]);
    assert!(out.contains("\"alice\""), "dry run changed nothing: {out}");
    let (code, out, _) = vtguard(&[
        "policy",
        "load",
        good.to_str().expect("utf-8"),
        "--socket",
        sock,
    ]);
    assert_eq!(code, 0);
    assert!(
        out.contains("+ \"bob\" gains READER on \"t2\"")
            && out.lines().last() == Some("policy loaded: version 2, 4 changes"),
        "{out}"
    );
    let (_, out, err) = vtguard(&["policy", "show", "--socket", sock]);
    assert!(
        out.contains("\"bob\"") && !out.contains("\"alice\""),
        "{out}"
    );
    assert!(err.contains("good.json"), "{err}");

    // table-acl-config-reload-interval: a change to the configured file is picked up.
    fs::write(&acl, r#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["t1"], "readers": ["carol"]}]}"#).expect("acl");
    agent.wait_for("table ACL changed on disk; reloaded");
    let (_, out, _) = vtguard(&["policy", "show", "--socket", sock]);
    assert!(out.contains("\"carol\""), "{out}");
    drop(agent);

    let (code, _, err) = vtguard(&["policy", "show", "--socket", "/nonexistent/admin.sock"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("admin socket /nonexistent/admin.sock: cannot connect"),
        "{err}"
    );
}

/// A policy of 20 000 groups and 200 000 table entries (over 20 MB of JSON): what one of the
/// largest tableacl files looks like.
fn large_policy(groups: usize, skip: Option<usize>) -> String {
    let mut out = String::from("{\"table_groups\": [");
    let mut first = true;
    for g in (0..groups).filter(|g| Some(*g) != skip) {
        if !first {
            out.push(',');
        }
        first = false;
        let tables: Vec<String> = (0..10)
            .map(|t| format!("\"keyspace_{g:05}_table_with_a_long_descriptive_name_{t:02}\""))
            .collect();
        let readers: Vec<String> = (0..12)
            .map(|r| format!("\"service-reader-{r:02}.example\""))
            .collect();
        out.push_str(&format!(
            "{{\"name\": \"group_{g:05}\", \"table_names_or_prefixes\": [{}], \"readers\": [{}], \"writers\": [\"writer-{g:05}\"], \"admins\": [\"dba\"]}}",
            tables.join(", "),
            readers.join(", ")
        ));
    }
    out.push_str("]}");
    out
}

#[test]
fn a_policy_of_200k_entries_round_trips_through_load_show_and_diff() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let acl = tmp.path().join("acl.json");
    fs::write(&acl, r#"{"table_groups": []}"#).expect("acl");
    let socket = tmp.path().join("admin.sock");
    let config = write_config(
        tmp.path(),
        &format!(
            "{}[admin]\nsocket = \"{}\"\n{}",
            tableacl_section(&acl),
            socket.display(),
            Listener::grpc("vttablet", ([127, 0, 0, 1], free_port()).into())
                .plaintext()
                .port(free_port())
                .no_query_log()
                .toml()
        ),
    );
    let _agent = start_until(&config, "admin API listening");
    let sock = socket.to_str().expect("utf-8");
    let big = tmp.path().join("big.json");
    let text = large_policy(20_000, None);
    assert!(text.len() > 20_000_000, "over 20 MB: {}", text.len());
    fs::write(&big, &text).expect("big policy");
    let big = big.to_str().expect("utf-8");

    // Load: a bounded summary, the whole count, and success only because it took effect.
    let (code, out, err) = vtguard(&["policy", "load", big, "--socket", sock]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines.len(),
        52,
        "50 changes, the rest counted, the verdict: {out:.2000}"
    );
    assert!(
        lines[50].starts_with("… and ") && lines[50].contains("--full-diff"),
        "{}",
        lines[50]
    );
    let total: u64 = lines[51]
        .strip_prefix("policy loaded: version 2, ")
        .and_then(|r| r.strip_suffix(" changes"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", lines[51]));
    assert!(total >= 200_000, "every table is a change: {total}");

    // Show: the whole policy comes back.
    let (code, out, err) = vtguard(&["policy", "show", "--socket", sock]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).expect("policy show prints JSON");
    let groups = shown["table_groups"].as_array().expect("table_groups");
    assert_eq!(groups.len(), 20_000);
    assert_eq!(
        groups[19_999]["table_names_or_prefixes"][9],
        "keyspace_19999_table_with_a_long_descriptive_name_09"
    );

    // Diff: the same file changes nothing; one group less is exactly that group's entries.
    let (code, out, _) = vtguard(&["policy", "load", big, "--socket", sock, "--dry-run"]);
    assert_eq!(
        (code, out.as_str()),
        (0, "no changes\ndry run: nothing changed\n")
    );
    let smaller = tmp.path().join("smaller.json");
    fs::write(&smaller, large_policy(20_000, Some(123))).expect("smaller policy");
    let (code, out, err) = vtguard(&[
        "policy",
        "load",
        smaller.to_str().expect("utf-8"),
        "--socket",
        sock,
        "--dry-run",
        "--full-diff",
    ]);
    assert_eq!(code, 0, "{err}");
    let changes: Vec<&str> = out.lines().filter(|l| !l.starts_with("dry run")).collect();
    assert!(
        !changes.is_empty() && changes.iter().all(|l| l.contains("00123")),
        "{out:.3000}"
    );
    assert!(
        changes
            .iter()
            .any(|l| l.contains("keyspace_00123_table_with_a_long_descriptive_name_09")),
        "{out:.3000}"
    );

    // A file that is not valid: failure, and the version in force stays.
    fs::write(&smaller, &text[..text.len() / 2]).expect("truncated policy");
    let (code, _, err) = vtguard(&[
        "policy",
        "load",
        smaller.to_str().expect("utf-8"),
        "--socket",
        sock,
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("the policy in force is unchanged"), "{err}");
    let (_, out, _) = vtguard(&["status", "--socket", sock, "--json"]);
    let status: serde_json::Value = serde_json::from_str(&out).expect("status JSON");
    assert_eq!(
        status["policy"]["version"], 2,
        "the failed load changed nothing"
    );
}

// The serial guard is held across awaits on purpose: it keeps other kernel tests (on other
// threads, with their own runtimes) out for the whole test.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_removed_from_policy_is_cut_off_within_a_second_and_refused_by_the_kernel() {
    use vtguard_tests::grpc::{execute_body, raw_call, raw_connection};
    const EXECUTE: &str = "/queryservice.Query/Execute";
    if !kernel_tests_can_run(
        "an_identity_removed_from_policy_is_cut_off_within_a_second_and_refused_by_the_kernel",
    ) {
        return;
    }
    let _serial = serial();
    let pki = vtguard_tests::pki::Pki::generate();
    let up_port = free_port();
    let _up = vtguard_tests::upstream::Upstream::start(up_port).await;
    let port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let pins = test_pin_dir();
    let _guard = PinGuard(pins.clone());
    let tmp = tempfile::tempdir().expect("tempdir");
    let config_for = |ids: &str| {
        let listener = Listener::grpc("vttablet", ([127, 0, 0, 1], up_port).into())
            .mtls(&pki)
            .port(port)
            .extra(&format!("identities = [{ids}]\n"));
        format!(
            "{}{}",
            kernel_section(&[up_port], Some(&pins), &[]),
            listener.toml()
        )
    };
    let config = write_config(
        tmp.path(),
        &config_for("\"vtgate client 1\", \"vtgate client 2\""),
    );
    let c = config.clone();
    let agent = tokio::task::spawn_blocking(move || start_until(&c, "\"listening\""))
        .await
        .expect("agent starts");

    // Both identities are served, each on its own open connection.
    let mut one = raw_connection(&pki, addr, Some("vtgate-client-1")).await;
    let mut two = raw_connection(&pki, addr, Some("vtgate-client-2")).await;
    for (who, send) in [("client 1", &mut one), ("client 2", &mut two)] {
        let (status, message, _) =
            raw_call(send, addr, EXECUTE, execute_body("select 1"), None).await;
        assert_eq!(
            (status, message.as_str()),
            (0, ""),
            "{who} before the change"
        );
    }

    // Client 2 leaves the listener's identities; SIGHUP applies the new policy.
    write_config(tmp.path(), &config_for("\"vtgate client 1\""));
    let start = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    while !two.is_closed() && start.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        two.is_closed(),
        "client 2's open connection was not closed within 1 s"
    );
    eprintln!("client 2 cut off {:?} after SIGHUP", start.elapsed());

    // Client 1 keeps its connection.
    let (status, _, _) = raw_call(&mut one, addr, EXECUTE, execute_body("select 1"), None).await;
    assert_eq!(status, 0, "client 1 is still served on its open connection");

    // Once the kernel has the policy, a new connection of client 2 is refused by the kernel
    // (vtguard's upstream connect() gets EPERM). Before that, vtguard refuses it itself.
    let agent = tokio::task::spawn_blocking(move || {
        agent.wait_for("kernel policy reloaded");
        agent
    })
    .await
    .expect("log");
    let mut again = raw_connection(&pki, addr, Some("vtgate-client-2")).await;
    let (status, message, _) =
        raw_call(&mut again, addr, EXECUTE, execute_body("select 1"), None).await;
    assert_eq!(status, 7, "PERMISSION_DENIED: {message}");
    assert!(
        message.contains("the kernel refused identity \"vtgate client 2\""),
        "{message}"
    );
    let agent = tokio::task::spawn_blocking(move || {
        agent.wait_for("identity lost access to the upstream");
        agent.wait_for("refused (identity_not_allowed)");
        agent
    })
    .await
    .expect("log");
    let log = agent.log();
    let cut = log
        .lines()
        .find(|l| l.contains("identity lost access"))
        .expect("cut line");
    assert!(
        cut.contains("vtgate client 2") && cut.contains("\"connections\":"),
        "{cut}"
    );
    drop(agent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_metrics_and_online_policy_check_reflect_the_running_agent() {
    use vtguard_tests::grpc::{execute_body, raw_call, raw_connection};
    let pki = vtguard_tests::pki::Pki::generate();
    let up = vtguard_tests::upstream::Upstream::start(0).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let acl = tmp.path().join("acl.json");
    fs::write(
        &acl,
        r#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["t1"], "readers": ["vtgate client 1"]}]}"#,
    )
    .expect("acl");
    let socket = tmp.path().join("admin.sock");
    let port = free_port();
    let metrics_port = free_port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let config = write_config(
        tmp.path(),
        &format!(
            "{}[admin]\nsocket = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n{}",
            tableacl_section(&acl),
            socket.display(),
            Listener::grpc("vttablet", up.addr)
                .mtls(&pki)
                .port(port)
                .toml()
        ),
    );
    let agent = tokio::task::spawn_blocking(move || start_until(&config, "admin API listening"))
        .await
        .expect("agent starts");
    let sock = socket.to_str().expect("utf-8").to_owned();

    // One open connection of client 1, which has run a query.
    let mut one = raw_connection(&pki, addr, Some("vtgate-client-1")).await;
    let (status, message, _) = raw_call(
        &mut one,
        addr,
        "/queryservice.Query/Execute",
        execute_body("select * from t1"),
        None,
    )
    .await;
    assert_eq!((status, message.as_str()), (0, ""));
    // A denied one, and a handshake without a certificate.
    let (status, _, _) = raw_call(
        &mut one,
        addr,
        "/queryservice.Query/Execute",
        execute_body("select * from t2"),
        None,
    )
    .await;
    assert_eq!(status, 7);
    // One TLS handshake without a client certificate. In TLS 1.3 the client finishes first;
    // the server's refusal then ends the connection, which is read to its end.
    {
        use tokio::io::AsyncReadExt;
        use vtguard_tests::grpc::{client_config, tls_handshake, within};
        let mut tls = tls_handshake(client_config(&pki, rustls::DEFAULT_VERSIONS, None), addr)
            .await
            .expect("the client's side of the handshake completes");
        let mut buf = Vec::new();
        let end = within("the refusal", tls.read_to_end(&mut buf)).await;
        assert!(
            end.is_err() && buf.is_empty(),
            "no certificate, no session: {end:?} {buf:?}"
        );
    }

    // The metrics endpoint counts all of it, with labels.
    let (code, body, err) = tokio::task::spawn_blocking(move || {
        let get = |path: &str| {
            sh(Command::new("curl").args([
                "-sS",
                "--max-time",
                "5",
                &format!("http://127.0.0.1:{metrics_port}{path}"),
            ]))
        };
        let health = get("/healthz");
        assert_eq!((health.0, health.1.as_str()), (0, "ok\n"), "{}", health.2);
        get("/metrics")
    })
    .await
    .expect("scrape");
    assert_eq!(code, 0, "{err}");
    const EXECUTE: &str = "method=\"/queryservice.Query/Execute\"";
    let value = |series: &str| -> u64 {
        body.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in:\n{body}"))
    };
    // Exactly what happened: one handshake of client 1, one refused.
    let ok = value("vtguard_handshakes_total{listener=\"test\",outcome=\"ok\"}");
    let refused = value("vtguard_handshakes_total{listener=\"test\",outcome=\"refused\"}");
    assert_eq!((ok, refused), (1, 1), "{body}");
    assert_eq!(
        value("vtguard_connections_total{listener=\"test\",protocol=\"grpc\"}"),
        2
    );
    for line in [
        format!("vtguard_requests_total{{listener=\"test\",{EXECUTE},decision=\"forwarded\"}} 1"),
        format!("vtguard_requests_total{{listener=\"test\",{EXECUTE},decision=\"refused\"}} 1"),
        format!("vtguard_request_duration_seconds_count{{listener=\"test\",{EXECUTE}}} 2"),
        "vtguard_acl_denials_total{listener=\"test\",table=\"t2\",identity=\"vtgate client 1\",reason=\"acl\"} 1".to_owned(),
        "vtguard_open_connections{listener=\"test\",identity=\"vtgate client 1\",side=\"client\"} 1".to_owned(),
    ] {
        assert!(body.lines().any(|l| l == line), "{line} not in:\n{body}");
    }

    let s = sock.clone();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || vtguard(&["status", "--json", "--socket", &s]))
            .await
            .expect("status");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(
        v["connections"],
        serde_json::json!([{"listener": "test", "identity": "vtgate client 1", "client_connections": 1, "upstream_connections": 1}]),
        "{out}"
    );
    assert_eq!(v["listeners"][0]["name"], "test");
    assert_eq!(v["listeners"][0]["requests"], 2, "{out}");
    assert_eq!(v["policy"]["version"], 1, "{out}");
    assert_eq!(v["policy"]["table_groups"], 1, "{out}");
    assert!(
        v["policy"]["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("acl.json")),
        "{out}"
    );
    assert!(
        v["policy"]["loaded_at"].as_i64().is_some_and(|t| t > 0),
        "{out}"
    );
    assert!(v["kernel"].is_null(), "no [kernel] section: {out}");

    // Online checks use the policy in force and the agent's settings.
    let s = sock.clone();
    let (checks, text) = tokio::task::spawn_blocking(move || {
        let allow = vtguard(&[
            "policy",
            "check",
            "--user",
            "vtgate client 1",
            "--sql",
            "select * from t1",
            "--socket",
            &s,
            "--json",
        ]);
        let deny = vtguard(&[
            "policy",
            "check",
            "--user",
            "vtgate client 2",
            "--sql",
            "select * from t1",
            "--socket",
            &s,
            "--json",
        ]);
        (vec![allow, deny], vtguard(&["status", "--socket", &s]))
    })
    .await
    .expect("checks");
    assert_eq!(checks[0].0, 0, "{:?}", checks[0]);
    let allow: serde_json::Value = serde_json::from_str(&checks[0].1).expect("json");
    assert_eq!(allow["decision"], "allow");
    assert_eq!(checks[1].0, 3, "deny exits 3: {:?}", checks[1]);
    let deny: serde_json::Value = serde_json::from_str(&checks[1].1).expect("json");
    assert_eq!(
        deny,
        serde_json::json!({
            "decision": "deny", "role": "READER", "table": "t1", "group": "g",
            "message": "Select command denied to user 'vtgate client 2' for table 't1' (ACL check error)"
        })
    );
    let (code, text, _) = text;
    assert_eq!(code, 0);
    for needle in [
        "LISTENER",
        "vtgate client 1",
        "policy: version 1",
        "kernel: not configured",
    ] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }

    // A policy load bumps the version.
    let good = tmp.path().join("good.json");
    fs::write(&good, r#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["t1"], "readers": ["bob"]}]}"#).expect("good");
    let s = sock.clone();
    let g = good.to_str().expect("utf-8").to_owned();
    let (_, out, _) = tokio::task::spawn_blocking(move || {
        let (code, _, err) = vtguard(&["policy", "load", &g, "--socket", &s]);
        assert_eq!(code, 0, "{err}");
        vtguard(&["status", "--json", "--socket", &s])
    })
    .await
    .expect("load");
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["policy"]["version"], 2, "{out}");
    drop(agent);
}

/// Table-ACL swaps are atomic: 200 `vtguard policy load`s alternate two policies while
/// clients query without pause, and every query's outcome is one the old or the new policy
/// gives. Policy a grants t1, policy b grants t2: a statement reading both is denied by each,
/// so one decided on half of each would be let through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_loads_swap_the_table_acl_atomically_under_concurrent_queries() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    use vtguard_tests::grpc::{execute_body, raw_call, raw_connection};
    const LOADS: usize = 200;
    const QUERIES: [&str; 4] = [
        "select * from t1",
        "select * from t2",
        "select * from t1 join t2",
        "select * from t3",
    ];
    let pki = vtguard_tests::pki::Pki::generate();
    let up = vtguard_tests::upstream::Upstream::start(0).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let (a, b) = (tmp.path().join("a.json"), tmp.path().join("b.json"));
    fixtures::Acl::readers(&["t1"], &["vtgate client 1"]).write(&a);
    fixtures::Acl::readers(&["t2"], &["vtgate client 1"]).write(&b);
    let socket = tmp.path().join("admin.sock");
    let listener = Listener::grpc("vttablet", up.addr)
        .mtls(&pki)
        .port(free_port())
        .no_query_log();
    let addr = listener.addr();
    let config = write_config(
        tmp.path(),
        &format!(
            "{}[admin]\nsocket = \"{}\"\n{}",
            tableacl_section(&a),
            socket.display(),
            listener.toml()
        ),
    );
    let agent = tokio::task::spawn_blocking(move || start_until(&config, "admin API listening"))
        .await
        .expect("agent starts");

    // Clients on three connections, each cycling through the four statements.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut send = raw_connection(&pki, addr, Some("vtgate-client-1")).await;
        let stop = Arc::clone(&stop);
        clients.push(tokio::spawn(async move {
            // (allowed, denied) per statement.
            let mut seen = [(0u32, 0u32); 4];
            while !stop.load(Ordering::Relaxed) {
                for (i, sql) in QUERIES.iter().enumerate() {
                    let (status, message, _) = raw_call(
                        &mut send,
                        addr,
                        "/queryservice.Query/Execute",
                        execute_body(sql),
                        None,
                    )
                    .await;
                    match status {
                        0 => seen[i].0 += 1,
                        7 => seen[i].1 += 1,
                        other => panic!("{sql}: status {other}: {message}"),
                    }
                }
            }
            seen
        }));
    }
    let sock = socket.to_str().expect("utf-8").to_owned();
    let (a, b) = (
        a.to_str().expect("utf-8").to_owned(),
        b.to_str().expect("utf-8").to_owned(),
    );
    tokio::task::spawn_blocking(move || {
        for i in 0..LOADS {
            let file = if i % 2 == 0 { &b } else { &a };
            let (code, _, err) = vtguard(&["policy", "load", file, "--socket", &sock]);
            assert_eq!(code, 0, "load {i}: {err}");
        }
    })
    .await
    .expect("policy loads");
    stop.store(true, Ordering::Relaxed);
    let mut total = [(0u32, 0u32); 4];
    for c in clients {
        for (t, s) in total.iter_mut().zip(c.await.expect("client")) {
            t.0 += s.0;
            t.1 += s.1;
        }
    }
    for (sql, (allowed, denied)) in QUERIES.iter().zip(total) {
        eprintln!("{sql}: {allowed} allowed, {denied} denied across {LOADS} loads");
    }
    let [t1, t2, both, t3] = total;
    assert_eq!(
        both.0, 0,
        "a statement on t1 and t2 was allowed: a mixed policy"
    );
    assert_eq!(t3.0, 0, "t3 is in neither policy");
    assert!(
        t1.0 > 0 && t1.1 > 0 && t2.0 > 0 && t2.1 > 0,
        "the queries ran across both policies: t1 {t1:?}, t2 {t2:?}"
    );
    // Every load counted: version 1 is the file the agent started with.
    let s = socket.to_str().expect("utf-8").to_owned();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || vtguard(&["status", "--json", "--socket", &s]))
            .await
            .expect("status");
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("status --json is JSON");
    assert_eq!(v["policy"]["version"], 1 + LOADS as u64, "{out}");
    assert!(
        v["policy"]["source"]
            .as_str()
            .is_some_and(|s| s.ends_with("a.json")),
        "the last load (a) is in force: {out}"
    );
    drop(agent);
}
