//! Warm desktops (`DESKGATE_WARM_DESKTOPS`): desktop containers the Docker
//! backend starts ahead of demand on free GPUs, each with its own isolated
//! network, hardened exactly like a session's, its VNC server up and no
//! user. A launch of one GPU that finds a warm desktop on that GPU takes it:
//! the container is renamed to the session's name and its VNC secret moves
//! to the session, so the session starts in the time of a rename instead of
//! a network and container creation plus the desktop's own start. The pool
//! then refills in the background.
//!
//! Invariants:
//! - **never reused**: [`WarmPool::launch`] removes a desktop from the
//!   pool as it hands it out, and from its rename on the container is its
//!   session's (stopped and removed with it, like any session container);
//! - **no lease**: a launch that needs a warm desktop's GPU for anything
//!   else (more GPUs, or a desktop not started yet) makes it give way (the
//!   launcher removes it), and the pool fills only GPUs that no session
//!   container is labelled with and no launch is under way on, so a claim
//!   never waits for the pool;
//! - **reaped by recovery**: the pool's first pass removes every warm
//!   desktop (and warm network) a previous process left on its host;
//! - a warm desktop carries `deskgate.warm=<id>`, never `deskgate.session`:
//!   nothing that looks for sessions sees one until it is taken, and a taken
//!   one is known by its name, `deskgate-session-<id>` (labels cannot change).
//!
//! This file is the pool's bookkeeping, without I/O; `refill.rs` is what
//! the launcher does with Docker: [`super::DockerLauncher::keep_warm`] (the
//! refill pass) and taking a desktop at launch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::Notify;
use uuid::Uuid;

use super::lock;
use crate::platform::secret::Secret;

mod refill;

/// Label holding a warm desktop's own id (on its container and network).
pub const LABEL_WARM: &str = "deskgate.warm";

/// The container name of a warm desktop until a session takes it.
pub fn warm_container_name(id: Uuid) -> String {
    format!("deskgate-warm-{id}")
}

/// The network name of a warm desktop; it keeps it once taken.
pub fn warm_network_name(id: Uuid) -> String {
    format!("deskgate-w-{id}")
}

/// A started warm desktop, ready to be taken.
#[derive(Debug)]
pub(super) struct WarmDesktop {
    /// Its id (labels and names).
    pub(super) id: Uuid,
    /// Docker's container id.
    pub(super) container_id: String,
    /// The GPU it was started on.
    pub(super) gpu: u32,
    /// The VNC secret in its environment.
    pub(super) secret: Secret,
}

/// Why a launch started a desktop cold although the pool is on (the
/// `reason` label of `deskgate_launcher_warm_misses_total`, a closed set).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Miss {
    /// The session needs more than one GPU: warm desktops have one.
    MultiGpu,
    /// The pool had no started desktop on the session's GPU.
    NoneOnGpu,
    /// The launch was for a host number other than the pool's.
    OtherHost,
    /// The warm desktop had gone (died or removed) when it was taken.
    Gone,
}

impl Miss {
    pub(super) fn label(self) -> &'static str {
        match self {
            Self::MultiGpu => "multi_gpu",
            Self::NoneOnGpu => "none_on_gpu",
            Self::OtherHost => "other_host",
            Self::Gone => "gone",
        }
    }
}

/// What a launch does with the pool.
#[derive(Debug, Default)]
pub(super) struct LaunchPlan {
    /// The warm desktop to take, if one fits.
    pub(super) take: Option<WarmDesktop>,
    /// Warm desktops on the launch's GPUs that must be removed first.
    pub(super) give_way: Vec<WarmDesktop>,
    /// Why nothing was taken (when the pool is on).
    pub(super) miss: Option<Miss>,
}

/// The pool's bookkeeping: which desktops are up, which are starting, and
/// which GPUs launches are using right now.
#[derive(Debug, Default)]
pub(super) struct WarmPool {
    state: Mutex<PoolState>,
    /// Wakes the refill pass (a GPU came free, a desktop was taken).
    pub(super) wake: Notify,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Started desktops, by GPU.
    ready: BTreeMap<u32, WarmDesktop>,
    /// Desktops being started, by GPU.
    starting: HashMap<u32, Uuid>,
    /// Desktops being started whose GPU a launch has taken meanwhile: the
    /// refill pass removes them as soon as they exist.
    given_way: HashSet<Uuid>,
    /// Launches under way, per GPU.
    launching: HashMap<u32, usize>,
    /// Desktops handed to a launch that has not finished: not in the pool,
    /// maybe not renamed yet. Anything else untaken and running that the
    /// pool does not hold is a leftover the refill pass removes.
    taking: HashSet<Uuid>,
    /// Per GPU, moves on every launch start and end there, so that a refill
    /// pass knows its view of whether that GPU is free may be stale.
    epochs: HashMap<u32, u64>,
}

/// A snapshot of the per-GPU epochs, taken before a refill pass looks at
/// which GPUs are free.
#[derive(Clone, Debug, Default)]
pub(super) struct Epochs(HashMap<u32, u64>);

