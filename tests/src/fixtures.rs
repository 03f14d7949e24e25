//! Test configs from values: the one builder for `[[listener]]` blocks (gRPC and MySQL, mTLS,
//! TLS or plaintext) and the table-ACL fixtures. The same TOML text feeds in-process listeners
//! ([`crate::inproc`]) and `vtguard run` (the binary), so both go through the agent's own
//! config parser.

use std::{
    fmt::Write as _,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use crate::pki::Pki;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Grpc,
    Mysql,
}

/// One `[[listener]]` block.
#[derive(Clone)]
pub struct Listener {
    protocol: Protocol,
    name: String,
    service: Option<String>,
    listen: String,
    upstream: SocketAddr,
    /// (key suffix, path): `cert`, `key`, `ca`, `crl`.
    tls: Vec<(&'static str, PathBuf)>,
    lines: String,
}

impl Listener {
    /// A gRPC listener named "test" for `service` ("vttablet" or "vtgate"), with the query log
    /// on, listening on 127.0.0.1 (any free port) in front of `upstream`.
    pub fn grpc(service: &str, upstream: SocketAddr) -> Self {
        Self {
            protocol: Protocol::Grpc,
            name: "test".into(),
            service: Some(service.into()),
            listen: "127.0.0.1:0".into(),
            upstream,
            tls: Vec::new(),
            lines: "query-log = true\n".into(),
        }
    }

    /// A MySQL listener named "mysql" on 127.0.0.1 (any free port) in front of `upstream`.
    pub fn mysql(upstream: SocketAddr) -> Self {
        Self {
            protocol: Protocol::Mysql,
            name: "mysql".into(),
            service: None,
            listen: "127.0.0.1:0".into(),
            upstream,
            tls: Vec::new(),
            lines: String::new(),
        }
    }

    pub fn name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.name);
        self
    }

    /// Listens on 127.0.0.1:`port` instead of any free port (the binary's listeners).
    /// Listens on `addr` (`ip:port`).
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = addr.to_owned();
        self
    }

    pub fn port(mut self, port: u16) -> Self {
        self.listen = format!("127.0.0.1:{port}");
        self
    }

    /// The listen address as a socket address (only meaningful after [`Listener::port`]).
    pub fn addr(&self) -> SocketAddr {
        self.listen.parse().expect("listen address")
    }

    /// mTLS: the PKI's "localhost" server certificate, client certificates from the vtgate
    /// client CA required, its CRL checked.
    pub fn mtls(self, pki: &Pki) -> Self {
        self.tls(pki).client_ca(pki)
    }

    /// TLS with the PKI's "localhost" server certificate, no client certificates asked for.
    pub fn tls(self, pki: &Pki) -> Self {
        self.server_cert(&pki.path("localhost.pem"), &pki.path("localhost.key"))
    }

    /// The vtgate client CA and its CRL.
    pub fn client_ca(mut self, pki: &Pki) -> Self {
        self.tls.retain(|(k, _)| *k != "ca" && *k != "crl");
        self.tls.push(("ca", pki.path("vtgate-client-ca.pem")));
        self.tls.push(("crl", pki.path("vtgate-client-ca.crl")));
        self
    }

    /// Client certificates required from the CA in `ca` (no CRL).
    pub fn client_ca_file(mut self, ca: &Path) -> Self {
        self.tls.retain(|(k, _)| *k != "ca" && *k != "crl");
        self.tls.push(("ca", ca.to_owned()));
        self
    }

    /// Serves `cert` and `key` (files a rotation test replaces).
    pub fn server_cert(mut self, cert: &Path, key: &Path) -> Self {
        self.tls.retain(|(k, _)| *k != "cert" && *k != "key");
        self.tls.insert(0, ("key", key.to_owned()));
        self.tls.insert(0, ("cert", cert.to_owned()));
        self
    }

    /// `insecure-plaintext = true`, named "plain"; a MySQL one authenticates by passthrough.
    pub fn plaintext(mut self) -> Self {
        self.name = "plain".into();
        self.lines.push_str("insecure-plaintext = true\n");
        if self.protocol == Protocol::Mysql {
            self.lines
                .push_str("mysql-auth-server-impl = \"passthrough\"\n");
        }
        self
    }

    /// Leaves the query log off (benchmarks).
    pub fn no_query_log(mut self) -> Self {
        self.lines = self.lines.replace("query-log = true\n", "");
        self
    }

    /// More lines of the block, verbatim (`key = value\n`, or a `[listener.services]` table).
    pub fn extra(mut self, lines: &str) -> Self {
        self.lines.push_str(lines);
        if !lines.is_empty() && !lines.ends_with('\n') {
            self.lines.push('\n');
        }
        self
    }

    /// The `[[listener]]` block.
    pub fn toml(&self) -> String {
        let mut s = format!(
            "[[listener]]\nname = \"{}\"\nprotocol = \"{}\"\n",
            self.name,
            match self.protocol {
                Protocol::Grpc => "grpc",
                Protocol::Mysql => "mysql",
            }
        );
        if let Some(service) = &self.service {
            let _ = writeln!(s, "service = \"{service}\"");
        }
        let _ = writeln!(
            s,
            "listen = \"{}\"\nupstream = \"{}\"",
            self.listen, self.upstream
        );
        let prefix = match self.protocol {
            Protocol::Grpc => "grpc-",
            Protocol::Mysql => "mysql-server-ssl-",
        };
        for (key, path) in &self.tls {
            let _ = writeln!(s, "{prefix}{key} = \"{}\"", path.display());
        }
        s.push_str(&self.lines);
        s
    }
}

