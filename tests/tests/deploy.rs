//! The deployment files agree with the code: `fly.toml` parses, builds a Dockerfile that
//! exists and serves the port Fly sends traffic to, its health check path answers 200 on a
//! real coordinator, and its kill timeout covers the drain; the agent's systemd unit restarts
//! on failure and waits out the agent's drain; the agent's image puts its libraries where the
//! binary's rpath looks.

use std::path::{Path, PathBuf};
use std::time::Duration;

use infermine_tests::{Backend, TestServer};
use toml::Table;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

fn read(path: &str) -> String {
    let full = repo().join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("read {}: {e}", full.display()))
}

/// `"30s"`, `"2m"` or a bare number of seconds.
fn seconds(value: &str) -> u64 {
    let value = value.trim();
    let (number, unit) = value
        .find(|c: char| !c.is_ascii_digit())
        .map_or((value, "s"), |at| value.split_at(at));
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("`{value}` is not a duration"));
    match unit {
        "s" => n,
        "m" => n * 60,
        other => panic!("unknown duration unit `{other}` in `{value}`"),
    }
}

fn table<'a>(parent: &'a Table, key: &str) -> &'a Table {
    parent
        .get(key)
        .and_then(toml::Value::as_table)
        .unwrap_or_else(|| panic!("fly.toml has no [{key}] table"))
}

fn string<'a>(parent: &'a Table, key: &str) -> &'a str {
    parent
        .get(key)
        .and_then(toml::Value::as_str)
        .unwrap_or_else(|| panic!("fly.toml: `{key}` is missing or not a string"))
}

#[tokio::test]
async fn fly_toml_builds_an_existing_dockerfile_and_checks_a_real_health_path() {
    let fly: Table = read("fly.toml").parse().expect("fly.toml is valid TOML");

    let dockerfile_path = string(table(&fly, "build"), "dockerfile");
    let dockerfile = read(dockerfile_path);
    let service = table(&fly, "http_service");
    let port = service
        .get("internal_port")
        .and_then(toml::Value::as_integer)
        .expect("http_service.internal_port");
    assert!(
        dockerfile.contains(&format!("EXPOSE {port}")),
        "{dockerfile_path} must EXPOSE {port}"
    );
    let env = table(&fly, "env");
    assert_eq!(
        string(env, "INFERMINE_LISTEN"),
        format!("0.0.0.0:{port}"),
        "the coordinator listens where Fly sends traffic"
    );
    assert!(dockerfile.contains("ENTRYPOINT [\"tini\", \"--\", \"infermine-server\"]"));
    assert!(dockerfile.contains("CMD [\"serve\"]"));
    // The files the image build copies by name exist.
    for copied in ["web-portal/package.json", "web-portal/package-lock.json"] {
        assert!(dockerfile.contains(copied), "{copied}");
        assert!(repo().join(copied).is_file(), "{copied} is missing");
    }

    // The drain fits in the kill timeout, with room for the requeue and exit.
    assert_eq!(string(&fly, "kill_signal"), "SIGTERM");
    let drain: u64 = string(env, "INFERMINE_DRAIN_TIMEOUT_S")
        .parse()
        .expect("a number of seconds");
    let kill_timeout = seconds(string(&fly, "kill_timeout"));
    assert!(
        kill_timeout >= drain + 5,
        "kill_timeout {kill_timeout} s must exceed the drain ({drain} s) by 5 s"
    );

    // Every health check path answers 200 on a real coordinator.
    let checks = service
        .get("checks")
        .and_then(toml::Value::as_array)
        .expect("[[http_service.checks]]");
    assert!(!checks.is_empty());
    let server = TestServer::start(&Backend::Sqlite).await;
    for check in checks {
        let check = check.as_table().expect("a check table");
        assert_eq!(string(check, "method"), "GET");
        let timeout = seconds(string(check, "timeout"));
        let path = string(check, "path");
        let response = reqwest::Client::new()
            .get(format!("{}{path}", server.http()))
            .timeout(Duration::from_secs(timeout))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        assert_eq!(response.status(), 200, "health check {path}");
    }
}

/// `Key=Value` lines of one `[Section]` of a systemd unit.
fn unit_section<'a>(unit: &'a str, section: &str) -> Vec<(&'a str, &'a str)> {
    let header = format!("[{section}]");
    unit.lines()
        .skip_while(|line| line.trim() != header)
        .skip(1)
        .take_while(|line| !line.starts_with('['))
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once('='))
        .collect()
}

