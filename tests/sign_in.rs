//! Wallet sign-in end to end on a real PostgreSQL and a real anvil node:
//! real keys sign real EIP-4361 messages, and every refusal comes with its
//! own reason. Contract wallets (EIP-1271, ERC-6492) have their own file,
//! `sign_in_contract_wallets.rs`.

mod support;

use std::sync::OnceLock;

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use chrono::{TimeDelta, Utc};
use deskgate::auth::siwe::{SiweMessage, Timestamp};
use deskgate::auth::store::hash_token;
use deskgate::auth::{MAX_SIGNATURE_BYTES, NONCE_CHARS, STATEMENT, SignIn, SignInError};
use deskgate::db::schema::auth_tokens;
use deskgate_actors::ports::WalletId;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use support::free_port;
use support::sign_in::{PUBLIC_URL, assert_refused, chain_id, setup, setup_with_rpc, sign};
use url::Url;

fn wallet(address: Address) -> WalletId {
    WalletId::new(&address.to_string())
}

/// Issues a challenge for `signer` and signs it: the honest browser.
async fn signed_challenge(sign_in: &SignIn, signer: &PrivateKeySigner) -> (String, String) {
    let challenge = sign_in.issue(signer.address()).await.expect("issue");
    let signature = sign(signer, &challenge.message);
    (challenge.message, signature)
}

/// A change to a message, for table-driven tests.
type Edit = Box<dyn FnOnce(&mut SiweMessage)>;

/// The issued message for `signer`, changed by `edit` and signed by `by`.
async fn edited(
    sign_in: &SignIn,
    signer: &PrivateKeySigner,
    by: &PrivateKeySigner,
    edit: impl FnOnce(&mut SiweMessage),
) -> (String, String) {
    let challenge = sign_in.issue(signer.address()).await.expect("issue");
    let mut message = SiweMessage::parse(&challenge.message).expect("issued message parses");
    edit(&mut message);
    let text = message.to_string();
    let signature = sign(by, &text);
    (text, signature)
}

/// The happy path: the issued message is a complete EIP-4361 text for this
/// gate, a real key's signature over it signs in, the token authenticates,
/// and only its SHA-256 is stored.
#[tokio::test(flavor = "multi_thread")]
async fn a_real_key_signs_in_and_its_token_authenticates() {
    let f = setup("sign_in_happy").await;
    let alice = PrivateKeySigner::random();

    let challenge = f.sign_in.issue(alice.address()).await.unwrap();
    let message = SiweMessage::parse(&challenge.message).unwrap();
    assert_eq!(message.scheme.as_deref(), Some("https"));
    assert_eq!(message.domain, "desk.test:8443");
    assert_eq!(message.uri, PUBLIC_URL);
    assert_eq!(message.address, alice.address());
    assert_eq!(message.statement.as_deref(), Some(STATEMENT));
    assert_eq!(message.chain_id, chain_id());
    assert_eq!(message.nonce, challenge.nonce);
    assert_eq!(challenge.nonce.len(), NONCE_CHARS);
    assert_eq!(
        message.expiration_time.as_ref().map(Timestamp::instant),
        Some(challenge.expires_at)
    );
    let life = challenge.expires_at - message.issued_at.instant();
    assert_eq!(life, TimeDelta::minutes(5));

    let signature = sign(&alice, &challenge.message);
    let issued = f
        .sign_in
        .verify(&challenge.message, &signature)
        .await
        .unwrap();
    assert_eq!(issued.address, wallet(alice.address()));
    let token = issued.token.expose().to_string();
    assert_eq!(token.len(), 64);
    assert!(!format!("{issued:?}").contains(&token), "Debug hides it");
    let ttl = issued.expires_at - Utc::now();
    assert!(ttl > TimeDelta::minutes(59) && ttl <= TimeDelta::hours(1));

    assert_eq!(
        f.sign_in.authenticate(&token).await.unwrap(),
        wallet(alice.address())
    );

    let mut conn = f.pool.get().await.unwrap();
    let stored: Vec<Vec<u8>> = auth_tokens::table
        .select(auth_tokens::token_sha256)
        .load(&mut conn)
        .await
        .unwrap();
    assert_eq!(stored, vec![hash_token(token.as_bytes()).to_vec()]);
    drop(conn);
    f.teardown().await;
}

