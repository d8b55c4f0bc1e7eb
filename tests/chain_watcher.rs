//! The chain watcher end to end: a real anvil of each test's own (mined,
//! reverted, stopped), the alloy adapter, and PostgreSQL with the ledger.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{DynProvider, Provider};
use alloy::rpc::types::TransactionRequest;
use deskgate::money::chain::AlloyChain;
use deskgate::money::deposits::{CheckStatus, PgDepositBook, TxCheck, check_transaction};
use deskgate::money::ledger::PgLedger;
use deskgate::money::pricing::Pricing;
use deskgate::platform::secret::Secret;
use deskgate_actors::chain_watcher::{
    ChainWatcherArgs, ChainWatcherMsg, Required, WatcherStatus, spawn_chain_watcher,
};
use deskgate_actors::ports::{Ledger, WalletId};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use ractor::{ActorRef, call};
use support::{OwnAnvil, ScratchDatabase, deploy_test_token, dev_wallet_provider};

const CHAIN_ID: u64 = 31337;
/// 0.001 ETH per GPU-hour: 0.01 ETH buys 36 000 credit-seconds.
const WEI_PER_HOUR: u64 = 1_000_000_000_000_000;
/// One token (18 decimals) per GPU-hour: two tokens buy 7 200.
const TOKEN_PER_HOUR: u64 = 1_000_000_000_000_000_000;

alloy::sol! {
    #[sol(rpc)]
    contract TestToken {
        function mint(address to, uint256 amount) external;
        function transfer(address to, uint256 amount) external returns (bool);
    }
}

fn revenue() -> Address {
    Address::repeat_byte(0x5e)
}

fn eth(milli: u64) -> U256 {
    U256::from(milli) * U256::from(WEI_PER_HOUR)
}

fn tokens(n: u64) -> U256 {
    U256::from(n) * U256::from(TOKEN_PER_HOUR)
}

/// One test's world: its anvil, database, token, adapters.
struct World {
    anvil: OwnAnvil,
    db: ScratchDatabase,
    provider: DynProvider,
    payer: Address,
    token: Address,
    chain: Arc<AlloyChain>,
    book: Arc<PgDepositBook>,
    ledger: PgLedger,
}

impl World {
    async fn new(tag: &str, anvil: OwnAnvil) -> Self {
        let db = ScratchDatabase::migrated(tag).await;
        let (provider, payer) = dev_wallet_provider(&anvil.url);
        let token = deploy_test_token(&provider).await;
        let pool = deskgate::db::pool(&Secret::new(db.url.clone())).unwrap();
        let ledger = PgLedger::new(pool.clone());
        let pricing = Pricing::new(U256::from(WEI_PER_HOUR), U256::from(TOKEN_PER_HOUR), vec![]);
        let book = Arc::new(PgDepositBook::new(pool, Arc::new(pricing), CHAIN_ID));
        let chain = Arc::new(AlloyChain::new(
            anvil.url.parse().unwrap(),
            revenue(),
            Some(token),
        ));
        Self {
            anvil,
            db,
            provider,
            payer,
            token,
            chain,
            book,
            ledger,
        }
    }

    async fn watcher(&self, required: Required, poll: Duration) -> ActorRef<ChainWatcherMsg> {
        spawn_chain_watcher(
            ChainWatcherArgs {
                reader: self.chain.clone(),
                book: self.book.clone(),
                required,
                poll,
                start_block: Some(0),
            },
            None,
        )
        .await
        .unwrap()
    }

    /// Sends `value` wei to `to`; returns the tx hash once mined.
    async fn send_eth(&self, to: Address, value: U256) -> B256 {
        let receipt = self
            .provider
            .send_transaction(TransactionRequest::default().with_to(to).with_value(value))
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(receipt.status());
        receipt.transaction_hash
    }

    async fn mint(&self, token: Address, amount: U256) {
        TestToken::new(token, &self.provider)
            .mint(self.payer, amount)
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
    }

