//! Sign-in storage on a real PostgreSQL: a challenge is consumed at most
//! once even under a race, failures say why, and tokens (stored hashed) stop
//! working when they expire or are revoked. The audit log, which sign-in is
//! among the first to write, is tested here too.

mod support;

use std::sync::Arc;

use chrono::{DateTime, Duration, SubsecRound, Utc};
use deskgate::auth::store::{
    ChallengeError, consume_challenge, delete_expired_challenges, hash_token, issue_challenge,
    revoke_all_tokens, revoke_token, store_token, token_owner,
};
use deskgate::db::DbPool;
use deskgate::db::audit;
use deskgate::platform::secret::Secret;
use deskgate_actors::ports::WalletId;
use support::ScratchDatabase;
use tokio::sync::Barrier;

fn alice() -> WalletId {
    WalletId::new("0x00000000000000000000000000000000000A11CE")
}

fn bob() -> WalletId {
    WalletId::new("0x0000000000000000000000000000000000000b0b")
}

/// Now, to the microsecond PostgreSQL keeps, so stored times compare equal.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

async fn setup(tag: &str) -> (ScratchDatabase, DbPool) {
    let db = ScratchDatabase::migrated(tag).await;
    let pool = deskgate::db::pool(&Secret::new(db.url.clone())).expect("pool");
    (db, pool)
}

async fn teardown(db: ScratchDatabase, pool: DbPool) {
    drop(pool);
    db.drop_it().await;
}

/// A challenge is consumed once, by its own address, before it expires; the
/// stored row comes back with the time it was used.
#[tokio::test(flavor = "multi_thread")]
async fn a_challenge_is_consumed_once() {
    let (db, pool) = setup("sign_in_consume").await;
    let issued = now();
    let expires = issued + Duration::minutes(5);
    issue_challenge(&pool, "Nonce0001", &alice(), issued, expires)
        .await
        .unwrap();

    let at = issued + Duration::seconds(10);
    let challenge = consume_challenge(&pool, "Nonce0001", &alice(), at)
        .await
        .unwrap();
    assert_eq!(challenge.nonce, "Nonce0001");
    assert_eq!(challenge.address, alice().as_str());
    assert_eq!(challenge.issued_at, issued);
    assert_eq!(challenge.expires_at, expires);
    assert_eq!(challenge.used_at, Some(at));

    let again = consume_challenge(&pool, "Nonce0001", &alice(), at).await;
    assert!(
        matches!(again, Err(ChallengeError::AlreadyUsed)),
        "{again:?}"
    );

    // A nonce is issued once.
    assert!(
        issue_challenge(&pool, "Nonce0001", &bob(), issued, expires)
            .await
            .is_err()
    );
    teardown(db, pool).await;
}

/// Twenty sign-ins racing on one nonce: exactly one wins, the rest are told
/// it was already used.
#[tokio::test(flavor = "multi_thread")]
async fn concurrent_consumers_have_exactly_one_winner() {
    const RACERS: usize = 20;
    let (db, pool) = setup("sign_in_race").await;
    let issued = now();
    issue_challenge(
        &pool,
        "RaceNonce42",
        &alice(),
        issued,
        issued + Duration::minutes(5),
    )
    .await
    .unwrap();

    // All start together, so the consumes overlap.
    let barrier = Arc::new(Barrier::new(RACERS));
    let tasks: Vec<_> = (0..RACERS)
        .map(|_| {
            let pool = pool.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                consume_challenge(&pool, "RaceNonce42", &alice(), now()).await
            })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => winners += 1,
            Err(ChallengeError::AlreadyUsed) => {}
            Err(other) => panic!("unexpected failure: {other:?}"),
        }
    }
    assert_eq!(winners, 1);
    teardown(db, pool).await;
}

/// Each failure names its reason, and a failed attempt consumes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn failed_consumes_say_why() {
    let (db, pool) = setup("sign_in_reasons").await;
    let issued = now();
    let expires = issued + Duration::minutes(5);
    issue_challenge(&pool, "Nonce0002", &alice(), issued, expires)
        .await
        .unwrap();

    let unknown = consume_challenge(&pool, "NeverIssued", &alice(), issued).await;
    assert!(
        matches!(unknown, Err(ChallengeError::Unknown)),
        "{unknown:?}"
    );

    let wrong = consume_challenge(&pool, "Nonce0002", &bob(), issued).await;
    assert!(
        matches!(wrong, Err(ChallengeError::WrongAddress)),
        "{wrong:?}"
    );

    // Expiry is exclusive: at `expires_at` it is over.
    let expired = consume_challenge(&pool, "Nonce0002", &alice(), expires).await;
    assert!(
        matches!(expired, Err(ChallengeError::Expired)),
        "{expired:?}"
    );

    // None of that used it up.
    consume_challenge(&pool, "Nonce0002", &alice(), expires - Duration::seconds(1))
        .await
        .unwrap();

    // Used and then expired: "already used" is the more telling answer.
    let late = consume_challenge(&pool, "Nonce0002", &alice(), expires + Duration::hours(1)).await;
    assert!(matches!(late, Err(ChallengeError::AlreadyUsed)), "{late:?}");
    teardown(db, pool).await;
}

