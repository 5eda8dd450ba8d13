//! The deployment examples in examples/deploy/ stay true to the code: every
//! `ferry_*` metric they name exists in src/metrics.rs, the Grafana dashboard
//! is valid JSON with the expected variables, and, where the tools are
//! installed, `promtool` accepts the Prometheus files and passes the alerts'
//! unit tests (ferry-alerts.test.yml), and `systemd-analyze verify` accepts
//! the unit. Cheap: no broker, no ferry process.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/deploy")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every `ferry_[a-z_]+` word in `text`.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("ferry_") {
        let word: String = rest[start..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        // Only whole words: not the tail of a longer identifier.
        let whole = start == 0 || !rest[..start].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        if whole {
            names.push(word.clone());
        }
        rest = &rest[start + word.len().max(1)..];
    }
    names
}

/// The metric names src/metrics.rs defines.
fn defined_metrics() -> Vec<String> {
    let source = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"));
    let defined: Vec<String> = source
        .lines()
        .filter(|l| l.trim_start().starts_with("pub const "))
        .flat_map(metric_names)
        .collect();
    assert!(
        defined.len() >= 10,
        "found too few metric names in src/metrics.rs: {defined:?}"
    );
    defined
}

fn deploy_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(deploy_dir())
        .unwrap_or_else(|e| panic!("examples/deploy: {e}"))
        .map(|entry| entry.unwrap_or_else(|e| panic!("examples/deploy: {e}")).path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_metric_the_deploy_files_name_exists() {
    let defined = defined_metrics();
    let mut unknown = Vec::new();
    let mut used = 0;
    for file in deploy_files() {
        for name in metric_names(&read(&file)) {
            // A histogram's series carry a suffix Prometheus adds.
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            used += 1;
            if !defined.iter().any(|d| d == base) {
                unknown.push(format!("{}: {name}", file.display()));
            }
        }
    }
    assert!(used > 20, "the deploy files name only {used} metrics");
    assert!(
        unknown.is_empty(),
        "metrics not defined in src/metrics.rs: {unknown:#?}"
    );
}

#[test]
fn the_grafana_dashboard_is_valid_and_templated() {
    let path = deploy_dir().join("grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&read(&path)).unwrap_or_else(|e| panic!("{}: invalid JSON: {e}", path.display()));
    assert!(dashboard["schemaVersion"].as_u64() >= Some(36), "schemaVersion");
    let variables = dashboard["templating"]["list"]
        .as_array()
        .unwrap_or_else(|| panic!("no templating"));
    let variable = |name: &str| {
        variables
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(variable("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(variable("link")["definition"], "label_values(ferry_link_up, link)");
    let panels = dashboard["panels"].as_array().unwrap_or_else(|| panic!("no panels"));
    let mut ids = Vec::new();
    for panel in panels {
        let title = panel["title"].as_str().unwrap_or("?");
        ids.push(panel["id"].as_u64().unwrap_or_else(|| panic!("{title}: no id")));
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{title}");
        let targets = panel["targets"]
            .as_array()
            .unwrap_or_else(|| panic!("{title}: no targets"));
        assert!(!targets.is_empty(), "{title}: no targets");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("{title}: a target without expr"));
            assert!(
                expr.contains("link=~\"$link\""),
                "{title}: {expr} ignores the link variable"
            );
        }
    }
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids must be unique");
}

/// Runs `program args` when it is installed: its exit status and its stdout
/// followed by its stderr; None when it is not installed.
fn run_if_installed(program: &str, args: &[&str]) -> Option<(std::process::ExitStatus, String)> {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Some((out.status, text))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{program} is not installed: check skipped");
            None
        }
        Err(e) => panic!("cannot run {program}: {e}"),
    }
}

#[test]
fn promtool_accepts_the_prometheus_config_and_alert_rules() {
    let dir = deploy_dir();
    let config = dir.join("prometheus.yml");
    let Some((status, text)) = run_if_installed("promtool", &["check", "config", config.to_str().unwrap_or_default()])
    else {
        return;
    };
    assert!(
        status.success(),
        "promtool check config (which also checks the rules):\n{text}"
    );
    assert!(
        text.contains("ferry-alerts.yml"),
        "prometheus.yml does not load the alert rules:\n{text}"
    );
    let tests = dir.join("ferry-alerts.test.yml");
    let Some((status, text)) = run_if_installed("promtool", &["test", "rules", tests.to_str().unwrap_or_default()])
    else {
        return;
    };
    assert!(
        status.success(),
        "promtool test rules (the alerts' unit tests):\n{text}"
    );
}

#[test]
fn systemd_accepts_the_unit() {
    let unit = read(&deploy_dir().join("ferry.service"));
    for key in [
        "StateDirectory=ferry",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "KillSignal=SIGTERM",
        "Restart=on-failure",
    ] {
        assert!(unit.lines().any(|l| l == key), "ferry.service lacks {key}");
    }
    // systemd-analyze checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("ferry.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/ferry", env!("CARGO_BIN_EXE_ferry")))
        .unwrap_or_else(|e| panic!("{e}"));
    let Some((status, text)) = run_if_installed("systemd-analyze", &["verify", path.to_str().unwrap_or_default()])
    else {
        return;
    };
    assert!(
        status.success() && !text.contains("ferry.service:"),
        "systemd-analyze verify:\n{text}"
    );
}