/// A `[kernel]` section protecting `ports` (pins under `bpffs` when given), each port's
/// identities in `[[kernel.access]]` tables.
pub fn kernel_section(ports: &[u16], bpffs: Option<&Path>, access: &[(u16, &[&str])]) -> String {
    let mut s = format!("[kernel]\nprotected-ports = {ports:?}\n");
    if let Some(dir) = bpffs {
        let _ = writeln!(s, "bpffs = \"{}\"", dir.display());
    }
    for (port, ids) in access {
        let _ = writeln!(s, "[[kernel.access]]\nport = {port}\nidentities = {ids:?}");
    }
    s
}

/// A table ACL (Vitess's JSON format) as a test writes it to disk.
#[derive(Clone)]
pub struct Acl {
    json: String,
}

impl Acl {
    /// The JSON as given.
    pub fn json(json: &str) -> Self {
        Self { json: json.into() }
    }

    /// One group "g" of `tables` that `readers` may read.
    pub fn readers(tables: &[&str], readers: &[&str]) -> Self {
        Self::json(&format!(
            r#"{{"table_groups": [{{"name": "g", "table_names_or_prefixes": {tables:?}, "readers": {readers:?}}}]}}"#
        ))
    }

    /// Vitess's encrypted-transport example: table `vt_insert_test` for "vtgate client 1"
    /// (reader, writer, admin); group named after the table.
    pub fn vitess_example() -> Self {
        Self::json(
            r#"{"table_groups": [{"name": "vt_insert_test", "table_names_or_prefixes": ["vt_insert_test"],
  "readers": ["vtgate client 1"], "writers": ["vtgate client 1"], "admins": ["vtgate client 1"]}]}"#,
        )
    }

    /// The MySQL tests' ACL: `vt_insert_test` and `seq_%` readable by "vtgate client 1" and
    /// "pw", writable by "pw".
    pub fn mysql_reference() -> Self {
        Self::json(
            r#"{"table_groups": [{"name": "g", "table_names_or_prefixes": ["vt_insert_test", "seq_%"],
            "readers": ["vtgate client 1", "pw"], "writers": ["pw"], "admins": []}]}"#,
        )
    }

    /// Writes the JSON to `path`.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, &self.json)
            .unwrap_or_else(|e| panic!("write ACL {}: {e}", path.display()));
    }

    /// Writes `dir/acl.json` and returns a strict `[tableacl]` section over it.
    pub fn section(&self, dir: &Path) -> String {
        let file = dir.join("acl.json");
        self.write(&file);
        tableacl_section(&file)
    }
}

/// A strict `[tableacl]` section over `file` (more keys may follow it).
pub fn tableacl_section(file: &Path) -> String {
    format!(
        "[tableacl]\ntable-acl-config = \"{}\"\nqueryserver-config-strict-table-acl = true\n",
        file.display()
    )
}