/// A good signature is good once: sent again it fails as a used nonce, and
/// so does a different message (freshly signed) that reuses the nonce.
#[tokio::test(flavor = "multi_thread")]
async fn a_nonce_signs_in_once() {
    let f = setup("sign_in_replay").await;
    let alice = PrivateKeySigner::random();
    let (message, signature) = signed_challenge(&f.sign_in, &alice).await;
    let first = f.sign_in.verify(&message, &signature).await.unwrap();

    // Replayed signature.
    assert_refused(
        f.sign_in.verify(&message, &signature).await,
        "nonce_already_used",
    );

    // Reused nonce, in another message that Alice really signed.
    let mut again = SiweMessage::parse(&message).unwrap();
    again.statement = Some("Sign in again".into());
    again.issued_at = Timestamp::from(Utc::now());
    let text = again.to_string();
    assert_refused(
        f.sign_in.verify(&text, &sign(&alice, &text)).await,
        "nonce_already_used",
    );

    // The token of the one success still works.
    assert!(f.sign_in.authenticate(first.token.expose()).await.is_ok());
    f.teardown().await;
}

/// A nonce dies after five minutes, whatever the message says; the issued
/// message itself expires with it.
#[tokio::test(flavor = "multi_thread")]
async fn expired_nonces_and_messages_are_refused() {
    let f = setup("sign_in_expired").await;
    let alice = PrivateKeySigner::random();
    let later = Utc::now() + TimeDelta::minutes(6);

    // The issued message, answered too late.
    let (message, signature) = signed_challenge(&f.sign_in, &alice).await;
    assert_refused(
        f.sign_in.verify_at(&message, &signature, later).await,
        "message_expired",
    );

    // A message without an expiration time: the nonce still expires.
    let (message, signature) = edited(&f.sign_in, &alice, &alice, |m| {
        m.expiration_time = None;
    })
    .await;
    assert_refused(
        f.sign_in.verify_at(&message, &signature, later).await,
        "nonce_expired",
    );
    // In time, the same message is fine.
    assert!(f.sign_in.verify(&message, &signature).await.is_ok());

    // A test hook: a service whose challenges live one second.
    let short = f.sign_in.clone().with_challenge_life(TimeDelta::seconds(1));
    let challenge = short.issue(alice.address()).await.unwrap();
    let mut m = SiweMessage::parse(&challenge.message).unwrap();
    m.expiration_time = None;
    let text = m.to_string();
    assert_refused(
        short
            .verify_at(
                &text,
                &sign(&alice, &text),
                Utc::now() + TimeDelta::seconds(2),
            )
            .await,
        "nonce_expired",
    );
    f.teardown().await;
}

/// Messages bound to another site, URL or chain, or not valid yet, are
/// refused even when the right key signed them, each for its own reason.
#[tokio::test(flavor = "multi_thread")]
async fn messages_for_another_gate_or_time_are_refused() {
    let f = setup("sign_in_binding").await;
    let alice = PrivateKeySigner::random();
    let cases: Vec<(&str, Edit)> = vec![
        (
            "wrong_domain",
            Box::new(|m| m.domain = "evil.test:8443".into()),
        ),
        ("wrong_domain", Box::new(|m| m.domain = "desk.test".into())),
        ("wrong_scheme", Box::new(|m| m.scheme = Some("http".into()))),
        (
            "wrong_uri",
            Box::new(|m| m.uri = "https://evil.test:8443/".into()),
        ),
        (
            "wrong_uri",
            Box::new(|m| m.uri = "https://desk.test:8443/admin".into()),
        ),
        ("wrong_chain_id", Box::new(|m| m.chain_id = 1)),
        (
            "message_not_yet_valid",
            Box::new(|m| m.issued_at = Timestamp::from(Utc::now() + TimeDelta::minutes(2))),
        ),
        (
            "message_not_yet_valid",
            Box::new(|m| {
                m.not_before = Some(Timestamp::from(Utc::now() + TimeDelta::minutes(2)));
            }),
        ),
    ];
    for (code, edit) in cases {
        let (message, signature) = edited(&f.sign_in, &alice, &alice, edit).await;
        assert_refused(f.sign_in.verify(&message, &signature).await, code);
    }

    // Within the allowed skew, and with the scheme left out for https, and
    // the URI without its trailing slash: accepted.
    let (message, signature) = edited(&f.sign_in, &alice, &alice, |m| {
        m.scheme = None;
        m.uri = "https://desk.test:8443".into();
        m.issued_at = Timestamp::from(Utc::now() + TimeDelta::seconds(30));
        m.not_before = Some(Timestamp::from(Utc::now() + TimeDelta::seconds(30)));
    })
    .await;
    f.sign_in.verify(&message, &signature).await.unwrap();
    f.teardown().await;
}

