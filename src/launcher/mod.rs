//! Where desktops run. A launcher backend starts, stops and watches session
//! containers (the [`Launcher`] port of `deskgate-actors`) and, where it can,
//! opens a byte stream to a session's desktop (the [`desktop::DesktopDialer`]
//! port). The gate uses exactly one backend, chosen once from the
//! configuration by [`crate::config::LauncherKind`] in [`crate::app`]:
//!
//! - [`docker`]: the local Docker Engine, one hardened container and one
//!   isolated network per session; it also dials desktops (`docker exec`).
//! - [`remote`]: `deskgate launcher` services on GPU hosts, reached over a
//!   token-guarded HTTP API; the same crate serves that API.
//! - [`simulated`]: starts nothing (benchmarks of the queue and API); refused
//!   with TLS on.
//!
//! [`gpu`] is the host's GPU inventory (NVML, an index list or `fake:N`), read
//! by whichever process owns the GPUs: the gate with the Docker backend, each
//! `deskgate launcher` with the remote one.
//!
//! Adding a backend: a folder here implementing [`Launcher`] (and
//! [`desktop::DesktopDialer`] if it can reach desktops), a variant of
//! `LauncherKind`, and one arm in `app::gate`'s backend match.

pub use deskgate_actors::ports::Launcher;

pub mod desktop;
pub mod docker;
pub mod gpu;
pub mod remote;
pub mod simulated;
