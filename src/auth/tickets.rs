//! Single-use media tickets (DESIGN §6): a signed-in owner asks for one with
//! `POST /api/v1/sessions/{id}/tickets`, then hands it to the media socket
//! (`?ticket=` on the VNC WebSocket, or the WebRTC offer). Browsers cannot
//! put a bearer header on a WebSocket, and a cookie would ride along on a
//! cross-site socket; a ticket is bound to one session and one purpose,
//! lives 30 seconds and works once.
//!
//! Tickets live in memory only: the media socket they open is served by this
//! same process, and a restart (which drops them) also drops every socket.
//! Only the SHA-256 of a ticket is kept, so the map is no list of live
//! credentials.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deskgate_actors::ports::{SessionId, WalletId};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::platform::secret::Secret;

/// How long a ticket may wait before it is redeemed.
pub const TICKET_LIFE: Duration = Duration::from_secs(30);

/// Tickets held at most. Each is 30 s old at most, so this bounds what a
/// client issuing in a loop can make the gate keep.
pub const MAX_TICKETS: usize = 65_536;

const TICKET_BYTES: usize = 32;

/// What a ticket opens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// The noVNC WebSocket.
    Vnc,
    /// The WebRTC offer.
    Webrtc,
}

/// Why a ticket was not accepted. The media routes answer all of these the
/// same way, so a caller learns nothing about other sessions' tickets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    /// Never issued, already used, or forgotten.
    #[error("the ticket is unknown or already used")]
    Unknown,
    /// Issued more than [`TICKET_LIFE`] ago.
    #[error("the ticket has expired")]
    Expired,
    /// Issued for another session or purpose.
    #[error("the ticket is for another session or purpose")]
    Mismatch,
    /// Too many tickets are outstanding.
    #[error("too many tickets are outstanding; try again in a few seconds")]
    Full,
}

/// A ticket just issued.
#[derive(Debug)]
pub struct IssuedTicket {
    /// The ticket itself, shown to its owner once.
    pub ticket: Secret,
    /// When it stops being accepted.
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Clone, Debug)]
struct Held {
    session: SessionId,
    wallet: WalletId,
    purpose: Purpose,
    expires: Instant,
}

/// The outstanding tickets.
#[derive(Clone, Debug, Default)]
pub struct TicketBook {
    held: Arc<Mutex<HashMap<[u8; 32], Held>>>,
}

fn digest(ticket: &str) -> [u8; 32] {
    Sha256::digest(ticket.as_bytes()).into()
}

impl TicketBook {
    /// An empty book.
    pub fn new() -> Self {
        Self::default()
    }

    /// Issues a ticket for `wallet`'s `session`, for `purpose`.
    pub fn issue(
        &self,
        session: SessionId,
        wallet: WalletId,
        purpose: Purpose,
    ) -> Result<IssuedTicket, TicketError> {
        self.issue_at(session, wallet, purpose, Instant::now())
    }

    fn issue_at(
        &self,
        session: SessionId,
        wallet: WalletId,
        purpose: Purpose,
        now: Instant,
    ) -> Result<IssuedTicket, TicketError> {
        let mut raw = [0u8; TICKET_BYTES];
        rand::rng().fill(&mut raw);
        let ticket = alloy::hex::encode(raw);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        if held.len() >= MAX_TICKETS {
            held.retain(|_, t| t.expires > now);
            if held.len() >= MAX_TICKETS {
                return Err(TicketError::Full);
            }
        }
        held.insert(
            digest(&ticket),
            Held {
                session,
                wallet,
                purpose,
                expires: now + TICKET_LIFE,
            },
        );
        let life = chrono::TimeDelta::from_std(TICKET_LIFE).unwrap_or_default();
        Ok(IssuedTicket {
            ticket: Secret::new(ticket),
            expires_at: chrono::Utc::now() + life,
        })
    }

    /// Redeems `ticket` for `session` and `purpose`: the wallet it was
    /// issued to. Any attempt uses the ticket up, right or wrong, so a
    /// leaked ticket that was tried once is worth nothing.
    pub fn redeem(
        &self,
        ticket: &str,
        session: SessionId,
        purpose: Purpose,
    ) -> Result<WalletId, TicketError> {
        self.redeem_at(ticket, session, purpose, Instant::now())
    }

