//! [`LauncherPool`]: the [`Launcher`] port over the `deskgate launcher`s of
//! several GPU hosts, for a gate with `DESKGATE_LAUNCHER_URLS` set.
//!
//! A host's number is its position in that list, from 0, and a GPU is
//! `GpuAddr { host, index }`. The scheduler keeps a profile's GPUs on one
//! host, so a launch names one host and goes to that host's launcher; the
//! launcher records the number in the container's `deskgate.host` label and
//! lists it back in `GET /v1/sessions`.
//!
//! - `stop` goes to the host that runs the session, remembered from the
//!   launch or from the last [`Launcher::running`]; for a session the pool
//!   does not know it asks every host (a stop is idempotent: a host without
//!   the container answers success).
//! - `running` is the union of every host's list, or an error if any host
//!   cannot be listed: never a partial list, since recovery ends every
//!   session whose container is missing from it.
//! - `watch_exits` follows every host's exits into the one sink.
//!
//! [`discover`] builds the pool from the launchers' URLs and asks each for
//! its GPUs (`GET /v1/gpus`), which become the scheduler's pool.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use async_trait::async_trait;
use deskgate_actors::ports::{
    ContainerExit, GpuAddr, LaunchError, LaunchSpec, Launcher, RunningContainer, SessionId,
};
use futures::future::join_all;
use tokio::sync::mpsc;
use url::Url;

use crate::launcher::gpu::GpuHealth;
use crate::launcher::remote::client::RemoteLauncher;
use crate::launcher::remote::media::RemoteDesktops;
use crate::platform::secret::Secret;

/// Why a pool could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// No launcher was given.
    #[error("no launchers: DESKGATE_LAUNCHER_URLS is empty")]
    NoLaunchers,
    /// More launchers than host numbers.
    #[error("{0} launchers: host numbers go up to 65535")]
    TooMany(usize),
    /// A launcher URL cannot be used.
    #[error("launcher {url} (host {host}) cannot be used")]
    BadUrl {
        /// Host number.
        host: u16,
        /// The URL.
        url: Url,
        /// Why.
        #[source]
        source: LaunchError,
    },
    /// A launcher did not answer `GET /v1/gpus`.
    #[error("launcher {url} (host {host}) did not list its GPUs")]
    Unreachable {
        /// Host number.
        host: u16,
        /// The URL.
        url: Url,
        /// What failed.
        #[source]
        source: LaunchError,
    },
}

/// What [`discover`] found.
#[derive(Debug)]
pub struct Discovered {
    /// The launchers, by host number.
    pub pool: LauncherPool,
    /// Every GPU of every host, in address order: the scheduler's pool.
    pub gpus: Vec<GpuAddr>,
    /// The GPUs their launcher reported unhealthy, and why.
    pub unhealthy: Vec<(GpuAddr, String)>,
    /// The same launchers' desktops, for the media routes.
    pub desktops: RemoteDesktops,
}

