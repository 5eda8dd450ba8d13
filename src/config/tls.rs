//! `[hub.tls]`, `[links.tls]` and `[defaults.tls]`: the TLS settings of a
//! connection, checked here and loaded (files read) by
//! [`crate::bridge::tls::load`], so that an unreadable file or a bad key is a
//! config error naming its line. A link without `[links.tls]` takes
//! `[defaults.tls]` whole (tables are not merged key by key).

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::error::Problem;
use super::raw::RawTls;
use crate::bridge::tls::{self, TlsClient, TlsKey, TlsSettings};

/// The TLS client of `who` ("hub", "link \"edge1\"") from its table.
/// Relative file names are relative to `config_dir` (the config file's
/// directory), like every other file a config names.
pub(super) fn tls_value(who: &str, raw: &Spanned<RawTls>, config_dir: &Path) -> Result<TlsClient, Problem> {
    let table = raw.get_ref();
    let file = |name: &Spanned<String>| -> PathBuf { config_dir.join(name.get_ref()) };
    let path = |key: &Option<Spanned<String>>| key.as_ref().map(file);
    let client_auth = match (&table.cert_file, &table.key_file) {
        (Some(cert), Some(key)) => Some((file(cert), file(key))),
        (None, None) => None,
        (Some(only), None) | (None, Some(only)) => {
            return Err(Problem::at(
                only.span(),
                format!("{who}: cert_file and key_file go together (mutual TLS): set both or neither"),
            ))
        }
    };
    let insecure = table.insecure_skip_verify.as_ref().is_some_and(|v| *v.get_ref());
    let settings = TlsSettings {
        ca_file: path(&table.ca_file),
        client_auth,
        server_name: table.server_name.as_ref().map(|n| n.get_ref().clone()),
        alpn: table.alpn.clone().unwrap_or_default(),
        insecure_skip_verify: insecure,
    };
    tls::load(&settings).map_err(|(key, message)| {
        let span = match key {
            TlsKey::CaFile => table.ca_file.as_ref().map(|s| s.span()),
            TlsKey::CertFile => table.cert_file.as_ref().map(|s| s.span()),
            TlsKey::KeyFile => table.key_file.as_ref().map(|s| s.span()),
            TlsKey::ServerName => table.server_name.as_ref().map(|s| s.span()),
        };
        Problem::at(span.unwrap_or_else(|| raw.span()), format!("{who}: TLS: {message}"))
    })
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::Path;

    use testkit::tls::{Pki, ServerCert};

    use crate::config::Config;

    fn config(tls_lines: &str) -> String {
        format!(
            "data_dir = \"/tmp/q\"\n[[links]]\nname = \"edge1\"\nhost = \"127.0.0.1\"\n[links.tls]\n{tls_lines}\n\
             [[links.routes]]\ndirection = \"out\"\nlocal = \"a/#\"\nremote = \"b/#\"\n"
        )
    }

    /// The error `text` fails with (panics when it parses).
    pub(in crate::config) fn error(text: &str) -> String {
        match Config::parse(text, Path::new("file.toml")) {
            Ok(_) => panic!("expected an error: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn cert_file_without_key_file_names_its_line() {
        let e = error(&config("cert_file = \"/etc/ferry/ferry.pem\""));
        assert!(
            e.starts_with("file.toml:6:") && e.contains("cert_file and key_file go together"),
            "{e}"
        );
    }

    /// `ca_file = "ca.pem"` is found beside the config file, like
    /// `password_file`, wherever ferry was started from.
    #[test]
    fn relative_tls_files_are_relative_to_the_config_file() {
        let pki = Pki::new("unit-relative");
        let client = pki.client("c");
        let dir = pki.ca_file().parent().expect("the Pki's directory").to_path_buf();
        let name = |p: &Path| p.file_name().expect("a file name").to_string_lossy().into_owned();
        let text = config(&format!(
            "ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}",
            name(&pki.ca_file()),
            name(&client.cert),
            name(&client.key)
        ));
        if let Err(e) = Config::parse(&text, &dir.join("ferry.toml")) {
            panic!("relative TLS files beside the config were not found: {e}");
        }
    }

    #[test]
    fn unreadable_files_name_the_link_the_line_and_the_file() {
        let pki = Pki::new("unit");
        let client = pki.client("c");
        let ca = format!("ca_file = {:?}\n", pki.ca_file().display().to_string());
        let e = error(&config(&format!(
            "{ca}cert_file = {:?}\nkey_file = \"/nonexistent/ferry.key\"",
            client.cert
        )));
        assert!(
            e.starts_with("file.toml:8:") && e.contains("link \"edge1\"") && e.contains("/nonexistent/ferry.key"),
            "{e}"
        );
        let e = error(&config("ca_file = \"/nonexistent/ca.pem\""));
        assert!(
            e.starts_with("file.toml:6:") && e.contains("cannot read ca_file /nonexistent/ca.pem"),
            "{e}"
        );
        // A certificate where the key should be.
        let e = error(&config(&format!(
            "{ca}cert_file = {:?}\nkey_file = {:?}",
            client.cert, client.cert
        )));
        assert!(e.starts_with("file.toml:8:") && e.contains("no PEM private key"), "{e}");
    }

    #[test]
    fn tls_defaults_to_port_8883_is_inherited_and_never_shows_key_material() {
        let pki = Pki::new("unit");
        let server = pki.server("s", ServerCert::Valid);
        let text = format!(
            "data_dir = \"/tmp/q\"\n[defaults.tls]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n\
             insecure_skip_verify = true\n\
             [[links]]\nname = \"edge1\"\nhost = \"127.0.0.1\"\n\
             [[links.routes]]\ndirection = \"out\"\nlocal = \"a/#\"\nremote = \"b/#\"\n",
            pki.ca_file(),
            server.cert,
            server.key
        );
        let config = Config::parse(&text, Path::new("file.toml")).unwrap();
        let link = &config.links[0];
        assert_eq!(link.port, 8883);
        assert!(link.tls.is_some());
        assert_eq!(config.hub.port, 1883);
        let debug = format!("{config:?}");
        assert!(!debug.contains("PRIVATE") && !debug.contains("BEGIN"), "{debug}");
        let summary = config.summary();
        assert!(summary.contains("WARNING: insecure_skip_verify"), "{summary}");
    }
}
