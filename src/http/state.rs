//! What the API handlers share: [`ApiState`] and the parts it holds. `app`
//! builds them once; every handler file takes `State<Arc<ApiState>>`.
//!
//! Below the handlers: this file imports only [`super::problem`] of `http/`.
//! Parts that come up later or may be off (sessions start after the
//! migrations; deposits need an RPC node) are reached through methods that
//! answer the 503 saying why, so every handler refuses them the same way.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use alloy::primitives::Address;
use axum::http::StatusCode;
use deskgate_actors::chain_watcher::Required;
use deskgate_actors::ports::SessionId;

use super::problem::Problem;
use crate::auth::SignIn;
use crate::auth::tickets::TicketBook;
use crate::config::{Config, Confirmations};
use crate::db::DbPool;
use crate::launcher::desktop::DesktopMedia;
use crate::money::chain::AlloyChain;
use crate::money::deposits::PgDepositBook;
use crate::money::ledger::PgLedger;
use crate::money::pricing::{Asset, Pricing};
use crate::money::tiers::TieredPricer;
use crate::platform::secret::Secret;
use crate::platform::turn::{IceServer, TURN_CREDENTIAL_TTL, ice_servers};
use crate::sessions::store::PgSessionStore;
use crate::sessions::tree::SessionTree;

/// What the API handlers share.
pub struct ApiState {
    /// Wallet sign-in.
    pub sign_in: SignIn,
    /// Deposit checks; `None` without an RPC node and a revenue address.
    pub deposits: Option<DepositsState>,
    /// Whether the gate serves HTTPS (the cookie is then `Secure`).
    pub https: bool,
    /// Sessions, once the actor tree runs (it starts after the migrations).
    /// Shared, so that the chain watcher, built before the tree, can tell
    /// running sessions about credited deposits.
    pub sessions: Arc<OnceLock<SessionsState>>,
    /// The price list and where to pay.
    pub offer: Offer,
    /// The database, for the audit log.
    pub pool: DbPool,
    /// The ledger, for statements and adjustments.
    pub ledger: PgLedger,
    /// `DESKGATE_ADMIN_TOKEN`; the admin API is off without it.
    pub admin_token: Option<Secret>,
    /// Outstanding media tickets.
    pub tickets: TicketBook,
    /// Serve the OpenAPI document (`DESKGATE_DOCS_ENABLED`).
    pub docs_enabled: bool,
    /// The discovered GPU hosts (`DESKGATE_LAUNCHER_DISCOVERY`), from gate
    /// start: the host routes answer before sessions are up.
    pub fleet: Option<Arc<crate::launcher::remote::fleet::Fleet>>,
    /// Media viewer counts, and the ICE servers of the WebRTC route.
    pub viewers: ViewersState,
}

impl std::fmt::Debug for ApiState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiState")
            .field("deposits", &self.deposits.is_some())
            .field("https", &self.https)
            .field("sessions", &self.sessions.get().is_some())
            .finish_non_exhaustive()
    }
}

/// Who the audit log names for actions taken with the admin token.
pub(crate) const ADMIN_ACTOR: &str = "admin";

impl ApiState {
    /// Writes an audit row for an operator's action; an action that cannot
    /// be audited is not answered as done.
    pub(crate) async fn audit_admin(
        &self,
        action: &str,
        subject: Option<&str>,
        details: serde_json::Value,
    ) -> Result<(), Problem> {
        crate::db::audit::record(&self.pool, ADMIN_ACTOR, action, subject, details)
            .await
            .map(|_| ())
            .map_err(|err| {
                tracing::error!(error = %err, action, "cannot write the audit log");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit-unavailable",
                    "The audit log cannot be written right now",
                )
                .detail("the database did not answer; try again")
            })
    }

    /// Deposit checks, or the 503 that says how to turn them on.
    pub(crate) fn deposits_state(&self) -> Result<&DepositsState, Problem> {
        self.deposits.as_ref().ok_or_else(|| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "deposits-disabled",
                "Deposits are not configured",
            )
            .detail("the gate needs DESKGATE_RPC_URL and DESKGATE_REVENUE_ADDRESS")
        })
    }

    /// The running sessions, or the 503 that says they are not up yet.
    pub(crate) fn sessions_state(&self) -> Result<&SessionsState, Problem> {
        self.sessions.get().ok_or_else(|| {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "sessions-unavailable",
                "Sessions are not available yet",
            )
            .detail(
                "the session supervisor starts once PostgreSQL and Docker answer; try again shortly",
            )
        })
    }
}

/// Everything a deposit check needs.
#[allow(missing_debug_implementations)] // its parts hold RPC and pool handles
pub struct DepositsState {
    /// The chain.
    pub chain: Arc<AlloyChain>,
    /// Recorded deposits.
    pub book: PgDepositBook,
    /// When a deposit is credited.
    pub required: Required,
    /// Prices with the wallet's discount, for quotes.
    pub pricer: Arc<TieredPricer>,
}

/// What the session and media routes need of the running sessions.
#[derive(Clone)]
pub struct SessionsState {
    /// The actor tree.
    pub tree: SessionTree,
    /// Ended sessions are read from here.
    pub store: PgSessionStore,
    /// `scheme://host[:port]` of `DESKGATE_PUBLIC_URL`: the only Origin accepted.
    pub public_origin: String,
    /// How often an open events socket reports presence.
    pub presence_every: Duration,
    /// Puts session desktops in front of browsers: the local Docker
    /// backend's, or the remote launchers'.
    pub desktops: Arc<dyn DesktopMedia>,
}

