//! TLS for a connection: the `[hub.tls]` / `[links.tls]` (or `[defaults.tls]`)
//! settings turned into a rustls client configuration, and rustls errors
//! turned into text an operator can act on.
//!
//! The files (CA, client certificate, key) are read when the config is loaded
//! (start, `ferry check`, `ferry reload`, SIGHUP), never while connecting, so
//! an unreadable key is a config error naming its line, and a certificate
//! rotated on disk is picked up by the next reload. Two [`TlsClient`]s are
//! equal when their settings and a hash of the files' contents are: a reload
//! restarts a link only when one of them changed.
//!
//! Key and certificate material is never logged: [`TlsClient`]'s `Debug`
//! shows the settings and the contents hash only.
//!
//! rumqttc sends the broker's host as SNI; `server_name` changes the name the
//! certificate is checked against (rumqttc 0.25 cannot change the SNI).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring, CryptoProvider};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The TLS settings of one connection, as validated from the config.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// None: the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// The client certificate and its key (mutual TLS).
    pub client_auth: Option<(PathBuf, PathBuf)>,
    pub server_name: Option<String>,
    pub alpn: Vec<String>,
    pub insecure_skip_verify: bool,
}

/// The loaded TLS client: settings, the rustls config made from them, and a
/// hash of the files read.
#[derive(Clone)]
pub struct TlsClient {
    pub settings: TlsSettings,
    pub config: Arc<ClientConfig>,
    contents_hash: u64,
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings && self.contents_hash == other.contents_hash
    }
}

impl Eq for TlsClient {}

impl fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClient")
            .field("settings", &self.settings)
            .field("contents_hash", &format_args!("{:016x}", self.contents_hash))
            .finish_non_exhaustive()
    }
}

/// Which setting a load error is about (so the config error names its line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsKey {
    CaFile,
    CertFile,
    KeyFile,
    ServerName,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

fn read(path: &Path, what: &str, hasher: &mut impl Hasher) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    bytes.hash(hasher);
    Ok(bytes)
}

fn certificates(path: &Path, what: &str, hasher: &mut impl Hasher) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path, what, hasher)?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(bytes.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{what} {} is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{what} {} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Reads the files of `settings` and builds the rustls client config.
pub fn load(settings: &TlsSettings) -> Result<TlsClient, (TlsKey, String)> {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let provider = provider();
    let mut roots = RootCertStore::empty();
    match &settings.ca_file {
        Some(path) => {
            let certs = certificates(path, "ca_file", &mut hasher).map_err(|e| (TlsKey::CaFile, e))?;
            for cert in certs {
                roots
                    .add(cert)
                    .map_err(|e| (TlsKey::CaFile, format!("ca_file {}: {e}", path.display())))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err((
                    TlsKey::CaFile,
                    "no ca_file and the system's trust store holds no certificate: set ca_file".to_owned(),
                ));
            }
        }
    }
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| (TlsKey::CaFile, format!("cannot use the CA certificates: {e}")))?;
    let server_name = match &settings.server_name {
        Some(name) => Some(
            ServerName::try_from(name.clone())
                .map_err(|e| (TlsKey::ServerName, format!("server_name {name:?}: {e}")))?,
        ),
        None => None,
    };
    let verifier = Arc::new(Verifier {
        inner: verifier,
        server_name,
        insecure: settings.insecure_skip_verify,
        provider: provider.clone(),
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| (TlsKey::CaFile, format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &settings.client_auth {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let certs = certificates(cert_file, "cert_file", &mut hasher).map_err(|e| (TlsKey::CertFile, e))?;
            let key_bytes = read(key_file, "key_file", &mut hasher).map_err(|e| (TlsKey::KeyFile, e))?;
            let key = private_key(&key_bytes)
                .map_err(|e| (TlsKey::KeyFile, format!("key_file {}: {e}", key_file.display())))?;
            builder.with_client_auth_cert(certs, key).map_err(|e| {
                (
                    TlsKey::KeyFile,
                    format!(
                        "key_file {} does not fit cert_file {}: {e}",
                        key_file.display(),
                        cert_file.display()
                    ),
                )
            })?
        }
    };
    config.alpn_protocols = settings.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(TlsClient {
        settings: settings.clone(),
        config: Arc::new(config),
        contents_hash: hasher.finish(),
    })
}

/// The first private key in PEM `bytes`. The key is not named in errors.
fn private_key(bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    match rustls_pemfile::private_key(&mut BufReader::new(bytes)) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err("holds no PEM private key (PKCS#8, PKCS#1 or SEC1)".to_owned()),
        Err(e) => Err(format!("is not a valid PEM private key: {e}")),
    }
}

/// Checks the broker's certificate with webpki, against `server_name` when
/// set; with `insecure`, accepts any certificate (signatures still checked).
#[derive(Debug)]
struct Verifier {
    inner: Arc<WebPkiServerVerifier>,
    server_name: Option<ServerName<'static>>,
    insecure: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.insecure {
            return Ok(ServerCertVerified::assertion());
        }
        let name = self.server_name.as_ref().unwrap_or(server_name);
        self.inner
            .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A connection error in words: for a TLS failure, what is wrong and what to
/// check; otherwise the error's own text.
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut current = Some(error);
    while let Some(e) = current {
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(e), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                return format!("TLS: {}", describe_rustls(tls));
            }
        }
        current = e.source();
    }
    // rumqttc passes an alert that arrives after the handshake (TLS 1.3: the
    // broker checks the client certificate then) on as text only.
    let text = error.to_string();
    match text.split_once("received fatal alert: ") {
        Some((_, alert)) => format!("TLS: {}", refused(alert.trim())),
        None => text,
    }
}

fn refused(alert: &str) -> String {
    format!(
        "the broker refused the handshake ({alert}): does it require a client certificate (cert_file, key_file) \
         or one signed by a CA it trusts?"
    )
}

fn describe_rustls(error: &rustls::Error) -> String {
    use rustls::Error as E;
    match error {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the broker's certificate is not signed by a trusted CA (unknown issuer): check ca_file".to_owned()
        }
        E::InvalidCertificate(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
            "the broker's certificate has expired".to_owned()
        }
        E::InvalidCertificate(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
            "the broker's certificate is not valid yet (check the clocks)".to_owned()
        }
        E::InvalidCertificate(CertificateError::NotValidForNameContext { expected, presented }) => {
            let names = if presented.is_empty() {
                "no subjectAltName (the CN is not checked)".to_owned()
            } else {
                format!("only {}", presented.join(", "))
            };
            format!(
                "name mismatch: the broker's certificate is not valid for {:?}: it names {names}; \
                 set server_name to a name it carries, or put that name in its subjectAltName",
                expected.to_str()
            )
        }
        E::InvalidCertificate(CertificateError::NotValidForName) => {
            "name mismatch: the broker's certificate is not valid for the name connected to (set server_name)"
                .to_owned()
        }
        E::AlertReceived(alert) => refused(&format!("{alert:?}")),
        other => other.to_string(),
    }
}
