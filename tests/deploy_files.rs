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

/// What a command printed: stdout, then stderr.
fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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

// ---- examples/deploy/kubernetes/ ----

fn kubernetes_file(name: &str) -> String {
    read(&deploy_dir().join("kubernetes").join(name))
}

/// The value of the first `key: value` line (any indentation) after `after` in `yaml`.
fn yaml_value<'a>(yaml: &'a str, after: &str, key: &str) -> &'a str {
    let start = yaml.find(after).unwrap_or_else(|| panic!("{after:?} not found"));
    yaml[start..]
        .lines()
        .find_map(|l| {
            l.trim_start()
                .trim_start_matches("- ")
                .strip_prefix(&format!("{key}: "))
        })
        .map(|v| v.split(" #").next().unwrap_or(v).trim().trim_matches('"'))
        .unwrap_or_else(|| panic!("no {key} after {after:?}"))
}

/// The ConfigMap's ferry.toml (the block under `ferry.toml: |`), parsed, and its text.
fn configmap_ferry_toml() -> (toml::Table, String) {
    let yaml = kubernetes_file("configmap.yaml");
    let (_, block) = yaml
        .split_once("  ferry.toml: |\n")
        .unwrap_or_else(|| panic!("configmap.yaml has no ferry.toml"));
    let text: String = block
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let table = text
        .parse()
        .unwrap_or_else(|e| panic!("configmap.yaml ferry.toml: {e}"));
    (table, text)
}

fn toml_str<'a>(table: &'a toml::Table, path: &[&str]) -> &'a toml::Value {
    let mut value = table
        .get(path[0])
        .unwrap_or_else(|| panic!("ferry.toml has no {path:?}"));
    for key in &path[1..] {
        value = value.get(key).unwrap_or_else(|| panic!("ferry.toml has no {path:?}"));
    }
    value
}

#[test]
fn the_kubernetes_manifests_hold_together() {
    let statefulset = kubernetes_file("statefulset.yaml");
    let (ferry_toml, _) = configmap_ferry_toml();
    for (file, kind) in [
        ("statefulset.yaml", "StatefulSet"),
        ("configmap.yaml", "ConfigMap"),
        ("service.yaml", "Service"),
        ("poddisruptionbudget.yaml", "PodDisruptionBudget"),
        ("podmonitor.yaml", "PodMonitor"),
    ] {
        assert!(
            kubernetes_file(file).contains(&format!("\nkind: {kind}\n")),
            "{file}: not a {kind}"
        );
    }
    assert!(
        kubernetes_file("service.yaml").contains("clusterIP: None"),
        "the Service must be headless"
    );
    assert_eq!(yaml_value(&statefulset, "spec:", "podManagementPolicy"), "Parallel");
    assert_eq!(yaml_value(&statefulset, "spec:", "serviceName"), "ferry");

    // The volume: one claim per pod, mounted where ferry.toml keeps its queues.
    assert_eq!(yaml_value(&statefulset, "\n  volumeClaimTemplates:\n", "name"), "data");
    let mount = yaml_value(&statefulset, "volumeMounts:\n            - name: data", "mountPath");
    assert_eq!(
        toml_str(&ferry_toml, &["data_dir"]).as_str(),
        Some(mount),
        "data_dir vs the volume"
    );

    // One shard per pod: auto from the pod's name, as many shards as replicas.
    assert_eq!(toml_str(&ferry_toml, &["fleet", "shard"]).as_str(), Some("auto"));
    let replicas: i64 = yaml_value(&statefulset, "spec:", "replicas").parse().unwrap_or(-1);
    assert_eq!(toml_str(&ferry_toml, &["fleet", "shards"]).as_integer(), Some(replicas));

    // Probes: paths the admin API serves, on the port ferry.toml's [admin] listens on.
    let admin = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/daemon/admin.rs"));
    let probe_paths: Vec<&str> = statefulset
        .lines()
        .filter_map(|l| l.trim().strip_prefix("path: "))
        .filter(|path| path.starts_with('/')) // not the volumes' item paths
        .collect();
    assert!(
        probe_paths.contains(&"/livez") && probe_paths.contains(&"/readyz"),
        "{probe_paths:?}"
    );
    for path in &probe_paths {
        assert!(
            admin.contains(&format!(".route(\"{path}\"")),
            "the admin API does not serve {path}"
        );
    }
    let port_of = |section: &str| {
        let listen = toml_str(&ferry_toml, &[section, "listen"]).as_str().unwrap_or_default();
        assert!(
            listen.starts_with("0.0.0.0:"),
            "[{section}] listen {listen:?} is not reachable in a pod"
        );
        listen.rsplit(':').next().unwrap_or_default().to_owned()
    };
    assert_eq!(
        yaml_value(&statefulset, "- name: admin", "containerPort"),
        port_of("admin")
    );
    assert_eq!(
        yaml_value(&statefulset, "- name: metrics", "containerPort"),
        port_of("metrics")
    );
    assert_eq!(
        yaml_value(&kubernetes_file("podmonitor.yaml"), "podMetricsEndpoints:", "port"),
        "metrics"
    );
    assert_eq!(
        yaml_value(&kubernetes_file("podmonitor.yaml"), "podMetricsEndpoints:", "path"),
        "/metrics"
    );

    // A clean stop: every link gets 15 s to close (link/supervisor.rs STOP_GRACE), then the flush.
    let grace: u64 = yaml_value(&statefulset, "spec:", "terminationGracePeriodSeconds")
        .parse()
        .unwrap_or(0);
    assert!(
        grace >= 30,
        "terminationGracePeriodSeconds {grace} does not cover a clean stop"
    );
}

