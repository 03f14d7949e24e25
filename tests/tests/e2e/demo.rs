//! The README's main job: `cargo xtask demo` runs the demo (tests/examples/vtguard-demo). Here
//! its scenario runs in-process as CI runs it (root, MariaDB installed by the test command),
//! through the agent binary cargo built for this run, and every step must pass.

use vtguard_tests::{kernel_tests_can_run, serial};

use crate::{scenario, vtguard_bin};

/// The line `N step(s): … ok, … failed, … skipped` of the demo's output.
fn summary(out: &str) -> &str {
    out.lines()
        .find(|l| l.contains(" step(s): "))
        .unwrap_or_default()
}

// The serial guard is held across awaits on purpose: the demo attaches kernel programs to the
// cgroup2 root and uses fixed ports; other kernel tests wait for the whole run.
#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_every_step_with_the_expected_outcome() {
    if !kernel_tests_can_run("the_demo_runs_every_step_with_the_expected_outcome") {
        return;
    }
    let _serial = serial();
    let report = scenario::run(vtguard_bin()).await;
    let out = &report.output;
    assert_eq!(report.failed, 0, "the demo failed:\n{out}");
    assert_eq!(report.skipped, 0, "every step ran:\n{out}");
    assert!(
        summary(out).ends_with(" ok, 0 failed, 0 skipped"),
        "every step ran and passed: {}\n{out}",
        summary(out)
    );
    for step in [
        "rows: 1|alpha; 2|beta; 3|gamma",
        "denied: Select command denied to user 'vtgate client 2'",
        "EPERM (Operation not permitted)",
        "ERROR 1142 (42000)",
        "binds [::]:16991, the tablet's port: ok\n       Operation not permitted",
        "cleanup: vtguard stopped; detached 5 kernel program(s)",
        "tablet B saw caller \"vtgate client 1\"",
        "tablet A saw caller \"vttablet client 1\"",
        "refused: B's vtguard requires TLS; tablet B received nothing",
    ] {
        assert!(out.contains(step), "{step:?} missing from:\n{out}");
    }
}

#[allow(clippy::await_holding_lock)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_skips_only_the_steps_that_need_it() {
    if !kernel_tests_can_run("a_taken_port_skips_only_the_steps_that_need_it") {
        return;
    }
    let _serial = serial();
    // Something else holds the port of the effective-caller vtgate listener.
    let port = scenario::VTGATE_EFFECTIVE;
    let _holder = std::net::TcpListener::bind(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("hold port {port}: {e}"));
    let report = scenario::run(vtguard_bin()).await;
    let out = &report.output;
    assert_eq!(report.failed, 0, "the other steps still pass:\n{out}");
    assert!(
        out.contains("effective caller ID steps: skipped")
            && out.contains("port 15998, which the vtgate-effective listener needs, is in use by another process"),
        "{out}"
    );
    assert!(
        summary(out).ends_with(" ok, 0 failed, 1 skipped"),
        "{}",
        summary(out)
    );
    assert!(out.contains("ports that were in use: [15998]"), "{out}");
}