/// A message that claims an address its signer does not hold is refused,
/// and so is a nonce presented for another address than it was issued to;
/// neither burns the owner's nonce.
#[tokio::test(flavor = "multi_thread")]
async fn a_signature_must_come_from_the_claimed_address() {
    let f = setup("sign_in_address").await;
    let alice = PrivateKeySigner::random();
    let mallory = PrivateKeySigner::random();

    // Mallory signs Alice's challenge: the signature is not Alice's (and
    // Alice's address holds no contract that could vouch for it).
    let challenge = f.sign_in.issue(alice.address()).await.unwrap();
    assert_refused(
        f.sign_in
            .verify(&challenge.message, &sign(&mallory, &challenge.message))
            .await,
        "signature_mismatch",
    );

    // Nor can any other shape of signature be Alice's: with no code at her
    // address, only her key's 65 bytes count.
    let own = sign(&alice, &challenge.message);
    for other_shape in [
        own[..own.len() - 2].to_string(),
        format!("{own}{}", &own[2..]),
        format!("{}20", &own[..own.len() - 2]),
    ] {
        assert_refused(
            f.sign_in.verify(&challenge.message, &other_shape).await,
            "signature_mismatch",
        );
    }

    // Mallory puts her own address on Alice's nonce and signs correctly.
    let mut stolen = SiweMessage::parse(&challenge.message).unwrap();
    stolen.address = mallory.address();
    let text = stolen.to_string();
    assert_refused(
        f.sign_in.verify(&text, &sign(&mallory, &text)).await,
        "nonce_wrong_address",
    );

    // Alice's nonce survived both attempts.
    let issued = f
        .sign_in
        .verify(&challenge.message, &sign(&alice, &challenge.message))
        .await
        .unwrap();
    assert_eq!(issued.address, wallet(alice.address()));
    f.teardown().await;
}

/// Garbage is refused before anything else, and a nonce never issued is
/// unknown.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_input_and_unknown_nonces_are_refused() {
    let f = setup("sign_in_malformed").await;
    let alice = PrivateKeySigner::random();
    let (message, signature) = signed_challenge(&f.sign_in, &alice).await;

    for bad in [
        String::new(),
        "hello".to_string(),
        message.replace('\n', "\r\n"),
        format!("{message}\n"),
        message.replacen(
            &alice.address().to_string(),
            &alice.address().to_string().to_lowercase(),
            1,
        ),
        "x".repeat(10_000),
    ] {
        let signature = sign(&alice, &bad);
        assert_refused(
            f.sign_in.verify(&bad, &signature).await,
            "malformed_message",
        );
    }
    for bad in [
        "",
        "0x",
        "not hex",
        &signature[..signature.len() - 1],
        &format!("0x{}", "ab".repeat(MAX_SIGNATURE_BYTES + 1)),
        // The ERC-6492 suffix after bytes that are no (address, bytes, bytes).
        &format!("0x{}{}", "ab".repeat(40), "6492".repeat(16)),
    ] {
        assert_refused(f.sign_in.verify(&message, bad).await, "malformed_signature");
    }

    let mut unknown = SiweMessage::parse(&message).unwrap();
    unknown.nonce = "NeverIssued0123456789x".into();
    let text = unknown.to_string();
    assert_refused(
        f.sign_in.verify(&text, &sign(&alice, &text)).await,
        "unknown_nonce",
    );

    // None of that consumed the real nonce.
    f.sign_in.verify(&message, &signature).await.unwrap();
    f.teardown().await;
}

