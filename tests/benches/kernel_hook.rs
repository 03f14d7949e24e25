//! The cost of vtguard's kernel hooks per connect(): a connect()+close() loop to a loopback
//! listener, with and without the programs attached, to a protected port (registered cookie)
//! and an unprotected one, with 1 and 100 000 entries in the maps.
//!
//! Every variant does the same userspace work (socket, SO_COOKIE, register, connect, close
//! with RST, unregister), so differences are the programs' cost. On a small VM a loopback
//! connect takes tens of microseconds with several microseconds of noise, so the benchmark
//! also reads the kernel's own accounting (BPF run-time stats) of the programs: the time they
//! ran per connect, which is the hook's cost without the noise. Run as root:
//! `cargo xtask bench`.

use std::{
    net::{SocketAddr, TcpListener},
    thread,
    time::Duration,
};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use socket2::{Domain, Socket, Type};
use vtguard_agent::kernel::Kernel;
use vtguard_tests::{free_port, policy, TestKernel};

const IDENTITY: &str = "vtgate client 1";

/// A blocking accept loop with a deep backlog, so that no SYN waits for a retransmit.
fn server(port: u16) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.set_reuse_address(true).expect("reuseaddr");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    s.bind(&addr.into()).expect("bind");
    s.listen(4096).expect("listen");
    let l: TcpListener = s.into();
    thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
}

fn connect_close(k: &Kernel, addr: &SocketAddr) {
    let s = k.connect_blocking(IDENTITY, *addr).expect("connect");
    // RST instead of FIN: no TIME_WAIT pile-up over hundreds of thousands of connections.
    socket2::SockRef::from(s.get_ref())
        .set_linger(Some(Duration::ZERO))
        .expect("linger 0");
}

/// (run time ns, run count) of each attached program, from the kernel's BPF stats.
fn program_stats(k: &Kernel) -> Vec<(&'static str, u128, u64)> {
    let progs: Vec<aya::programs::ProgramInfo> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .collect();
    k.attachments()
        .iter()
        .map(|a| {
            let p = progs
                .iter()
                .find(|p| p.id() == a.program_id)
                .expect("attached program is loaded");
            (a.program, p.run_time().as_nanos(), p.run_count())
        })
        .collect()
}

/// BPF program time per connect+close (all programs: connect, ingress on both ends),
/// measured by the kernel over `n` connections; and the same per program.
fn hook_cost(k: &Kernel, addr: &SocketAddr, n: u32) -> (f64, f64, String) {
    let _stats =
        aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enable BPF run-time stats");
    let before = program_stats(k);
    for _ in 0..n {
        connect_close(k, addr);
    }
    thread::sleep(Duration::from_millis(100));
    let after = program_stats(k);
    let n = f64::from(n);
    let (mut total_ns, mut total_runs, mut detail) = (0.0, 0.0, Vec::new());
    for ((name, t0, c0), (_, t1, c1)) in before.iter().zip(&after) {
        let (ns, runs) = ((t1 - t0) as f64 / n, (c1 - c0) as f64 / n);
        total_ns += ns;
        total_runs += runs;
        detail.push(format!("{name} {ns:.0} ns/{runs:.1} runs"));
    }
    (total_ns, total_runs, detail.join(", "))
}

/// A policy granting IDENTITY (and `extra` other identities) access to `protected`.
fn sized_policy(protected: u16, extra: usize) -> vtguard_agent::kernel::KernelPolicy {
    let mut p = policy(&[protected], &[(protected, &[IDENTITY])]);
    let ids = p.access.get_mut(&protected).expect("grants");
    for i in 0..extra {
        ids.insert(format!("identity-{i}"));
    }
    p
}

fn bench(c: &mut Criterion) {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP kernel_hook: needs root to attach programs (run `sudo cargo xtask bench`)");
        return;
    }
    let (protected, open) = (free_port(), free_port());
    server(protected);
    server(open);
    let to = |p: u16| {
        format!("127.0.0.1:{p}")
            .parse::<SocketAddr>()
            .expect("addr")
    };
    let (to_protected, to_open) = (to(protected), to(open));

    let mut g = c.benchmark_group("connect_close");
    g.warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    for entries in [1usize, 100_000] {
        let extra = entries - 1;
        {
            let k = TestKernel::maps_only(sized_policy(protected, extra));
            k.insert_synthetic_sockets(extra as u32, IDENTITY)
                .expect("fill sockets");
            g.bench_function(BenchmarkId::new("no_programs", entries), |b| {
                b.iter(|| connect_close(&k, &to_protected))
            });
        }
        {
            let k = TestKernel::start(sized_policy(protected, extra), None);
            k.insert_synthetic_sockets(extra as u32, IDENTITY)
                .expect("fill sockets");
            g.bench_function(
                BenchmarkId::new("attached_unprotected_port", entries),
                |b| b.iter(|| connect_close(&k, &to_open)),
            );
            g.bench_function(
                BenchmarkId::new("attached_protected_registered", entries),
                |b| b.iter(|| connect_close(&k, &to_protected)),
            );
            for (name, addr) in [
                ("unprotected port", &to_open),
                ("protected port, registered", &to_protected),
            ] {
                let (ns, runs, detail) = hook_cost(&k, addr, 20_000);
                println!(
                    "hook cost, {entries} map entries, {name}: {ns:.0} ns of BPF program time per connect+close ({runs:.1} program runs: {detail})"
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