/// Builds a [`RemoteLauncher`] for each URL (host = position) with `token`
/// and asks each for its GPUs, all at once. Any launcher that does not
/// answer is an error naming its URL: a host left out would strand its
/// running sessions.
pub async fn discover(urls: &[Url], token: &Secret) -> Result<Discovered, PoolError> {
    if urls.is_empty() {
        return Err(PoolError::NoLaunchers);
    }
    if urls.len() > usize::from(u16::MAX) + 1 {
        return Err(PoolError::TooMany(urls.len()));
    }
    let mut remotes = Vec::with_capacity(urls.len());
    for (host, url) in (0..=u16::MAX).zip(urls) {
        let remote = RemoteLauncher::new(url.clone(), token.clone()).map_err(|source| {
            PoolError::BadUrl {
                host,
                url: url.clone(),
                source,
            }
        })?;
        remotes.push(remote);
    }
    let answers = join_all(remotes.iter().map(RemoteLauncher::inventory)).await;
    let mut gpus = Vec::new();
    let mut unhealthy = Vec::new();
    for ((host, url), answer) in (0..=u16::MAX).zip(urls).zip(answers) {
        let inventory = answer
            .map_err(|source| PoolError::Unreachable {
                host,
                url: url.clone(),
                source,
            })?
            .gpus;
        if inventory.is_empty() {
            tracing::warn!(host, launcher = %url, "launcher offers no GPUs");
        }
        tracing::info!(host, launcher = %url, gpus = inventory.len(), "launcher discovered");
        for gpu in inventory {
            let addr = GpuAddr {
                host,
                index: gpu.index,
            };
            if let GpuHealth::Unhealthy(reason) = gpu.health {
                unhealthy.push((addr, reason));
            }
            gpus.push(addr);
        }
    }
    gpus.sort_unstable();
    gpus.dedup();
    let desktops = RemoteDesktops::new(remotes.clone());
    let launchers = remotes
        .into_iter()
        .map(|r| Arc::new(r) as Arc<dyn Launcher>)
        .collect();
    Ok(Discovered {
        pool: LauncherPool::new(launchers)?,
        gpus,
        unhealthy,
        desktops,
    })
}

/// A host's number and its launcher.
type HostLauncher = (u16, Arc<dyn Launcher>);

/// A host the pool knows.
enum Slot {
    /// Its launcher.
    Up(Arc<dyn Launcher>),
    /// A host met before (it may run sessions) that has not answered since
    /// this gate started: nothing can be listed or confirmed stopped there.
    Missing(String),
    /// Declared gone by an operator: its containers are out of reach for
    /// good, so a stop of a session placed there is done, and it is never
    /// asked anything again.
    Gone,
}

/// The [`Launcher`] over several hosts' launchers; see the module docs.
pub struct LauncherPool {
    /// The hosts by number.
    hosts: RwLock<BTreeMap<u16, Slot>>,
    /// The host each known session's container was launched on or listed by.
    placed: Mutex<HashMap<SessionId, u16>>,
    /// Where exits go once [`Launcher::watch_exits`] was called; a host
    /// added later is followed into it too.
    exits: Mutex<Option<mpsc::UnboundedSender<ContainerExit>>>,
}

impl std::fmt::Debug for LauncherPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LauncherPool")
            .field("hosts", &read(&self.hosts).len())
            .field("placed", &lock(&self.placed).len())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LauncherPool {
    /// A pool of `launchers`, host `n` being the `n`th.
    pub fn new(launchers: Vec<Arc<dyn Launcher>>) -> Result<Self, PoolError> {
        if launchers.is_empty() {
            return Err(PoolError::NoLaunchers);
        }
        if launchers.len() > usize::from(u16::MAX) + 1 {
            return Err(PoolError::TooMany(launchers.len()));
        }
        let pool = Self::empty();
        for (host, launcher) in (0..=u16::MAX).zip(launchers) {
            pool.set_launcher(host, launcher);
        }
        Ok(pool)
    }

    /// A pool with no hosts yet (discovery adds them).
    pub fn empty() -> Self {
        Self {
            hosts: RwLock::new(BTreeMap::new()),
            placed: Mutex::new(HashMap::new()),
            exits: Mutex::new(None),
        }
    }

    /// Host `host` is reached through `launcher` from now on; if exits are
    /// watched and it was not reachable before, its exits are followed too.
    pub fn set_launcher(&self, host: u16, launcher: Arc<dyn Launcher>) {
        let was_up = matches!(
            write(&self.hosts).insert(host, Slot::Up(launcher.clone())),
            Some(Slot::Up(_))
        );
        if !was_up && let Some(sink) = lock(&self.exits).as_ref() {
            launcher.watch_exits(sink.clone());
        }
    }

    /// Host `host` (called `name`) was met before but is not reachable:
    /// listing fails until it answers or is forgotten.
    pub fn set_missing(&self, host: u16, name: &str) {
        write(&self.hosts).insert(host, Slot::Missing(name.to_string()));
    }

    /// Host `host` was declared gone: it is no longer asked anything, and
    /// stopping a session placed there succeeds.
    pub fn forget(&self, host: u16) {
        write(&self.hosts).insert(host, Slot::Gone);
    }

    /// How many hosts (declared gone ones left out).
    pub fn len(&self) -> usize {
        read(&self.hosts)
            .values()
            .filter(|slot| !matches!(slot, Slot::Gone))
            .count()
    }

    /// True while no host is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The host the pool knows the session's container on, if any.
    pub fn host_of(&self, session: SessionId) -> Option<u16> {
        lock(&self.placed).get(&session).copied()
    }

    fn launcher(&self, host: u16) -> Option<Arc<dyn Launcher>> {
        match read(&self.hosts).get(&host) {
            Some(Slot::Up(launcher)) => Some(launcher.clone()),
            _ => None,
        }
    }

    /// Every reachable host's launcher, and a line for each missing one.
    fn every_host(&self) -> (Vec<HostLauncher>, Vec<String>) {
        let mut up = Vec::new();
        let mut missing = Vec::new();
        for (host, slot) in read(&self.hosts).iter() {
            match slot {
                Slot::Up(launcher) => up.push((*host, launcher.clone())),
                Slot::Missing(name) => missing.push(format!(
                    "host {host} ({name}) has not answered since the gate started \
                     (if it is not coming back: DELETE /api/v1/admin/hosts/{name})"
                )),
                Slot::Gone => {}
            }
        }
        (up, missing)
    }
}

