//! The cost of vtguard's kernel hooks per connect(): a connect()+close() loop to a loopback
//! listener, with and without the programs attached, to a protected port (registered cookie)
//! and an unprotected one, with 1 and 100 000 entries in the maps.
//!
//! Every variant does the same userspace work (socket, SO_COOKIE, register, connect, close
//! with RST, unregister), so differences are the programs' cost. Run as root:
//! `cargo xtask bench`.

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::AsFd,
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

fn connect_close(k: &Kernel, addr: &socket2::SockAddr) {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let reg = k.register(s.as_fd(), IDENTITY).expect("register");
    s.connect(addr).expect("connect");
    drop(reg);
    // RST instead of FIN: no TIME_WAIT pile-up over hundreds of thousands of connections.
    s.set_linger(Some(Duration::ZERO)).expect("linger 0");
}

/// A policy granting IDENTITY (and `extra` other identities) access to `protected`.
fn sized_policy(protected: u16, extra: usize) -> vtguard_agent::config::KernelPolicy {
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
        socket2::SockAddr::from(
            format!("127.0.0.1:{p}")
                .parse::<SocketAddr>()
                .expect("addr"),
        )
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
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