/// A launch under way on some GPUs: the pool fills none of them until it
/// is dropped.
#[derive(Debug)]
pub(super) struct Launching<'a> {
    pool: &'a WarmPool,
    gpus: Vec<u32>,
    /// The desktop the launch took, if any.
    taking: Option<Uuid>,
}

impl Drop for Launching<'_> {
    fn drop(&mut self) {
        self.pool.end_launch(&self.gpus, self.taking);
    }
}

impl WarmPool {
    /// A launch on `gpus` begins, until the guard is dropped. If the launch
    /// is one GPU with a started desktop on it, and `takeable` (the launch
    /// is for the host the pool labels its desktops with), the plan takes
    /// it; every other warm desktop on these GPUs gives way.
    pub(super) fn launch(&self, gpus: &[u32], takeable: bool) -> (LaunchPlan, Launching<'_>) {
        let plan = self.begin_launch(gpus, takeable);
        let guard = Launching {
            pool: self,
            gpus: gpus.to_vec(),
            taking: plan.take.as_ref().map(|d| d.id),
        };
        (plan, guard)
    }

    /// See [`Self::launch`]; [`Self::end_launch`] must follow.
    fn begin_launch(&self, gpus: &[u32], takeable: bool) -> LaunchPlan {
        let mut state = lock(&self.state);
        for gpu in gpus {
            *state.epochs.entry(*gpu).or_default() += 1;
            *state.launching.entry(*gpu).or_default() += 1;
        }
        let mut plan = LaunchPlan::default();
        if let ([gpu], true) = (gpus, takeable) {
            plan.take = state.ready.remove(gpu);
        }
        if let Some(taken) = &plan.take {
            state.taking.insert(taken.id);
        }
        for gpu in gpus {
            if let Some(desktop) = state.ready.remove(gpu) {
                plan.give_way.push(desktop);
            }
            if let Some(id) = state.starting.get(gpu).copied() {
                state.given_way.insert(id);
            }
        }
        if plan.take.is_none() {
            plan.miss = Some(if gpus.len() > 1 {
                Miss::MultiGpu
            } else if !takeable {
                Miss::OtherHost
            } else {
                Miss::NoneOnGpu
            });
        }
        plan
    }

    /// The launch that [`Self::begin_launch`] began on `gpus` is over (its
    /// container, if any, now carries their labels).
    fn end_launch(&self, gpus: &[u32], taking: Option<Uuid>) {
        let mut state = lock(&self.state);
        if let Some(id) = taking {
            state.taking.remove(&id);
        }
        for gpu in gpus {
            *state.epochs.entry(*gpu).or_default() += 1;
            if let Some(count) = state.launching.get_mut(gpu) {
                *count -= 1;
                if *count == 0 {
                    state.launching.remove(gpu);
                }
            }
        }
        drop(state);
        self.wake.notify_one();
    }

    /// The per-GPU epochs now (see [`PoolState::epochs`]).
    pub(super) fn epochs(&self) -> Epochs {
        Epochs(lock(&self.state).epochs.clone())
    }

    /// Desktops up and starting.
    pub(super) fn size(&self) -> usize {
        let state = lock(&self.state);
        state.ready.len() + state.starting.len()
    }

    /// Started desktops.
    pub(super) fn ready_count(&self) -> usize {
        lock(&self.state).ready.len()
    }

    /// The GPUs the pool holds a desktop on or is starting one on.
    pub(super) fn gpus_in_pool(&self) -> HashSet<u32> {
        let state = lock(&self.state);
        state
            .ready
            .keys()
            .chain(state.starting.keys())
            .copied()
            .collect()
    }

    /// Reserves `gpu` for a new warm desktop `id`, unless a launch is using
    /// it or one started or ended there since `seen` (the caller's view of
    /// whether it is free is stale: it looks again).
    pub(super) fn reserve(&self, gpu: u32, id: Uuid, seen: &Epochs) -> bool {
        let mut state = lock(&self.state);
        if state.epochs.get(&gpu) != seen.0.get(&gpu)
            || state.launching.contains_key(&gpu)
            || state.ready.contains_key(&gpu)
            || state.starting.contains_key(&gpu)
        {
            return false;
        }
        state.starting.insert(gpu, id);
        true
    }

    /// The desktop reserved with [`Self::reserve`] has started: it joins
    /// the pool, or comes back as `Err` when a launch took its GPU
    /// meanwhile (the caller removes it).
    pub(super) fn started(&self, desktop: WarmDesktop) -> Result<(), WarmDesktop> {
        let mut state = lock(&self.state);
        state.starting.remove(&desktop.gpu);
        if state.given_way.remove(&desktop.id) {
            return Err(desktop);
        }
        state.ready.insert(desktop.gpu, desktop);
        Ok(())
    }

    /// Starting the desktop reserved on `gpu` failed.
    pub(super) fn failed(&self, gpu: u32, id: Uuid) {
        let mut state = lock(&self.state);
        state.starting.remove(&gpu);
        state.given_way.remove(&id);
    }

