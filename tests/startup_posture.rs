//! The gate's start-up posture and HTTP skeleton, tested on the real binary
//! against the real services: the loopback guard, TLS with secret checks,
//! `config check` redaction, health and readiness, metrics, body limits and
//! prompt shutdown.

mod support;

use std::time::Duration;

use support::{
    Deskgate, STRONG_SECRET, as_env, free_port, repo_root, run_deskgate, run_script, serve_env,
    service_env,
};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[test]
fn a_public_bind_is_refused_naming_the_variable_that_allows_it() {
    let port = free_port();
    let mut env = serve_env(port);
    env.retain(|(k, _)| *k != "DESKGATE_BIND");
    env.push(("DESKGATE_BIND", format!("0.0.0.0:{port}")));
    let (status, output) = run_deskgate(&["serve"], &as_env(&env));
    assert!(
        !status.success(),
        "serve must refuse a public bind:\n{output}"
    );
    assert!(output.contains("DESKGATE_ALLOW_PUBLIC_BIND"), "{output}");
}

#[tokio::test]
async fn a_public_bind_starts_when_allowed() {
    let port = free_port();
    let mut env = serve_env(port);
    env.retain(|(k, _)| *k != "DESKGATE_BIND");
    env.push(("DESKGATE_BIND", format!("0.0.0.0:{port}")));
    env.push(("DESKGATE_ALLOW_PUBLIC_BIND", "true".into()));
    let mut gate = Deskgate::spawn(&["serve"], &as_env(&env));
    gate.wait_ready(&client(), &format!("http://127.0.0.1:{port}/healthz"))
        .await;
}

/// Writes a self-signed certificate for localhost; returns (cert, key) paths.
fn self_signed(dir: &std::path::Path) -> (String, String, String) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = cert.cert.pem();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, &cert_pem).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (
        cert_path.display().to_string(),
        key_path.display().to_string(),
        cert_pem,
    )
}

#[test]
fn tls_with_a_placeholder_admin_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, _) = self_signed(dir.path());
    let port = free_port();
    let mut env = serve_env(port);
    env.push(("DESKGATE_TLS_CERT", cert));
    env.push(("DESKGATE_TLS_KEY", key));
    env.push(("DESKGATE_PUBLIC_URL", format!("https://localhost:{port}")));
    env.push(("DESKGATE_ADMIN_TOKEN", "change-me".into()));
    let (status, output) = run_deskgate(&["serve"], &as_env(&env));
    assert!(!status.success(), "{output}");
    assert!(output.contains("DESKGATE_ADMIN_TOKEN"), "{output}");
    assert!(output.contains("placeholder"), "{output}");
}

#[tokio::test]
async fn tls_with_a_strong_admin_token_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, cert_pem) = self_signed(dir.path());
    let port = free_port();
    let mut env = serve_env(port);
    env.push(("DESKGATE_TLS_CERT", cert));
    env.push(("DESKGATE_TLS_KEY", key));
    env.push(("DESKGATE_PUBLIC_URL", format!("https://localhost:{port}")));
    env.push(("DESKGATE_ADMIN_TOKEN", STRONG_SECRET.into()));
    env.push((
        "DESKGATE_SESSION_IMAGE",
        format!("deskgate/desktop@sha256:{}", "ab".repeat(32)),
    ));
    // The development database password is itself refused with TLS on; this
    // test is about the listener, so a strong password for a role that does
    // not exist will do (only /readyz would notice).
    env.retain(|(k, _)| *k != "DESKGATE_DATABASE_URL");
    env.push((
        "DESKGATE_DATABASE_URL",
        format!("postgres://tls_test:{STRONG_SECRET}@127.0.0.1:1/deskgate"),
    ));
    let mut gate = Deskgate::spawn(&["serve"], &as_env(&env));

    let https = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    gate.wait_ready(&https, &format!("https://localhost:{port}/healthz"))
        .await;

    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = client()
        .get(format!("http://localhost:{port}/healthz"))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());

    let output = gate.output();
    assert!(
        !output.contains(STRONG_SECRET),
        "the admin token leaked into the logs:\n{output}"
    );
}