    fn redeem_at(
        &self,
        ticket: &str,
        session: SessionId,
        purpose: Purpose,
        now: Instant,
    ) -> Result<WalletId, TicketError> {
        // Looking up by SHA-256 is the constant-time compare: the map is
        // keyed by a digest the caller cannot steer byte by byte.
        let held = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&digest(ticket))
            .ok_or(TicketError::Unknown)?;
        if held.expires <= now {
            return Err(TicketError::Expired);
        }
        if held.session != session || held.purpose != purpose {
            return Err(TicketError::Mismatch);
        }
        Ok(held.wallet)
    }

    /// Tickets outstanding (some may have expired).
    pub fn len(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none is outstanding.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn session() -> SessionId {
        SessionId(Uuid::new_v4())
    }

    fn wallet() -> WalletId {
        WalletId::new("0x00000000000000000000000000000000000000aa")
    }

    #[test]
    fn a_ticket_opens_its_session_once() {
        let book = TicketBook::new();
        let id = session();
        let issued = book.issue(id, wallet(), Purpose::Vnc).unwrap();
        assert_eq!(issued.ticket.expose().len(), 64);
        assert_eq!(
            book.redeem(issued.ticket.expose(), id, Purpose::Vnc),
            Ok(wallet())
        );
        assert_eq!(
            book.redeem(issued.ticket.expose(), id, Purpose::Vnc),
            Err(TicketError::Unknown)
        );
        assert!(book.is_empty());
    }

    #[test]
    fn a_ticket_for_another_session_or_purpose_is_refused_and_used_up() {
        let book = TicketBook::new();
        let id = session();
        let issued = book.issue(id, wallet(), Purpose::Vnc).unwrap();
        assert_eq!(
            book.redeem(issued.ticket.expose(), session(), Purpose::Vnc),
            Err(TicketError::Mismatch)
        );
        assert_eq!(
            book.redeem(issued.ticket.expose(), id, Purpose::Vnc),
            Err(TicketError::Unknown)
        );
        let issued = book.issue(id, wallet(), Purpose::Vnc).unwrap();
        assert_eq!(
            book.redeem(issued.ticket.expose(), id, Purpose::Webrtc),
            Err(TicketError::Mismatch)
        );
    }

    #[test]
    fn a_ticket_expires_after_its_life() {
        let book = TicketBook::new();
        let id = session();
        let start = Instant::now();
        let issued = book.issue_at(id, wallet(), Purpose::Vnc, start).unwrap();
        assert_eq!(
            book.redeem_at(
                issued.ticket.expose(),
                id,
                Purpose::Vnc,
                start + TICKET_LIFE
            ),
            Err(TicketError::Expired)
        );
        let issued = book.issue_at(id, wallet(), Purpose::Vnc, start).unwrap();
        assert_eq!(
            book.redeem_at(
                issued.ticket.expose(),
                id,
                Purpose::Vnc,
                start + TICKET_LIFE - Duration::from_millis(1)
            ),
            Ok(wallet())
        );
    }

    #[test]
    fn made_up_tickets_are_unknown() {
        let book = TicketBook::new();
        book.issue(session(), wallet(), Purpose::Vnc).unwrap();
        assert_eq!(
            book.redeem("", session(), Purpose::Vnc),
            Err(TicketError::Unknown)
        );
        assert_eq!(
            book.redeem(&"0".repeat(64), session(), Purpose::Vnc),
            Err(TicketError::Unknown)
        );
    }

    #[test]
    fn a_full_book_drops_expired_tickets_before_refusing() {
        let book = TicketBook::new();
        let start = Instant::now();
        for _ in 0..MAX_TICKETS {
            book.issue_at(session(), wallet(), Purpose::Vnc, start)
                .unwrap();
        }
        assert_eq!(
            book.issue_at(session(), wallet(), Purpose::Vnc, start)
                .unwrap_err(),
            TicketError::Full
        );
        let later = start + TICKET_LIFE;
        assert!(
            book.issue_at(session(), wallet(), Purpose::Vnc, later)
                .is_ok()
        );
        assert_eq!(book.len(), 1);
    }
}