    /// Transfers `amount` of `token` to `to` with a fixed gas limit (so that
    /// a transfer that reverts is still mined); returns the tx hash.
    async fn send_token(&self, token: Address, to: Address, amount: U256) -> B256 {
        let hash = *TestToken::new(token, &self.provider)
            .transfer(to, amount)
            .gas(200_000)
            .send()
            .await
            .unwrap()
            .tx_hash();
        // Wait until mined, whether it succeeded or not.
        for _ in 0..200 {
            if self
                .provider
                .get_transaction_receipt(hash)
                .await
                .unwrap()
                .is_some()
            {
                return hash;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("{hash} was not mined");
    }

    async fn send_token_after_mint(&self, amount: U256) -> B256 {
        self.mint(self.token, amount).await;
        self.send_token(self.token, revenue(), amount).await
    }

    async fn mine(&self, blocks: u64) {
        self.provider.anvil_mine(Some(blocks), None).await.unwrap();
    }

    async fn balance(&self) -> i64 {
        self.ledger
            .balance(&WalletId::new(&self.payer.to_string()))
            .await
            .unwrap()
    }

    async fn conn(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.db.url).await.unwrap()
    }

    /// Ledger transactions under deposit keys.
    async fn deposit_credits(&self) -> i64 {
        count(
            &mut self.conn().await,
            "SELECT count(*) AS n FROM ledger_txns WHERE idempotency_key LIKE 'deposit:%'",
        )
        .await
    }

    /// The status of `tx`'s deposit rows, by log index.
    async fn statuses(&self, tx: B256) -> Vec<String> {
        #[derive(QueryableByName)]
        struct Row {
            #[diesel(sql_type = Text)]
            status: String,
        }
        let rows: Vec<Row> =
            diesel::sql_query("SELECT status FROM deposits WHERE tx_hash = $1 ORDER BY log_index")
                .bind::<Text, _>(tx.to_string())
                .load(&mut self.conn().await)
                .await
                .unwrap();
        rows.into_iter().map(|r| r.status).collect()
    }

    async fn finish(self) {
        drop(self.anvil);
        self.db.drop_it().await;
    }
}

async fn count(conn: &mut AsyncPgConnection, sql: &str) -> i64 {
    #[derive(QueryableByName)]
    struct N {
        #[diesel(sql_type = BigInt)]
        n: i64,
    }
    diesel::sql_query(sql)
        .get_result::<N>(conn)
        .await
        .unwrap()
        .n
}

async fn poll(watcher: &ActorRef<ChainWatcherMsg>) -> WatcherStatus {
    let status = call!(watcher, |reply| ChainWatcherMsg::Poll { reply }).unwrap();
    assert_eq!(status.last_error, None, "the round should succeed");
    status
}

async fn status(watcher: &ActorRef<ChainWatcherMsg>) -> WatcherStatus {
    call!(watcher, |reply| ChainWatcherMsg::Status { reply }).unwrap()
}

/// Long enough that only explicit polls run after the first round.
const MANUAL: Duration = Duration::from_secs(3600);

/// The check rejected the transaction for a reason starting with `reason`.
fn assert_rejected(result: &TxCheck, reason: &str) {
    assert_eq!(result.status, CheckStatus::Rejected, "{result:?}");
    let given = result.reason.as_deref().unwrap_or_default();
    assert!(given.starts_with(reason), "{result:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn eth_and_token_deposits_are_credited_once_after_n_confirmations() {
    let world = World::new("cw_confirm", OwnAnvil::start()).await;
    world.mint(world.token, tokens(10)).await;
    let watcher = world.watcher(Required::Blocks(3), MANUAL).await;

    let eth_tx = world.send_eth(revenue(), eth(10)).await; // 36 000 s
    let token_tx = world.send_token(world.token, revenue(), tokens(2)).await; // 7 200 s
    // The ETH deposit has 2 confirmations, the token deposit 1.
    poll(&watcher).await;
    assert_eq!(world.statuses(eth_tx).await, ["pending"]);
    assert_eq!(world.statuses(token_tx).await, ["pending"]);
    assert_eq!(
        world.balance().await,
        0,
        "below 3 confirmations nothing is credited"
    );

    world.mine(1).await; // ETH: 3, token: 2
    poll(&watcher).await;
    assert_eq!(world.statuses(eth_tx).await, ["credited"]);
    assert_eq!(world.statuses(token_tx).await, ["pending"]);
    assert_eq!(world.balance().await, 36_000);

    world.mine(1).await; // token: 3
    poll(&watcher).await;
    assert_eq!(world.statuses(token_tx).await, ["credited"]);
    assert_eq!(world.balance().await, 36_000 + 7_200);

    // Many more rounds and blocks, and a direct check, credit nothing again.
    world.mine(5).await;
    for _ in 0..3 {
        poll(&watcher).await;
    }
    let check = check_transaction(&world.chain, &world.book, Required::Blocks(3), eth_tx)
        .await
        .unwrap();
    assert_eq!(check.status, CheckStatus::Credited);
    assert_eq!(check.credit_seconds, Some(36_000));
    assert_eq!(world.balance().await, 43_200);
    assert_eq!(world.deposit_credits().await, 2);

    watcher.stop(None);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credit_whose_transaction_fails_leaves_no_ledger_credit_behind() {
    // Found by the fault campaign: the ledger posting committed on its own
    // connection, then the connection that was to mark the deposit credited
    // died, leaving a credit on the ledger for a deposit still pending (and
    // a reorg could then remove it, credit and all).
    let world = World::new("cw_atomic", OwnAnvil::start()).await;
    let mut conn = AsyncPgConnection::establish(&world.db.url).await.unwrap();
    diesel::sql_query(
        "CREATE FUNCTION fail_credit() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.status = 'credited' THEN RAISE EXCEPTION 'the connection died here'; END IF; \
         RETURN NEW; END $$",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    diesel::sql_query(
        "CREATE TRIGGER fail_credit BEFORE UPDATE ON deposits \
         FOR EACH ROW EXECUTE FUNCTION fail_credit()",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let watcher = world.watcher(Required::Blocks(1), MANUAL).await;
    let tx = world.send_eth(revenue(), eth(10)).await;
    let round = status(&watcher).await;
    let round = if round.last_error.is_none() {
        call!(watcher, |reply| ChainWatcherMsg::Poll { reply }).unwrap()
    } else {
        round
    };
    assert!(round.last_error.is_some(), "the credit failed: {round:?}");
    assert_eq!(world.statuses(tx).await, ["pending"]);
    assert_eq!(
        world.deposit_credits().await,
        0,
        "a credit without its deposit"
    );
    assert_eq!(world.balance().await, 0);

    diesel::sql_query("DROP TRIGGER fail_credit ON deposits")
        .execute(&mut conn)
        .await
        .unwrap();
    poll(&watcher).await;
    assert_eq!(world.statuses(tx).await, ["credited"]);
    assert_eq!(world.deposit_credits().await, 1);
    assert_eq!(world.balance().await, 36_000);
    watcher.stop(None);
    drop(conn);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deposit_whose_block_is_reorged_away_is_never_credited() {
    let mut world = World::new("cw_reorg", OwnAnvil::start()).await;
    let watcher = world.watcher(Required::Blocks(4), MANUAL).await;
    poll(&watcher).await;

    let snapshot = world.provider.anvil_snapshot().await.unwrap();
    let tx = world.send_eth(revenue(), eth(5)).await;
    world.mine(1).await; // 2 confirmations of 4
    let before = poll(&watcher).await;
    assert_eq!(world.statuses(tx).await, ["pending"]);

    assert!(world.provider.anvil_revert(snapshot).await.unwrap());
    world.provider.anvil_drop_all_transactions().await.unwrap();
    world.mine(8).await; // a longer chain without the deposit
    assert!(
        world
            .provider
            .get_transaction_by_hash(tx)
            .await
            .unwrap()
            .is_none(),
        "the deposit left the chain"
    );
    let after = poll(&watcher).await;
    assert_eq!(after.reorgs, before.reorgs + 1, "the reorg was seen");
    assert_eq!(world.statuses(tx).await, ["removed"]);

    world.mine(10).await;
    poll(&watcher).await;
    assert_eq!(world.statuses(tx).await, ["removed"]);
    assert_eq!(
        world.balance().await,
        0,
        "a removed deposit is never credited"
    );
    assert_eq!(world.deposit_credits().await, 0);

    // A deposit made on the new chain is credited as usual (a fresh
    // provider: the old one caches the reverted chain's nonce).
    world.provider = dev_wallet_provider(&world.anvil.url).0;
    world.send_eth(revenue(), eth(1)).await;
    world.mine(3).await;
    poll(&watcher).await;
    assert_eq!(world.balance().await, 3_600);

    watcher.stop(None);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_credited_deposit_reorged_deeper_than_the_confirmations_is_flagged_not_debited() {
    let world = World::new("cw_deep", OwnAnvil::start()).await;
    let watcher = world.watcher(Required::Blocks(2), MANUAL).await;
    poll(&watcher).await;

    let snapshot = world.provider.anvil_snapshot().await.unwrap();
    let tx = world.send_eth(revenue(), eth(2)).await;
    world.mine(3).await; // 4 confirmations of 2
    poll(&watcher).await;
    assert_eq!(world.statuses(tx).await, ["credited"]);
    assert_eq!(world.balance().await, 7_200);
    let mut conn = world.conn().await;
    let flags = "SELECT count(*) AS n FROM audit_log WHERE action = 'deposit.reorged'";
    assert_eq!(count(&mut conn, flags).await, 0);

    assert!(world.provider.anvil_revert(snapshot).await.unwrap());
    world.provider.anvil_drop_all_transactions().await.unwrap();
    world.mine(6).await;
    poll(&watcher).await;
    poll(&watcher).await;

    assert_eq!(count(&mut conn, flags).await, 1, "flagged exactly once");
    let subject = format!(
        "SELECT count(*) AS n FROM audit_log WHERE action = 'deposit.reorged' \
         AND subject = 'wallet:{}' AND details->>'tx_hash' = '{tx}'",
        WalletId::new(&world.payer.to_string())
    );
    assert_eq!(count(&mut conn, &subject).await, 1);
    assert_eq!(
        world.balance().await,
        7_200,
        "nothing is debited automatically"
    );
    assert_eq!(world.statuses(tx).await, ["credited"]);
    assert_eq!(world.deposit_credits().await, 1);

    drop(conn);
    watcher.stop(None);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_transaction_rejects_wrong_recipient_wrong_token_failed_and_unknown() {
    let world = World::new("cw_check", OwnAnvil::start()).await;
    let required = Required::Blocks(2);
    let check = async |tx| {
        check_transaction(&world.chain, &world.book, required, tx)
            .await
            .unwrap()
    };
    world.mint(world.token, tokens(5)).await;

    let elsewhere = Address::repeat_byte(0x77);
    let wrong_recipient = world.send_eth(elsewhere, eth(1)).await;
    let result = check(wrong_recipient).await;
    assert_rejected(&result, "wrong recipient");

    let token_elsewhere = world.send_token(world.token, elsewhere, tokens(1)).await;
    let result = check(token_elsewhere).await;
    assert_rejected(&result, "wrong recipient");

    let other_token = deploy_test_token(&world.provider).await;
    world.mint(other_token, tokens(5)).await;
    let wrong_token = world.send_token(other_token, revenue(), tokens(1)).await;
    let result = check(wrong_token).await;
    assert_eq!(result.status, CheckStatus::Rejected);
    assert!(
        result.reason.as_deref().unwrap().starts_with("wrong token"),
        "{result:?}"
    );

    let failed = world
        .send_token(world.token, revenue(), tokens(1_000))
        .await;
    let receipt = world
        .provider
        .get_transaction_receipt(failed)
        .await
        .unwrap()
        .unwrap();
    assert!(!receipt.status(), "the over-balance transfer reverted");
    let result = check(failed).await;
    assert_rejected(&result, "failed transaction");

    let result = check(B256::repeat_byte(0xab)).await;
    assert_rejected(&result, "unknown transaction");

    // None of them was recorded or credited.
    assert_eq!(
        count(
            &mut world.conn().await,
            "SELECT count(*) AS n FROM deposits"
        )
        .await,
        0
    );

    // A good one: pending with 1 confirmation, credited at 2, once.
    let good = world.send_token(world.token, revenue(), tokens(1)).await;
    let result = check(good).await;
    assert_eq!(result.status, CheckStatus::Pending);
    assert_eq!((result.confirmations, result.required), (1, Some(2)));
    assert_eq!(result.credit_seconds, Some(3_600));
    assert_eq!(world.balance().await, 0);
    world.mine(1).await;
    for _ in 0..3 {
        let result = check(good).await;
        assert_eq!(result.status, CheckStatus::Credited, "{result:?}");
        assert_eq!(result.credit_seconds, Some(3_600));
        assert_eq!(result.reason, None);
    }
    assert_eq!(world.balance().await, 3_600);
    assert_eq!(world.deposit_credits().await, 1);

    // The watcher later scans the same block and credits nothing more.
    let watcher = world.watcher(required, MANUAL).await;
    world.mine(2).await;
    poll(&watcher).await;
    assert_eq!(world.balance().await, 3_600);
    assert_eq!(world.deposit_credits().await, 1);

    watcher.stop(None);
    world.finish().await;
}

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_watcher_catches_up_after_the_node_restarts_with_no_loss_and_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("anvil-state.json");
    let state_arg = state.to_str().unwrap().to_string();
    let port = support::free_port();
    let anvil = OwnAnvil::start_on(port, &["--state", &state_arg]);
    let world = World::new("cw_restart", anvil).await;
    let watcher = world
        .watcher(Required::Blocks(3), Duration::from_millis(100))
        .await;

    let first = world.send_eth(revenue(), eth(1)).await; // 3 600 s
    wait_for(
        "the first deposit to be recorded",
        Duration::from_secs(20),
        async || world.statuses(first).await == ["pending"],
    )
    .await;
    let mut world = world;
    world.anvil.stop();
    wait_for("a failed round", Duration::from_secs(20), async || {
        status(&watcher).await.last_error.is_some()
    })
    .await;
    assert_eq!(world.balance().await, 0);

    world.anvil = OwnAnvil::start_on(port, &["--state", &state_arg]);
    assert!(
        world
            .provider
            .get_transaction_by_hash(first)
            .await
            .unwrap()
            .is_some(),
        "the restarted node kept the chain"
    );
    let second = world.send_token_after_mint(tokens(2)).await; // 7 200 s
    world.mine(3).await;
    wait_for(
        "both deposits to be credited",
        Duration::from_secs(30),
        async || {
            world.statuses(first).await == ["credited"]
                && world.statuses(second).await == ["credited"]
        },
    )
    .await;
    assert_eq!(
        status(&watcher).await.last_error,
        None,
        "the watcher recovered"
    );
    // A few more rounds change nothing.
    world.mine(2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(world.balance().await, 3_600 + 7_200);
    assert_eq!(world.deposit_credits().await, 2);
    assert_eq!(
        count(
            &mut world.conn().await,
            "SELECT count(*) AS n FROM deposits"
        )
        .await,
        2,
        "no duplicate rows"
    );

    watcher.stop(None);
    world.finish().await;
}
