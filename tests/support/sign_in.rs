//! Helpers for sign-in tests: a [`SignIn`] service on a scratch database
//! checking contract wallets on the shared anvil node, `personal_sign`, and
//! contracts from `tests/fixtures/artifacts` deployed by a fresh funded key
//! (so that tests never race each other for a dev account's nonce).

use std::time::Duration;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, U256};
use alloy::providers::ext::AnvilApi;
use alloy::providers::{DynProvider, Provider, ProviderBuilder, RootProvider};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use deskgate::auth::{IssuedToken, SignIn, SignInError};
use deskgate::db::DbPool;
use deskgate::platform::secret::Secret;
use url::Url;

use super::{ScratchDatabase, repo_root, service_env};

/// The gate's public URL in sign-in tests.
pub const PUBLIC_URL: &str = "https://desk.test:8443/";
/// Token lifetime in sign-in tests.
pub const TOKEN_TTL: Duration = Duration::from_secs(3600);

/// A sign-in service and the scratch database under it.
pub struct Fixture {
    pub db: ScratchDatabase,
    pub pool: DbPool,
    pub sign_in: SignIn,
}

/// The shared anvil node's chain id.
pub fn chain_id() -> u64 {
    service_env("DESKGATE_CHAIN_ID")
        .parse()
        .expect("DESKGATE_CHAIN_ID is a number")
}

/// The shared anvil node.
pub fn rpc_url() -> Url {
    service_env("DESKGATE_RPC_URL")
        .parse()
        .expect("DESKGATE_RPC_URL is a URL")
}

/// A sign-in service on a scratch database, checking contract wallets on
/// the shared anvil node.
pub async fn setup(tag: &str) -> Fixture {
    setup_with_rpc(tag, rpc_url()).await
}

/// [`setup`] with contract wallets checked on the node at `rpc`.
pub async fn setup_with_rpc(tag: &str, rpc: Url) -> Fixture {
    let db = ScratchDatabase::migrated(tag).await;
    let pool = deskgate::db::pool(&Secret::new(db.url.clone())).expect("pool");
    let sign_in = SignIn::new(
        pool.clone(),
        &Url::parse(PUBLIC_URL).unwrap(),
        chain_id(),
        Some(RootProvider::new_http(rpc)),
        TOKEN_TTL,
    )
    .expect("sign-in service");
    Fixture { db, pool, sign_in }
}

impl Fixture {
    /// Closes the pool and drops the scratch database.
    pub async fn teardown(self) {
        drop(self.sign_in);
        drop(self.pool);
        self.db.drop_it().await;
    }
}

/// `personal_sign`: an EIP-191 signature as 0x-prefixed hex.
pub fn sign(signer: &PrivateKeySigner, text: &str) -> String {
    let signature = signer.sign_message_sync(text.as_bytes()).expect("sign");
    alloy::hex::encode_prefixed(signature.as_bytes())
}

/// The sign-in was refused with reason `code`.
#[track_caller]
pub fn assert_refused(outcome: Result<IssuedToken, SignInError>, code: &str) {
    match outcome {
        Ok(_) => panic!("signed in, expected {code}"),
        Err(e) => assert_eq!(e.code(), code, "{e}"),
    }
}

/// A provider on the shared anvil node for a fresh key that anvil funds
/// with 1 ETH.
pub async fn funded_provider() -> DynProvider {
    let key = PrivateKeySigner::random();
    let provider = ProviderBuilder::new()
        .wallet(key.clone())
        .connect_http(rpc_url())
        .erased();
    provider
        .anvil_set_balance(key.address(), U256::from(10u64).pow(U256::from(18)))
        .await
        .expect("anvil funds the key");
    provider
}

/// Deploys `tests/fixtures/artifacts/<name>.bin` with ABI-encoded
/// `constructor_args` from a fresh funded key; returns its address.
pub async fn deploy_fixture(name: &str, constructor_args: &[u8]) -> Address {
    let provider = funded_provider().await;
    let path = repo_root().join(format!("tests/fixtures/artifacts/{name}.bin"));
    let bin = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut code = alloy::hex::decode(bin.trim()).expect("hex bytecode");
    code.extend_from_slice(constructor_args);
    let receipt = provider
        .send_transaction(TransactionRequest::default().with_deploy_code(code))
        .await
        .expect("deploy sent")
        .get_receipt()
        .await
        .expect("deploy mined");
    assert!(receipt.status(), "{name} deployment succeeded");
    let address = receipt.contract_address.expect("a contract address");
    assert!(!provider.get_code_at(address).await.unwrap().is_empty());
    address
}
