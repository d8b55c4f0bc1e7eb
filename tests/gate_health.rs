//! The gate's tree on real PostgreSQL takes a GPU out of service while it is
//! reported unhealthy (what the NVML health feed sends) and back when it
//! recovers.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deskgate::platform::secret::Secret;
use deskgate::sessions::tree::SessionTree;
use deskgate_actors::ports::GpuAddr;
use deskgate_actors::session::SessionSettings;
use deskgate_actors::testing::FakeLauncher;
use support::ScratchDatabase;

async fn wait_free(gate: &SessionTree, free: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let snapshot = gate.snapshot().await.expect("the scheduler answers");
        if snapshot.free_gpus == free {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "expected {free} free GPUs: {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unhealthy_gpu_leaves_the_pool_until_it_recovers() {
    let db = ScratchDatabase::migrated("gate_health").await;
    let pool = deskgate::db::pool(&Secret::new(db.url.clone())).unwrap();
    let gpus = vec![GpuAddr { host: 0, index: 0 }, GpuAddr { host: 0, index: 1 }];
    let gate = SessionTree::start(
        pool,
        Arc::new(FakeLauncher::new()),
        gpus,
        SessionSettings::default(),
    )
    .await
    .expect("the tree starts");
    wait_free(&gate, 2).await;
    gate.set_health(
        GpuAddr { host: 0, index: 1 },
        Some("2 uncorrected ECC error(s)".into()),
    );
    wait_free(&gate, 1).await;
    gate.set_health(GpuAddr { host: 0, index: 1 }, None);
    wait_free(&gate, 2).await;
    db.drop_it().await;
}
