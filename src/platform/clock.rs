//! Unix time, in one place: the launcher's exit log, the exit watchers'
//! resume points and TURN credential expiries all count from the epoch.
//!
//! A clock set before 1970 reads as the epoch itself rather than failing:
//! every user treats the value as "no earlier than", so zero is safe.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch at `at` (zero before it).
pub fn since_epoch(at: SystemTime) -> Duration {
    at.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_millis() -> u64 {
    u64::try_from(since_epoch(SystemTime::now()).as_millis()).unwrap_or(u64::MAX)
}

/// Whole seconds since the Unix epoch, now.
pub fn unix_seconds() -> u64 {
    since_epoch(SystemTime::now()).as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_before_the_epoch_reads_as_the_epoch() {
        assert_eq!(
            since_epoch(UNIX_EPOCH - Duration::from_secs(5)),
            Duration::ZERO
        );
        assert_eq!(
            since_epoch(UNIX_EPOCH + Duration::from_millis(1500)),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn seconds_and_millis_agree() {
        let ms = unix_millis();
        let s = unix_seconds();
        assert!(s.abs_diff(ms / 1000) <= 1, "{s} s against {ms} ms");
    }
}
