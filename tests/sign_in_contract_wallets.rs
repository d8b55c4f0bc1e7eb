//! Contract wallets sign in through real contracts on anvil: an EIP-1271
//! wallet with one owner, a 2-of-3 multisig signing as Safe does (65 bytes
//! per owner, v = 31/32 for eth_sign), a counterfactual ERC-6492 account
//! that is not deployed, and hostile wallets that revert or burn all their
//! gas — which are refusals, never reported as an RPC outage.

mod support;

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, B256, Bytes, eip191_hash_message};
use alloy::providers::Provider;
use alloy::rpc::types::TransactionRequest;
use alloy::signers::SignerSync;
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolCall, SolValue};
use deskgate_actors::ports::WalletId;
use support::sign_in::{assert_refused, deploy_fixture, funded_provider, setup, sign};

alloy::sol! {
    /// `tests/fixtures/AccountFactory.sol`.
    interface AccountFactory {
        function deploy(address owner, bytes32 salt) external returns (address);
        function addressOf(address owner, bytes32 salt) external view returns (address);
    }
}

/// ERC-6492's magic suffix.
const ERC6492_SUFFIX: &str = "6492649264926492649264926492649264926492649264926492649264926492";

fn wallet(address: Address) -> WalletId {
    WalletId::new(&address.to_string())
}

/// An EIP-1271 contract wallet signs in with its owner's signature (checked
/// by the contract through eth_call); another key's signature, or a
/// signature the contract cannot recover, is refused by the contract.
#[tokio::test(flavor = "multi_thread")]
async fn a_contract_wallet_signs_in_through_eip1271() {
    let f = setup("sign_in_1271").await;
    let owner = PrivateKeySigner::random();
    let mallory = PrivateKeySigner::random();
    let contract = deploy_fixture("ContractWallet", owner.address().into_word().as_slice()).await;

    let challenge = f.sign_in.issue(contract).await.unwrap();
    assert_refused(
        f.sign_in
            .verify(&challenge.message, &sign(&mallory, &challenge.message))
            .await,
        "contract_wallet_rejected",
    );
    let zero_signature = format!("0x{}1b", "00".repeat(64));
    assert_refused(
        f.sign_in.verify(&challenge.message, &zero_signature).await,
        "contract_wallet_rejected",
    );

    // The refusals left the nonce for the owner.
    let issued = f
        .sign_in
        .verify(&challenge.message, &sign(&owner, &challenge.message))
        .await
        .unwrap();
    assert_eq!(issued.address, wallet(contract));
    assert_eq!(
        f.sign_in.authenticate(issued.token.expose()).await.unwrap(),
        wallet(contract)
    );
    f.teardown().await;
}

/// One owner's signature over the EIP-191 hash: `eth_sign` style (v + 4,
/// signed over the hash's own EIP-191 hash) or over the hash itself.
fn owner_signature(owner: &PrivateKeySigner, hash: B256, eth_sign: bool) -> Vec<u8> {
    let mut raw = if eth_sign {
        owner.sign_message_sync(hash.as_slice()).unwrap().as_bytes()
    } else {
        owner.sign_hash_sync(&hash).unwrap().as_bytes()
    };
    if eth_sign {
        raw[64] += 4;
    }
    raw.to_vec()
}

/// A 2-of-3 multisig signs in with 130 bytes, one owner signing the Safe
/// `eth_sign` way (v = 31/32): the gate hands the bytes to the contract as
/// they came. One owner alone, owners out of order, or a stranger are
/// refused by the contract.
#[tokio::test(flavor = "multi_thread")]
async fn a_two_of_three_multisig_signs_in_with_130_bytes_and_eth_sign_v() {
    let f = setup("sign_in_multisig").await;
    let mut owners: Vec<PrivateKeySigner> = (0..3).map(|_| PrivateKeySigner::random()).collect();
    owners.sort_by_key(|o| o.address());
    let addresses: [Address; 3] = std::array::from_fn(|i| owners[i].address());
    let multisig = deploy_fixture("MultisigWallet", &(addresses,).abi_encode_params()).await;
    let stranger = PrivateKeySigner::random();

    let challenge = f.sign_in.issue(multisig).await.unwrap();
    let hash = eip191_hash_message(&challenge.message);
    let hex = |parts: &[Vec<u8>]| alloy::hex::encode_prefixed(parts.concat());
    let first = owner_signature(&owners[0], hash, true);
    let third = owner_signature(&owners[2], hash, false);
    assert!(
        matches!(first[64], 31 | 32),
        "eth_sign v is 31 or 32, not {}",
        first[64]
    );

    for (refused, why) in [
        (hex(std::slice::from_ref(&first)), "one owner of two"),
        (hex(&[third.clone(), first.clone()]), "owners out of order"),
        (
            hex(&[first.clone(), owner_signature(&stranger, hash, false)]),
            "a stranger",
        ),
    ] {
        let outcome = f.sign_in.verify(&challenge.message, &refused).await;
        assert!(outcome.is_err(), "{why} signed in");
        assert_refused(outcome, "contract_wallet_rejected");
    }

    let issued = f
        .sign_in
        .verify(&challenge.message, &hex(&[first, third]))
        .await
        .expect("two owners sign the multisig in");
    assert_eq!(issued.address, wallet(multisig));
    f.teardown().await;
}

