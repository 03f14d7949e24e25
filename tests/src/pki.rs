//! The PKI of Vitess's encrypted-transport test (docs/VITESS.md §5), made with rcgen at
//! test time: one root, four intermediates, ECDSA P-256 leaves with DNS SANs ["localhost", CN]
//! and IPs 127.0.0.1 and ::1. Plus what the refusal tests need: a foreign CA, an expired and a
//! revoked client, and the CRL that revokes it.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CertifiedIssuer, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SanType, SerialNumber,
};

/// Files written under a temporary directory. Leaf `<name>.pem` holds the leaf and its
/// intermediate (the chain a Vitess binary serves), `<name>.key` its key.
pub struct Pki {
    dir: tempfile::TempDir,
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, cn);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn leaf_params(cn: &str, serial: u64) -> CertificateParams {
    let mut p = CertificateParams::new(vec!["localhost".to_owned(), cn.to_owned()]).expect("SANs");
    p.distinguished_name.push(DnType::CommonName, cn);
    p.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    p.subject_alt_names
        .push(SanType::IpAddress("::1".parse().expect("ip")));
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.serial_number = Some(SerialNumber::from(serial));
    p
}

impl Pki {
    /// Makes every certificate and writes the files.
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki { dir };
        let root = CertifiedIssuer::self_signed(
            ca_params("Vitess test root CA"),
            KeyPair::generate().expect("key"),
        )
        .expect("root");
        pki.write("root.pem", &root.pem());

        let mut serial = 100;
        let mut leaf =
            |pki: &Pki, file: &str, cn: &str, ca: &CertifiedIssuer<'_, KeyPair>, expired: bool| {
                serial += 1;
                let mut p = leaf_params(cn, serial);
                if expired {
                    p.not_before = rcgen::date_time_ymd(2020, 1, 1);
                    p.not_after = rcgen::date_time_ymd(2021, 1, 1);
                }
                let key = KeyPair::generate().expect("key");
                let cert = p.signed_by(&key, ca).expect("leaf");
                pki.write(
                    &format!("{file}.pem"),
                    &format!("{}{}", cert.pem(), ca.pem()),
                );
                pki.write(&format!("{file}.leaf.pem"), &cert.pem());
                pki.write(&format!("{file}.key"), &key.serialize_pem());
                serial
            };

        let inter = |cn: &str| {
            CertifiedIssuer::signed_by(ca_params(cn), KeyPair::generate().expect("key"), &root)
                .expect("intermediate")
        };
        let tablet_server = inter("vttablet server CA");
        let tablet_client = inter("vttablet client CA");
        let vtgate_server = inter("vtgate server CA");
        let vtgate_client = inter("vtgate client CA");
        for (file, ca) in [
            ("vttablet-server-ca.pem", &tablet_server),
            ("vttablet-client-ca.pem", &tablet_client),
            ("vtgate-server-ca.pem", &vtgate_server),
            ("vtgate-client-ca.pem", &vtgate_client),
        ] {
            pki.write(file, &ca.pem());
        }
        leaf(
            &pki,
            "vttablet-server-instance",
            "vttablet server instance",
            &tablet_server,
            false,
        );
        leaf(
            &pki,
            "vttablet-client-1",
            "vttablet client 1",
            &tablet_client,
            false,
        );
        leaf(&pki, "localhost", "localhost", &vtgate_server, false);
        leaf(
            &pki,
            "localhost-rotated",
            "localhost",
            &vtgate_server,
            false,
        );
        leaf(
            &pki,
            "vtgate-client-1",
            "vtgate client 1",
            &vtgate_client,
            false,
        );
        leaf(
            &pki,
            "vtgate-client-2",
            "vtgate client 2",
            &vtgate_client,
            false,
        );
        leaf(
            &pki,
            "vtgate-client-expired",
            "vtgate client 1",
            &vtgate_client,
            true,
        );
        let revoked = leaf(
            &pki,
            "vtgate-client-revoked",
            "vtgate client 1",
            &vtgate_client,
            false,
        );

        let crl = CertificateRevocationListParams {
            this_update: rcgen::date_time_ymd(2025, 1, 1),
            next_update: rcgen::date_time_ymd(2035, 1, 1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: vec![RevokedCertParams {
                serial_number: SerialNumber::from(revoked),
                revocation_time: rcgen::date_time_ymd(2025, 6, 1),
                reason_code: Some(RevocationReason::KeyCompromise),
                invalidity_date: None,
            }],
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&vtgate_client)
        .expect("crl");
        pki.write("vtgate-client-ca.crl", &crl.pem().expect("crl pem"));

        // A foreign CA whose client claims the same CN.
        let other = CertifiedIssuer::self_signed(
            ca_params("Some other CA"),
            KeyPair::generate().expect("key"),
        )
        .expect("other");
        pki.write("other-ca.pem", &other.pem());
        leaf(&pki, "other-client", "vtgate client 1", &other, false);
        pki
    }

    fn write(&self, name: &str, content: &str) {
        std::fs::write(self.dir.path().join(name), content).expect("write PKI file");
    }

    /// The path of a file of this PKI.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The folder holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The DER of leaf `<name>.leaf.pem` (e.g. "localhost-rotated"), as a server sends it.
    pub fn leaf_der(&self, name: &str) -> Vec<u8> {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        CertificateDer::from_pem_file(self.path(&format!("{name}.leaf.pem")))
            .unwrap_or_else(|e| panic!("{name}.leaf.pem: {e}"))
            .to_vec()
    }

    /// The serial number of leaf `<name>`, as x509 carries it.
    pub fn serial(&self, name: &str) -> Vec<u8> {
        let der = self.leaf_der(name);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("x509");
        cert.raw_serial().to_vec()
    }

    /// A file's content.
    pub fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_else(|e| panic!("read {name}: {e}"))
    }
}
