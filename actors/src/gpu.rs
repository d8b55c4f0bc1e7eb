//! `GpuActor`: one per physical GPU, granting exclusive, fenced leases.
//!
//! A GPU is leased to at most one session at a time. Every grant (a
//! [`Lease`], defined in [`crate::protocol`]) carries a process-wide unique `lease_id` and a per-GPU `epoch` that grows on every
//! grant; a release must present both, so a late or replayed release from a
//! session that already lost the GPU can never free it under its next holder.

use std::sync::atomic::{AtomicU64, Ordering};

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::ports::{GpuAddr, SessionId};
use crate::protocol::{Lease, LeaseError};

/// Source of lease ids. Process-wide rather than per actor because a
/// restarted `GpuActor` starts its epoch over: the id alone still tells a
/// lease from before the restart apart from every later one.
static NEXT_LEASE_ID: AtomicU64 = AtomicU64::new(1);

/// What a GPU is doing, as seen from outside.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuStatus {
    /// Free, healthy and open to leases.
    Free,
    /// Leased, healthy and not draining.
    Leased(Lease),
    /// Draining (and healthy); the lease granted before the drain, if still held.
    Draining {
        /// The lease still held.
        lease: Option<Lease>,
    },
    /// Unhealthy (whether draining or not); the lease still held, if any.
    Unhealthy {
        /// What is wrong.
        reason: String,
        /// The lease still held.
        lease: Option<Lease>,
    },
}

/// Messages to a [`GpuActor`].
#[derive(Debug)]
pub enum GpuMsg {
    /// Asks for an exclusive lease for `session`; granted only when free, healthy and not draining.
    Lease {
        /// The session that would hold it.
        session: SessionId,
        /// The lease, or why not.
        reply: RpcReplyPort<Result<Lease, LeaseError>>,
    },
    /// Gives a lease back; frees the GPU only if both lease id and epoch are the current ones.
    Release {
        /// The lease being given back.
        lease: Lease,
        /// Whether it freed the GPU (`false` for a stale lease); `None` to not be told.
        reply: Option<RpcReplyPort<bool>>,
    },
    /// Marks the GPU unhealthy with a reason, or healthy again with `None`.
    SetHealth {
        /// Why it is unhealthy; `None` once it is healthy.
        unhealthy: Option<String>,
    },
    /// Starts (`true`) or ends (`false`) draining: no new leases, the current one stays.
    Drain {
        /// Whether to drain.
        on: bool,
    },
    /// Asks for the GPU's status.
    Status {
        /// The status.
        reply: RpcReplyPort<GpuStatus>,
    },
}

/// The actor that owns one GPU's lease state.
#[derive(Debug, Default)]
pub struct GpuActor;

/// A [`GpuActor`]'s state. The outward [`GpuStatus`] is derived from these
/// independent fields, so a lease survives its GPU turning unhealthy or
/// draining, and releasing it leaves the GPU unhealthy or draining.
#[derive(Debug)]
pub struct GpuState {
    addr: GpuAddr,
    lease: Option<Lease>,
    /// Grants so far; the next lease's epoch is one more.
    epoch: u64,
    draining: bool,
    unhealthy: Option<String>,
}

impl GpuState {
    fn new(addr: GpuAddr) -> Self {
        Self {
            addr,
            lease: None,
            epoch: 0,
            draining: false,
            unhealthy: None,
        }
    }

    fn status(&self) -> GpuStatus {
        // Unhealthy outranks draining: it is the more urgent thing to show.
        if let Some(reason) = &self.unhealthy {
            GpuStatus::Unhealthy {
                reason: reason.clone(),
                lease: self.lease,
            }
        } else if self.draining {
            GpuStatus::Draining { lease: self.lease }
        } else if let Some(lease) = self.lease {
            GpuStatus::Leased(lease)
        } else {
            GpuStatus::Free
        }
    }

