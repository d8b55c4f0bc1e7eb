//! Exponential backoff for reconnect and retry loops: the delay doubles after
//! each failure up to a ceiling, and goes back to the start after a success.
//! Every loop that waits on a dependency (Docker's event stream, a launcher's
//! events socket, PostgreSQL at start) uses this one, so they all back off
//! the same way and none spins.

use std::time::Duration;

/// The delays of one retry loop.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    ceiling: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial` and doubles up to `ceiling`.
    pub fn new(initial: Duration, ceiling: Duration) -> Self {
        Self {
            initial,
            ceiling,
            next: initial,
        }
    }

    /// How long to wait now; the next call waits twice as long, up to the
    /// ceiling.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.ceiling);
        delay
    }

    /// The delay the next failure will wait, without advancing.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// A success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_ceiling_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let delays: Vec<u128> = (0..5).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 400, 500, 500]);
        assert_eq!(backoff.peek(), Duration::from_millis(500));
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }
}