#[test]
fn the_agent_service_restarts_on_failure_and_waits_out_the_drain() {
    let unit = read("deploy/infermine-agent.service");
    let service = unit_section(&unit, "Service");
    let get = |key: &str| {
        service
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .unwrap_or_else(|| panic!("[Service] has no {key}="))
    };
    assert_eq!(get("Restart"), "on-failure");
    assert_eq!(get("KillSignal"), "SIGTERM");
    let exec: Vec<&str> = get("ExecStart").split_whitespace().collect();
    assert_eq!(
        exec[..2],
        ["/opt/infermine/bin/infermine-agent", "run"],
        "{exec:?}"
    );
    // The agent drains for 60 s by default (its --drain-timeout-s).
    assert!(seconds(get("TimeoutStopSec")) > 60);
    assert!(
        unit_section(&unit, "Install").contains(&("WantedBy", "multi-user.target")),
        "enabled at boot"
    );

    // Its image installs the binary beside the libraries its rpath ($ORIGIN/../lib) finds.
    let dockerfile = read("agent/Dockerfile");
    assert!(dockerfile.contains("/opt/infermine/bin/infermine-agent"));
    assert!(dockerfile.contains("/opt/infermine/lib/"));
    assert!(read("agent/build.rs").contains("$ORIGIN/../lib"));
    assert!(dockerfile.contains("scripts/setup.sh --cuda --no-portal"));
    assert!(read("scripts/setup.sh").contains("--no-portal) portal=0"));
}

/// The coordinator binary next to this test.
fn server_binary() -> PathBuf {
    infermine_tests::server_binary().expect("binaries built")
}

/// Runs `infermine-server ARGS` to completion and returns its stdout.
fn server_cli(data: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(server_binary())
        .args(args)
        .env("INFERMINE_DATA_DIR", data)
        .output()
        .expect("run infermine-server");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[tokio::test]
async fn with_the_images_log_format_every_line_is_json_with_job_and_miner_ids() {
    let data = tempfile::tempdir().expect("data dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let key = server_cli(data.path(), &["api-key", "create", "--name", "logs"]);
    let token = server_cli(
        data.path(),
        &[
            "miner-token",
            "--wallet",
            infermine_tests::WALLET,
            "--name",
            "logrig",
        ],
    );
    // As the coordinator's image runs it (ENV in the Dockerfile).
    let dockerfile = read("Dockerfile");
    assert!(dockerfile.contains("INFERMINE_LOG_FORMAT=json"));
    let log_path = data.path().join("server.log");
    let mut server = tokio::process::Command::new(server_binary())
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env("INFERMINE_DATA_DIR", data.path())
        .env("INFERMINE_LOG_FORMAT", "json")
        // Per-job lines are at debug level: a busy coordinator finishes thousands a second.
        .env("RUST_LOG", "info,infermine_server::jobs=debug")
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .kill_on_drop(true)
        .spawn()
        .expect("start the coordinator");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http.get(format!("{base}/readyz")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut agent = tokio::process::Command::new(infermine_tests::agent_binary().expect("agent"))
        .args([
            "run",
            "--coordinator",
            &format!("ws://127.0.0.1:{port}"),
            "--token",
            &token,
        ])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the agent");
    let client = infermine_tests::Client::new(&base, &key);
    let mut id = String::new();
    for _ in 0..100 {
        let (status, body) = client
            .submit("synthetic-echo", serde_json::json!({ "seed": 7 }))
            .await;
        if status == 202 {
            id = body["id"].as_str().expect("id").to_owned();
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!id.is_empty(), "the coordinator accepted no job");
    let done = client.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(done["status"], "completed", "{done}");
    agent.kill().await.expect("stop the agent");
    server.kill().await.expect("stop the coordinator");

    let log = std::fs::read_to_string(&log_path).expect("read the log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}")))
        .collect();
    assert!(!lines.is_empty());
    assert!(
        lines
            .iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let about_job: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["fields"]["job"].as_str() == Some(id.as_str()))
        .collect();
    assert!(!about_job.is_empty(), "no line names job {id}:\n{log}");
    let miner = format!("{}-logrig-gpu0", infermine_tests::WALLET);
    for event in ["job assigned", "job completed"] {
        assert!(
            about_job.iter().any(|l| l["fields"]["message"] == event
                && l["fields"]["miner_id"].as_str() == Some(miner.as_str())),
            "no `{event}` line with job {id} and miner {miner}:\n{log}"
        );
    }
}
