//! Smoke tests proving each development service is real: PostgreSQL answers
//! SQL, Docker Engine runs a container from the locally built test image, and
//! anvil answers JSON-RPC.

mod support;

use alloy::providers::{Provider, RootProvider};
use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
};
use diesel::sql_types::{Integer, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures::StreamExt;
use support::service_env;

#[tokio::test]
async fn postgresql_answers_a_query() {
    let url = service_env("DESKGATE_DATABASE_URL");
    let mut conn = AsyncPgConnection::establish(&url)
        .await
        .expect("connect to the test PostgreSQL (make services starts it)");
    let sum: i32 = diesel::select(diesel::dsl::sql::<Integer>("40 + 2"))
        .get_result(&mut conn)
        .await
        .unwrap();
    assert_eq!(sum, 42);
    let version: String = diesel::select(diesel::dsl::sql::<Text>("version()"))
        .get_result(&mut conn)
        .await
        .unwrap();
    assert!(version.starts_with("PostgreSQL 15"), "{version}");
}

#[tokio::test]
async fn docker_runs_a_container_from_the_local_test_image() {
    let image = service_env("DESKGATE_TEST_IMAGE");
    let docker = deskgate::launcher::docker::connect()
        .await
        .expect("docker client");
    let name = format!("deskgate-smoke-{}", std::process::id());
    let body = ContainerCreateBody {
        image: Some(image),
        cmd: Some(vec![
            "sh".into(),
            "-c".into(),
            "id -u; echo hello-from-the-container".into(),
        ]),
        user: Some("1000:1000".into()),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(&name).build()),
            body,
        )
        .await
        .expect("create container (is dockerd up? make services starts it)");
    docker.start_container(&name, None).await.expect("start");
    let exit = docker
        .wait_container(&name, None)
        .next()
        .await
        .expect("a wait result")
        .expect("container exited cleanly");
    assert_eq!(exit.status_code, 0);
    let logs: Vec<String> = docker
        .logs(
            &name,
            Some(LogsOptionsBuilder::new().stdout(true).stderr(true).build()),
        )
        .map(|chunk| chunk.expect("log chunk").to_string())
        .collect()
        .await;
    docker
        .remove_container(
            &name,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await
        .expect("remove");
    assert_eq!(logs.concat(), "1000\nhello-from-the-container\n");
}

#[tokio::test]
async fn anvil_reports_its_chain_id() {
    let url = service_env("DESKGATE_RPC_URL");
    let expected: u64 = service_env("DESKGATE_CHAIN_ID").parse().unwrap();
    let provider: RootProvider = RootProvider::new_http(url.parse().unwrap());
    let chain_id = provider
        .get_chain_id()
        .await
        .expect("eth_chainId from anvil (make services starts it)");
    assert_eq!(chain_id, expected);
    // A real node also has blocks: the genesis block at least.
    let block = provider.get_block_number().await.unwrap();
    assert!(block < 1_000_000, "fresh anvil chain, got block {block}");
}
