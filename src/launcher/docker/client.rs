//! Connecting to the Docker Engine.

use bollard::Docker;

/// Connects with the usual defaults (`DOCKER_HOST`, else the local socket)
/// and agrees on an API version with the engine, so that older engines
/// (Debian's docker.io speaks API 1.41) are driven correctly. When the engine
/// is down the client is still returned, unnegotiated: `/readyz` reports the
/// engine as down until it answers.
pub async fn connect() -> Result<Docker, bollard::errors::Error> {
    let docker = Docker::connect_with_defaults()?;
    match docker.clone().negotiate_version().await {
        Ok(negotiated) => Ok(negotiated),
        Err(err) => {
            tracing::warn!(%err, "Docker Engine did not answer the version check; will keep trying via /readyz");
            Ok(docker)
        }
    }
}
