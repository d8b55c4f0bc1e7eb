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