    /// Grants a lease if it may. Refusals name the most lasting cause first
    /// (unhealthy, then draining, then busy), so a caller learns whether
    /// waiting for a release could help.
    fn lease(&mut self, session: SessionId) -> Result<Lease, LeaseError> {
        if let Some(reason) = &self.unhealthy {
            return Err(LeaseError::Unhealthy(reason.clone()));
        }
        if self.draining {
            return Err(LeaseError::Draining);
        }
        if let Some(current) = self.lease {
            return Err(LeaseError::Busy(current));
        }
        self.epoch += 1;
        let lease = Lease {
            addr: self.addr,
            lease_id: NEXT_LEASE_ID.fetch_add(1, Ordering::Relaxed),
            epoch: self.epoch,
            session,
        };
        self.lease = Some(lease);
        Ok(lease)
    }

    /// Frees the GPU if `lease` is the current one; returns whether it did.
    fn release(&mut self, lease: &Lease) -> bool {
        match self.lease {
            Some(current) if current.lease_id == lease.lease_id && current.epoch == lease.epoch => {
                self.lease = None;
                true
            }
            _ => false,
        }
    }
}

impl Actor for GpuActor {
    type Msg = GpuMsg;
    type State = GpuState;
    type Arguments = GpuAddr;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        addr: GpuAddr,
    ) -> Result<Self::State, ActorProcessingErr> {
        debug!(host = addr.host, index = addr.index, "GPU actor started");
        Ok(GpuState::new(addr))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let GpuAddr { host, index } = state.addr;
        // Replies are dropped when the caller stopped waiting; the state
        // change stands either way, and a lease nobody received is the
        // caller's to release (its id is in the log line).
        match message {
            GpuMsg::Lease { session, reply } => {
                let outcome = state.lease(session);
                match &outcome {
                    Ok(lease) => {
                        metrics::counter!("deskgate_gpu_leases_total").increment(1);
                        info!(
                            host,
                            index,
                            %session,
                            lease_id = lease.lease_id,
                            epoch = lease.epoch,
                            "GPU leased"
                        );
                    }
                    Err(refusal) => {
                        let reason = match refusal {
                            LeaseError::Busy(_) => "busy",
                            LeaseError::Draining => "draining",
                            LeaseError::Unhealthy(_) => "unhealthy",
                        };
                        metrics::counter!("deskgate_gpu_lease_refusals_total", "reason" => reason)
                            .increment(1);
                        debug!(host, index, %session, reason, "GPU lease refused");
                    }
                }
                let _ = reply.send(outcome);
            }
            GpuMsg::Release { lease, reply } => {
                let freed = state.release(&lease);
                if freed {
                    metrics::counter!("deskgate_gpu_releases_total", "outcome" => "freed")
                        .increment(1);
                    info!(
                        host,
                        index,
                        session = %lease.session,
                        lease_id = lease.lease_id,
                        epoch = lease.epoch,
                        "GPU released"
                    );
                } else {
                    metrics::counter!("deskgate_gpu_releases_total", "outcome" => "stale")
                        .increment(1);
                    debug!(
                        host,
                        index,
                        session = %lease.session,
                        lease_id = lease.lease_id,
                        epoch = lease.epoch,
                        current_lease_id = state.lease.map(|l| l.lease_id),
                        current_epoch = state.epoch,
                        "stale GPU release ignored"
                    );
                }
                if let Some(reply) = reply {
                    let _ = reply.send(freed);
                }
            }
            GpuMsg::SetHealth { unhealthy } => {
                match (&state.unhealthy, &unhealthy) {
                    (None, Some(reason)) => warn!(host, index, %reason, "GPU unhealthy"),
                    (Some(_), None) => info!(host, index, "GPU healthy again"),
                    _ => {}
                }
                state.unhealthy = unhealthy;
            }
            GpuMsg::Drain { on } => {
                if state.draining != on {
                    info!(host, index, draining = on, "GPU drain changed");
                }
                state.draining = on;
            }
            GpuMsg::Status { reply } => {
                let _ = reply.send(state.status());
            }
        }
        Ok(())
    }
}

