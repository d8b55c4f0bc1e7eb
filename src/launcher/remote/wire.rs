//! What a gate and a `deskgate launcher` say to each other, as JSON: the
//! launch request and its answer, a running container, an exit event. Both
//! sides use these types, so a field renamed on one side is renamed on both;
//! requests deny unknown fields (see [`super::service`] for why).

use deskgate_actors::ports::{ContainerExit, SessionId};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a gate asks the launcher to run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    /// The session.
    pub session: Uuid,
    /// The host number the gate knows this launcher by (recorded in labels).
    pub host: u16,
    /// Device indices on this host.
    pub gpu_indices: Vec<u32>,
}

/// The answer to a launch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchResponse {
    /// The running container's id.
    pub container_id: String,
}

/// One running session container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerView {
    /// Its session.
    pub session: Uuid,
    /// Container id.
    pub container_id: String,
    /// Host number from its labels.
    pub host: u16,
}

/// A container that ended by itself, as sent on `/v1/events`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitEvent {
    /// Its session.
    pub session: Uuid,
    /// Exit code (-1 when unknown).
    pub code: i64,
    /// Killed for memory.
    pub oom: bool,
    /// When the launcher saw it, in Unix milliseconds.
    pub at_ms: u64,
}

impl ExitEvent {
    /// The port's view of it.
    pub fn to_exit(&self) -> ContainerExit {
        ContainerExit {
            session: SessionId(self.session),
            code: self.code,
            oom: self.oom,
        }
    }
}