#[async_trait]
impl Launcher for LauncherPool {
    async fn launch(&self, spec: &LaunchSpec) -> Result<String, LaunchError> {
        let Some(launcher) = self.launcher(spec.host) else {
            return Err(LaunchError(format!(
                "no launcher for host {}: the gate knows {} reachable host(s)",
                spec.host,
                self.every_host().0.len()
            )));
        };
        // Remembered before the launch: a failed one may leave a container
        // behind, which the stop that follows must reach.
        lock(&self.placed).insert(spec.session, spec.host);
        launcher.launch(spec).await
    }

    async fn stop(&self, session: SessionId) -> Result<(), LaunchError> {
        let placed = self.host_of(session);
        if let Some(host) = placed
            && matches!(read(&self.hosts).get(&host), Some(Slot::Gone))
        {
            tracing::info!(%session, host, "the session's host was declared gone: nothing to stop");
            lock(&self.placed).remove(&session);
            return Ok(());
        }
        if let Some(host) = placed
            && let Some(launcher) = self.launcher(host)
        {
            launcher.stop(session).await?;
            lock(&self.placed).remove(&session);
            return Ok(());
        }
        // Not known here (launched by an earlier run and not listed since,
        // or on a host declared gone): every host is asked; one without the
        // container answers success, and a missing one cannot.
        let (up, mut failures) = self.every_host();
        tracing::debug!(%session, hosts = up.len(), "stopping on every host");
        let results = join_all(up.iter().map(|(_, l)| l.stop(session))).await;
        failures.extend(
            up.iter().zip(results).filter_map(|((host, _), result)| {
                result.err().map(|e| format!("host {host}: {e}"))
            }),
        );
        if failures.is_empty() {
            lock(&self.placed).remove(&session);
            Ok(())
        } else {
            Err(LaunchError(format!(
                "stopping session {session} on every host: {}",
                failures.join("; ")
            )))
        }
    }

