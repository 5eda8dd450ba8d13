//! `host`/`port` or `hosts`: the ordered addresses of a broker (failover,
//! see `bridge/failover.rs`), and `failback_secs`.
//!
//! `hosts = ["a:1883", "b"]`: an entry without a port takes `port` when set,
//! else MQTT's default (8883 with TLS, 1883 without). `host` and `hosts`
//! together are an error; so is neither (for a link; the hub defaults to
//! 127.0.0.1).

use std::ops::Range;

use toml::Spanned;

use super::error::Problem;

/// The addresses of `who` from `host` (already checked not empty) or `hosts`.
pub(super) fn addresses(
    who: &str,
    host: Option<&Spanned<String>>,
    hosts: &Option<Spanned<Vec<Spanned<String>>>>,
    port: u16,
    default_host: Option<&str>,
    table: Range<usize>,
) -> Result<Vec<(String, u16)>, Problem> {
    match (host, hosts) {
        (Some(_), Some(hosts)) => Err(Problem::at(
            hosts.span(),
            format!("{who}: set host (one address) or hosts (a list), not both"),
        )),
        (Some(host), None) => Ok(vec![(host.get_ref().clone(), port)]),
        (None, Some(hosts)) => {
            if hosts.get_ref().is_empty() {
                return Err(Problem::at(hosts.span(), format!("{who}: hosts cannot be empty")));
            }
            hosts.get_ref().iter().map(|entry| address(who, entry, port)).collect()
        }
        (None, None) => match default_host {
            Some(default) => Ok(vec![(default.to_owned(), port)]),
            None => Err(Problem::at(
                table,
                format!("{who}: missing host: set host = \"broker.example\" or hosts = [\"a:1883\", \"b:1883\"]"),
            )),
        },
    }
}

/// "host:port", "host", "[v6]:port" or "[v6]".
fn address(who: &str, entry: &Spanned<String>, default_port: u16) -> Result<(String, u16), Problem> {
    let text = entry.get_ref().trim();
    let bad = |why: &str| {
        Problem::at(
            entry.span(),
            format!("{who}: hosts entry {text:?} {why}: write \"host:port\" or \"host\""),
        )
    };
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']').ok_or_else(|| bad("has no closing ']'"))?;
        match after.strip_prefix(':') {
            Some(port) => (v6, Some(port)),
            None if after.is_empty() => (v6, None),
            None => return Err(bad("has text after ']'")),
        }
    } else {
        match text.rsplit_once(':') {
            Some((_, _)) if text.matches(':').count() > 1 => return Err(bad("is an IPv6 address without [ ]")),
            Some((host, port)) => (host, Some(port)),
            None => (text, None),
        }
    };
    if host.is_empty() || host.contains('/') {
        return Err(bad("is not a host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("has no valid port (1..65535)"))?,
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::config::tls::tests::error;
    use crate::config::Config;

    fn link(keys: &str) -> String {
        format!(
            "data_dir = \"/tmp/q\"\n[defaults]\nfailback_secs = 60\n[[links]]\nname = \"edge1\"\n{keys}\n\
             [[links.routes]]\ndirection = \"out\"\nlocal = \"a/#\"\nremote = \"b/#\"\n"
        )
    }

    #[test]
    fn hosts_in_order_with_default_ports_and_inherited_failback() {
        let text = link("hosts = [\"a.example:1884\", \"b.example\", \"[::1]:1885\"]\nport = 1999");
        let config = Config::parse(&text, Path::new("file.toml")).unwrap();
        let l = &config.links[0];
        let want = [("a.example", 1884), ("b.example", 1999), ("::1", 1885)];
        let got: Vec<(&str, u16)> = l.addresses.iter().map(|(h, p)| (h.as_str(), *p)).collect();
        assert_eq!(got, want);
        assert_eq!((l.host.as_str(), l.port), ("a.example", 1884));
        assert_eq!(l.failback, Duration::from_secs(60));
        assert_eq!(config.hub.failback, Duration::from_secs(60));
        assert_eq!(config.hub.addresses, vec![("127.0.0.1".to_owned(), 1883)]);
    }

    #[test]
    fn host_and_hosts_together_bad_entries_and_neither_name_their_line() {
        let e = error(&link("host = \"a\"\nhosts = [\"b:1883\"]"));
        assert!(e.starts_with("file.toml:7:") && e.contains("not both"), "{e}");
        let e = error(&link("hosts = [\"b:1883\", \"c:99999\"]"));
        assert!(e.starts_with("file.toml:6:") && e.contains("\"c:99999\""), "{e}");
        let e = error(&link("hosts = []"));
        assert!(
            e.starts_with("file.toml:6:") && e.contains("hosts cannot be empty"),
            "{e}"
        );
        let e = error(&link("port = 1883"));
        assert!(e.starts_with("file.toml:4:") && e.contains("missing host"), "{e}");
        let e = error(&link("host = \"a\"\nfailback_secs = 0"));
        assert!(e.starts_with("file.toml:7:") && e.contains("failback_secs"), "{e}");
    }
}
