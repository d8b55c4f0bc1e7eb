//! The API fuzzed against its own OpenAPI document (issue 18): `scripts/api-fuzz.sh`
//! runs schemathesis against a real `deskgate serve` on PostgreSQL, Docker and an
//! anvil node of its own, first as signed-in wallet A (every operation but the admin
//! API), then with the admin token (the admin API). Each run must pass every check:
//! no 5xx, every answer as documented (status, content type, headers, body schema),
//! schema-valid requests accepted and invalid ones refused.
//!
//! Wallet B, with a running session, credit, a deposit and sign-ins, is read from
//! PostgreSQL before and after A's run: nothing A sends may change any of it. The
//! admin run may change any wallet (that is what the admin API is for), so only its
//! answers are checked. The gate offers every profile (8 fake GPUs) and the test
//! token, so that every schema-valid claim and quote can be granted.
//!
//! The seed is fixed (`DESKGATE_API_FUZZ_SEED`, default 18); the default size fits
//! CI, and `DESKGATE_API_FUZZ_EXAMPLES` (examples per operation) makes a longer run.
//! Every session the fuzzer claims is ended and its container removed at the end.
//! A few focused regressions of what the fuzzing found come first.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use deskgate_actors::ports::SessionId;
use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};
use support::api::{ONE_GPU_HOUR_WEI, Stage, deposit_eth, session_path};
use support::{STRONG_SECRET, deploy_test_token, dev_wallet_provider, repo_root};

/// Examples per operation in CI; `DESKGATE_API_FUZZ_EXAMPLES` overrides it.
const CI_EXAMPLES: &str = "50";
/// The seed unless `DESKGATE_API_FUZZ_SEED` says otherwise.
const SEED: &str = "18";
/// Where anvil dev account #0's first contract lands on a fresh chain: the
/// test token, deployed right after the gate starts with it as its token.
const TOKEN_ADDRESS: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
/// Longest one fuzzing pass may take before the test gives up on it.
const PASS_LIMIT: Duration = Duration::from_secs(15 * 60);

// Migrating the scratch database blocks: it needs the multi-threaded runtime.
#[tokio::test(flavor = "multi_thread")]
async fn fuzzing_finds_no_5xx_no_undocumented_answer_and_no_change_to_another_wallet() {
    let examples = std::env::var("DESKGATE_API_FUZZ_EXAMPLES")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| CI_EXAMPLES.into());
    let seed = std::env::var("DESKGATE_API_FUZZ_SEED")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| SEED.into());
    let started = Instant::now();
    // Starting the gate takes the Docker session lock (`DockerSessionsLock`)
    // for as long as it runs.
    let stage = Stage::start(
        "api_fuzz",
        &[
            ("DESKGATE_GPUS", "fake:8"),
            ("DESKGATE_ADMIN_TOKEN", STRONG_SECRET),
            ("DESKGATE_DOCS_ENABLED", "true"),
            ("DESKGATE_TOKEN_ADDRESS", TOKEN_ADDRESS),
            // Nothing of B's changes on its own while A is fuzzing: no billing
            // interval ends, and B's session does not lapse for want of presence.
            ("DESKGATE_BILLING_INTERVAL_SECONDS", "3600"),
            ("DESKGATE_PRESENCE_TIMEOUT_SECONDS", "3600"),
            // The fuzzer signs in and claims from one address far faster than
            // a browser: 429s would crowd out what the requests are about.
            ("DESKGATE_SIGN_IN_RATE_PER_MINUTE", "60000"),
            ("DESKGATE_SIGN_IN_RATE_BURST", "10000"),
            ("DESKGATE_CLAIM_RATE_PER_MINUTE", "60000"),
            ("DESKGATE_CLAIM_RATE_BURST", "10000"),
        ],
    )
    .await;
    let gate = &stage.gate;
    let (provider, _) = dev_wallet_provider(&stage.anvil.url);
    let token_address = deploy_test_token(&provider).await;
    assert_eq!(token_address, TOKEN_ADDRESS.parse::<Address>().unwrap());

    // B: a deposit, a running session, two sign-ins.
    let b = PrivateKeySigner::random();
    let b_token = gate.sign_in(&b).await;
    deposit_eth(&stage.anvil.url, &b, stage.revenue, ONE_GPU_HOUR_WEI).await;
    gate.wait_for_credit(&b_token, 3600).await;
    gate.sign_in(&b).await;
    let b_session = stage.claim(&b_token, "small").await;
    let b_path = session_path(&b_session);
    gate.wait_for(&b_path, &b_token, Duration::from_secs(30), |s| {
        s["state"] == "running"
    })
    .await;
    let (status, _) = gate
        .post(&format!("{b_path}/heartbeat"), Some(&b_token), json!({}))
        .await;
    assert_eq!(status, 200);

    // A: ten GPU-hours, enough to claim any profile many times over.
    let a = PrivateKeySigner::random();
    let a_token = gate.sign_in(&a).await;
    deposit_eth(&stage.anvil.url, &a, stage.revenue, 10 * ONE_GPU_HOUR_WEI).await;
    gate.wait_for_credit(&a_token, 36_000).await;

    regressions(&stage, &b_token, &b_path).await;

    println!(
        "gate, wallets and regressions in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let before = wallet_rows(&stage.db.url, b.address()).await;
    assert!(before.len() >= 8, "B's rows: {before:#?}");

    // A's run, with the gate's own Origin so that the socket and WebRTC
    // routes get past their Origin check to the ones behind it.
    let origin = format!("Origin: {}", gate.base);
    let user = fuzz(&gate.base, "user", &a_token, &examples, &seed, &[&origin]).await;

    let after = wallet_rows(&stage.db.url, b.address()).await;
    assert_eq!(
        before,
        after,
        "A's requests changed wallet B's data\n{user}\ngate output:\n{}",
        gate.output()
    );
    // B is still signed in, and its session still runs.
    gate.wait_for(&b_path, &b_token, Duration::from_secs(5), |s| {
        s["state"] == "running"
    })
    .await;

    let admin = fuzz(&gate.base, "admin", STRONG_SECRET, &examples, &seed, &[]).await;
    for (pass, output) in [("user", &user), ("admin", &admin)] {
        println!("--- schemathesis, {pass} operations ---\n{output}");
    }

    let ending = Instant::now();
    end_every_session(&stage).await;
    println!(
        "every session ended in {:.1} s",
        ending.elapsed().as_secs_f64()
    );
    stage.finish().await;
}

