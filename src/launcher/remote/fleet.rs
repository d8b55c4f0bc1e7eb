//! [`Fleet`]: the GPU hosts of a gate with `DESKGATE_LAUNCHER_DISCOVERY`,
//! found by resolving a DNS name (Swarm's `tasks.launcher`) every few
//! seconds and asking each address's launcher for its name and GPUs.
//!
//! Invariants:
//! - A host is its launcher's name; its number comes from the [`HostBook`]
//!   and never changes. A launcher that moved (a Swarm task restarted on a
//!   new address) is the same host: its client is re-pointed, its sessions
//!   and exit stream carry on.
//! - A host that joins while the gate runs has the session containers it
//!   runs for no live session of it stopped first, then its GPUs join the
//!   scheduler's pool: a GPU is never offered while a stranger holds it.
//! - A host that stops answering (its launcher gone, its node drained) is
//!   `unreachable` after [`MISSED_ROUNDS`] rounds: its GPUs take no new
//!   leases, and its sessions are left alone (never ended on a guess). When
//!   it answers again its GPUs come back, unless an operator drained it.
//! - Only an operator ends a vanished host's sessions, by declaring it gone
//!   ([`Fleet::retire`]); its number is never reused.
//! - Nothing here holds a lock across an `await`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use deskgate_actors::ports::{GpuAddr, Launcher, SessionId, SessionState, SessionStore};
use futures::future::join_all;
use url::Url;

use crate::config::DnsTarget;
use crate::launcher::gpu::{GpuHealth, GpuInfo};
use crate::launcher::remote::client::RemoteLauncher;
use crate::launcher::remote::host_book::{HostBook, HostBookError, HostRow};
use crate::launcher::remote::media::RemoteDesktops;
use crate::launcher::remote::pool::LauncherPool;
use crate::launcher::remote::wire::HostInventory;
use crate::platform::secret::Secret;

/// How often the name is resolved and every launcher asked.
pub const DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);
/// Rounds in a row a host may go unanswered before it counts unreachable
/// (one lost round is a blip: a DNS answer racing a task restart).
pub const MISSED_ROUNDS: u32 = 2;
/// How long one launcher may take to answer `GET /v1/gpus`.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What the fleet drives in the session tree (the gate implements it on
/// its `SessionTree`).
#[async_trait]
pub trait GpuPoolControl: Send + Sync {
    /// GPUs that joined; known ones are skipped.
    fn add_gpus(&self, gpus: Vec<GpuAddr>);
    /// No new leases on `gpu` (`on`), or leases again.
    fn drain(&self, gpu: GpuAddr, on: bool);
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

/// What the fleet holds per host.
struct Known {
    view: HostView,
    remote: Option<RemoteLauncher>,
    missed: u32,
    /// Its GPUs are in the scheduler's pool.
    pooled: BTreeSet<u32>,
}

/// The discovered hosts; see the module docs.
pub struct Fleet {
    resolver: Box<dyn Resolver>,
    token: Secret,
    book: HostBook,
    pool: Arc<LauncherPool>,
    desktops: RemoteDesktops,
    hosts: Mutex<BTreeMap<u16, Known>>,
    /// Set once the session tree runs; GPUs join it from then on.
    tree: OnceLock<(Arc<dyn GpuPoolControl>, Arc<dyn SessionStore>)>,
    /// The book's hosts were loaded.
    book_loaded: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("hosts", &self.lock().len())
            .finish_non_exhaustive()
    }
}

/// What the tree starts with.
#[derive(Debug)]
pub struct FirstPool {
    /// Every GPU of every host that answered, in address order.
    pub gpus: Vec<GpuAddr>,
    /// The GPUs their launcher reported unhealthy, and why.
    pub unhealthy: Vec<(GpuAddr, String)>,
    /// The drained hosts' GPUs.
    pub drained: Vec<GpuAddr>,
}

