//! The etcd side: connecting (with TLS when configured) and the few operations vtguard needs,
//! each bounded by [`REQUEST_TIMEOUT`].

use std::future::Future;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse,
};

use super::{Error, EtcdConfig, NodeState, REQUEST_TIMEOUT};

/// The policy as stored at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// The key's `mod_revision`: the policy's revision.
    pub revision: i64,
    pub value: Vec<u8>,
}

/// Runs one etcd request, bounded in time.
pub(crate) async fn timed<T>(
    op: &'static str,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(REQUEST_TIMEOUT, f)
        .await
        .map_err(|_| Error::Timeout { op })?
        .map_err(Error::etcd(op))
}

/// The keys of one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }

    pub fn policy(&self) -> String {
        format!("{}/policy", self.prefix)
    }

    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    pub fn node(&self, name: &str) -> String {
        format!("{}{name}", self.nodes())
    }
}

/// A connection to etcd for one prefix.
pub struct Store {
    pub client: Client,
    pub keys: Keys,
}

impl Store {
    /// Connects to `cfg`'s endpoints (TLS with its CA and client certificate when set).
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self, Error> {
        let read = |what: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| Error::Tls {
                what,
                path: path.to_owned(),
                source,
            })
        };
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(std::time::Duration::from_secs(5), REQUEST_TIMEOUT);
        if cfg.ca.is_some() || cfg.cert.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read("etcd-ca", ca)?));
            }
            if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
                tls = tls.identity(Identity::from_pem(
                    read("etcd-cert", cert)?,
                    read("etcd-key", key)?,
                ));
            }
            options = options.with_tls(tls);
        }
        let client = tokio::time::timeout(
            REQUEST_TIMEOUT,
            Client::connect(&cfg.endpoints, Some(options)),
        )
        .await
        .map_err(|_| Error::Connect {
            endpoints: cfg.endpoints.join(","),
            detail: "no answer".into(),
        })?
        .map_err(|e| Error::Connect {
            endpoints: cfg.endpoints.join(","),
            detail: super::error_detail(&e),
        })?;
        let mut store = Store {
            client,
            keys: Keys::new(&cfg.prefix),
        };
        // The client connects lazily: ask once so that a dead endpoint shows here.
        store.policy().await.map_err(|e| Error::Connect {
            endpoints: cfg.endpoints.join(","),
            detail: e.to_string(),
        })?;
        Ok(store)
    }

    /// The policy now, and the store's revision at the time of reading.
    pub async fn policy(&mut self) -> Result<(Option<Stored>, i64), Error> {
        let key = self.keys.policy();
        let r = timed("reading the policy", self.client.get(key, None)).await?;
        let header = r.header().map_or(0, |h| h.revision());
        Ok((
            r.kvs().first().map(|kv| Stored {
                revision: kv.mod_revision(),
                value: kv.value().to_vec(),
            }),
            header,
        ))
    }

    /// The policy as it was at `revision` (the value written at or before it).
    pub async fn policy_at(&mut self, revision: i64) -> Result<Option<Stored>, Error> {
        let key = self.keys.policy();
        let r = timed(
            "reading a past policy",
            self.client
                .get(key, Some(GetOptions::new().with_revision(revision))),
        )
        .await;
        match r {
            Ok(r) => Ok(r.kvs().first().map(|kv| Stored {
                revision: kv.mod_revision(),
                value: kv.value().to_vec(),
            })),
            // "required revision has been compacted": the history ends there.
            Err(Error::Etcd { detail, .. }) if detail.contains("compacted") => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `value` as the policy if it is still at `expected` (0: no policy yet); returns
    /// the new revision, or [`Error::Conflict`] naming the current one.
    pub async fn write_policy(&mut self, expected: i64, value: Vec<u8>) -> Result<i64, Error> {
        let key = self.keys.policy();
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key, None)]);
        let r = timed("writing the policy", self.client.txn(txn)).await?;
        if r.succeeded() {
            return Ok(r.header().map_or(0, |h| h.revision()));
        }
        let current = r
            .op_responses()
            .into_iter()
            .find_map(|op| match op {
                TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.mod_revision()),
                _ => None,
            })
            .unwrap_or(0);
        Err(Error::Conflict { expected, current })
    }

    /// Past revisions of the policy, newest first, as far back as etcd keeps them (at most
    /// `limit`).
    pub async fn history(&mut self, limit: usize) -> Result<Vec<Stored>, Error> {
        let mut out = Vec::new();
        let Some(mut at) = self.policy().await?.0 else {
            return Ok(out);
        };
        while out.len() < limit {
            let before = at.revision - 1;
            out.push(at);
            if before <= 0 {
                break;
            }
            match self.policy_at(before).await? {
                Some(s) => at = s,
                None => break,
            }
        }
        Ok(out)
    }

    /// Every node's published state.
    pub async fn nodes(&mut self) -> Result<Vec<NodeState>, Error> {
        let r = timed(
            "listing nodes",
            self.client
                .get(self.keys.nodes(), Some(GetOptions::new().with_prefix())),
        )
        .await?;
        let mut out: Vec<NodeState> = r
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect();
        out.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(out)
    }

    /// Publishes a node's state under `lease`.
    pub async fn publish(&mut self, state: &NodeState, lease: i64) -> Result<(), Error> {
        let value = serde_json::to_vec(state).unwrap_or_default();
        timed(
            "publishing this node's state",
            self.client.put(
                self.keys.node(&state.node),
                value,
                Some(PutOptions::new().with_lease(lease)),
            ),
        )
        .await?;
        Ok(())
    }
}