    async fn running(&self) -> Result<Vec<RunningContainer>, LaunchError> {
        let (up, mut failures) = self.every_host();
        let lists = join_all(up.iter().map(|(_, l)| l.running())).await;
        let mut all: Vec<RunningContainer> = Vec::new();
        let mut seen: HashMap<SessionId, usize> = HashMap::new();
        for ((host, _), list) in up.iter().zip(lists) {
            let host = *host;
            let list = match list {
                Ok(list) => list,
                Err(err) => {
                    failures.push(format!("host {host}: {err}"));
                    continue;
                }
            };
            for container in list {
                let labelled = container.host;
                if labelled != host {
                    tracing::warn!(
                        session = %container.session,
                        listed_by = host,
                        labelled,
                        "a launcher lists a container labelled for another host \
                         (launchers sharing a Docker daemon need DESKGATE_LAUNCHER_HOST)"
                    );
                }
                let entry = RunningContainer { host, ..container };
                match seen.get(&entry.session) {
                    // Listed twice (launchers on one daemon): the host it
                    // was launched for wins.
                    Some(&at) => {
                        if labelled == host {
                            all[at] = entry;
                        }
                    }
                    None => {
                        seen.insert(entry.session, all.len());
                        all.push(entry);
                    }
                }
            }
        }
        if !failures.is_empty() {
            return Err(LaunchError(format!(
                "cannot list the containers of every host, so none are listed \
                 (a partial list would end the others' sessions as lost): {}",
                failures.join("; ")
            )));
        }
        let mut placed = lock(&self.placed);
        for container in &all {
            placed.insert(container.session, container.host);
        }
        Ok(all)
    }

