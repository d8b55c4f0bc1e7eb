//! What the fleet ([`super::Fleet`]) talks to and shows: the tree it
//! drives ([`GpuPoolControl`], which the gate implements on its
//! `SessionTree`), how it finds launchers ([`Resolver`]), and a host as the
//! operator sees it ([`HostView`]).
//!
//! Invariants: a host's name is what `DESKGATE_LAUNCHER_NAME` accepts
//! ([`crate::config::is_host_name`]); a [`HostState`] is one of a closed set (it is a
//! metric label).

use std::net::SocketAddr;

use async_trait::async_trait;
use deskgate_actors::ports::{GpuAddr, SessionId};
use deskgate_actors::protocol::JoiningGpu;

use crate::config::DnsTarget;
use crate::launcher::gpu::GpuInfo;

/// What the fleet drives in the session tree (the gate implements it on
/// its `SessionTree`).
#[async_trait]
pub trait GpuPoolControl: Send + Sync {
    /// GPUs that joined, each in the state it joins in; known ones are
    /// skipped.
    fn add_gpus(&self, gpus: Vec<JoiningGpu>);
    /// A host is out (`out`: no new leases on `gpus`) or back.
    fn set_host_out(&self, gpus: Vec<GpuAddr>, out: bool);
    /// `gpu` turned unhealthy (`Some(reason)`) or healthy.
    fn set_health(&self, gpu: GpuAddr, unhealthy: Option<String>);
    /// Ends `session` as an operator would; false if it was not live.
    async fn end_session(&self, session: SessionId) -> bool;
}

/// Finds the launchers' addresses.
#[async_trait]
pub trait Resolver: Send + Sync {
    /// Every launcher's address now; empty when there is none.
    async fn resolve(&self) -> Result<Vec<SocketAddr>, String>;
}

/// The DNS resolver of `dns:NAME:PORT`, through the system's resolver
/// (in a Swarm task, Docker's embedded DNS).
#[derive(Debug)]
pub struct DnsResolver(pub DnsTarget);

#[async_trait]
impl Resolver for DnsResolver {
    async fn resolve(&self) -> Result<Vec<SocketAddr>, String> {
        match tokio::net::lookup_host((self.0.name.as_str(), self.0.port)).await {
            Ok(addrs) => {
                let mut addrs: Vec<SocketAddr> = addrs.collect();
                addrs.sort_unstable();
                addrs.dedup();
                Ok(addrs)
            }
            Err(err) => Err(format!("cannot resolve {}: {err}", self.0)),
        }
    }
}

/// Whether a host's launcher answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    /// It answered within the last rounds.
    Up,
    /// It answered before and has stopped answering.
    Unreachable,
    /// Met by an earlier run of the gate; not answered since this one
    /// started.
    Missing,
}

/// One host as the operator sees it (`GET /admin/hosts`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct HostView {
    /// Its host number.
    pub number: u16,
    /// Its launcher's name.
    pub name: String,
    /// Where its launcher answered last.
    pub url: Option<String>,
    /// Whether it answers.
    pub state: HostState,
    /// An operator stopped new leases on it.
    pub drained: bool,
    /// Its GPUs as its launcher last listed them.
    pub gpus: Vec<GpuInfo>,
    /// When its launcher last answered (this run of the gate).
    pub last_contact: Option<chrono::DateTime<chrono::Utc>>,
}