/// Clean-up removes only what expired before the cut-off.
#[tokio::test(flavor = "multi_thread")]
async fn expired_challenges_are_deleted() {
    let (db, pool) = setup("sign_in_cleanup").await;
    let t = now();
    for (nonce, expires) in [
        ("OldNonce01", t - Duration::minutes(10)),
        ("OldNonce02", t - Duration::seconds(1)),
        ("LiveNonce1", t + Duration::minutes(5)),
    ] {
        issue_challenge(
            &pool,
            nonce,
            &alice(),
            expires - Duration::minutes(5),
            expires,
        )
        .await
        .unwrap();
    }

    assert_eq!(delete_expired_challenges(&pool, t).await.unwrap(), 2);
    assert_eq!(delete_expired_challenges(&pool, t).await.unwrap(), 0);
    let gone = consume_challenge(&pool, "OldNonce02", &alice(), t).await;
    assert!(matches!(gone, Err(ChallengeError::Unknown)), "{gone:?}");
    consume_challenge(&pool, "LiveNonce1", &alice(), t)
        .await
        .unwrap();
    teardown(db, pool).await;
}

/// A token names its owner until it expires or is revoked; the plain token
/// is never what the table holds.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_find_their_owner_until_expired_or_revoked() {
    let (db, pool) = setup("sign_in_tokens").await;
    let t = now();
    let token = [7u8; 32];
    let hash = hash_token(&token);
    assert_ne!(hash, token);
    store_token(&pool, hash, &alice(), t + Duration::hours(1))
        .await
        .unwrap();

    assert_eq!(token_owner(&pool, hash, t).await.unwrap(), Some(alice()));
    // The token itself, used as if it were a hash, signs no one in.
    assert_eq!(token_owner(&pool, token, t).await.unwrap(), None);
    assert_eq!(
        token_owner(&pool, hash_token(b"unknown"), t).await.unwrap(),
        None
    );
    // Expired at `expires_at` exactly.
    assert_eq!(
        token_owner(&pool, hash, t + Duration::hours(1))
            .await
            .unwrap(),
        None
    );

    assert!(revoke_token(&pool, hash).await.unwrap());
    assert_eq!(token_owner(&pool, hash, t).await.unwrap(), None);
    assert!(!revoke_token(&pool, hash).await.unwrap(), "already revoked");
    assert!(!revoke_token(&pool, hash_token(b"unknown")).await.unwrap());
    teardown(db, pool).await;
}

/// Signing out everywhere revokes every token of that wallet and no other's.
#[tokio::test(flavor = "multi_thread")]
async fn revoke_all_tokens_of_one_wallet() {
    let (db, pool) = setup("sign_in_revoke_all").await;
    let t = now();
    let alices: Vec<[u8; 32]> = (0..3u8).map(|n| hash_token(&[n; 32])).collect();
    for hash in &alices {
        store_token(&pool, *hash, &alice(), t + Duration::hours(1))
            .await
            .unwrap();
    }
    let bobs = hash_token(b"bob's token");
    store_token(&pool, bobs, &bob(), t + Duration::hours(1))
        .await
        .unwrap();
    // One of Alice's was revoked already: it is not counted again.
    assert!(revoke_token(&pool, alices[0]).await.unwrap());

    assert_eq!(revoke_all_tokens(&pool, &alice()).await.unwrap(), 2);
    for hash in &alices {
        assert_eq!(token_owner(&pool, *hash, t).await.unwrap(), None);
    }
    assert_eq!(token_owner(&pool, bobs, t).await.unwrap(), Some(bob()));
    assert_eq!(revoke_all_tokens(&pool, &alice()).await.unwrap(), 0);
    teardown(db, pool).await;
}

/// Audit rows are stored as given and listed newest first, up to the limit.
#[tokio::test(flavor = "multi_thread")]
async fn audit_records_and_lists_newest_first() {
    let (db, pool) = setup("audit").await;
    let first = audit::record(
        &pool,
        "admin",
        "credit.adjust",
        Some("wallet:0x00000000000000000000000000000000000a11ce"),
        serde_json::json!({"amount": 3600, "note": "refund"}),
    )
    .await
    .unwrap();
    let second = audit::record(
        &pool,
        "system",
        "deposit.reorged",
        None,
        serde_json::json!({}),
    )
    .await
    .unwrap();
    let third = audit::record(
        &pool,
        "wallet:0x0000000000000000000000000000000000000b0b",
        "auth.revoke_all",
        Some("wallet:0x0000000000000000000000000000000000000b0b"),
        serde_json::json!({"revoked": 2}),
    )
    .await
    .unwrap();

    assert_eq!(first.actor, "admin");
    assert_eq!(first.action, "credit.adjust");
    assert_eq!(first.details["amount"], 3600);
    assert_eq!(second.subject, None);
    assert!(first.id < second.id && second.id < third.id);

    let recent = audit::recent(&pool, 2).await.unwrap();
    assert_eq!(recent, vec![third.clone(), second.clone()]);
    let all = audit::recent(&pool, 100).await.unwrap();
    assert_eq!(all, vec![third, second, first]);
    assert!(audit::recent(&pool, 0).await.unwrap().is_empty());
    teardown(db, pool).await;
}