/// Defects the fuzzing found, each answered now as the document says.
async fn regressions(stage: &Stage, b_token: &str, b_path: &str) {
    let gate = &stage.gate;
    let http = &gate.http;
    let content_type = |response: &reqwest::Response| {
        response.headers()[reqwest::header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_owned()
    };

    // A socket route asked by its owner without a WebSocket handshake: a 426
    // problem naming the protocol, where it was a text/plain 400.
    for (path, token) in [
        (format!("{b_path}/events"), Some(b_token)),
        (format!("{b_path}/vnc?ticket=0"), None),
    ] {
        let mut request = http
            .get(format!("{}{path}", gate.base))
            .header("origin", &gate.base);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 426, "{path}");
        assert_eq!(content_type(&response), "application/problem+json");
        assert_eq!(response.headers()["upgrade"], "websocket", "{path}");
    }
    // A query the VNC route cannot read: a 400 problem, where it was text/plain.
    let response = http
        .get(format!("{}{b_path}/vnc?ticket=a&ticket=b", gate.base))
        .header("origin", &gate.base)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(content_type(&response), "application/problem+json");

    // A GPU address out of range: as unknown as a GPU the pool lacks, where
    // it was a text/plain 400.
    let response = http
        .post(format!("{}/api/v1/admin/gpus/70000/0/drain", gate.base))
        .bearer_auth(STRONG_SECRET)
        .json(&json!({"drain": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let problem: Value = response.json().await.unwrap();
    assert_eq!(problem["type"], "urn:deskgate:problem:unknown-gpu");

    // The audit log's limit is read as the statement's is: clamped, and a
    // malformed one refused (it was silently taken as the default).
    let audit = |query: &'static str| async move {
        let response = http
            .get(format!("{}/api/v1/admin/audit?{query}", gate.base))
            .bearer_auth(STRONG_SECRET)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    let (status, entries) = audit("limit=-1").await;
    assert_eq!(status, 200, "{entries}");
    let (status, problem) = audit("limit=ten").await;
    assert_eq!(
        (status, problem["type"].as_str()),
        (400, Some("urn:deskgate:problem:malformed-query"))
    );

    // A credit adjustment: NUL in the reason or the key is refused as
    // invalid (it was a 503 "audit log unavailable" when PostgreSQL refused
    // it), and a whole number written as 5.0 is a whole number.
    let address = PrivateKeySigner::random().address().to_string();
    let credit = |body: Value| async move {
        let response = http
            .post(format!("{}/api/v1/admin/credit", gate.base))
            .bearer_auth(STRONG_SECRET)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    };
    for (reason, key) in [("a\u{0}b", "k-nul-1"), ("goodwill", "k\u{0}2")] {
        let (status, problem) = credit(json!({
            "address": address, "amount": 5, "reason": reason, "idempotency_key": key,
        }))
        .await;
        assert_eq!(
            (status, problem["type"].as_str()),
            (422, Some("urn:deskgate:problem:invalid-adjustment")),
            "{problem}"
        );
    }
    let (status, adjusted) = credit(json!({
        "address": address, "amount": 5.0, "reason": "goodwill", "idempotency_key": "k-float",
    }))
    .await;
    assert_eq!((status, &adjusted["credit_seconds"]), (200, &json!(5)));
}

/// Runs `scripts/api-fuzz.sh --operations OPERATIONS` against `base` with
/// `token`; returns its output, or fails the test with it (the failing cases
/// and the seed to replay them with) unless every check passed and no answer
/// was a 5xx.
async fn fuzz(
    base: &str,
    operations: &str,
    token: &str,
    examples: &str,
    seed: &str,
    headers: &[&str],
) -> String {
    let reports = tempfile::tempdir().unwrap();
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(repo_root().join("scripts/api-fuzz.sh"))
        .args(["--operations", operations, "-n", examples, "--seed", seed])
        .arg("--report-dir")
        .arg(reports.path());
    for header in headers {
        command.args(["-H", header]);
    }
    command
        .arg(base)
        .env("DESKGATE_API_FUZZ_TOKEN", token)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let output = tokio::time::timeout(PASS_LIMIT, command.output())
        .await
        .unwrap_or_else(|_| panic!("api-fuzz.sh --operations {operations} ran past {PASS_LIMIT:?}"))
        .expect("run scripts/api-fuzz.sh");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "schemathesis found defects ({operations} operations, seed {seed}, {examples} examples \
         per operation; {}):\n{text}",
        output.status
    );
    // The script's summary counts the answers by status; not_a_server_error
    // already fails on a 5xx, and this holds the summary to it.
    let summaries: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("[api-fuzz] ") && l.contains(" answers 5xx"))
        .collect();
    assert!(
        !summaries.is_empty(),
        "no summary from api-fuzz.sh:\n{text}"
    );
    for line in summaries {
        assert!(line.ends_with(", 0 answers 5xx"), "{line}\n{text}");
    }
    println!(
        "api-fuzz.sh --operations {operations}: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    text
}

/// Everything PostgreSQL holds of the wallet at `address`, one JSON row per
/// line, sorted: its balance, every ledger transaction it is part of (all
/// entries), its sessions, sign-in tokens, challenges, deposits, and the audit
/// rows that name it or one of its sessions.
async fn wallet_rows(url: &str, address: Address) -> Vec<String> {
    #[derive(diesel::QueryableByName)]
    struct Row {
        #[diesel(sql_type = Text)]
        row: String,
    }
    let address = address.to_string().to_ascii_lowercase();
    let mut conn = AsyncPgConnection::establish(url).await.unwrap();
    let rows: Vec<Row> = diesel::sql_query(
        "SELECT 'balance ' || row_to_json(b)::text AS row FROM balances b \
           WHERE account = 'wallet:' || $1 \
         UNION ALL SELECT 'ledger ' || row_to_json(x)::text FROM ( \
           SELECT t.*, e.seq, e.account, e.amount FROM ledger_txns t \
           JOIN ledger_entries e ON e.txn_id = t.id \
           WHERE t.id IN (SELECT txn_id FROM ledger_entries WHERE account = 'wallet:' || $1)) x \
         UNION ALL SELECT 'session ' || row_to_json(s)::text FROM sessions s WHERE address = $1 \
         UNION ALL SELECT 'token ' || row_to_json(x)::text FROM ( \
           SELECT encode(token_sha256, 'hex') AS sha256, address, issued_at, expires_at, \
           revoked_at FROM auth_tokens) x WHERE address = $1 \
         UNION ALL SELECT 'challenge ' || row_to_json(c)::text FROM challenges c \
           WHERE address = $1 \
         UNION ALL SELECT 'deposit ' || row_to_json(d)::text FROM deposits d WHERE \"from\" = $1 \
         UNION ALL SELECT 'audit ' || row_to_json(a)::text FROM audit_log a \
           WHERE actor = 'wallet:' || $1 OR subject = 'wallet:' || $1 \
           OR subject IN (SELECT id::text FROM sessions WHERE address = $1) \
         ORDER BY 1",
    )
    .bind::<Text, _>(&address)
    .load(&mut conn)
    .await
    .unwrap();
    rows.into_iter().map(|r| r.row).collect()
}

/// Ends every session still live (the fuzzer claims some) through the admin
/// API, waits until PostgreSQL has them all ended, and hands every session's
/// container and network to the stage's cleanup.
async fn end_every_session(stage: &Stage) {
    #[derive(diesel::QueryableByName)]
    struct Session {
        #[diesel(sql_type = Text)]
        id: String,
        #[diesel(sql_type = Text)]
        state: String,
    }
    let sessions = || async {
        let mut conn = AsyncPgConnection::establish(&stage.db.url).await.unwrap();
        diesel::sql_query("SELECT id::text AS id, state FROM sessions ORDER BY created_at")
            .load::<Session>(&mut conn)
            .await
            .unwrap()
    };
    for session in sessions().await {
        stage
            .cleanup
            .lock()
            .unwrap()
            .track(SessionId(session.id.parse().unwrap()));
        if session.state != "ended" {
            let (status, body) = stage
                .gate
                .post(
                    &format!("/api/v1/admin/sessions/{}/stop", session.id),
                    Some(STRONG_SECRET),
                    json!({}),
                )
                .await;
            // Ended meanwhile (its credit ran out, or the fuzzer stopped it).
            assert!(status == 200 || status == 404, "{status} {body}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let live: Vec<String> = sessions()
            .await
            .into_iter()
            .filter(|s| s.state != "ended")
            .map(|s| format!("{} {}", s.id, s.state))
            .collect();
        if live.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sessions not ended within 60 s: {live:?}\n{}",
            stage.gate.output()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