    fn watch_exits(&self, sink: mpsc::UnboundedSender<ContainerExit>) {
        for (_, launcher) in self.every_host().0 {
            launcher.watch_exits(sink.clone());
        }
        *lock(&self.exits) = Some(sink);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use deskgate_actors::testing::FakeLauncher;

    use super::*;
    use crate::config::GpuSelection;
    use crate::http::Limits;
    use crate::launcher::remote::service::{ExitLog, LauncherState, router};

    const TOKEN: &str = "9f2c4e1ab37d58e06c9b1f4a2d7e3c8b5a6f0e1d2c3b4a59687766554433221f";

    /// A host whose launcher cannot be reached.
    fn unreachable() -> Arc<FakeLauncher> {
        let down = Arc::new(FakeLauncher::new());
        down.set_unreachable(true);
        down
    }

    fn pool_of(launchers: &[Arc<dyn Launcher>]) -> LauncherPool {
        LauncherPool::new(launchers.to_vec()).unwrap()
    }

    fn two_fakes() -> (Arc<FakeLauncher>, Arc<FakeLauncher>, LauncherPool) {
        let (a, b) = (Arc::new(FakeLauncher::new()), Arc::new(FakeLauncher::new()));
        let pool = pool_of(&[a.clone(), b.clone()]);
        (a, b, pool)
    }

    fn spec(session: SessionId, host: u16) -> LaunchSpec {
        LaunchSpec {
            session,
            host,
            gpu_indices: vec![0],
        }
    }

    #[tokio::test]
    async fn a_launch_goes_to_the_launcher_of_its_host() {
        let (a, b, pool) = two_fakes();
        let session = SessionId::new();
        let id = pool.launch(&spec(session, 1)).await.unwrap();
        assert_eq!(id, FakeLauncher::container_id(session));
        assert_eq!(b.launched(session), Some(spec(session, 1)));
        assert_eq!(a.launched(session), None);
        assert_eq!(pool.host_of(session), Some(1));

        let stray = SessionId::new();
        let err = pool.launch(&spec(stray, 2)).await.unwrap_err();
        assert!(err.0.contains("host 2"), "{err}");
        assert_eq!(a.launched(stray), None);
        assert_eq!(b.launched(stray), None);
    }

    #[tokio::test]
    async fn a_stop_goes_to_the_host_that_runs_the_session() {
        let (a, b, pool) = two_fakes();
        let session = SessionId::new();
        pool.launch(&spec(session, 1)).await.unwrap();
        pool.stop(session).await.unwrap();
        assert!(b.stopped(session));
        assert!(!b.is_running(session));
        assert!(!a.stopped(session), "host 0 was not asked");
        assert_eq!(pool.host_of(session), None);
    }

    #[tokio::test]
    async fn a_session_listed_by_running_is_stopped_on_its_host_and_an_unknown_one_everywhere() {
        let (a, b, pool) = two_fakes();
        // Left running by an earlier run of the gate: the pool learns where
        // from the listing.
        let adopted = SessionId::new();
        b.insert_running(RunningContainer {
            session: adopted,
            container_id: "ctr".into(),
            host: 1,
        });
        pool.running().await.unwrap();
        pool.stop(adopted).await.unwrap();
        assert!(b.stopped(adopted));
        assert!(!a.stopped(adopted));

        // Never seen: every host is asked, and a host without it succeeds.
        let unknown = SessionId::new();
        pool.stop(unknown).await.unwrap();
        assert!(a.stopped(unknown) && b.stopped(unknown));

        // An unknown session with a host down: the stop is not confirmed.
        let pool = pool_of(&[a.clone(), unreachable()]);
        let err = pool.stop(SessionId::new()).await.unwrap_err();
        assert!(err.0.contains("host 1"), "{err}");
    }

    #[tokio::test]
    async fn running_is_the_union_of_every_host_with_their_host_numbers() {
        let (a, b, pool) = two_fakes();
        let (s0, s1) = (SessionId::new(), SessionId::new());
        pool.launch(&spec(s0, 0)).await.unwrap();
        pool.launch(&spec(s1, 1)).await.unwrap();
        // A container both launchers list (one Docker daemon, no host
        // scope) counts once, for the host it was launched for.
        a.insert_running(RunningContainer {
            session: s1,
            container_id: FakeLauncher::container_id(s1),
            host: 1,
        });
        let running = pool.running().await.unwrap();
        let hosts: BTreeSet<(SessionId, u16)> =
            running.iter().map(|c| (c.session, c.host)).collect();
        assert_eq!(hosts, BTreeSet::from([(s0, 0), (s1, 1)]));
        assert_eq!(running.len(), 2);
        pool.stop(s1).await.unwrap();
        assert!(b.stopped(s1) && !a.stopped(s1));
    }

    #[tokio::test]
    async fn running_fails_whole_when_one_host_cannot_be_listed() {
        let a = Arc::new(FakeLauncher::new());
        let pool = pool_of(&[a.clone(), unreachable()]);
        let session = SessionId::new();
        pool.launch(&spec(session, 0)).await.unwrap();
        let err = pool.running().await.unwrap_err();
        assert!(err.0.contains("host 1"), "{err}");
        assert!(err.0.contains("connection refused"), "{err}");
        assert!(a.is_running(session), "nothing was touched");
    }

    #[tokio::test]
    async fn exits_of_every_host_reach_the_sink() {
        let (a, b, pool) = two_fakes();
        let (tx, mut rx) = mpsc::unbounded_channel();
        pool.watch_exits(tx);
        let (s0, s1) = (SessionId::new(), SessionId::new());
        pool.launch(&spec(s0, 0)).await.unwrap();
        pool.launch(&spec(s1, 1)).await.unwrap();
        assert!(b.exit(s1, 137, false));
        assert!(a.exit(s0, 0, true));
        let mut seen = Vec::new();
        for _ in 0..2 {
            seen.push(
                tokio::time::timeout(Duration::from_secs(2), rx.recv())
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(
            seen,
            vec![
                ContainerExit {
                    session: s1,
                    code: 137,
                    oom: false
                },
                ContainerExit {
                    session: s0,
                    code: 0,
                    oom: true
                },
            ]
        );
    }

    #[tokio::test]
    async fn a_missing_host_blocks_listing_and_unknown_stops_until_it_is_forgotten() {
        let a = Arc::new(FakeLauncher::new());
        let pool = LauncherPool::empty();
        pool.set_launcher(0, a.clone());
        pool.set_missing(1, "gpu-b");
        let err = pool.running().await.unwrap_err();
        assert!(err.0.contains("host 1 (gpu-b)"), "{err}");
        assert!(err.0.contains("DELETE /api/v1/admin/hosts/gpu-b"), "{err}");
        let err = pool.stop(SessionId::new()).await.unwrap_err();
        assert!(err.0.contains("gpu-b"), "{err}");
        let err = pool.launch(&spec(SessionId::new(), 1)).await.unwrap_err();
        assert!(err.0.contains("host 1"), "{err}");

        // A session placed on it before it went quiet.
        let stranded = SessionId::new();
        pool.set_launcher(1, Arc::new(FakeLauncher::new()));
        pool.launch(&spec(stranded, 1)).await.unwrap();
        pool.set_missing(1, "gpu-b");
        // Declared gone: the other hosts answer for everything, and the
        // stranded session's stop is done without asking anyone.
        pool.forget(1);
        pool.stop(stranded).await.unwrap();
        assert!(!a.stopped(stranded), "host 0 was not asked");
        assert!(pool.running().await.unwrap().is_empty());
        let unknown = SessionId::new();
        pool.stop(unknown).await.unwrap();
        assert!(a.stopped(unknown));
    }

    #[tokio::test]
    async fn a_host_that_joins_after_the_watch_starts_has_its_exits_followed() {
        let pool = LauncherPool::empty();
        let (tx, mut rx) = mpsc::unbounded_channel();
        pool.watch_exits(tx);
        let late = Arc::new(FakeLauncher::new());
        pool.set_launcher(4, late.clone());
        // Set again (its launcher re-pointed): followed once, not twice.
        pool.set_launcher(4, late.clone());
        let session = SessionId::new();
        pool.launch(&spec(session, 4)).await.unwrap();
        assert!(late.exit(session, 1, false));
        let exit = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(exit.session, session);
        assert!(
            tokio::time::timeout(Duration::from_millis(200), rx.recv())
                .await
                .is_err(),
            "the exit arrived twice"
        );
    }

    #[test]
    fn a_pool_needs_a_launcher() {
        assert!(matches!(
            LauncherPool::new(Vec::new()),
            Err(PoolError::NoLaunchers)
        ));
    }

    /// A launcher service on a loopback port with `gpus` fake GPUs.
    async fn serve_launcher(gpus: u32) -> Url {
        let state = Arc::new(LauncherState {
            token: Secret::new(TOKEN),
            gpus: GpuSelection::Fake(gpus),
            name: None,
            gpu_indices: (0..gpus).collect(),
            launcher: Arc::new(FakeLauncher::new()),
            exits: Arc::new(ExitLog::default()),
            desktops: Arc::new(crate::launcher::desktop::NoDesktops),
        });
        let app = router(
            state,
            Limits {
                max_body_bytes: 1 << 16,
                request_timeout: Duration::from_secs(5),
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Url::parse(&format!("http://{addr}/")).unwrap()
    }

    #[tokio::test]
    async fn discovery_numbers_hosts_by_position_and_names_a_silent_launcher() {
        let urls = [serve_launcher(2).await, serve_launcher(1).await];
        let found = discover(&urls, &Secret::new(TOKEN)).await.unwrap();
        assert_eq!(
            found.gpus,
            vec![
                GpuAddr { host: 0, index: 0 },
                GpuAddr { host: 0, index: 1 },
                GpuAddr { host: 1, index: 0 },
            ]
        );
        assert!(found.unhealthy.is_empty());
        assert_eq!(found.pool.len(), 2);

        // Nothing listens on the third.
        let silent = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let silent = Url::parse(&format!("http://{silent}/")).unwrap();
        let err = discover(&[urls[0].clone(), silent.clone()], &Secret::new(TOKEN))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, PoolError::Unreachable { host: 1, url, .. } if *url == silent),
            "{err:?}"
        );
        assert!(err.to_string().contains(silent.as_str()), "{err}");

        // A wrong token is refused, and the error does not carry the token.
        let err = discover(&urls, &Secret::new("wrong-token-wrong-token"))
            .await
            .unwrap_err();
        let chain = format!("{:#}", anyhow::Error::new(err));
        assert!(chain.contains("401"), "{chain}");
        assert!(!chain.contains("wrong-token"), "{chain}");
        assert!(!chain.contains(TOKEN), "{chain}");
    }
}
