//! The deskgate media path: a session's desktop streamed to a browser.
//!
//! - [`rfb`]: the RFB (VNC) handshakes the relay performs itself: VNC
//!   authentication towards the desktop with the session's secret, security
//!   type None towards the browser, and framing of the browser's messages.
//! - [`relay`]: the VNC relay between a browser's WebSocket and the desktop,
//!   with bounded buffers and input counts.
//! - [`media_actor`]: the actor that runs one browser stream and closes it
//!   when the session ends.
//!
//! The crate knows nothing of wallets, billing or sessions beyond an id for
//! logs: the gate hands it an authorised browser stream and a connection to
//! the desktop.

pub mod media_actor;
pub mod relay;
pub mod rfb;

pub use media_actor::{MediaActor, MediaArgs, MediaMsg, StreamOutcome};
pub use relay::{CounterSnapshot, MediaPath, RelayEnd, RelayLimits, StreamCounters, relay_vnc};
pub use rfb::{RfbError, authenticate};
