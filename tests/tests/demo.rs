//! The README's main job: `cargo xtask demo` runs the `vtguard-demo` binary; here it runs as
//! CI runs it (root, MariaDB installed by the test command) and every step must pass.

use std::process::Command;

use vtguard_tests::*;

#[test]
fn the_demo_runs_every_step_with_the_expected_outcome() {
    if !kernel_tests_can_run("the_demo_runs_every_step_with_the_expected_outcome") {
        return;
    }
    let _serial = serial();
    let demo = vtguard_bin().with_file_name("vtguard-demo");
    if !demo.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "vtguard-tests", "--bin", "vtguard-demo"])
            .status()
            .expect("cargo build vtguard-demo");
        assert!(status.success(), "building vtguard-demo failed");
    }
    let (code, out, err) = sh(&mut Command::new(&demo));
    println!("{out}");
    assert_eq!(code, 0, "the demo failed:\n{out}\n{err}");
    let summary = out
        .lines()
        .find(|l| l.contains(" step(s): "))
        .unwrap_or_default();
    assert!(
        summary.ends_with(" ok, 0 failed, 0 skipped"),
        "every step ran and passed: {summary}\n{out}"
    );
    for step in [
        "rows: 1|alpha; 2|beta; 3|gamma",
        "denied: Select command denied to user 'vtgate client 2'",
        "EPERM (Operation not permitted)",
        "ERROR 1142 (42000)",
        "cleanup: vtguard stopped; detached 3 kernel program(s)",
    ] {
        assert!(out.contains(step), "{step:?} missing from:\n{out}");
    }
}

#[test]
fn a_taken_port_skips_only_the_steps_that_need_it() {
    if !kernel_tests_can_run("a_taken_port_skips_only_the_steps_that_need_it") {
        return;
    }
    let _serial = serial();
    let demo = vtguard_bin().with_file_name("vtguard-demo");
    if !demo.exists() {
        return; // built by the test above, or by `cargo xtask test`'s build step
    }
    // Something else holds the port of the effective-caller vtgate listener.
    let _holder = std::net::TcpListener::bind("127.0.0.1:15998").expect("hold port 15998");
    let (code, out, err) = sh(&mut Command::new(&demo));
    println!("{out}");
    assert_eq!(code, 0, "the other steps still pass:\n{out}\n{err}");
    assert!(
        out.contains("effective caller ID steps: skipped")
            && out.contains("port 15998, which the vtgate-effective listener needs, is in use by another process"),
        "{out}"
    );
    let summary = out
        .lines()
        .find(|l| l.contains(" step(s): "))
        .unwrap_or_default();
    assert!(summary.ends_with(" ok, 0 failed, 1 skipped"), "{summary}");
    assert!(out.contains("ports that were in use: [15998]"), "{out}");
}
