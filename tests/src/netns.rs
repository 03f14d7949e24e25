//! Simulated cluster nodes for the tests and the demo: a node is a network namespace (with
//! its own addresses) plus its own cgroup, pin folder and vtguard; stand-in tablets and callers
//! are Python grpcio processes run inside a node (Vitess binaries cannot be had here).

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use crate::{
    agent::AgentProcess, fixtures::kernel_section, fixtures::Listener, pki::Pki, sh, test_pin_dir,
    TestCgroup,
};

/// A background process killed on drop.
pub struct Bg(pub Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The stand-in tablet: grpcio on 0.0.0.0:`port` in `ns`, in `cgroup`; appends the hex of
/// every request it gets to `log`, and answers with the same bytes.
pub const TABLET: &str = r#"
import os, sys, grpc
from concurrent import futures
ns_cgroup, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
open(os.path.join(ns_cgroup, "cgroup.procs"), "w").write(str(os.getpid()))
def execute(req, ctx):
    with open(log, "a") as f:
        f.write(req.hex() + "\n")
    return req
h = grpc.method_handlers_generic_handler("queryservice.Query",
    {"Execute": grpc.unary_unary_rpc_method_handler(execute)})
s = grpc.server(futures.ThreadPoolExecutor(4))
s.add_generic_rpc_handlers((h,))
s.add_insecure_port(f"0.0.0.0:{port}")
s.start()
print("READY", flush=True)
s.wait_for_termination()
"#;

/// A caller: Execute to `addr` with mTLS (`tls`, with the PKI's client `client`, default
/// vtgate-client-1) or in plaintext; prints `OK <hex>` or `ERR <code> <details>`. Joins
/// `cgroup` first unless it is "-".
pub const CALLER: &str = r#"
import os, sys, grpc
cg, addr, pki, req, mode = sys.argv[1:6]
client = sys.argv[6] if len(sys.argv) > 6 else "vtgate-client-1"
if cg != "-":
    open(os.path.join(cg, "cgroup.procs"), "w").write(str(os.getpid()))
read = lambda n: open(f"{pki}/{n}", "rb").read()
if mode == "tls":
    creds = grpc.ssl_channel_credentials(root_certificates=read("root.pem"),
        private_key=read(f"{client}.key"), certificate_chain=read(f"{client}.pem"))
    ch = grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", "localhost")])
else:
    ch = grpc.insecure_channel(addr)
try:
    print("OK", ch.unary_unary("/queryservice.Query/Execute")(bytes.fromhex(req), timeout=5).hex())
except grpc.RpcError as e:
    print("ERR", e.code().name, e.details())
"#;

/// A plain TCP connect: `CONNECTED <first line>`, `REFUSED`, `TIMEOUT` or `ERR <errno>`.
/// Joins `cgroup` first unless it is "-".
pub const PROBE: &str = r#"
import os, socket, sys
cg, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if cg != "-":
    open(os.path.join(cg, "cgroup.procs"), "w").write(str(os.getpid()))
s = socket.socket(); s.settimeout(3)
try:
    s.connect((host, port)); print("CONNECTED", s.recv(64).decode().strip())
except ConnectionRefusedError: print("REFUSED")
except socket.timeout: print("TIMEOUT")
except OSError as e: print("ERR", e.errno)
"#;

/// A plain TCP server on 0.0.0.0:`port` in `ns` (and `cgroup`, unless "-") that greets with
/// `hello from <name>`.
pub fn hello_server(ns: &str, cgroup: &str, port: u16, name: &str) -> Bg {
    let join = if cgroup == "-" {
        String::new()
    } else {
        format!("import os\nopen('{cgroup}/cgroup.procs','w').write(str(os.getpid()))\n")
    };
    let script = format!(
        "{join}import socket\ns=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\ns.bind(('0.0.0.0',{port})); s.listen(16)\nprint('READY', flush=True)\nwhile True:\n c,_=s.accept(); c.sendall(b'hello from {name}\\n'); c.close()"
    );
    spawn_ready(in_node(ns).args(["python3", "-c", &script]))
}

pub fn spawn_ready(cmd: &mut Command) -> Bg {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn");
    let mut line = String::new();
    let out = child.stdout.take().expect("stdout");
    BufReader::new(out).read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "READY", "the server did not start");
    Bg(child)
}

/// The hex of the Execute request the stand-in callers send (CALLER's `req` argument).
pub fn execute_request_hex() -> String {
    use prost::Message;
    hex(&vtguard_proto::query::ExecuteRequest {
        query: Some(crate::upstream::bound("select * from vt_insert_test")),
        ..Default::default()
    }
    .encode_to_vec())
}

/// `vtguard run --config <config>` from `bin`, started in network namespace `ns`.
pub fn agent_in(ns: &str, bin: &Path, config: &Path) -> AgentProcess {
    AgentProcess::spawn(
        Path::new("nsenter"),
        &[
            &format!("--net=/var/run/netns/{ns}"),
            &bin.display().to_string(),
        ],
        config,
    )
    .unwrap_or_else(|e| panic!("start vtguard in {ns}: {e}"))
}

/// A command run in network namespace `ns`. nsenter, not `ip netns exec`: that one mounts a
/// fresh /sys, hiding the cgroup2 and bpffs mounts below it.
pub fn in_node(ns: &str) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--net=/var/run/netns/{ns}"));
    c
}

pub fn in_ns(ns: &str, script: &str, args: &[&str]) -> String {
    let (code, out, err) = sh(in_node(ns).args(["python3", "-c", script]).args(args));
    assert_eq!(code, 0, "python3 in {ns}: {err}");
    out.trim().to_owned()
}

