//! Certificates for TLS tests, made with rcgen in a temp directory: a CA,
//! server certificates it signs (valid, expired, for another name) and
//! client certificates (mutual TLS), and the mosquitto lines of a TLS
//! listener that uses them.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use tempfile::TempDir;

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test CA and the files it signed.
pub struct Pki {
    dir: TempDir,
    ca: Certificate,
    ca_key: KeyPair,
}

/// What a server certificate is made to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCert {
    /// Valid now, for 127.0.0.1 and localhost.
    Valid,
    /// For 127.0.0.1 and localhost, but expired a year ago.
    Expired,
    /// Valid now, for "other.example" only.
    OtherName,
}

fn write(path: &Path, text: &str) {
    fs::write(path, text).unwrap_or_else(|e| panic!("Pki: cannot write {}: {e}", path.display()));
}

impl Pki {
    /// A new CA named `name`; its certificate is at [`Pki::ca_file`].
    pub fn new(name: &str) -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("ferry-test-pki-")
            .tempdir()
            .unwrap_or_else(|e| panic!("Pki: cannot create a temp dir: {e}"));
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ferry test CA {name}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&ca_key).expect("CA certificate");
        let pki = Pki { dir, ca, ca_key };
        write(&pki.ca_file(), &pki.ca.pem());
        pki
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Signs a server certificate of `kind`, written as `<stem>.pem` / `<stem>.key`.
    pub fn server(&self, stem: &str, kind: ServerCert) -> CertFiles {
        let names = match kind {
            ServerCert::OtherName => vec!["other.example".to_string()],
            _ => vec!["localhost".to_string()],
        };
        let mut params = CertificateParams::new(names).expect("server params");
        if kind != ServerCert::OtherName {
            params
                .subject_alt_names
                .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        }
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        if kind == ServerCert::Expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        self.sign(stem, params)
    }

    /// Signs a client certificate (mutual TLS), written as `<stem>.pem` / `<stem>.key`.
    pub fn client(&self, stem: &str) -> CertFiles {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params.distinguished_name.push(DnType::CommonName, stem);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(stem, params)
    }

    fn sign(&self, stem: &str, params: CertificateParams) -> CertFiles {
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("signed certificate");
        let files = CertFiles {
            cert: self.dir.path().join(format!("{stem}.pem")),
            key: self.dir.path().join(format!("{stem}.key")),
        };
        write(&files.cert, &cert.pem());
        write(&files.key, &key.serialize_pem());
        files
    }
}

/// mosquitto lines that make the broker's main listener TLS with `server`
/// (clients verified against `client_ca` when given: mutual TLS), and add a
/// plain listener on `plain_port` for the test's own clients.
pub fn tls_listener(ca: &Path, server: &CertFiles, require_certificate: bool, plain_port: u16) -> String {
    format!(
        "cafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate {require_certificate}\nlistener {plain_port} 127.0.0.1\n",
        ca.display(),
        server.cert.display(),
        server.key.display(),
    )
}