/// `signature` wrapped for ERC-6492: the factory call that deploys the
/// account, then the magic suffix.
fn erc6492(factory: Address, calldata: Vec<u8>, signature: &str) -> String {
    let inner = Bytes::from(alloy::hex::decode(signature).unwrap());
    let wrapped = (factory, Bytes::from(calldata), inner).abi_encode_params();
    format!("{}{ERC6492_SUFFIX}", alloy::hex::encode_prefixed(wrapped))
}

/// An account that is not deployed yet signs in with an ERC-6492
/// signature, and stays undeployed: the check runs the factory inside an
/// eth_call only. A stranger's wrapped signature is refused by the account;
/// a factory call that deploys some other account leaves no code at the
/// address, so the signature is not the address's. Once deployed, the
/// account signs in with or without the wrapper.
#[tokio::test(flavor = "multi_thread")]
async fn an_undeployed_account_signs_in_with_erc6492_and_stays_undeployed() {
    let f = setup("sign_in_6492").await;
    let provider = funded_provider().await;
    let factory = deploy_fixture("AccountFactory", &[]).await;
    let owner = PrivateKeySigner::random();
    let stranger = PrivateKeySigner::random();
    let salt = B256::from(rand::random::<[u8; 32]>());
    let deploy = AccountFactory::deployCall {
        owner: owner.address(),
        salt,
    }
    .abi_encode();
    let account = AccountFactory::addressOfCall::abi_decode_returns(
        &provider
            .call(
                TransactionRequest::default().with_to(factory).with_input(
                    AccountFactory::addressOfCall {
                        owner: owner.address(),
                        salt,
                    }
                    .abi_encode(),
                ),
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(provider.get_code_at(account).await.unwrap().is_empty());

    let challenge = f.sign_in.issue(account).await.unwrap();
    let by_stranger = erc6492(
        factory,
        deploy.clone(),
        &sign(&stranger, &challenge.message),
    );
    assert_refused(
        f.sign_in.verify(&challenge.message, &by_stranger).await,
        "contract_wallet_rejected",
    );
    let other_account = AccountFactory::deployCall {
        owner: stranger.address(),
        salt,
    }
    .abi_encode();
    let elsewhere = erc6492(factory, other_account, &sign(&owner, &challenge.message));
    assert_refused(
        f.sign_in.verify(&challenge.message, &elsewhere).await,
        "signature_mismatch",
    );
    let wrapped = erc6492(factory, deploy.clone(), &sign(&owner, &challenge.message));
    let issued = f
        .sign_in
        .verify(&challenge.message, &wrapped)
        .await
        .expect("the owner's ERC-6492 signature signs the account in");
    assert_eq!(issued.address, wallet(account));
    assert!(
        provider.get_code_at(account).await.unwrap().is_empty(),
        "the sign-in deployed nothing"
    );

    // Deployed for real, it signs in both ways.
    let receipt = provider
        .send_transaction(
            TransactionRequest::default()
                .with_to(factory)
                .with_input(deploy.clone()),
        )
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(receipt.status());
    assert!(!provider.get_code_at(account).await.unwrap().is_empty());
    for deployed_form in [false, true] {
        let challenge = f.sign_in.issue(account).await.unwrap();
        let plain = sign(&owner, &challenge.message);
        let signature = if deployed_form {
            erc6492(factory, deploy.clone(), &plain)
        } else {
            plain
        };
        f.sign_in
            .verify(&challenge.message, &signature)
            .await
            .expect("the deployed account signs in");
    }
    f.teardown().await;
}

/// A wallet whose `isValidSignature` loops until it runs out of gas, or
/// reverts, has refused the signature: 401 `contract_wallet_rejected`, not
/// 503 `rpc_unavailable` (which would let anyone raise false outage
/// alerts).
#[tokio::test(flavor = "multi_thread")]
async fn a_wallet_that_burns_its_gas_or_reverts_refuses_and_is_no_outage() {
    let f = setup("sign_in_hostile").await;
    let signer = PrivateKeySigner::random();
    for loops in [true, false] {
        let hostile = deploy_fixture("HostileWallet", &(loops,).abi_encode_params()).await;
        let challenge = f.sign_in.issue(hostile).await.unwrap();
        for signature in [
            sign(&signer, &challenge.message),
            format!("0x{}", "ab".repeat(1000)),
        ] {
            let started = std::time::Instant::now();
            let outcome = f.sign_in.verify(&challenge.message, &signature).await;
            eprintln!(
                "HostileWallet(loops: {loops}), {} signature bytes: refused in {:?}",
                signature.len() / 2 - 1,
                started.elapsed()
            );
            assert_refused(outcome, "contract_wallet_rejected");
        }
    }
    f.teardown().await;
}
