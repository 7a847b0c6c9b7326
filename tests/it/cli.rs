//! The command line: `validate` reports every mistake; `run` drains on SIGTERM and exits 0.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const BIN: &str = env!("CARGO_BIN_EXE_portcullis");

const THREE_MISTAKES: &str = "routes:
  - name: get-account
    methods: [GET]
    path: /v1/accounts/{account_id}
    cluster: acounts
    auth: public
  - name: list-transactions
    methods: [GET]
    path: /v1/accounts/{account_id}/transactions
    cluster: accounts
    auth: public
    timeout: 5s
  - name: create-payment
    methods: [POST
    path: /v1/payments
    cluster: accounts
    auth: public
";

#[test]
fn validate_reports_every_mistake_with_its_line_and_fails() {
    let dir = TempDir::new();
    let cfg = dir.write(
        "gateway.yaml",
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\nclusters:\n  accounts:\n    endpoints: [\"127.0.0.1:9\"]\npolicies: routes\n",
    );
    dir.write("routes/finance.yaml", THREE_MISTAKES);
    let out = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "validate must fail:\n{text}");
    let file = dir.path().join("routes/finance.yaml").display().to_string();
    let expect = [
        (
            format!("{file}:5:14: error: unknown cluster `acounts`"),
            "did you mean `accounts`?",
        ),
        (
            format!("{file}:12:5: error: unknown key `timeout`"),
            "did you mean `timeouts`?",
        ),
        (format!("{file}:14:14: error: YAML syntax error"), ""),
    ];
    for (line, hint) in &expect {
        assert!(text.contains(line.as_str()), "missing `{line}` in:\n{text}");
        assert!(text.contains(hint), "missing hint `{hint}` in:\n{text}");
    }
    assert!(text.contains("3 errors found"), "{text}");
}

#[test]
fn validate_accepts_the_demo_config_and_names_missing_variables() {
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/policies/demo/gateway.yaml");
    let certs = TempDir::new();
    let made = Command::new(BIN)
        .arg("dev-certs")
        .arg(certs.path())
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    for f in portcullis::tls::devcerts::DEV_FILES {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(certs.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        if f.ends_with("-key.pem") {
            assert_eq!(mode, 0o600, "{f} must be private");
        } else {
            assert_ne!(mode & 0o044, 0, "{f} is a public file");
        }
    }
    let out = Command::new(BIN)
        .args(["validate", "--config", demo])
        .env("DEMO_CERTS", certs.path())
        .env("DEMO_ACCOUNTS_ADDR", "127.0.0.1:7001")
        .env("DEMO_PAYMENTS_ADDR", "127.0.0.1:7002")
        .env("DEMO_REPORTS_ADDR", "127.0.0.1:7003")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("5 route(s)"));

    let out = Command::new(BIN)
        .args(["validate", "--config", demo])
        .env("DEMO_CERTS", certs.path())
        .env_remove("DEMO_ACCOUNTS_ADDR")
        .env("DEMO_PAYMENTS_ADDR", "127.0.0.1:7002")
        .env("DEMO_REPORTS_ADDR", "127.0.0.1:7003")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("gateway.yaml:25:")
            && text.contains("environment variable `DEMO_ACCOUNTS_ADDR` is not set"),
        "{text}"
    );
}

