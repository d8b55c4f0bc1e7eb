//! `deskgate migrate` on a real PostgreSQL: applies the embedded schema,
//! is a no-op the second time, and every migration reverts cleanly.

mod support;

use diesel::sql_types::{Nullable, Text};
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::MigrationHarness;
use support::{ScratchDatabase, run_deskgate};

async fn table_exists(conn: &mut AsyncPgConnection, table: &str) -> bool {
    let found: Option<String> = diesel::select(diesel::dsl::sql::<Nullable<Text>>(&format!(
        "to_regclass('{table}')::text"
    )))
    .get_result(conn)
    .await
    .unwrap();
    found.is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_applies_the_schema_once_and_reverts_cleanly() {
    let db = ScratchDatabase::create("migrate").await;
    let env = [("DESKGATE_DATABASE_URL", db.url.as_str())];

    let (status, output) = run_deskgate(&["migrate"], &env);
    assert!(status.success(), "{output}");
    assert!(output.contains("applied 00000000000001"), "{output}");

    let (status, output) = run_deskgate(&["migrate"], &env);
    assert!(status.success(), "{output}");
    assert!(output.contains("nothing to apply"), "{output}");

    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    assert!(table_exists(&mut conn, "audit_log").await);

    let mut harness = AsyncMigrationHarness::new(conn);
    harness
        .revert_all_migrations(deskgate::db::MIGRATIONS)
        .expect("every down.sql runs");
    let mut conn = harness.into_inner();
    assert!(!table_exists(&mut conn, "audit_log").await);
    drop(conn);
    db.drop_it().await;
}

#[test]
fn migrate_names_the_missing_database_url() {
    let (status, output) = run_deskgate(&["migrate"], &[]);
    assert!(!status.success());
    assert!(output.contains("DESKGATE_DATABASE_URL"), "{output}");
}

async fn readyz(client: &reqwest::Client, port: u16) -> (u16, String) {
    let response = client
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_without_migrate_on_start_is_not_ready_on_an_empty_schema() {
    let db = ScratchDatabase::create("serve_nomigrate").await;
    let port = support::free_port();
    let mut env = support::serve_env(port);
    env.retain(|(k, _)| *k != "DESKGATE_DATABASE_URL");
    env.push(("DESKGATE_DATABASE_URL", db.url.clone()));
    env.push(("DESKGATE_MIGRATE_ON_START", "false".into()));
    let mut gate = support::Deskgate::spawn(&["serve"], &support::as_env(&env));
    let client = reqwest::Client::new();
    gate.wait_ready(&client, &format!("http://127.0.0.1:{port}/healthz"))
        .await;

    let (status, body) = readyz(&client, port).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("deskgate migrate"), "{body}");
    assert!(body.contains("needs 0000000000000"), "{body}");

    // Migrating from the side makes it ready without a restart.
    let (status, output) =
        run_deskgate(&["migrate"], &[("DESKGATE_DATABASE_URL", db.url.as_str())]);
    assert!(status.success(), "{output}");
    let (status, body) = readyz(&client, port).await;
    assert_eq!(status, 200, "{body}");
    gate.terminate(std::time::Duration::from_secs(5));
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_migrates_an_empty_database_at_start() {
    let db = ScratchDatabase::create("serve_migrate").await;
    let port = support::free_port();
    let mut env = support::serve_env(port);
    env.retain(|(k, _)| *k != "DESKGATE_DATABASE_URL");
    env.push(("DESKGATE_DATABASE_URL", db.url.clone()));
    let mut gate = support::Deskgate::spawn(&["serve"], &support::as_env(&env));
    let client = reqwest::Client::new();
    gate.wait_ready(&client, &format!("http://127.0.0.1:{port}/readyz"))
        .await;

    let mut conn = AsyncPgConnection::establish(&db.url).await.unwrap();
    for table in [
        "ledger_txns",
        "balances",
        "sessions",
        "challenges",
        "auth_tokens",
    ] {
        assert!(table_exists(&mut conn, table).await, "{table} exists");
    }
    assert!(
        gate.output().contains("database migrations applied"),
        "{}",
        gate.output()
    );
    drop(conn);
    gate.terminate(std::time::Duration::from_secs(5));
    db.drop_it().await;
}
