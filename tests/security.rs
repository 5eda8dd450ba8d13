//! Credentials and the admin API, against real mosquitto brokers: logins
//! from a password file and the environment, accepted and refused by
//! mosquitto's `password_file`, and never shown; the admin API off loopback
//! (a token, or ferry refuses to start), its 401s and 403s, and its header
//! timeout.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::*;

const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// Writes a secret file readable by its owner only, as docs/security.md says.
fn write_secret(path: &Path, content: &str) {
    std::fs::write(path, content).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn output_text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_hidden(secrets: &[&str], what: &str, text: &str) {
    for secret in secrets {
        assert!(!text.contains(secret), "{what} shows the secret {secret:?}:\n{text}");
    }
}

fn link<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["links"]
        .as_array()
        .and_then(|links| links.iter().find(|l| l["name"] == name))
        .unwrap_or_else(|| panic!("no link {name} in {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_from_a_file_and_the_environment_are_accepted_a_wrong_one_is_refused_alone_and_none_is_shown() {
    const HUB_PASSWORD: &str = "pw-hub-K9w1qa";
    const GOOD_PASSWORD: &str = "pw-good-7Qx2za";
    const BAD_RIGHT_PASSWORD: &str = "pw-right-M3e8wd";
    const WRONG_PASSWORD: &str = "pw-wrong-Zt5yrc";
    let secrets = [HUB_PASSWORD, GOOD_PASSWORD, BAD_RIGHT_PASSWORD, WRONG_PASSWORD];
    // Anonymous clients stay allowed so the test's own publisher and
    // collectors need no login; a client that sends a username must log in.
    let hub = Broker::start_with_logins(&[("ferry-hub", HUB_PASSWORD)], true);
    let good_edge = Broker::start_with_logins(&[("ferry", GOOD_PASSWORD)], true);
    let bad_edge = Broker::start_with_logins(&[("ferry", BAD_RIGHT_PASSWORD)], true);
    let data = Ferry::data_dir_for_test();
    let secrets_dir = tempfile::tempdir().unwrap();
    let good_file = secrets_dir.path().join("good.password");
    let bad_file = secrets_dir.path().join("bad.password");
    write_secret(&good_file, &format!("{GOOD_PASSWORD}\n"));
    write_secret(&bad_file, &format!("{WRONG_PASSWORD}\n"));
    let admin_port = free_port();
    let link_config = |name: &str, edge: &Broker, file: &Path| {
        format!(
            "[[links]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {}\nusername = \"ferry\"\n\
             password_file = \"{}\"\n[[links.routes]]\ndirection = \"out\"\nlocal = \"edge/{name}/down/#\"\n\
             remote = \"down/#\"\n",
            edge.port(),
            file.display()
        )
    };
    let config = format!(
        "data_dir = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{}\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n\
         [hub]\nhost = \"127.0.0.1\"\nport = {}\nusername = \"ferry-hub\"\npassword_env = \"FERRY_TEST_HUB_PASSWORD\"\n\
         [defaults]\nreconnect_max_ms = 500\n{}{}",
        data.path().display(),
        free_port(),
        hub.port(),
        link_config("good", &good_edge, &good_file),
        link_config("bad", &bad_edge, &bad_file)
    );
    let env = [("FERRY_TEST_HUB_PASSWORD", HUB_PASSWORD)];
    let ferry = Ferry::start_with_env(FERRY, &config, &env);
    let config_path = ferry.config_path();
    let config_arg = config_path.to_str().unwrap();

    // `ferry check` reads the same secrets and shows where they come from only.
    let check = std::process::Command::new(FERRY)
        .args(["check", "--config", config_arg])
        .envs(env)
        .output()
        .unwrap();
    let shown = output_text(&check);
    assert!(check.status.success(), "{shown}");
    assert!(
        shown.contains("with password from file") && shown.contains("with password from $FERRY_TEST_HUB_PASSWORD"),
        "{shown}"
    );
    assert_hidden(&secrets, "ferry check", &shown);

    // The right login (hub from the environment, edge from its file) delivers.
    ferry.wait_link_up("good", LONG).await.unwrap_or_else(|e| panic!("{e}"));
    let down = Collector::start(good_edge.addr(), "test-good", "down/#", QoS::AtLeastOnce).await;
    publish_n(
        hub.addr(),
        |_| "edge/good/down/t".into(),
        200,
        QoS::AtLeastOnce,
        |s| seq_payload(s, 64),
    )
    .await;
    assert!(down.wait_distinct(200, LONG).await, "{}", down.describe());
    check_in_order(&down.messages(), 200).unwrap_or_else(|e| panic!("{e}"));

    // The wrong one: that link shows the broker's refusal (mosquitto answers a wrong
    // password of an MQTT 5 client with "not authorized"); the other is untouched.
    let status = |args: &[&str]| -> Value {
        let out = run_ferry(FERRY, &[&["status", "--json"], args].concat());
        assert!(out.status.success(), "{}", output_text(&out));
        serde_json::from_slice(&out.stdout).expect("status --json prints JSON")
    };
    let mut last = Value::Null;
    let refused = wait_until(LONG, Duration::from_millis(100), || {
        last = status(&["--config", config_arg]);
        link(&last, "bad")["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("NotAuthorized"))
    })
    .await;
    assert!(refused, "the bad link never showed the login refusal: {last}");
    assert_eq!(link(&last, "good")["state"], "connected", "{last}");
    let mut raw_status = http_request(SocketAddr::from(([127, 0, 0, 1], admin_port)), "GET", "/v1/status", &[])
        .unwrap_or_else(|e| panic!("{e}"))
        .body;
    assert!(raw_status.contains("NotAuthorized"), "{raw_status}");

    // The file is read again on reload: with the right password the link logs in.
    write_secret(&bad_file, &format!("{BAD_RIGHT_PASSWORD}\n"));
    let out = run_ferry(FERRY, &["reload", "--config", config_arg]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("changed: bad"),
        "{}",
        output_text(&out)
    );
    ferry.wait_link_up("bad", LONG).await.unwrap_or_else(|e| panic!("{e}"));
    let bad_down = Collector::start(bad_edge.addr(), "test-bad", "down/#", QoS::AtLeastOnce).await;
    publish_n(
        hub.addr(),
        |_| "edge/bad/down/t".into(),
        100,
        QoS::AtLeastOnce,
        |s| seq_payload(s, 64),
    )
    .await;
    assert!(bad_down.wait_distinct(100, LONG).await, "{}", bad_down.describe());
    raw_status.push_str(&status(&["--config", config_arg]).to_string());

    assert_hidden(&secrets, "/v1/status", &raw_status);
    assert_hidden(&secrets, "ferry's log", &ferry.log());
}

/// A Topology's config with the admin API on `listen`, plus `extra` lines in
/// `[admin]`.
fn admin_config(net: &Topology, listen: &str, extra: &str) -> String {
    let loopback = format!("listen = \"127.0.0.1:{}\"\n", net.admin_port);
    let config = net.config();
    assert!(config.contains(&loopback), "{config}");
    config.replacen(&loopback, &format!("listen = \"{listen}\"\n{extra}"), 1)
}

#[test]
fn an_admin_api_off_loopback_without_a_token_refuses_to_start() {
    let net = Topology::start(1, "");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    let config = admin_config(&net, &format!("0.0.0.0:{}", net.admin_port), "");
    std::fs::write(&path, &config).unwrap();
    let line = config
        .lines()
        .position(|l| l.starts_with("listen = \"0.0.0.0"))
        .unwrap()
        + 1;
    for command in ["run", "check"] {
        let out = run_ferry_bounded(FERRY, &[command, "--config", path.to_str().unwrap()], LONG);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{command}: {}", output_text(&out));
        assert!(
            stderr.contains(&format!("{}:{line}:", path.display()))
                && stderr.contains("is not a loopback address")
                && stderr.contains("token_file"),
            "{command}: {}",
            output_text(&out)
        );
    }
    assert!(
        TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], net.admin_port))).is_err(),
        "something listens on the admin port"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_api_with_a_token_answers_only_with_it_and_refuses_other_origins() {
    const TOKEN: &str = "tok-4f1d9c2e8b7a";
    let net = Topology::start(1, "");
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin.token");
    write_secret(&token_file, &format!("{TOKEN}\n"));
    // Bound on every interface; the test reaches it on loopback only.
    let config = admin_config(
        &net,
        &format!("0.0.0.0:{}", net.admin_port),
        &format!("token_file = \"{}\"\n", token_file.display()),
    );
    let ferry = Ferry::start(FERRY, &config);
    net.wait_all_up(&ferry).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], net.admin_port));
    let get = |path: &str, headers: &[(&str, &str)]| {
        http_request(addr, "GET", path, headers).unwrap_or_else(|e| panic!("GET {path}: {e}"))
    };
    let bearer = format!("Bearer {TOKEN}");
    let error_of = |reply: &HttpReply| -> String {
        let body: Value = serde_json::from_str(&reply.body).unwrap_or_else(|e| panic!("{e}: {reply:?}"));
        body["error"].as_str().unwrap_or_default().to_string()
    };

    // No token, a wrong one, a wrong scheme: 401 with a JSON error.
    let none = get("/v1/status", &[]);
    assert_eq!(none.code, 401, "{none:?}");
    assert!(error_of(&none).contains("needs a bearer token"), "{none:?}");
    let wrong = get("/v1/status", &[("Authorization", "Bearer tok-4f1d9c2e8b7b")]);
    assert_eq!(wrong.code, 401, "{wrong:?}");
    assert!(error_of(&wrong).contains("the bearer token is wrong"), "{wrong:?}");
    assert_eq!(
        get("/v1/links", &[("Authorization", &format!("Basic {TOKEN}"))]).code,
        401
    );
    assert_eq!(get("/nope", &[]).code, 401);
    let post = http_request(addr, "POST", "/v1/links/edge0/pause", &[]).unwrap();
    assert_eq!(post.code, 401, "{post:?}");
    // The right one works; the probes need none.
    let ok = get("/v1/status", &[("Authorization", &bearer)]);
    assert!(ok.code == 200 && ok.body.contains("\"name\":\"edge0\""), "{ok:?}");
    assert_eq!(get("/livez", &[]).code, 200);
    assert_eq!(get("/readyz", &[]).code, 200);
    // A web page elsewhere is refused even with the token; the API's own origin is not.
    let cross = get(
        "/v1/status",
        &[("Authorization", &bearer), ("Origin", "http://evil.example")],
    );
    assert_eq!(cross.code, 403, "{cross:?}");
    assert!(
        error_of(&cross).contains("cross-origin requests are refused"),
        "{cross:?}"
    );
    assert_eq!(get("/readyz", &[("Origin", "null")]).code, 403);
    let own_origin = format!("http://127.0.0.1:{}", net.admin_port);
    assert_eq!(
        get("/v1/status", &[("Authorization", &bearer), ("Origin", &own_origin)]).code,
        200
    );
    assert_hidden(&[TOKEN], "the 401 replies", &format!("{none:?}{wrong:?}"));

    // The CLI: --config reads token_file; --admin needs --token-file.
    let config_path = ferry.config_path();
    let config_arg = config_path.to_str().unwrap();
    let admin_arg = addr.to_string();
    let out = run_ferry(FERRY, &["status", "--config", config_arg]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("edge0"),
        "{}",
        output_text(&out)
    );
    let out = run_ferry(FERRY, &["link", "pause", "edge0", "--config", config_arg]);
    assert!(out.status.success(), "{}", output_text(&out));
    let out = run_ferry(FERRY, &["status", "--admin", &admin_arg]);
    assert_eq!(out.status.code(), Some(1), "{}", output_text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs a bearer token"),
        "{}",
        output_text(&out)
    );
    let token_arg = token_file.to_str().unwrap();
    let out = run_ferry(
        FERRY,
        &[
            "link",
            "resume",
            "edge0",
            "--admin",
            &admin_arg,
            "--token-file",
            token_arg,
        ],
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_hidden(&[TOKEN], "ferry's log", &ferry.log());

    // A client that connects and sends nothing is cut off after the header timeout.
    let mut idle = TcpStream::connect(addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let began = Instant::now();
    let mut buffer = [0u8; 256];
    let read = idle.read(&mut buffer);
    let waited = began.elapsed();
    let timed_out =
        matches!(&read, Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    assert!(
        !timed_out && waited < Duration::from_secs(45),
        "an idle connection was kept for {waited:?}: {read:?}"
    );
}