/// Spawns the actor for the GPU at `addr`, linked to `supervisor` when given.
///
/// The actor's registry name is `gpu-<host>-<index>-<uuid>`: ractor names are
/// process-global, and a fixed `gpu-<host>-<index>` would make a restarted
/// actor race its predecessor's deregistration and make parallel tests (or
/// two pools in one process) collide. Callers hold the returned reference;
/// nothing looks a GPU up by name.
pub async fn spawn_gpu(
    addr: GpuAddr,
    supervisor: Option<ActorCell>,
) -> Result<ActorRef<GpuMsg>, SpawnErr> {
    let name = format!(
        "gpu-{}-{}-{}",
        addr.host,
        addr.index,
        Uuid::new_v4().simple()
    );
    let (actor, _handle) = match supervisor {
        Some(supervisor) => Actor::spawn_linked(Some(name), GpuActor, addr, supervisor).await?,
        None => Actor::spawn(Some(name), GpuActor, addr).await?,
    };
    Ok(actor)
}

#[cfg(test)]
mod tests {
    use ractor::call;

    use super::*;

    const ADDR: GpuAddr = GpuAddr { host: 0, index: 3 };

    async fn lease(gpu: &ActorRef<GpuMsg>, session: SessionId) -> Result<Lease, LeaseError> {
        call!(gpu, |reply| GpuMsg::Lease { session, reply }).expect("GPU actor answers")
    }

    async fn release(gpu: &ActorRef<GpuMsg>, lease: Lease) -> bool {
        call!(gpu, |reply| GpuMsg::Release {
            lease,
            reply: Some(reply)
        })
        .expect("GPU actor answers")
    }

    async fn status(gpu: &ActorRef<GpuMsg>) -> GpuStatus {
        call!(gpu, |reply| GpuMsg::Status { reply }).expect("GPU actor answers")
    }

    #[tokio::test]
    async fn second_lease_while_leased_is_busy_with_the_current_lease() {
        let gpu = spawn_gpu(ADDR, None).await.unwrap();
        let first = lease(&gpu, SessionId::new()).await.unwrap();
        assert_eq!(first.addr, ADDR);
        assert_eq!(first.epoch, 1);

        assert_eq!(
            lease(&gpu, SessionId::new()).await,
            Err(LeaseError::Busy(first))
        );
        assert_eq!(status(&gpu).await, GpuStatus::Leased(first));
        gpu.stop(None);
    }

    #[tokio::test]
    async fn stale_release_after_release_does_not_free_the_gpu() {
        let gpu = spawn_gpu(ADDR, None).await.unwrap();
        let old = lease(&gpu, SessionId::new()).await.unwrap();
        assert!(release(&gpu, old).await);
        let current = lease(&gpu, SessionId::new()).await.unwrap();

        // The old holder's release arrives late (or is replayed).
        assert!(!release(&gpu, old).await);
        // Same id with an old epoch is stale too, as is a forged id.
        let old_epoch = Lease {
            epoch: current.epoch - 1,
            ..current
        };
        assert!(!release(&gpu, old_epoch).await);
        let other_id = Lease {
            lease_id: current.lease_id + 1000,
            ..current
        };
        assert!(!release(&gpu, other_id).await);

        assert_eq!(status(&gpu).await, GpuStatus::Leased(current));
        assert!(matches!(
            lease(&gpu, SessionId::new()).await,
            Err(LeaseError::Busy(l)) if l == current
        ));
        gpu.stop(None);
    }

    #[tokio::test]
    async fn release_of_current_lease_frees_and_next_lease_has_next_epoch() {
        let gpu = spawn_gpu(ADDR, None).await.unwrap();
        let first = lease(&gpu, SessionId::new()).await.unwrap();
        assert!(release(&gpu, first).await);
        assert_eq!(status(&gpu).await, GpuStatus::Free);

        let session = SessionId::new();
        let second = lease(&gpu, session).await.unwrap();
        assert_eq!(second.epoch, first.epoch + 1);
        assert_ne!(second.lease_id, first.lease_id);
        assert_eq!(second.session, session);
        // Releasing twice frees nothing the second time.
        assert!(release(&gpu, second).await);
        assert!(!release(&gpu, second).await);
        gpu.stop(None);
    }

