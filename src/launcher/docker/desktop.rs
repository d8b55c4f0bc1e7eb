//! The Docker backend's [`DesktopDialer`]: session containers sit on networks
//! the host cannot route into (see [`crate::launcher::docker`]), so
//! [`DockerExecDialer`] does not connect over the network: it runs the desktop
//! image's bridge command, [`DESKTOP_VNC_BRIDGE`], inside the container through
//! Docker's exec API and relays the VNC server's loopback port over the exec's
//! stdin and stdout.

use std::io;
use std::sync::Arc;

use async_trait::async_trait;
use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use deskgate_actors::ports::SessionId;
use futures::StreamExt;
use tokio_util::io::StreamReader;

use super::{DockerLauncher, container_name};
use crate::launcher::desktop::{DesktopConnection, DesktopDialer, DesktopError};

/// The command, run inside a session container, whose stdin and stdout are
/// the desktop's VNC server (the desktop image's contract: its VNC server
/// listens on 127.0.0.1:5900 and the image has a `nc`).
pub const DESKTOP_VNC_BRIDGE: [&str; 3] = ["nc", "127.0.0.1", "5900"];

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