impl Fleet {
    /// A fleet that knows no host yet; [`Fleet::discover`] brings it to
    /// life.
    pub fn new(resolver: Box<dyn Resolver>, token: Secret, book: HostBook) -> Arc<Self> {
        Arc::new(Self {
            resolver,
            token,
            book,
            pool: Arc::new(LauncherPool::empty()),
            desktops: RemoteDesktops::default(),
            hosts: Mutex::new(BTreeMap::new()),
            tree: OnceLock::new(),
            book_loaded: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Runs discovery every [`DISCOVERY_INTERVAL`] from now on, tree or no
    /// tree (the operator sees the hosts while recovery waits for one).
    pub fn discover(self: &Arc<Self>) {
        let fleet = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(fleet) = fleet.upgrade() else { return };
                if let Err(err) = fleet.load_book().await {
                    tracing::warn!(error = %err, "cannot read the GPU hosts met before; trying next round");
                } else {
                    fleet.round().await;
                }
                drop(fleet);
                tokio::time::sleep(DISCOVERY_INTERVAL).await;
            }
        });
    }

    /// Every host the book knows and this fleet does not is missing until
    /// it answers (once; later hosts are met by rounds).
    pub async fn load_book(&self) -> Result<(), HostBookError> {
        use std::sync::atomic::Ordering;
        if self.book_loaded.load(Ordering::Acquire) {
            return Ok(());
        }
        let rows = self.book.all().await?;
        let mut hosts = self.lock();
        for row in rows.iter().filter(|r| r.retired_at.is_none()) {
            hosts.entry(row.host()).or_insert_with(|| {
                self.pool.set_missing(row.host(), &row.name);
                Known::missing(row)
            });
        }
        self.book_loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// The tree's first pool: the GPUs of every host that answers now, after
    /// one round of its own. Called for each attempt to start the tree.
    pub async fn first_pool(&self) -> Result<FirstPool, HostBookError> {
        self.load_book().await?;
        self.round().await;
        let mut first = FirstPool {
            gpus: Vec::new(),
            unhealthy: Vec::new(),
            drained: Vec::new(),
        };
        for known in self.lock().values_mut() {
            // What an earlier attempt counted went with its tree.
            known.pooled.clear();
            if known.view.state != HostState::Up {
                continue;
            }
            let host = known.view.number;
            for gpu in &known.view.gpus {
                let addr = GpuAddr {
                    host,
                    index: gpu.index,
                };
                first.gpus.push(addr);
                if let GpuHealth::Unhealthy(reason) = &gpu.health {
                    first.unhealthy.push((addr, reason.clone()));
                }
                if known.view.drained {
                    first.drained.push(addr);
                }
                known.pooled.insert(gpu.index);
            }
        }
        Ok(first)
    }

    /// The launchers of every host, as the tree's [`Launcher`].
    pub fn pool(&self) -> Arc<LauncherPool> {
        self.pool.clone()
    }

    /// The hosts' desktops, for the media routes.
    pub fn desktops(&self) -> RemoteDesktops {
        self.desktops.clone()
    }

    /// The tree runs on [`Fleet::first_pool`]: from now on GPUs join it and
    /// are drained there.
    pub fn attach(&self, tree: Arc<dyn GpuPoolControl>, store: Arc<dyn SessionStore>) {
        if self.tree.set((tree.clone(), store)).is_err() {
            return;
        }
        // A host of the first pool that stopped answering since.
        let lost: Vec<GpuAddr> = self
            .lock()
            .values()
            .filter(|k| k.view.state != HostState::Up)
            .flat_map(|k| {
                let host = k.view.number;
                k.pooled.iter().map(move |&index| GpuAddr { host, index })
            })
            .collect();
        for gpu in lost {
            tree.drain(gpu, true);
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u16, Known>> {
        self.hosts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn tree(&self) -> Option<&dyn GpuPoolControl> {
        self.tree.get().map(|(tree, _)| tree.as_ref())
    }

    /// One round: resolve, ask every address, update every host.
    pub async fn round(&self) {
        let addrs = match self.resolver.resolve().await {
            Ok(addrs) => addrs,
            Err(err) => {
                // No task of the service is also NXDOMAIN: every host
                // misses this round.
                tracing::debug!(error = %err, "no launcher address resolved");
                Vec::new()
            }
        };
        let answers = join_all(addrs.iter().map(|addr| self.probe(*addr))).await;
        let mut answered: HashSet<u16> = HashSet::new();
        for (addr, answer) in addrs.iter().zip(answers) {
            let (url, inventory) = match answer {
                Ok(found) => found,
                Err(err) => {
                    tracing::warn!(launcher = %addr, error = %err, "a discovered launcher did not answer");
                    continue;
                }
            };
            let Some(name) = inventory.host.clone() else {
                tracing::warn!(launcher = %url, "a discovered launcher has no DESKGATE_LAUNCHER_NAME; it is not used");
                continue;
            };
            let row = match self.book.meet(&name).await {
                Ok(row) => row,
                Err(err) => {
                    tracing::warn!(host = %name, error = %err, "cannot record a discovered host; trying next round");
                    continue;
                }
            };
            if row.retired_at.is_some() {
                tracing::warn!(host = %name, launcher = %url, "a host declared gone answers again; it is not used (give it a new DESKGATE_LAUNCHER_NAME to bring it back)");
                continue;
            }
            if !answered.insert(row.host()) {
                tracing::warn!(host = %name, launcher = %url, "two launchers answer with the same name; only the first is used");
                continue;
            }
            self.answered(&row, url, inventory).await;
        }
        self.count_misses(&answered);
        self.publish_counts();
    }

    /// `deskgate_fleet_hosts{state}`: hosts per state (a closed set).
    fn publish_counts(&self) {
        let (mut up, mut unreachable, mut missing) = (0u32, 0u32, 0u32);
        for known in self.lock().values() {
            match known.view.state {
                HostState::Up => up += 1,
                HostState::Unreachable => unreachable += 1,
                HostState::Missing => missing += 1,
            }
        }
        for (state, count) in [
            ("up", up),
            ("unreachable", unreachable),
            ("missing", missing),
        ] {
            metrics::gauge!("deskgate_fleet_hosts", "state" => state).set(f64::from(count));
        }
    }

    /// Asks the launcher at `addr` for its name and GPUs.
    async fn probe(&self, addr: SocketAddr) -> Result<(Url, HostInventory), String> {
        let url = Url::parse(&format!("http://{addr}/")).map_err(|e| e.to_string())?;
        let remote = RemoteLauncher::new(url.clone(), self.token.clone()).map_err(|e| e.0)?;
        match tokio::time::timeout(PROBE_TIMEOUT, remote.inventory()).await {
            Ok(Ok(inventory)) => Ok((url, inventory)),
            Ok(Err(err)) => Err(err.0),
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        }
    }

    /// A host's launcher answered at `url` with `inventory`.
    async fn answered(&self, row: &HostRow, url: Url, inventory: HostInventory) {
        let host = row.host();
        let (joined, came_back, new_gpus, health_changes, drained) = {
            let mut hosts = self.lock();
            let known = hosts.entry(host).or_insert_with(|| Known::missing(row));
            match &known.remote {
                Some(remote) if remote.base() != url => {
                    tracing::info!(host = %row.name, number = host, launcher = %url, "a host's launcher moved");
                    if let Err(err) = remote.repoint(url.clone()) {
                        tracing::warn!(host = %row.name, error = %err.0, "cannot re-point a launcher");
                    }
                }
                Some(_) => {}
                None => {
                    // The URL was checked by the probe that reached it.
                    if let Ok(remote) = RemoteLauncher::new(url.clone(), self.token.clone()) {
                        self.pool.set_launcher(host, Arc::new(remote.clone()));
                        self.desktops.add(host, remote.clone());
                        known.remote = Some(remote);
                        tracing::info!(host = %row.name, number = host, launcher = %url, gpus = inventory.gpus.len(), "GPU host discovered");
                    }
                }
            }
            let before = std::mem::replace(&mut known.view.gpus, inventory.gpus.clone());
            let came_back = known.view.state == HostState::Unreachable;
            known.view.state = HostState::Up;
            known.view.url = Some(url.to_string());
            known.view.last_contact = Some(chrono::Utc::now());
            known.missed = 0;
            let joined = known.pooled.is_empty();
            let new_gpus: Vec<u32> = inventory
                .gpus
                .iter()
                .map(|g| g.index)
                .filter(|i| !known.pooled.contains(i))
                .collect();
            let health_changes: Vec<(u32, Option<String>)> = inventory
                .gpus
                .iter()
                .filter(|g| {
                    !joined
                        && before
                            .iter()
                            .find(|b| b.index == g.index)
                            .map(|b| &b.health)
                            != Some(&g.health)
                })
                .map(|g| (g.index, unhealthy_reason(&g.health)))
                .collect();
            // The operator's word as this fleet last heard it: a row read
            // before a drain changed it must not undo that drain.
            let drained = known.view.drained;
            (joined, came_back, new_gpus, health_changes, drained)
        };
        let Some(tree) = self.tree() else {
            return;
        };
        let addr = |index| GpuAddr { host, index };
        if !new_gpus.is_empty() {
            if joined && !self.sweep_strangers(host).await {
                // Its GPUs wait for the next round.
                return;
            }
            tree.add_gpus(new_gpus.iter().map(|&i| addr(i)).collect());
            for gpu in inventory
                .gpus
                .iter()
                .filter(|g| new_gpus.contains(&g.index))
            {
                if let Some(reason) = unhealthy_reason(&gpu.health) {
                    tree.set_health(addr(gpu.index), Some(reason));
                }
                if drained {
                    tree.drain(addr(gpu.index), true);
                }
            }
            if let Some(known) = self.lock().get_mut(&host) {
                known.pooled.extend(new_gpus.iter().copied());
            }
            tracing::info!(host = %row.name, number = host, gpus = new_gpus.len(), "a host's GPUs joined the pool");
        }
        for (index, unhealthy) in health_changes {
            tree.set_health(addr(index), unhealthy);
        }
        if came_back {
            tracing::info!(host = %row.name, number = host, "a host answers again");
            if !drained {
                for gpu in &inventory.gpus {
                    tree.drain(addr(gpu.index), false);
                }
            }
        }
    }

    /// Stops the session containers on `host` that belong to no live
    /// session of it (left by an earlier life of the host); true when the
    /// host is clean.
    async fn sweep_strangers(&self, host: u16) -> bool {
        let Some((_, store)) = self.tree.get() else {
            return false;
        };
        let Some(remote) = self.lock().get(&host).and_then(|k| k.remote.clone()) else {
            return false;
        };
        let containers = match remote.running().await {
            Ok(containers) => containers,
            Err(err) => {
                tracing::warn!(number = host, error = %err.0, "cannot list a joining host's containers");
                return false;
            }
        };
        for container in containers {
            let live = match store.load(container.session).await {
                Ok(record) => record.is_some_and(|r| {
                    r.state != SessionState::Ended
                        && r.gpu_addrs.first().is_some_and(|g| g.host == host)
                }),
                Err(err) => {
                    tracing::warn!(number = host, error = %err, "cannot check a joining host's containers");
                    return false;
                }
            };
            if live {
                continue;
            }
            tracing::warn!(number = host, session = %container.session, "stopping a container no live session owns on a joining host");
            if let Err(err) = remote.stop(container.session).await {
                tracing::warn!(number = host, error = %err.0, "cannot stop a stranger container");
                return false;
            }
        }
        true
    }

    /// Counts a missed round for every host that did not answer; one that
    /// missed [`MISSED_ROUNDS`] in a row turns unreachable and its GPUs take
    /// no new leases.
    fn count_misses(&self, answered: &HashSet<u16>) {
        let mut lost = Vec::new();
        for (host, known) in self.lock().iter_mut() {
            if answered.contains(host) || known.view.state != HostState::Up {
                continue;
            }
            known.missed += 1;
            if known.missed >= MISSED_ROUNDS {
                known.view.state = HostState::Unreachable;
                tracing::warn!(host = %known.view.name, number = host, last_contact = ?known.view.last_contact, "a GPU host stopped answering: no new sessions go there; its sessions are kept");
                lost.extend(
                    known
                        .pooled
                        .iter()
                        .map(|&index| GpuAddr { host: *host, index }),
                );
            }
        }
        if let Some(tree) = self.tree() {
            for gpu in lost {
                tree.drain(gpu, true);
            }
        }
    }

    /// Every host, retired ones left out, by number.
    pub fn views(&self) -> Vec<HostView> {
        self.lock().values().map(|k| k.view.clone()).collect()
    }

    /// Drains `name` (no new leases on any of its GPUs) or puts it back;
    /// its view, or `None` if the gate never met it.
    pub async fn set_drained(
        &self,
        name: &str,
        on: bool,
    ) -> Result<Option<HostView>, HostBookError> {
        let Some(row) = self.book.set_drained(name, on).await? else {
            return Ok(None);
        };
        let host = row.host();
        let (view, gpus) = {
            let mut hosts = self.lock();
            let Some(known) = hosts.get_mut(&host) else {
                return Ok(None);
            };
            known.view.drained = on;
            (known.view.clone(), known.pooled.clone())
        };
        // An unreachable host's GPUs stay drained whatever the operator says.
        let undrain = !on && view.state == HostState::Up;
        let tree = self.tree();
        tracing::info!(host = %name, number = host, drained = on, state = ?view.state, gpus = gpus.len(), tree = tree.is_some(), "an operator set a host's drain");
        if let Some(tree) = tree
            && (on || undrain)
        {
            for index in gpus {
                tree.drain(GpuAddr { host, index }, on);
            }
        }
        Ok(Some(view))
    }

    /// Declares `name` gone: it is no longer asked anything, its GPUs take
    /// no new leases and its sessions end (the ledger keeps what they were
    /// billed). Refused while its launcher answers.
    pub async fn retire(&self, name: &str) -> Result<Retired, HostBookError> {
        let Some(row) = self.book.named(name).await? else {
            return Ok(Retired::Unknown);
        };
        let host = row.host();
        if self
            .lock()
            .get(&host)
            .is_some_and(|k| k.view.state == HostState::Up)
        {
            return Ok(Retired::StillUp);
        }
        self.book.retire(name).await?;
        let pooled = self
            .lock()
            .remove(&host)
            .map(|k| k.pooled)
            .unwrap_or_default();
        self.pool.forget(host);
        self.desktops.remove(host);
        let mut ended = 0;
        if let Some((tree, store)) = self.tree.get() {
            for index in pooled {
                tree.drain(GpuAddr { host, index }, true);
            }
            let active = store
                .load_active()
                .await
                .map_err(|e| HostBookError::Database(e.to_string()))?;
            for record in active
                .iter()
                .filter(|r| r.gpu_addrs.first().is_some_and(|g| g.host == host))
            {
                if tree.end_session(record.id).await {
                    ended += 1;
                }
            }
        }
        tracing::warn!(host = %name, number = host, ended, "a GPU host was declared gone");
        Ok(Retired::Done { ended })
    }
}

/// What [`Fleet::retire`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Retired {
    /// The gate never met a host of that name.
    Unknown,
    /// Its launcher answers: it is not gone.
    StillUp,
    /// Retired; this many of its sessions were ended.
    Done {
        /// Sessions ended.
        ended: usize,
    },
}

impl Known {
    fn missing(row: &HostRow) -> Self {
        Self {
            view: HostView {
                number: row.host(),
                name: row.name.clone(),
                url: None,
                state: HostState::Missing,
                drained: row.drained,
                gpus: Vec::new(),
                last_contact: None,
            },
            remote: None,
            missed: 0,
            pooled: BTreeSet::new(),
        }
    }
}

fn unhealthy_reason(health: &GpuHealth) -> Option<String> {
    match health {
        GpuHealth::Unhealthy(reason) => Some(reason.clone()),
        _ => None,
    }
}
