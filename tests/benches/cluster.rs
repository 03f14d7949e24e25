//! Cluster policy propagation: etcd and 100 `vtguard run` agents on this machine (policy only:
//! a plaintext listener each, no kernel), 20 `vtguard policy load`s. Reports the time from the
//! load returning to the last agent publishing the new revision as applied (p50, p99), the
//! agents' RSS, and etcd's CPU time and RSS. `cargo bench -p vtguard-tests --bench cluster`
//! (`CLUSTER_AGENTS=N` for another count).

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use vtguard_agent::cluster::{store::Store, EtcdConfig};
use vtguard_tests::{free_port, installed};

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn document(reader: &str) -> String {
    format!(
        r#"{{"format": 1, "tableacl": {{"table_groups": [{{"name": "g", "table_names_or_prefixes": ["t1"], "readers": ["{reader}"]}}]}}, "access": []}}"#
    )
}

fn main() {
    if !installed("etcd") {
        eprintln!("SKIP cluster bench: etcd is not installed (apt-get install etcd-server)");
        return;
    }
    let agents: usize = std::env::var("CLUSTER_AGENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (port, peer) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let etcd = Command::new("etcd")
        .arg("--data-dir")
        .arg(tmp.path().join("etcd"))
        .args([
            "--listen-client-urls",
            &url,
            "--advertise-client-urls",
            &url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("default={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcd");
    let etcd_pid = etcd.id();
    let mut procs = Kill(vec![etcd]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cfg = EtcdConfig {
        endpoints: vec![url.clone()],
        ca: None,
        cert: None,
        key: None,
        prefix: "/vtguard".into(),
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut store = loop {
        match rt.block_on(Store::connect(&cfg)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => panic!("etcd: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    // The agent binary cargo built for this bench (the agent's main.rs, see
    // src/bin/vtguard-under-test.rs).
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_vtguard-under-test"));
    for i in 0..agents {
        let dir = tmp.path().join(format!("n{i}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "[cluster]\netcd = [\"{url}\"]\nnode = \"n{i}\"\nstate-dir = \"{}\"\n\n[tableacl]\nqueryserver-config-strict-table-acl = true\n\n[admin]\nsocket = \"{}\"\n\n[[listener]]\nname = \"vttablet\"\nprotocol = \"grpc\"\nservice = \"vttablet\"\nlisten = \"127.0.0.1:{}\"\nupstream = \"127.0.0.1:{}\"\ninsecure-plaintext = true\n",
                dir.join("state").display(),
                dir.join("admin.sock").display(),
                free_port(),
                free_port()
            ),
        )
        .expect("config");
        procs.0.push(
            Command::new(bin)
                .args(["run", "--config"])
                .arg(&config)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start agent"),
        );
    }
    let wait_all = |store: &mut Store, rev: i64, within: Duration| -> Option<Duration> {
        let start = Instant::now();
        loop {
            let nodes = rt.block_on(store.nodes()).unwrap_or_default();
            if nodes.len() >= agents && nodes.iter().all(|n| n.revision >= rev) {
                return Some(start.elapsed());
            }
            if start.elapsed() > within {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let file = tmp.path().join("policy.json");
    let load = |who: &str| -> i64 {
        std::fs::write(&file, document(who)).expect("write");
        let out = Command::new(bin)
            .args(["policy", "load"])
            .arg(&file)
            .args(["--etcd", &url])
            .output()
            .expect("policy load");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "policy load: {text}");
        text.split("revision ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|r| r.parse().ok())
            .expect("revision")
    };
    let rev = load("warmup");
    let up = wait_all(&mut store, rev, Duration::from_secs(120))
        .expect("every agent up and applying within 120 s");
    eprintln!("{agents} agents up and on the first revision after {up:?}");
    std::thread::sleep(Duration::from_secs(2));
    let cpu0 = cpu_secs(etcd_pid);
    let t0 = Instant::now();
    let mut times = Vec::new();
    for i in 0..20 {
        let rev = load(&format!("user{i}"));
        let t = wait_all(&mut store, rev, Duration::from_secs(30)).expect("propagates");
        times.push(t);
    }
    let wall = t0.elapsed().as_secs_f64();
    let etcd_cpu = cpu_secs(etcd_pid) - cpu0;
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    let rss: Vec<u64> = procs.0[1..].iter().map(|c| rss_kib(c.id())).collect();
    let mean = rss.iter().sum::<u64>() as f64 / rss.len() as f64;
    println!("cluster bench: {agents} agents, 20 loads");
    println!(
        "  load returned -> last agent applied and published: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        times.last().expect("times").as_secs_f64() * 1e3
    );
    println!(
        "  agent RSS: mean {:.1} MiB, max {:.1} MiB",
        mean / 1024.0,
        *rss.iter().max().unwrap_or(&0) as f64 / 1024.0
    );
    println!(
        "  etcd: RSS {:.1} MiB, CPU {:.2} s over {:.1} s of loads ({:.0} % of one core)",
        rss_kib(etcd_pid) as f64 / 1024.0,
        etcd_cpu,
        wall,
        etcd_cpu / wall * 100.0
    );
}