impl std::fmt::Debug for SessionsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionsState")
            .field("public_origin", &self.public_origin)
            .finish_non_exhaustive()
    }
}

/// What `/pricing` shows: the price list and where to pay.
#[derive(Clone, Debug)]
pub struct Offer {
    /// Prices and tiers.
    pub pricing: Pricing,
    /// The chain deposits are made on.
    pub chain_id: u64,
    /// A public RPC URL for wallets that do not know the chain.
    pub wallet_rpc_url: Option<url::Url>,
    /// Where deposits go; `None` when deposits are off.
    pub revenue_address: Option<Address>,
    /// The ERC-20 accepted besides ETH, if any.
    pub token_address: Option<Address>,
    /// When a deposit is credited.
    pub confirmations: Confirmations,
}

impl Offer {
    /// From the configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            pricing: Pricing::from_config(config),
            chain_id: config.chain.id,
            wallet_rpc_url: config.chain.wallet_rpc_url.clone(),
            revenue_address: config.chain.revenue_address,
            token_address: config.chain.token_address,
            confirmations: config.chain.confirmations,
        }
    }

    pub(crate) fn accepts(&self, asset: Asset) -> bool {
        match asset {
            Asset::Eth => true,
            Asset::Token => self.token_address.is_some(),
        }
    }
}

/// Most media streams (VNC and WebRTC together) open on one session: each
/// WebRTC viewer costs an encoder and copies of the desktop.
pub const MAX_VIEWERS_PER_SESSION: usize = 4;

/// What the media routes share: viewer counts, and the ICE servers of
/// WebRTC viewers (from `DESKGATE_TURN_*`).
#[derive(Debug)]
pub struct ViewersState {
    turn_urls: Vec<String>,
    turn_secret: Option<Secret>,
    viewers: Arc<Mutex<HashMap<SessionId, usize>>>,
}

/// One open media stream of a session; counted until dropped.
#[derive(Debug)]
pub(crate) struct ViewerSlot {
    viewers: Arc<Mutex<HashMap<SessionId, usize>>>,
    session: SessionId,
}

impl Drop for ViewerSlot {
    fn drop(&mut self) {
        let mut viewers = self.viewers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(open) = viewers.get_mut(&self.session) {
            *open -= 1;
            if *open == 0 {
                viewers.remove(&self.session);
            }
        }
    }
}

impl ViewersState {
    /// The WebRTC settings of `config`.
    pub fn from_config(config: &Config) -> Self {
        Self {
            turn_urls: config.media.turn_urls.clone(),
            turn_secret: config.media.turn_secret.clone(),
            viewers: Arc::default(),
        }
    }

    /// Counts a new stream of session `id`, unless it has
    /// [`MAX_VIEWERS_PER_SESSION`] open already.
    pub(crate) fn admit(&self, id: SessionId) -> Result<ViewerSlot, Problem> {
        let mut viewers = self.viewers.lock().unwrap_or_else(PoisonError::into_inner);
        let open = viewers.entry(id).or_default();
        if *open >= MAX_VIEWERS_PER_SESSION {
            metrics::counter!("deskgate_media_refused_total", "reason" => "viewers").increment(1);
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-viewers",
                "The session has as many viewers as it may",
            )
            .detail(format!(
                "a session may have {MAX_VIEWERS_PER_SESSION} media streams open; close one first"
            )));
        }
        *open += 1;
        Ok(ViewerSlot {
            viewers: self.viewers.clone(),
            session: id,
        })
    }

    /// ICE servers for one viewer of session `id`, with TURN credentials
    /// that expire on their own.
    pub fn ice_servers(&self, id: SessionId) -> Vec<IceServer> {
        ice_servers(
            &self.turn_urls,
            self.turn_secret.as_ref(),
            &id.to_string(),
            SystemTime::now(),
            TURN_CREDENTIAL_TTL,
        )
    }

    /// The same ICE servers, for the peer that serves the stream (it
    /// relays through TURN with its own short-lived credentials).
    pub(crate) fn serving_ice_servers(&self, id: SessionId) -> Vec<deskgate_media::IceServer> {
        self.ice_servers(id)
            .into_iter()
            .map(|s| deskgate_media::IceServer {
                urls: s.urls,
                username: s.username.unwrap_or_default(),
                credential: s.credential.unwrap_or_default(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;

    fn viewers_state() -> ViewersState {
        ViewersState {
            turn_urls: Vec::new(),
            turn_secret: None,
            viewers: Arc::default(),
        }
    }

    #[test]
    fn a_session_gets_at_most_four_viewers_and_a_closed_one_frees_its_place() {
        let desk = viewers_state();
        let (one, other) = (SessionId::new(), SessionId::new());
        let mut open: Vec<_> = (0..MAX_VIEWERS_PER_SESSION)
            .map(|_| desk.admit(one).expect("within the limit"))
            .collect();
        let refused = desk.admit(one).expect_err("one too many");
        assert_eq!(
            refused.into_response().status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        // Another session is counted apart.
        let _theirs = desk.admit(other).expect("another session");
        open.pop();
        let _again = desk.admit(one).expect("a closed stream frees its place");
        drop(open);
        drop(_again);
        assert!(
            !desk.viewers.lock().unwrap().contains_key(&one),
            "a session without viewers is forgotten"
        );
    }
}