    #[tokio::test]
    async fn fire_and_forget_release_frees_the_gpu() {
        let gpu = spawn_gpu(ADDR, None).await.unwrap();
        let held = lease(&gpu, SessionId::new()).await.unwrap();
        gpu.cast(GpuMsg::Release {
            lease: held,
            reply: None,
        })
        .unwrap();
        // Messages are handled in order, so the status sees the release.
        assert_eq!(status(&gpu).await, GpuStatus::Free);
        gpu.stop(None);
    }

    #[tokio::test]
    async fn draining_refuses_new_leases_keeps_the_current_one_and_stays_draining() {
        let gpu = spawn_gpu(ADDR, None).await.unwrap();
        let held = lease(&gpu, SessionId::new()).await.unwrap();
        gpu.cast(GpuMsg::Drain { on: true }).unwrap();

        assert_eq!(
            status(&gpu).await,
            GpuStatus::Draining { lease: Some(held) }
        );
        assert_eq!(
            lease(&gpu, SessionId::new()).await,
            Err(LeaseError::Draining)
        );

        assert!(release(&gpu, held).await);
        assert_eq!(status(&gpu).await, GpuStatus::Draining { lease: None });
        assert_eq!(
            lease(&gpu, SessionId::new()).await,
            Err(LeaseError::Draining)
        );

        gpu.cast(GpuMsg::Drain { on: false }).unwrap();
        assert_eq!(status(&gpu).await, GpuStatus::Free);
        assert!(lease(&gpu, SessionId::new()).await.is_ok());
        gpu.stop(None);
    }

    #[tokio::test]
    async fn unhealthy_refuses_new_leases_keeps_the_current_one_and_stays_unhealthy() {
        let gpu = spawn_gpu(ADDR, None).await.unwrap();
        let held = lease(&gpu, SessionId::new()).await.unwrap();
        let reason = "Xid 79: fallen off the bus".to_string();
        gpu.cast(GpuMsg::SetHealth {
            unhealthy: Some(reason.clone()),
        })
        .unwrap();

        assert_eq!(
            status(&gpu).await,
            GpuStatus::Unhealthy {
                reason: reason.clone(),
                lease: Some(held)
            }
        );
        assert_eq!(
            lease(&gpu, SessionId::new()).await,
            Err(LeaseError::Unhealthy(reason.clone()))
        );

        assert!(release(&gpu, held).await);
        assert_eq!(
            status(&gpu).await,
            GpuStatus::Unhealthy {
                reason,
                lease: None
            }
        );
        gpu.stop(None);
    }

    #[tokio::test]
    async fn healthy_again_makes_a_released_gpu_free_and_leasable() {
        let gpu = spawn_gpu(ADDR, None).await.unwrap();
        gpu.cast(GpuMsg::SetHealth {
            unhealthy: Some("ECC errors".into()),
        })
        .unwrap();
        assert!(matches!(
            lease(&gpu, SessionId::new()).await,
            Err(LeaseError::Unhealthy(_))
        ));

        gpu.cast(GpuMsg::SetHealth { unhealthy: None }).unwrap();
        assert_eq!(status(&gpu).await, GpuStatus::Free);
        let granted = lease(&gpu, SessionId::new()).await.unwrap();
        assert_eq!(granted.epoch, 1);
        gpu.stop(None);
    }

    #[tokio::test]
    async fn unhealthy_outranks_draining_until_healthy_again() {
        let gpu = spawn_gpu(ADDR, None).await.unwrap();
        gpu.cast(GpuMsg::Drain { on: true }).unwrap();
        gpu.cast(GpuMsg::SetHealth {
            unhealthy: Some("too hot".into()),
        })
        .unwrap();
        assert!(matches!(status(&gpu).await, GpuStatus::Unhealthy { .. }));

        gpu.cast(GpuMsg::SetHealth { unhealthy: None }).unwrap();
        assert_eq!(status(&gpu).await, GpuStatus::Draining { lease: None });
        gpu.stop(None);
    }

    #[tokio::test]
    async fn gpus_with_the_same_address_can_run_side_by_side() {
        let a = spawn_gpu(ADDR, None).await.unwrap();
        let b = spawn_gpu(ADDR, None).await.unwrap();
        assert_ne!(a.get_id(), b.get_id());
        a.stop(None);
        b.stop(None);
    }
}