#[test]
fn config_check_never_prints_a_secret() {
    let admin = "admin-UNIQUE-7f3a9c1e5b2d4f6a8c0e2b4d6f8a0c2e4b6d8f0a";
    let launcher = "launcher-UNIQUE-1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b";
    let turn = "change-me-turn-UNIQUE-1234";
    let env = [
        ("DESKGATE_ADMIN_TOKEN", admin),
        ("DESKGATE_LAUNCHER_TOKEN", launcher),
        ("DESKGATE_LAUNCHER_URLS", "http://127.0.0.1:8090"),
        ("DESKGATE_TURN_SECRET", turn),
        ("DESKGATE_TURN_URLS", "turn:127.0.0.1:3478"),
        (
            "DESKGATE_DATABASE_URL",
            "postgres://deskgate:pw-UNIQUE-42@127.0.0.1:5432/deskgate",
        ),
        (
            "DESKGATE_RPC_URL",
            "https://rpc.example.org/v3/key-UNIQUE-99",
        ),
    ];
    // Development posture: weak TURN secret is a warning, so exit 0.
    let (status, output) = run_deskgate(&["config", "check"], &env);
    assert!(status.success(), "{output}");
    assert!(output.contains("DESKGATE_ADMIN_TOKEN"), "{output}");
    assert!(output.contains("<redacted>"), "{output}");

    // Production posture: the weak TURN secret becomes a problem, exit 1.
    let mut tls_env = env.to_vec();
    tls_env.extend([
        ("DESKGATE_TLS_CERT", "/nonexistent/cert.pem"),
        ("DESKGATE_TLS_KEY", "/nonexistent/key.pem"),
        ("DESKGATE_PUBLIC_URL", "https://desk.example.org"),
    ]);
    let (tls_status, tls_output) = run_deskgate(&["config", "check"], &tls_env);
    assert_eq!(tls_status.code(), Some(1), "{tls_output}");
    assert!(
        tls_output.contains("problem: DESKGATE_TURN_SECRET"),
        "{tls_output}"
    );

    for text in [&output, &tls_output] {
        for secret in [admin, launcher, turn, "pw-UNIQUE-42", "key-UNIQUE-99"] {
            assert!(
                !text.contains(secret),
                "config check printed {secret}:\n{text}"
            );
        }
    }
}

#[tokio::test]
async fn health_metrics_and_body_limit() {
    let port = free_port();
    let metrics_port = free_port();
    let mut env = serve_env(port);
    env.push(("DESKGATE_METRICS_ADDR", format!("127.0.0.1:{metrics_port}")));
    let mut gate = Deskgate::spawn(&["serve"], &as_env(&env));
    let http = client();
    let base = format!("http://127.0.0.1:{port}");
    gate.wait_ready(&http, &format!("{base}/healthz")).await;
    // Live before ready: on a fresh database the gate (or a gate beside it)
    // is still migrating, and /readyz says so until the schema is current.
    gate.wait_ready(&http, &format!("{base}/readyz")).await;

    let metrics = http
        .get(format!("http://127.0.0.1:{metrics_port}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("deskgate_http_requests_total"), "{text}");
    assert!(text.contains("route=\"/healthz\""), "{text}");

    let on_main = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(on_main.status(), 404);

    let oversized = http
        .post(format!("{base}/api/v1/auth/nonce"))
        .header("content-type", "application/json")
        .body(vec![b' '; 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), 413);
    assert_eq!(
        oversized.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn sigterm_stops_the_gate_within_five_seconds() {
    let port = free_port();
    let mut gate = Deskgate::spawn(&["serve"], &as_env(&serve_env(port)));
    let http = client();
    gate.wait_ready(&http, &format!("http://127.0.0.1:{port}/healthz"))
        .await;
    // An idle keep-alive connection must not hold shutdown up.
    http.get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    let (status, took) = gate.terminate(Duration::from_secs(5));
    assert!(status.success(), "exit {status}:\n{}", gate.output());
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn readyz_names_postgresql_while_it_is_stopped() {
    let script = std::path::PathBuf::from(service_env("DESKGATE_TEST_PG_SCRIPT"));
    let data = tempfile::Builder::new()
        .prefix("deskgate-readyz-pg-")
        .tempdir_in(repo_root().join("target"))
        .unwrap();
    let data_dir = data.path().join("data");
    let data_arg = data_dir.to_str().unwrap();
    let pg_port = free_port();
    run_script(&script, &["start", data_arg, &pg_port.to_string()]);

    let port = free_port();
    let mut env = serve_env(port);
    env.retain(|(k, _)| *k != "DESKGATE_DATABASE_URL");
    env.push((
        "DESKGATE_DATABASE_URL",
        format!("postgres://deskgate:deskgate-dev-only@127.0.0.1:{pg_port}/deskgate"),
    ));
    let mut gate = Deskgate::spawn(&["serve"], &as_env(&env));
    let http = client();
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    gate.wait_ready(&http, &readyz).await;

    run_script(&script, &["stop", data_arg]);
    let down = http.get(&readyz).send().await.unwrap();
    assert_eq!(down.status(), 503);
    assert_eq!(down.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = down.json().await.unwrap();
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.starts_with("postgresql: "), "{problem}");
    assert!(
        !detail.contains("deskgate-dev-only"),
        "the password leaked: {problem}"
    );
    let failed: Vec<&str> = problem["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ok"] == false)
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["postgresql"]);

    run_script(&script, &["start", data_arg, &pg_port.to_string()]);
    gate.wait_ready(&http, &readyz).await;
    run_script(&script, &["stop", data_arg]);
}