pub fn requests(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Nodes on one switch: a network namespace holding a bridge, and per node a network
/// namespace with a veth to it (10.233.N.i/24), a cgroup, a pin folder, a stand-in tablet on
/// the shared published port and a vtguard intercepting it.
pub struct Cluster {
    switch: String,
    pub nodes: Vec<ClusterNode>,
}

pub struct ClusterNode {
    pub name: char,
    pub ns: String,
    pub ip: String,
    pub cgroup: TestCgroup,
    pub pins: PathBuf,
    pub config: PathBuf,
    pub log: PathBuf,
    pub tablet: Option<Bg>,
    pub agent: Option<AgentProcess>,
}

impl ClusterNode {
    pub fn cg(&self) -> String {
        self.cgroup.path.display().to_string()
    }

    pub fn start_tablet(&mut self, port: u16) {
        self.tablet = Some(spawn_ready(in_node(&self.ns).args([
            "python3",
            "-c",
            TABLET,
            &self.cg(),
            &port.to_string(),
            &self.log.display().to_string(),
        ])));
    }

    /// Starts `bin` (the agent) in the node with its config; returns once it intercepts.
    pub fn start_agent(&mut self, bin: &Path) {
        let agent = agent_in(&self.ns, bin, &self.config);
        agent.wait_for("come to this listener");
        self.agent = Some(agent);
    }

    pub fn kill_agent(&mut self) {
        if let Some(mut a) = self.agent.take() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(a.child.id() as i32, libc::SIGKILL) };
            let _ = a.child.wait();
        }
    }
}

impl Drop for ClusterNode {
    fn drop(&mut self) {
        self.agent.take();
        self.tablet.take();
        let _ = vtguard_agent::kernel::detach_forced(&self.pins);
    }
}

impl Cluster {
    pub fn new(names: &[char], tmp: &Path, pki: &Pki, tablet: u16, own: u16) -> Self {
        Self::new_with_listen(names, tmp, pki, tablet, own, "127.0.0.1")
    }

    /// [`Cluster::new`] with vtguard's listener on `listen_ip`:`own`.
    pub fn new_with_listen(
        names: &[char],
        tmp: &Path,
        pki: &Pki,
        tablet: u16,
        own: u16,
        listen_ip: &str,
    ) -> Self {
        let pid = std::process::id();
        let net = pid % 250 + 1;
        let switch = format!("vtgS-{pid}");
        let bridge = "br0";
        let ip = |args: &[&str]| {
            let (code, _, err) = sh(Command::new("ip").args(args));
            assert_eq!(code, 0, "ip {args:?}: {err}");
        };
        ip(&["netns", "add", &switch]);
        let mut cluster = Cluster {
            switch: switch.clone(),
            nodes: Vec::new(),
        };
        ip(&["-n", &switch, "link", "add", bridge, "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", bridge, "up"]);
        for (i, name) in names.iter().enumerate() {
            let ns = format!("vtg{name}-{pid}");
            let node_ip = format!("10.233.{net}.{}", i + 1);
            let (inner, outer) = (
                format!("n{name}{}", pid % 100_000),
                format!("s{name}{}", pid % 100_000),
            );
            ip(&["netns", "add", &ns]);
            ip(&[
                "link", "add", &inner, "type", "veth", "peer", "name", &outer,
            ]);
            ip(&["link", "set", &inner, "netns", &ns]);
            ip(&["link", "set", &outer, "netns", &switch]);
            ip(&["-n", &switch, "link", "set", &outer, "master", bridge]);
            ip(&["-n", &switch, "link", "set", &outer, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{node_ip}/24"),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
            let cgroup = TestCgroup::new(&format!("node-{name}"));
            let pins = test_pin_dir();
            let config = tmp.join(format!("vtguard-{name}.toml"));
            // Only uid 0 (the stand-in tablet) may bind the tablet's port: the bind guard.
            std::fs::write(
                &config,
                format!(
                    "{}cgroup = \"{}\"\n[[kernel.owner]]\nport = {tablet}\nuid = 0\n\n{}",
                    kernel_section(&[tablet], Some(&pins), &[]),
                    cgroup.path.display(),
                    // Client certificates of vtgates and of tablets (VReplication) alike.
                    Listener::grpc("vttablet", ([127, 0, 0, 1], tablet).into())
                        .listen(&format!("{listen_ip}:{own}"))
                        .tls(pki)
                        .client_ca_file(&pki.path("root.pem"))
                        .extra(
                            "intercept = true\nidentities = [\"vtgate client 1\", \"vttablet client 1\"]\n"
                        )
                        .toml()
                ),
            )
            .expect("config");
            cluster.nodes.push(ClusterNode {
                name: *name,
                ns,
                ip: node_ip,
                cgroup,
                pins,
                config,
                log: tmp.join(format!("tablet-{name}.txt")),
                tablet: None,
                agent: None,
            });
        }
        cluster
    }

    pub fn node(&mut self, name: char) -> &mut ClusterNode {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .expect("node")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let names: Vec<String> = self.nodes.iter().map(|n| n.ns.clone()).collect();
        self.nodes.clear();
        for ns in names.iter().chain([&self.switch]) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A CONNECT-only probe: `CONNECTED`, `REFUSED`, `TIMEOUT` or `ERR <errno>` (reads nothing:
/// a vtguard listener waits for the TLS ClientHello).
pub const CONNECT: &str = r#"
import os, socket, sys
cg, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
if cg != "-":
    open(os.path.join(cg, "cgroup.procs"), "w").write(str(os.getpid()))
s = socket.socket(); s.settimeout(3)
try:
    s.connect((host, port)); print("CONNECTED")
except ConnectionRefusedError: print("REFUSED")
except socket.timeout: print("TIMEOUT")
except OSError as e: print("ERR", e.errno)
"#;