#[test]
fn the_kubernetes_metric_names_exist() {
    let defined = defined_metrics();
    let mut used = Vec::new();
    for file in ["podmonitor.yaml", "statefulset.yaml", "configmap.yaml", "README.md"] {
        // "ferry_.*" (a regex of all of them) is not a name.
        used.extend(
            metric_names(&kubernetes_file(file))
                .into_iter()
                .filter(|n| !n.ends_with('_')),
        );
    }
    assert!(used.iter().any(|n| n == "ferry_fleet_shard"), "{used:?}");
    let unknown: Vec<&String> = used.iter().filter(|n| !defined.contains(n)).collect();
    assert!(unknown.is_empty(), "metrics not defined in src/metrics.rs: {unknown:?}");
}

#[test]
fn ferry_check_accepts_the_configmaps_ferry_toml() {
    let (_, text) = configmap_ferry_toml();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("ferry.toml");
    // The token the pod gets from its Secret: here a file of the test's.
    let token = dir.path().join("admin.token");
    std::fs::write(&token, "a-token-for-the-check\n").unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text.contains("token_file = \"/etc/ferry/admin.token\""),
        "the admin API off loopback needs its token"
    );
    let text = text.replace("/etc/ferry/admin.token", &token.display().to_string());
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["check", "--config", path.to_str().unwrap_or_default()])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let said = output_text(&out);
    assert!(
        out.status.success(),
        "ferry check refuses the ConfigMap's ferry.toml:\n{said}"
    );
    assert!(said.contains("fleet     3 shards"), "{said}");
}

/// The `KEY` line of the Dockerfile's runtime stage (the last `FROM`), its arguments.
fn dockerfile_runtime(key: &str) -> String {
    let text = read(&Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"));
    let runtime = text.rsplit("\nFROM ").next().unwrap_or(&text);
    runtime
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .unwrap_or_else(|| panic!("Dockerfile's runtime stage has no {key}"))
        .trim()
        .to_string()
}

#[test]
fn the_statefulset_runs_the_image_the_dockerfile_builds() {
    let statefulset = kubernetes_file("statefulset.yaml");
    let image = yaml_value(&statefulset, "containers:", "image");
    assert_eq!(
        image,
        format!("ferry:{}", env!("CARGO_PKG_VERSION")),
        "the image is the Dockerfile's, tagged with the crate's version"
    );
    let user = dockerfile_runtime("USER");
    let uid = user.split(':').next().unwrap_or(&user);
    assert_eq!(yaml_value(&statefulset, "securityContext:", "runAsUser"), uid);
    assert_eq!(
        yaml_value(&statefulset, "securityContext:", "runAsGroup"),
        user.split(':').nth(1).unwrap_or(uid)
    );
    assert_eq!(dockerfile_runtime("VOLUME"), "[\"/var/lib/ferry\"]");
    assert_eq!(yaml_value(&statefulset, "- name: data", "mountPath"), "/var/lib/ferry");
    let args = yaml_value(&statefulset, "containers:", "args");
    assert_eq!(
        args,
        dockerfile_runtime("CMD"),
        "the StatefulSet's args are the image's CMD"
    );
    assert!(dockerfile_runtime("ENTRYPOINT").contains("/usr/local/bin/ferry"));
}
