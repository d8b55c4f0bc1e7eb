//! Bounded retries for transient PostgreSQL failures.
//!
//! A transaction that PostgreSQL aborted for a serialization failure (40001)
//! or a deadlock (40P01) did nothing, so running it again is always safe. A
//! connection lost mid-transaction leaves the outcome unknown (the COMMIT may
//! have landed); running it again is safe only for work that is idempotent
//! by key, such as every ledger write. Each caller says which failures it
//! retries.

use std::future::Future;
use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use rand::Rng;

/// How often and how patiently to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Delay before the second attempt; it doubles each time after.
    pub first_delay: Duration,
    /// The delay never grows past this.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// Five attempts over at most about a second and a half: long enough to
    /// outlast a deadlock or a pool refill, short enough that a caller (a
    /// billing tick, an HTTP request) gets its answer while it still matters.
    pub const DEFAULT: Self = Self {
        attempts: 5,
        first_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(800),
    };

    /// The delay after failed attempt `attempt` (1-based), with up to 50 %
    /// random jitter so that tasks that collided do not collide again.
    fn delay_after(&self, attempt: u32) -> Duration {
        let exponential = self
            .first_delay
            .saturating_mul(1u32 << (attempt - 1).min(16))
            .min(self.max_delay);
        let jitter = rand::rng().random_range(0.5..=1.0);
        exponential.mul_f64(jitter)
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why an attempt failed, as far as retrying is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transience {
    /// PostgreSQL aborted the transaction (40001 or 40P01); nothing happened.
    Aborted,
    /// The connection broke or could not be had; the outcome is unknown.
    ConnectionLost,
    /// Anything else: retrying would give the same answer.
    Permanent,
}

impl Transience {
    /// The label used in `deskgate_db_retries_total`.
    fn label(self) -> &'static str {
        match self {
            Self::Aborted => "aborted",
            Self::ConnectionLost => "connection_lost",
            Self::Permanent => "permanent",
        }
    }
}

/// Classifies a diesel error.
pub fn classify(err: &DieselError) -> Transience {
    match err {
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
            Transience::Aborted
        }
        // diesel-async maps SQLSTATE 40P01 to `Unknown` and keeps only the
        // message; the server's messages are English unless lc_messages was
        // changed by a superuser.
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
            if info.message().starts_with("deadlock detected") =>
        {
            Transience::Aborted
        }
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
            _,
        )
        | DieselError::BrokenTransactionManager => Transience::ConnectionLost,
        // 57P01..57P03: the server is shutting down or an administrator ended
        // this backend (pg_terminate_backend); the connection is gone.
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info)
            if info.message().starts_with("terminating connection") =>
        {
            Transience::ConnectionLost
        }
        _ => Transience::Permanent,
    }
}

/// Runs `attempt` until it succeeds, fails permanently, or the policy's
/// attempts are spent; returns the last result. `transience` classifies a
/// failure; `retry_connection_loss` says whether an unknown outcome may be
/// run again. `what` names the operation in logs.
pub async fn with_retries<T, E, F, Fut>(
    policy: RetryPolicy,
    what: &'static str,
    retry_connection_loss: bool,
    transience: impl Fn(&E) -> Transience,
    mut attempt: F,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut tried = 1;
    loop {
        let err = match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) => err,
        };
        let kind = transience(&err);
        let retryable = match kind {
            Transience::Aborted => true,
            Transience::ConnectionLost => retry_connection_loss,
            Transience::Permanent => false,
        };
        if !retryable || tried >= policy.attempts {
            return Err(err);
        }
        metrics::counter!("deskgate_db_retries_total", "reason" => kind.label()).increment(1);
        let delay = policy.delay_after(tried);
        tracing::debug!(what, attempt = tried, ?delay, %err, "transient PostgreSQL failure; retrying");
        tokio::time::sleep(delay).await;
        tried += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    const FAST: RetryPolicy = RetryPolicy {
        attempts: 4,
        first_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(4),
    };

    fn serialization_failure() -> DieselError {
        DieselError::DatabaseError(
            DatabaseErrorKind::SerializationFailure,
            Box::new("could not serialize access".to_string()),
        )
    }

    fn deadlock() -> DieselError {
        DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("deadlock detected".to_string()),
        )
    }

    fn closed() -> DieselError {
        DieselError::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("connection closed".to_string()),
        )
    }

    #[test]
    fn classification_follows_sqlstate_meaning() {
        assert_eq!(classify(&serialization_failure()), Transience::Aborted);
        assert_eq!(classify(&deadlock()), Transience::Aborted);
        assert_eq!(classify(&closed()), Transience::ConnectionLost);
        let terminated = DieselError::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new("terminating connection due to administrator command".to_string()),
        );
        assert_eq!(classify(&terminated), Transience::ConnectionLost);
        assert_eq!(classify(&DieselError::NotFound), Transience::Permanent);
        let check = DieselError::DatabaseError(
            DatabaseErrorKind::CheckViolation,
            Box::new("violates check constraint".to_string()),
        );
        assert_eq!(classify(&check), Transience::Permanent);
    }

    async fn failing_then_ok(
        fail_times: u32,
        err: fn() -> DieselError,
        loss_ok: bool,
    ) -> (Result<u32, DieselError>, u32) {
        let calls = AtomicU32::new(0);
        let result = with_retries(FAST, "test", loss_ok, classify, || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= fail_times { Err(err()) } else { Ok(n) }
        })
        .await;
        (result, calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn aborted_transactions_are_retried_until_success() {
        let (result, calls) = failing_then_ok(2, deadlock, false).await;
        assert_eq!(result.unwrap(), 3);
        assert_eq!(calls, 3);
    }

    #[tokio::test]
    async fn retries_stop_after_the_policy_attempts() {
        let (result, calls) = failing_then_ok(10, serialization_failure, false).await;
        assert!(matches!(
            result,
            Err(DieselError::DatabaseError(
                DatabaseErrorKind::SerializationFailure,
                _
            ))
        ));
        assert_eq!(calls, FAST.attempts);
    }

    #[tokio::test]
    async fn connection_loss_is_retried_only_when_the_caller_allows() {
        let (result, calls) = failing_then_ok(1, closed, false).await;
        assert!(result.is_err());
        assert_eq!(calls, 1);
        let (result, calls) = failing_then_ok(1, closed, true).await;
        assert_eq!(result.unwrap(), 2);
        assert_eq!(calls, 2);
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        let policy = RetryPolicy {
            attempts: 10,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(400),
        };
        let first = policy.delay_after(1);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        let late = policy.delay_after(9);
        assert!(late >= Duration::from_millis(200) && late <= Duration::from_millis(400));
    }
}