/// Without an RPC node a signature that does not recover to the address
/// cannot be judged (it might be a contract wallet's): the refusal says
/// the node is unavailable, not that the signature is bad. Plain keys
/// still sign in, as they need no node.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_rpc_node_is_reported_as_such() {
    let dead = Url::parse(&format!("http://127.0.0.1:{}", free_port())).unwrap();
    let f = setup_with_rpc("sign_in_rpc_down", dead).await;
    let alice = PrivateKeySigner::random();
    let mallory = PrivateKeySigner::random();

    let challenge = f.sign_in.issue(alice.address()).await.unwrap();
    let outcome = f
        .sign_in
        .verify(&challenge.message, &sign(&mallory, &challenge.message))
        .await;
    assert_refused(outcome, "rpc_unavailable");

    f.sign_in
        .verify(&challenge.message, &sign(&alice, &challenge.message))
        .await
        .unwrap();
    f.teardown().await;
}

/// A token stops working when its owner logs out, when it expires, and
/// when all the wallet's tokens are revoked; malformed tokens are refused.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_end_with_logout_expiry_and_revocation() {
    let f = setup("sign_in_tokens").await;
    let alice = PrivateKeySigner::random();
    let invalid = |r: Result<WalletId, SignInError>| matches!(r, Err(SignInError::InvalidToken));

    // Logout.
    let (message, signature) = signed_challenge(&f.sign_in, &alice).await;
    let issued = f.sign_in.verify(&message, &signature).await.unwrap();
    let token = issued.token.expose();
    assert!(f.sign_in.logout(token).await.unwrap());
    assert!(invalid(f.sign_in.authenticate(token).await));
    assert!(!f.sign_in.logout(token).await.unwrap(), "already revoked");

    // Expiry.
    let (message, signature) = signed_challenge(&f.sign_in, &alice).await;
    let issued = f.sign_in.verify(&message, &signature).await.unwrap();
    let token = issued.token.expose();
    let just_before = issued.expires_at - TimeDelta::seconds(1);
    assert!(f.sign_in.authenticate_at(token, just_before).await.is_ok());
    assert!(invalid(
        f.sign_in.authenticate_at(token, issued.expires_at).await
    ));

    // Revoke all.
    let mut tokens = Vec::new();
    for _ in 0..2 {
        let (message, signature) = signed_challenge(&f.sign_in, &alice).await;
        tokens.push(f.sign_in.verify(&message, &signature).await.unwrap().token);
    }
    assert_eq!(
        f.sign_in
            .revoke_all(&wallet(alice.address()))
            .await
            .unwrap(),
        3,
        "the two new tokens and the unexpired one from above"
    );
    for token in &tokens {
        assert!(invalid(f.sign_in.authenticate(token.expose()).await));
    }

    // Garbage.
    for bad in ["", "token", &"A".repeat(64), &"a".repeat(63)] {
        assert!(invalid(f.sign_in.authenticate(bad).await), "{bad}");
        assert!(!f.sign_in.logout(bad).await.unwrap());
    }
    f.teardown().await;
}

/// Successes and refusals (by reason) are counted for Prometheus.
#[tokio::test(flavor = "multi_thread")]
async fn sign_ins_are_counted() {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    let handle = HANDLE.get_or_init(|| {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder in this test binary")
    });
    let f = setup("sign_in_metrics").await;
    let alice = PrivateKeySigner::random();
    let (message, signature) = signed_challenge(&f.sign_in, &alice).await;
    assert_refused(
        f.sign_in.verify(&message, "0x").await,
        "malformed_signature",
    );
    f.sign_in.verify(&message, &signature).await.unwrap();

    let rendered = handle.render();
    assert!(
        rendered.contains("deskgate_sign_in_failures_total{reason=\"malformed_signature\"}"),
        "{rendered}"
    );
    assert!(
        rendered.contains("deskgate_sign_in_successes_total"),
        "{rendered}"
    );
    assert!(
        !rendered.contains(&signature[2..]),
        "no signature in metrics"
    );
    f.teardown().await;
}
