//! TLS: one crypto provider for the process, server configs built from Vitess's `grpc-*`
//! files (client verification with CRLs, the served chain, minimum version, ALPN h2), client
//! configs for upstreams, and reloading when the files change.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use arc_swap::ArcSwap;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{
        pem::PemObject, CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName,
    },
    server::WebPkiClientVerifier,
    ClientConfig, RootCertStore, ServerConfig,
};

/// Lowest TLS version a listener accepts (`grpc-tls-min-version`, `mysql-server-tls-min-version`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "TLSv1.2")]
    Tls12,
    #[serde(rename = "TLSv1.3")]
    Tls13,
}

/// Server-side TLS of a listener (Vitess's `grpc-*` flags, or `mysql-server-ssl-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates are required and verified against this bundle.
    pub ca: Option<PathBuf>,
    pub crl: Option<PathBuf>,
    /// Appended to the served chain.
    pub server_ca: Option<PathBuf>,
    pub min_version: TlsVersion,
}

/// TLS towards the upstream (`tablet-grpc-*` / `vtgate-grpc-*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Replaces the host name when the server certificate is checked.
    pub server_name: Option<String>,
}

/// What went wrong building a TLS config; each names the file and the fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no {kind}: give a PEM file with at least one")]
    Empty {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    #[error("{what} {path}: {detail}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("TLS config: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("upstream server name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
}

/// The one crypto provider every rustls config is built from.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|source| Error::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in a PEM file.
pub fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid {
            what,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(Error::Empty {
            what,
            path: path.to_owned(),
            kind: "certificates",
        });
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, Error> {
    let pem = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::Invalid {
        what,
        path: path.to_owned(),
        detail: format!("no usable private key ({e})"),
    })
}

fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, Error> {
    let pem = read("grpc-crl", path)?;
    let crls = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Invalid {
            what: "grpc-crl",
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if crls.is_empty() {
        return Err(Error::Empty {
            what: "grpc-crl",
            path: path.to_owned(),
            kind: "CRLs",
        });
    }
    Ok(crls)
}

fn roots(what: &'static str, path: &Path) -> Result<RootCertStore, Error> {
    let mut store = RootCertStore::empty();
    for cert in load_certs(what, path)? {
        store.add(cert).map_err(|e| Error::Invalid {
            what,
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    }
    Ok(store)
}

/// Builds a listener's server config from its files (read now).
pub fn server_config(tls: &ServerTls) -> Result<ServerConfig, Error> {
    let provider = crypto_provider();
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)?;
    let builder = match &tls.ca {
        Some(ca) => {
            let mut v = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("grpc-ca", ca)?),
                Arc::clone(&provider),
            );
            if let Some(crl) = &tls.crl {
                // As Vitess: the client's own certificate is checked against the CRLs given;
                // a certificate whose issuer published none here is not refused for that.
                v = v
                    .with_crls(load_crls(crl)?)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            let verifier = v.build().map_err(|e| Error::Invalid {
                what: "grpc-ca",
                path: ca.clone(),
                detail: e.to_string(),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut chain = load_certs("grpc-cert", &tls.cert)?;
    if let Some(extra) = &tls.server_ca {
        chain.extend(load_certs("grpc-server-ca", extra)?);
    }
    let key = load_key("grpc-key", &tls.key)?;
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| Error::Invalid {
            what: "grpc-key",
            path: tls.key.clone(),
            detail: format!("does not match grpc-cert {}: {e}", tls.cert.display()),
        })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Builds the client config for an upstream, and the name its certificate must carry.
pub fn client_config(
    tls: &UpstreamTls,
    upstream_host: &str,
    prefix: &'static str,
) -> Result<(ClientConfig, ServerName<'static>), Error> {
    let [ca_label, cert_label, key_label] = labels(prefix);
    let provider = crypto_provider();
    let builder =
        ClientConfig::builder_with_provider(provider).with_safe_default_protocol_versions()?;
    let store = match &tls.ca {
        Some(ca) => roots(ca_label, ca)?,
        None => RootCertStore::empty(),
    };
    let builder = builder.with_root_certificates(store);
    let mut config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert_label, cert)?, load_key(key_label, key)?)
            .map_err(|e| Error::Invalid {
                what: key_label,
                path: key.clone(),
                detail: format!("does not match the certificate: {e}"),
            })?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    let name = tls
        .server_name
        .clone()
        .unwrap_or_else(|| upstream_host.to_owned());
    let server_name = ServerName::try_from(name.clone()).map_err(|_| Error::ServerName(name))?;
    Ok((config, server_name))
}

/// The config keys of an upstream's CA, certificate and key, for messages.
fn labels(prefix: &str) -> [&'static str; 3] {
    if prefix == "tablet-grpc" {
        ["tablet-grpc-ca", "tablet-grpc-cert", "tablet-grpc-key"]
    } else {
        ["vtgate-grpc-ca", "vtgate-grpc-cert", "vtgate-grpc-key"]
    }
}

/// A listener's current server config, replaced when its files change. Connections keep the
/// config they were accepted with; new handshakes get the new one.
pub struct Reloadable {
    tls: ServerTls,
    current: ArcSwap<ServerConfig>,
    stamp: parking_lot::Mutex<Vec<Option<(SystemTime, u64)>>>,
}

impl Reloadable {
    /// Loads the files once; an error here stops the listener from starting.
    pub fn new(tls: ServerTls) -> Result<Self, Error> {
        let config = server_config(&tls)?;
        let stamp = stamps(&tls);
        Ok(Self {
            tls,
            current: ArcSwap::from_pointee(config),
            stamp: parking_lot::Mutex::new(stamp),
        })
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reloads when a file changed (or always, with `force`). A new config is checked before it
    /// is published; if it fails, the old one stays and the error is returned.
    pub fn reload(&self, force: bool) -> Result<bool, Error> {
        let now = stamps(&self.tls);
        {
            let stamp = self.stamp.lock();
            if !force && *stamp == now {
                return Ok(false);
            }
        }
        let config = server_config(&self.tls)?;
        self.current.store(Arc::new(config));
        *self.stamp.lock() = now;
        Ok(true)
    }
}

/// (mtime, size) of every file a server config is built from.
fn stamps(tls: &ServerTls) -> Vec<Option<(SystemTime, u64)>> {
    [
        Some(&tls.cert),
        Some(&tls.key),
        tls.ca.as_ref(),
        tls.crl.as_ref(),
        tls.server_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.modified().ok()?, m.len())))
    })
    .collect()
}
