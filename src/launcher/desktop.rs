//! The desktop port: how the gate reaches a session's desktop, as a byte
//! stream to its VNC server plus the session's VNC secret, for the media relay
//! ([`deskgate_media`]). Each launcher backend that can reach its desktops
//! implements [`DesktopDialer`] (the Docker one:
//! [`crate::launcher::docker::DockerExecDialer`]).
//!
//! Invariant: the secret is handed only to the relay, which answers the VNC
//! server's challenge itself; it never reaches a browser.

use std::pin::Pin;

use async_trait::async_trait;
use deskgate_actors::ports::SessionId;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::platform::secret::Secret;

/// A byte stream to a desktop's VNC server.
pub trait DesktopIo: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> DesktopIo for T {}

/// A connection to a desktop, with the secret its VNC server expects.
pub struct DesktopConnection {
    /// The VNC server's bytes.
    pub stream: Pin<Box<dyn DesktopIo>>,
    /// The session's VNC secret.
    pub secret: Secret,
}

impl std::fmt::Debug for DesktopConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DesktopConnection").finish_non_exhaustive()
    }
}

/// Why a desktop could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum DesktopError {
    /// This gate does not hold the session's desktop (or its secret).
    #[error("no desktop is known for this session")]
    Unknown,
    /// The container or its VNC server did not answer.
    #[error("the desktop could not be reached: {0}")]
    Unreachable(String),
}

/// Opens connections to session desktops (a port; see the module docs).
#[async_trait]
pub trait DesktopDialer: Send + Sync + 'static {
    /// A fresh byte stream to the session's VNC server.
    async fn dial(&self, session: SessionId) -> Result<DesktopConnection, DesktopError>;
}
