//! `deskgate launcher`: one GPU host's launcher service, built from its
//! configuration. At start it reads the GPU inventory, reconciles the session
//! containers a previous run left (keeps the running ones, clears the rest and
//! remembers their exits for the gate), then serves the token-guarded API of
//! [`crate::launcher::remote::service`], this host's desktops included (VNC
//! authenticated here, WebRTC video encoded here).

use std::sync::Arc;

use super::{
    AppError, Step, docker_desktops, docker_launcher, limits, log_inventory, serve_until_signal,
};
use crate::config::{Config, Role};
use crate::launcher::remote::service::{self, ExitLog, LauncherState};
use crate::platform::server::Service;

/// Runs the launcher service until a shutdown signal.
pub async fn serve(config: Config) -> Result<(), AppError> {
    let gpus = log_inventory(&config).await?;
    let token = config
        .launcher
        .token
        .clone()
        .ok_or(AppError::Missing("DESKGATE_LAUNCHER_TOKEN"))?;
    let launcher = Arc::new(docker_launcher(&config).await?);
    // A launcher killed mid-flight left containers behind: keep the running
    // ones, clear the rest, and tell the gate about their exits.
    let recovered = launcher
        .recover()
        .await
        .step("cannot reconcile session containers with Docker")?;
    tracing::info!(
        adopted = recovered.adopted.len(),
        exited = recovered.exited.len(),
        stray_networks = recovered.stray_networks,
        "session containers recovered"
    );
    launcher.keep_warm(gpus.iter().map(|g| g.index).collect());
    let exits = Arc::new(ExitLog::default());
    exits.follow(launcher.as_ref());
    for exit in &recovered.exited {
        exits.record(exit);
    }
    let desktops = Arc::new(docker_desktops(&config, launcher.clone(), Role::Launcher)?);
    let state = Arc::new(LauncherState {
        token,
        gpus: config.launcher.gpus.clone(),
        name: config.launcher.name.clone(),
        gpu_indices: gpus.iter().map(|g| g.index).collect(),
        launcher,
        exits,
        desktops,
    });
    let app = service::router(state, limits(&config));
    let service = Service {
        app,
        addr: config.launcher.bind,
        variable: "DESKGATE_LAUNCHER_BIND",
    };
    serve_until_signal(&config, service).await
}
