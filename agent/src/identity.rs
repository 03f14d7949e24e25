//! Who the caller is: from a verified certificate (CN as username, DNS SANs as groups), or by
//! Vitess's fallbacks for callers without one.

use std::fmt;

use x509_parser::{extensions::GeneralName, prelude::FromDer};

/// The username Vitess gives a gRPC caller it knows nothing about.
pub const UNSECURE_GRPC_CLIENT: &str = "unsecure_grpc_client";

/// Vitess's effective-caller-ID override, for callers without a verified certificate
/// (`grpc-use-effective-callerid`, `grpc-use-effective-groups`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EffectiveCallerId {
    /// `unsecure_grpc_client`.
    Off,
    /// `grpc-use-effective-callerid`: username = the effective principal.
    Principal,
    /// ... and `grpc-use-effective-groups`: groups = the effective groups.
    PrincipalAndGroups,
}

/// An identity as table ACLs see it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub username: String,
    pub groups: Vec<String>,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.groups.is_empty() {
            write!(f, "{:?}", self.username)
        } else {
            write!(f, "{:?} (groups {:?})", self.username, self.groups)
        }
    }
}

/// A certificate's identity could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("peer certificate is not valid X.509: {0}")]
    Parse(String),
    #[error("peer certificate has no subject common name: vtguard names callers by CN")]
    NoCommonName,
}

/// The identity a verified client certificate proves: subject CN, and DNS SANs as groups.
/// CNs with spaces ("vtgate client 1") and SANs that repeat the CN are kept as they are.
pub fn from_certificate(der: &[u8]) -> Result<Identity, Error> {
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der)
        .map_err(|e| Error::Parse(e.to_string()))?;
    let username = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned)
        .ok_or(Error::NoCommonName)?;
    let mut groups = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                groups.push((*dns).to_owned());
            }
        }
    }
    Ok(Identity { username, groups })
}

/// Vitess's precedence for a caller without a verified certificate, given the effective
/// caller ID of the request (principal, groups), if it carried one.
pub fn fallback(mode: EffectiveCallerId, effective: Option<(&str, &[String])>) -> Identity {
    match (mode, effective) {
        (EffectiveCallerId::Principal, Some((principal, _))) if !principal.is_empty() => Identity {
            username: principal.to_owned(),
            groups: Vec::new(),
        },
        (EffectiveCallerId::PrincipalAndGroups, Some((principal, groups)))
            if !principal.is_empty() =>
        {
            Identity {
                username: principal.to_owned(),
                groups: groups.to_vec(),
            }
        }
        _ => Identity {
            username: UNSECURE_GRPC_CLIENT.to_owned(),
            groups: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificate_cn_with_spaces_and_dns_sans() {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "vtgate client 1".into()])
                .expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vtgate client 1");
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("cert");
        let id = from_certificate(cert.der()).expect("identity");
        assert_eq!(id.username, "vtgate client 1");
        assert_eq!(
            id.groups,
            vec!["localhost".to_owned(), "vtgate client 1".to_owned()]
        );
    }

    #[test]
    fn certificate_without_cn_is_refused() {
        let params = rcgen::CertificateParams::new(vec!["x".into()]).expect("params");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = params;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).expect("cert");
        assert!(matches!(
            from_certificate(cert.der()),
            Err(Error::NoCommonName)
        ));
        assert!(matches!(from_certificate(b"not der"), Err(Error::Parse(_))));
    }

    #[test]
    fn vitess_precedence_without_certificate() {
        let groups = vec!["vtgate client 1".to_owned()];
        let eff = Some(("my-caller", groups.as_slice()));
        assert_eq!(
            fallback(EffectiveCallerId::Off, eff).username,
            UNSECURE_GRPC_CLIENT
        );
        let p = fallback(EffectiveCallerId::Principal, eff);
        assert_eq!((p.username.as_str(), p.groups.len()), ("my-caller", 0));
        let pg = fallback(EffectiveCallerId::PrincipalAndGroups, eff);
        assert_eq!(pg.groups, groups);
        assert_eq!(
            fallback(EffectiveCallerId::Principal, None).username,
            UNSECURE_GRPC_CLIENT
        );
        assert_eq!(
            fallback(EffectiveCallerId::PrincipalAndGroups, Some(("", &[]))).username,
            UNSECURE_GRPC_CLIENT
        );
    }
}
