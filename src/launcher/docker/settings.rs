//! How the Docker backend builds a session container: image, user, limits,
//! the environment passed in, GPUs. [`LauncherSettings::validate`] refuses a
//! root user, reserved environment names and malformed digests, so a
//! [`super::DockerLauncher`] is never built on weak settings.

use std::time::Duration;

use deskgate_actors::ports::LaunchError;

/// Environment names the launcher sets itself; extras may not use them.
const RESERVED_ENV: [&str; 3] = [
    "DESKGATE_SESSION_ID",
    "DESKGATE_VNC_PASSWORD",
    "DESKGATE_GPUS",
];

/// Bytes of randomness in a VNC secret (sent as 64 lower-case hex digits).
pub(super) const VNC_SECRET_BYTES: usize = 32;

/// How a session container is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LauncherSettings {
    /// Image reference (`repo:tag`).
    pub image: String,
    /// `sha256:<64 hex>`: when set the container runs `image@digest`.
    pub image_digest: Option<String>,
    /// Command; `None` runs the image's default.
    pub command: Option<Vec<String>>,
    /// `uid:gid` the desktop runs as; never root.
    pub user: String,
    /// Memory limit in bytes.
    pub memory_bytes: i64,
    /// CPU limit in billionths of a CPU.
    pub nano_cpus: i64,
    /// Most processes at once.
    pub pids_limit: i64,
    /// Size of the `/tmp` tmpfs in bytes.
    pub tmp_size_bytes: u64,
    /// Size of the `/home` tmpfs in bytes.
    pub home_size_bytes: u64,
    /// Extra environment the operator allows into every session container.
    pub extra_env: Vec<(String, String)>,
    /// How long a stop waits after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// Whether the host has the NVIDIA container runtime: only then are GPUs
    /// passed as device requests (labels and `DESKGATE_GPUS` are set anyway).
    pub gpu_runtime: bool,
    /// The host number this launcher manages (`DESKGATE_LAUNCHER_HOST`):
    /// when set it sees only containers labelled `deskgate.host=<n>` and
    /// launches only for that host; `None` manages every session container
    /// on the daemon. See the module docs.
    pub host: Option<u16>,
    /// This host's stable name (`DESKGATE_LAUNCHER_NAME`): every container
    /// and network it makes is labelled `deskgate.host.name=<name>` too, so
    /// an operator reading `docker ps` on any host knows which it is.
    pub host_name: Option<String>,
    /// Warm desktops to keep started on free GPUs, one GPU each
    /// (`DESKGATE_WARM_DESKTOPS`; see `warm/mod.rs`); 0 keeps none.
    pub warm_desktops: usize,
}

impl LauncherSettings {
    /// Defaults for `image`: user 1000:1000, 4 GiB, 2 CPUs, 512 processes,
    /// 256 MiB `/tmp`, 512 MiB `/home`, 10 s grace, GPUs passed through.
    pub fn new(image: impl Into<String>) -> Self {
        Self {
            image: image.into(),
            image_digest: None,
            command: None,
            user: "1000:1000".into(),
            memory_bytes: 4 << 30,
            nano_cpus: 2_000_000_000,
            pids_limit: 512,
            tmp_size_bytes: 256 << 20,
            home_size_bytes: 512 << 20,
            extra_env: Vec::new(),
            stop_grace: Duration::from_secs(10),
            gpu_runtime: true,
            host: None,
            host_name: None,
            warm_desktops: 0,
        }
    }

    /// The settings `config` describes. Allowlisted environment variables
    /// take their values from `lookup` (the process environment); names it
    /// does not know are left out.
    pub fn from_config(
        config: &crate::config::Config,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Self {
        let (image, image_digest) = match config.launcher.session_image.split_once('@') {
            Some((repo, digest)) => (repo.to_string(), Some(digest.to_string())),
            None => (config.launcher.session_image.clone(), None),
        };
        Self {
            image,
            image_digest,
            memory_bytes: config.launcher.session_memory_bytes,
            nano_cpus: config.launcher.session_nano_cpus,
            pids_limit: config.launcher.session_pids_limit,
            extra_env: config
                .launcher
                .session_env_allowlist
                .iter()
                .filter_map(|name| Some((name.clone(), lookup(name)?)))
                .collect(),
            stop_grace: config.launcher.session_stop_grace,
            // Virtual GPUs have no device to pass through.
            gpu_runtime: !matches!(config.launcher.gpus, crate::config::GpuSelection::Fake(_)),
            host: config.launcher.host,
            host_name: config.launcher.name.clone(),
            warm_desktops: config.launcher.warm_desktops,
            ..Self::new("")
        }
    }

    /// Refuses settings that would weaken the container.
    pub fn validate(&self) -> Result<(), LaunchError> {
        let bad = |what: String| Err(LaunchError(format!("invalid launcher settings: {what}")));
        if self.image.trim().is_empty() {
            return bad("the session image is empty".into());
        }
        if let Some(digest) = &self.image_digest {
            let hex = digest.strip_prefix("sha256:").unwrap_or("");
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return bad("the image digest must be sha256:<64 hex digits>".into());
            }
        }
        let uid = self.user.split(':').next().unwrap_or("").trim();
        if uid.is_empty() || uid == "root" || uid.parse::<u64>() == Ok(0) {
            return bad(format!(
                "user {:?} is root or empty; use uid:gid",
                self.user
            ));
        }
        if self.memory_bytes <= 0 || self.nano_cpus <= 0 || self.pids_limit <= 0 {
            return bad("memory, CPU and pids limits must be positive".into());
        }
        if self.tmp_size_bytes == 0 || self.home_size_bytes == 0 {
            return bad("tmpfs sizes must be positive".into());
        }
        for (name, value) in &self.extra_env {
            let valid = !name.is_empty()
                && !name.as_bytes()[0].is_ascii_digit()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return bad(format!(
                    "extra environment name {name:?} is not a valid name"
                ));
            }
            if RESERVED_ENV.contains(&name.as_str()) {
                return bad(format!(
                    "extra environment name {name} is set by the launcher"
                ));
            }
            if value.contains('\0') {
                return bad(format!("extra environment {name} contains a NUL byte"));
            }
        }
        Ok(())
    }

    /// The reference the container is created from.
    pub fn image_ref(&self) -> String {
        match &self.image_digest {
            Some(digest) => {
                let repo = self.image.split('@').next().unwrap_or(&self.image);
                format!("{repo}@{digest}")
            }
            None => self.image.clone(),
        }
    }
}
