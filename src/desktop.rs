//! How the gate reaches a session's desktop: a byte stream to its VNC server
//! and the session's VNC secret, for the media relay ([`deskgate_media`]).
//!
//! Session containers sit on networks the host cannot route into (see
//! [`crate::docker_launcher`]), so [`DockerExecDialer`] does not connect over
//! the network: it runs the desktop image's bridge command,
//! [`DESKTOP_VNC_BRIDGE`], inside the container through Docker's exec API and
//! relays the VNC server's loopback port over the exec's stdin and stdout.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use deskgate_actors::ports::SessionId;
use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::io::StreamReader;

use crate::docker_launcher::{DockerLauncher, container_name};
use crate::secret::Secret;

/// The command, run inside a session container, whose stdin and stdout are
/// the desktop's VNC server (the desktop image's contract: its VNC server
/// listens on 127.0.0.1:5900 and the image has a `nc`).
pub const DESKTOP_VNC_BRIDGE: [&str; 3] = ["nc", "127.0.0.1", "5900"];

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

/// Reaches desktops of the local [`DockerLauncher`] through `docker exec`.
#[derive(Clone, Debug)]
pub struct DockerExecDialer {
    launcher: Arc<DockerLauncher>,
}

impl DockerExecDialer {
    /// A dialer for the sessions `launcher` launched or adopted.
    pub fn new(launcher: Arc<DockerLauncher>) -> Self {
        Self { launcher }
    }

    fn docker(&self) -> &Docker {
        self.launcher.docker()
    }
}

#[async_trait]
impl DesktopDialer for DockerExecDialer {
    async fn dial(&self, session: SessionId) -> Result<DesktopConnection, DesktopError> {
        let secret = self
            .launcher
            .vnc_secret(session)
            .ok_or(DesktopError::Unknown)?;
        let unreachable = |what: &str, err: bollard::errors::Error| {
            DesktopError::Unreachable(format!("{what}: {err}"))
        };
        let exec = self
            .docker()
            .create_exec(
                &container_name(session),
                CreateExecOptions {
                    attach_stdin: Some(true),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    cmd: Some(DESKTOP_VNC_BRIDGE.to_vec()),
                    user: Some(self.launcher.settings().user.as_str()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| unreachable("creating the VNC bridge", e))?;
        let started = self
            .docker()
            .start_exec(
                &exec.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(64 * 1024),
                }),
            )
            .await
            .map_err(|e| unreachable("starting the VNC bridge", e))?;
        let StartExecResults::Attached { output, input } = started else {
            return Err(DesktopError::Unreachable(
                "Docker started the VNC bridge detached".into(),
            ));
        };
        let session_label = session.to_string();
        let stdout = output.filter_map(move |item| {
            let chunk = match item {
                Ok(LogOutput::StdOut { message }) => Some(Ok(message)),
                Ok(LogOutput::StdErr { message }) => {
                    tracing::warn!(
                        session = %session_label,
                        stderr = %String::from_utf8_lossy(&message).trim(),
                        "the desktop's VNC bridge wrote an error"
                    );
                    None
                }
                Ok(_) => None,
                Err(err) => Some(Err(io::Error::other(err))),
            };
            futures::future::ready(chunk)
        });
        Ok(DesktopConnection {
            stream: Box::pin(tokio::io::join(StreamReader::new(stdout), input)),
            secret,
        })
    }
}
