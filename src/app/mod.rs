//! Composition: the one place that turns a [`Config`] into running parts, in
//! the manner of linkerd2-proxy's `app` crate. `main.rs` only parses the
//! command line, calls in here and maps the outcome to an exit code; tests can
//! assemble the same parts in-process.
//!
//! - [`gate`]: `deskgate serve`: database, sign-in, deposits, the session tree
//!   on the launcher backend [`crate::config::LauncherKind`] names, the HTTP API.
//! - [`launcher`]: `deskgate launcher`: one GPU host's launcher service.
//! - [`commands`]: the short commands (`migrate`, `gpus`, `config check`).
//!
//! Dependencies point down: `app` imports every other module, none imports `app`.

pub mod commands;
pub mod gate;
pub mod launcher;

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;

use crate::config::{Config, Role};
use crate::http::{self, Limits};
use crate::launcher::docker::{DockerDesktops, DockerLauncher, LauncherSettings, WebRtcSettings};
use crate::launcher::gpu;
use crate::platform::server::{self, Service};
use crate::platform::telemetry;
use deskgate_media::{EncoderChoice, VideoSettings};

/// Any error, boxed, as the sources of an [`AppError`].
type BoxError = Box<dyn StdError + Send + Sync>;

/// Why the gate or the launcher service could not be built, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A step of building or running failed; `source` says how.
    #[error("{step}")]
    Step {
        /// What was being done, for the operator ("cannot set up sign-in").
        step: &'static str,
        /// The underlying failure.
        #[source]
        source: BoxError,
    },
    /// A setting the role needs is missing (`config check` catches it first).
    #[error("{0} is not set")]
    Missing(&'static str),
    /// A part failed with an error that already says what it was doing.
    #[error(transparent)]
    Part(BoxError),
}

macro_rules! part_errors {
    ($($error:ty),* $(,)?) => {$(
        impl From<$error> for AppError {
            fn from(err: $error) -> Self {
                Self::Part(Box::new(err))
            }
        }
    )*};
}

part_errors!(
    crate::db::DbError,
    crate::launcher::gpu::InventoryError,
    crate::launcher::remote::pool::PoolError,
    crate::platform::server::ServeError,
    crate::sessions::tree::TreeError,
    deskgate_actors::ports::LaunchError,
);

/// Names the step a fallible call belongs to (like `anyhow::Context`).
trait Step<T> {
    /// On error, an [`AppError::Step`] saying what was being done.
    fn step(self, step: &'static str) -> Result<T, AppError>;
}

impl<T, E: Into<BoxError>> Step<T> for Result<T, E> {
    fn step(self, step: &'static str) -> Result<T, AppError> {
        self.map_err(|source| AppError::Step {
            step,
            source: source.into(),
        })
    }
}

/// The per-request limits every HTTP service of this process applies.
fn limits(config: &Config) -> Limits {
    Limits {
        max_body_bytes: config.limits.max_body_bytes,
        request_timeout: config.limits.request_timeout,
    }
}

/// The Prometheus scrape service and its address, when
/// `DESKGATE_METRICS_ADDR` asks for one.
fn metrics_listener(config: &Config) -> Result<Option<(SocketAddr, Router)>, AppError> {
    config
        .server
        .metrics_addr
        .map(|addr| {
            let handle =
                telemetry::install_metrics().step("cannot install the metrics recorder")?;
            Ok((addr, http::metrics_router(handle)))
        })
        .transpose()
}

/// Serves `service` (HTTPS when the configuration has a certificate, with the
/// metrics listener when it asks for one) until SIGTERM or SIGINT.
async fn serve_until_signal(config: &Config, service: Service) -> Result<(), AppError> {
    let options = server::ServeOptions {
        tls: config.server.tls.as_ref(),
        metrics: metrics_listener(config)?,
        grace: config.server.shutdown_grace,
        limits: &config.limits.connections,
        uncapped_peers: &config.server.trusted_proxies,
    };
    server::run(service, options).await?;
    Ok(())
}

/// Reads the GPU inventory once and logs it; fails when it cannot be read.
async fn log_inventory(config: &Config) -> Result<Vec<gpu::GpuInfo>, AppError> {
    let gpus = gpu::read_inventory(&config.launcher.gpus).await?;
    tracing::info!(count = gpus.len(), selection = %config.launcher.gpus, fake = gpus.iter().any(|g| g.fake), "GPU inventory");
    Ok(gpus)
}

/// The desktops of the local Docker `launcher`, served in this process with
/// the WebRTC settings of `config` for `role`. Says which video encoder
/// viewers will get; an NVENC asked for by name but not usable here is
/// refused now rather than at every viewer.
fn docker_desktops(
    config: &Config,
    launcher: Arc<DockerLauncher>,
    role: Role,
) -> Result<DockerDesktops, AppError> {
    let nvenc = deskgate_media::h264::nvenc_available();
    if config.media.encoder == EncoderChoice::H264Nvenc && !nvenc {
        return Err(AppError::Part(
            "DESKGATE_WEBRTC_ENCODER=h264-nvenc, but NVENC cannot open on this host \
             (no NVIDIA GPU, driver or libnvidia-encode); use auto or vp8"
                .into(),
        ));
    }
    tracing::info!(
        encoder = %config.media.encoder,
        nvenc,
        udp_ip = %config.media.udp_ip(role),
        "desktops served here; video encoded on this host"
    );
    let webrtc = WebRtcSettings {
        udp_ip: config.media.udp_ip(role),
        public_ips: config.media.public_ips.clone(),
        video: VideoSettings {
            bitrate_bps: config.media.bitrate_bps,
            max_bitrate_bps: config.media.max_bitrate_bps,
            max_fps: config.media.max_fps,
            encoder: config.media.encoder,
            ..VideoSettings::default()
        },
    };
    Ok(DockerDesktops::new(launcher, webrtc))
}

/// The local Docker launcher with the session settings of `config`, once the
/// engine answers.
async fn docker_launcher(config: &Config) -> Result<DockerLauncher, AppError> {
    let docker = crate::launcher::docker::connect()
        .await
        .step("cannot set up the Docker client (check DOCKER_HOST)")?;
    docker
        .ping()
        .await
        .step("Docker does not answer (is dockerd running? check DOCKER_HOST)")?;
    let settings = LauncherSettings::from_config(config, |name| std::env::var(name).ok());
    Ok(DockerLauncher::new(docker, settings)?)
}