#[tokio::test]
async fn sigterm_lets_the_slow_request_finish_refuses_new_connections_and_exits_zero() {
    let backend = Backend::start("slow").await;
    let port = closed_port();
    let admin = closed_port();
    let dir = TempDir::new();
    let cfg = dir.write(
        "gateway.yaml",
        &format!(
            "listeners:\n  - name: public\n    address: {port}\nadmin:\n  address: {admin}\nclusters:\n  slow:\n    endpoints: [\"{}\"]\npolicies: routes\nshutdown:\n  grace: 20s\nlog:\n  level: warn\n",
            backend.addr
        ),
    );
    dir.write(
        "routes/r.yaml",
        "routes:\n  - name: slow\n    methods: [GET]\n    path: /slow\n    cluster: slow\n    auth: public\n",
    );
    let mut child = run_binary(&cfg, admin, false).await;

    let slow = tokio::spawn(get_owned(format!("http://{port}/slow?ms=2000")));
    eventually(
        "the slow request to be in flight",
        Duration::from_secs(10),
        || async { backend.hits.load(std::sync::atomic::Ordering::SeqCst) == 1 },
    )
    .await;
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // New connections are refused while the slow request drains.
    eventually(
        "the listener to refuse after SIGTERM",
        Duration::from_secs(2),
        || async { tokio::net::TcpStream::connect(port).await.is_err() },
    )
    .await;
    let r = slow.await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request completes");

    let exit = tokio::task::spawn_blocking(move || child.wait().unwrap());
    let status = tokio::time::timeout(Duration::from_secs(15), exit)
        .await
        .expect("the gateway did not exit")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
}

async fn get_owned(url: String) -> Resp {
    get(&url, &[]).await
}

#[tokio::test]
async fn logs_are_json_lines_and_each_line_of_a_request_carries_its_id() {
    let live = Backend::start("live").await;
    let dead = closed_port();
    let (port, admin) = (closed_port(), closed_port());
    let dir = TempDir::new();
    let cfg = dir.write(
        "gateway.yaml",
        &format!(
            "listeners:\n  - name: public\n    address: {port}\nadmin:\n  address: {admin}\nclusters:\n  live:\n    endpoints: [\"{}\"]\n  dead:\n    endpoints: [\"{dead}\"]\npolicies: routes\nlog:\n  level: info\n  access: true\nshutdown:\n  grace: 2s\n",
            live.addr
        ),
    );
    dir.write(
        "routes/r.yaml",
        "routes:\n  - name: live\n    methods: [GET]\n    path: /live\n    cluster: live\n    auth: public\n  - name: dead\n    methods: [GET]\n    path: /dead\n    cluster: dead\n    auth: public\n",
    );
    let child = run_binary(&cfg, admin, true).await;
    let r = get(
        &format!("http://{port}/dead"),
        &[("x-request-id", "log-test-dead")],
    )
    .await;
    assert_eq!(r.status, 502);
    let r = get(
        &format!("http://{port}/live"),
        &[("x-request-id", "log-test-live")],
    )
    .await;
    assert_eq!(r.status, 200);
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}"))
        })
        .collect();
    let id_of = |v: &serde_json::Value| {
        v.get("request_id")
            .or_else(|| v.get("span").and_then(|s| s.get("request_id")))
            .and_then(|x| x.as_str())
            .map(str::to_owned)
    };
    // The failed request logged more than its access line (the upstream failure and the
    // ejection), and every one of those lines names it.
    let dead_lines: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| id_of(v).as_deref() == Some("log-test-dead"))
        .collect();
    assert!(dead_lines.len() >= 3, "{text}");
    assert!(
        dead_lines
            .iter()
            .any(|v| v["message"] == "upstream failure"),
        "{text}"
    );
    assert!(
        dead_lines
            .iter()
            .any(|v| v["message"] == "upstream endpoint ejected"),
        "{text}"
    );
    let access: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["target"] == "portcullis::access")
        .collect();
    assert_eq!(access.len(), 2, "{text}");
    let live_access = access
        .iter()
        .find(|v| v["request_id"] == "log-test-live")
        .expect("access line of the live request");
    assert_eq!(live_access["route"], "live");
    assert_eq!(live_access["status"], 200);
    assert_eq!(live_access["upstream_cluster"], "live");
    assert!(live_access["bytes"].as_u64().unwrap() > 0);
    let dead_access = access
        .iter()
        .find(|v| v["request_id"] == "log-test-dead")
        .unwrap();
    assert_eq!(dead_access["error"], "upstream-unavailable");
    // Lines outside any request (start, stop) carry no request id.
    assert!(
        lines
            .iter()
            .any(|v| v["message"] == "portcullis is serving" && id_of(v).is_none())
    );
}
