//! The deskgate media path.
//!
//! This crate will relay a session's VNC (RFB) stream to the browser over a
//! WebSocket and serve the WebRTC desktop stream. It knows nothing of wallets or
//! billing: the gate hands it an authorised stream for one session.
//!
//! The relay arrives with the media work; until then this crate exports nothing.