    /// Takes out the started desktops whose ids are not in `alive` (their
    /// containers died or were removed behind the pool's back).
    pub(super) fn forget_dead(&self, alive: &HashSet<Uuid>) -> Vec<WarmDesktop> {
        let mut state = lock(&self.state);
        let dead: Vec<u32> = state
            .ready
            .values()
            .filter(|d| !alive.contains(&d.id))
            .map(|d| d.gpu)
            .collect();
        dead.iter()
            .filter_map(|gpu| state.ready.remove(gpu))
            .collect()
    }

    /// Whether `id` is in the pool (started or starting) or being taken by
    /// a launch: anything else untaken is a leftover.
    pub(super) fn holds(&self, id: Uuid) -> bool {
        let state = lock(&self.state);
        state.ready.values().any(|d| d.id == id)
            || state.starting.values().any(|s| *s == id)
            || state.taking.contains(&id)
    }

    /// Whether a launch took the GPU of `id`, a desktop still starting: its
    /// start stops early and it is removed.
    pub(super) fn gave_way(&self, id: Uuid) -> bool {
        lock(&self.state).given_way.contains(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desktop(gpu: u32) -> WarmDesktop {
        WarmDesktop {
            id: Uuid::new_v4(),
            container_id: format!("c{gpu}"),
            gpu,
            secret: Secret::new(format!("s{gpu}")),
        }
    }

    fn started_on(pool: &WarmPool, gpu: u32) -> Uuid {
        let desktop = desktop(gpu);
        let id = desktop.id;
        assert!(pool.reserve(gpu, id, &pool.epochs()));
        pool.started(desktop).expect("joins the pool");
        id
    }

    #[test]
    fn a_one_gpu_launch_takes_the_desktop_on_its_gpu_once() {
        let pool = WarmPool::default();
        let id = started_on(&pool, 0);
        let plan = pool.begin_launch(&[0], true);
        assert_eq!(plan.take.as_ref().map(|d| d.id), Some(id));
        assert!(plan.give_way.is_empty() && plan.miss.is_none());
        assert!(pool.holds(id), "being taken: not a leftover");
        pool.end_launch(&[0], Some(id));
        // Taken means gone from the pool: a second launch cannot get it.
        let again = pool.begin_launch(&[0], true);
        assert!(again.take.is_none());
        assert_eq!(again.miss, Some(Miss::NoneOnGpu));
        assert!(!pool.holds(id));
    }

    #[test]
    fn a_launch_on_more_gpus_makes_their_desktops_give_way() {
        let pool = WarmPool::default();
        let on0 = started_on(&pool, 0);
        let on1 = started_on(&pool, 1);
        let plan = pool.begin_launch(&[0, 1], true);
        assert!(plan.take.is_none());
        assert_eq!(plan.miss, Some(Miss::MultiGpu));
        let mut given: Vec<Uuid> = plan.give_way.iter().map(|d| d.id).collect();
        given.sort();
        let mut expected = vec![on0, on1];
        expected.sort();
        assert_eq!(given, expected);
        assert_eq!(pool.size(), 0);
    }

    #[test]
    fn a_desktop_still_starting_gives_way_when_it_arrives() {
        let pool = WarmPool::default();
        let late = desktop(2);
        assert!(pool.reserve(2, late.id, &pool.epochs()));
        let plan = pool.begin_launch(&[2], true);
        assert!(plan.take.is_none(), "a desktop not started is not taken");
        assert!(pool.gave_way(late.id), "its start can stop early");
        assert!(pool.started(late).is_err(), "it must be removed");
        assert_eq!(pool.size(), 0);
    }

    #[test]
    fn the_pool_never_reserves_a_gpu_under_launch_or_on_a_stale_view() {
        let pool = WarmPool::default();
        let seen = pool.epochs();
        let (_plan, launching) = pool.launch(&[3], true);
        assert!(
            !pool.reserve(3, Uuid::new_v4(), &pool.epochs()),
            "launch under way"
        );
        drop(launching);
        assert!(
            !pool.reserve(3, Uuid::new_v4(), &seen),
            "stale view of GPU 3"
        );
        assert!(
            pool.reserve(4, Uuid::new_v4(), &seen),
            "a launch on GPU 3 says nothing about GPU 4"
        );
        assert!(pool.reserve(3, Uuid::new_v4(), &pool.epochs()));
    }

    #[test]
    fn a_launch_for_another_host_takes_nothing_but_still_displaces() {
        let pool = WarmPool::default();
        started_on(&pool, 0);
        let (plan, _launching) = pool.launch(&[0], false);
        assert!(plan.take.is_none());
        assert_eq!(plan.give_way.len(), 1);
        assert_eq!(plan.miss, Some(Miss::OtherHost));
    }

    #[test]
    fn dead_desktops_leave_the_pool() {
        let pool = WarmPool::default();
        let alive = started_on(&pool, 0);
        let dead = started_on(&pool, 1);
        let gone = pool.forget_dead(&HashSet::from([alive]));
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].id, dead);
        assert!(pool.holds(alive) && !pool.holds(dead));
        assert_eq!(Miss::Gone.label(), "gone");
    }
}
