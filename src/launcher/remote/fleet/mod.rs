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

use deskgate_actors::ports::{GpuAddr, Launcher, SessionState, SessionStore};
use deskgate_actors::protocol::JoiningGpu;
use futures::future::join_all;
use url::Url;

use crate::launcher::gpu::GpuHealth;
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

mod ports;

pub use ports::{DnsResolver, GpuPoolControl, HostState, HostView, Resolver};

/// What the fleet holds per host.
struct Known {
    view: HostView,
    /// Its launcher's client, once seated in the pool.
    remote: Option<RemoteLauncher>,
    missed: u32,
    /// Its GPUs in the scheduler's pool.
    pooled: BTreeSet<u32>,
    /// Whether the tree was last told this host is out; `None`: not told.
    told_out: Option<bool>,
}

impl Known {
    /// Out of the pool: drained by an operator, or not answering.
    fn is_out(&self) -> bool {
        self.view.drained || self.view.state != HostState::Up
    }

    fn pooled_addrs(&self) -> Vec<GpuAddr> {
        let host = self.view.number;
        self.pooled
            .iter()
            .map(|&index| GpuAddr { host, index })
            .collect()
    }
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
    /// One change at a time: a round, an operator's drain or retire, the
    /// tree attaching. Each reads the hosts and tells the tree; two at once
    /// could tell it in the wrong order.
    changes: tokio::sync::Mutex<()>,
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
    /// Every GPU of every host seated in the pool, in address order.
    pub gpus: Vec<GpuAddr>,
    /// Those that start out of the pool (a drained host's, unhealthy ones).
    pub out: Vec<JoiningGpu>,
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
            changes: tokio::sync::Mutex::new(()),
        })
    }

    /// Runs discovery every [`DISCOVERY_INTERVAL`] from now on, tree or no
    /// tree (the operator sees the hosts while recovery waits for one).
    /// Until the tree runs, these rounds only look: a host is seated in the
    /// pool by [`Fleet::first_pool`] (whose GPUs the tree starts with) or
    /// after the tree runs (when its GPUs join it), never in between, where
    /// recovery would list containers whose GPUs it does not have.
    pub fn discover(self: &Arc<Self>) {
        let fleet = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(fleet) = fleet.upgrade() else { return };
                {
                    let _one = fleet.changes.lock().await;
                    match fleet.load_book().await {
                        Ok(()) => fleet.round(fleet.tree.get().is_some()).await,
                        Err(err) => {
                            tracing::warn!(error = %err, "cannot read the GPU hosts met before; trying next round");
                        }
                    }
                }
                drop(fleet);
                tokio::time::sleep(DISCOVERY_INTERVAL).await;
            }
        });
    }

    /// Every host the book knows and this fleet does not is missing until
    /// it answers (once; later hosts are met by rounds).
    async fn load_book(&self) -> Result<(), HostBookError> {
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

    /// The tree's first pool: the GPUs of every host seated by a round of
    /// its own. Called for each attempt to start the tree; hold its answer
    /// until [`Fleet::attach`] (no round seats a host in between).
    pub async fn first_pool(&self) -> Result<FirstPool, HostBookError> {
        let _one = self.changes.lock().await;
        self.load_book().await?;
        self.round(true).await;
        let mut first = FirstPool {
            gpus: Vec::new(),
            out: Vec::new(),
        };
        for known in self.lock().values_mut() {
            // What an earlier attempt counted went with its tree.
            known.pooled.clear();
            known.told_out = None;
            if known.remote.is_none() {
                continue;
            }
            let host = known.view.number;
            let out = known.is_out();
            for gpu in &known.view.gpus {
                let addr = GpuAddr {
                    host,
                    index: gpu.index,
                };
                first.gpus.push(addr);
                let unhealthy = unhealthy_reason(&gpu.health);
                if out || unhealthy.is_some() {
                    first.out.push(JoiningGpu {
                        addr,
                        host_out: out,
                        unhealthy,
                    });
                }
                known.pooled.insert(gpu.index);
            }
            known.told_out = Some(out);
        }
        first.gpus.sort_unstable();
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
    /// hosts go out and come back in it.
    pub async fn attach(&self, tree: Arc<dyn GpuPoolControl>, store: Arc<dyn SessionStore>) {
        let _one = self.changes.lock().await;
        if self.tree.set((tree, store)).is_err() {
            return;
        }
        // Rounds between the first pool and now only looked, but a host may
        // have gone quiet or been drained meanwhile: tell the tree what
        // changed since the first pool.
        let hosts: Vec<u16> = self.lock().keys().copied().collect();
        for host in hosts {
            self.tell_out(host);
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

    /// Tells the tree whether `host` is out, if that changed since it was
    /// last told (and the tree runs and holds its GPUs).
    fn tell_out(&self, host: u16) {
        let Some(tree) = self.tree() else {
            return;
        };
        let mut hosts = self.lock();
        let Some(known) = hosts.get_mut(&host) else {
            return;
        };
        let out = known.is_out();
        if known.pooled.is_empty() || known.told_out == Some(out) {
            return;
        }
        known.told_out = Some(out);
        // Sent under the lock: the tree hears changes in the order made.
        tree.set_host_out(known.pooled_addrs(), out);
    }

    /// One round: resolve, ask every address, update every host; hosts not
    /// seated yet are seated only when `seat` (see [`Fleet::discover`]).
    /// The caller holds `changes`.
    async fn round(&self, seat: bool) {
        let addrs = match self.resolver.resolve().await {
            Ok(addrs) => addrs,
            Err(err) => {
                // Not "no launchers": a resolver that fails says nothing
                // about the hosts, which keep their state this round.
                tracing::warn!(error = %err, "cannot resolve the launchers; every host keeps its state this round");
                return;
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
            if !crate::config::is_host_name(&name) {
                tracing::warn!(launcher = %url, "a discovered launcher's name is not 1 to 64 of A-Za-z0-9._-; it is not used");
                continue;
            }
            if inventory.gpus.len() > MAX_GPUS_PER_HOST {
                tracing::warn!(launcher = %url, gpus = inventory.gpus.len(), "a discovered launcher lists more GPUs than a host can have; it is not used");
                continue;
            }
            let Some(host) = self.number_of(&name, &url).await else {
                continue;
            };
            if !answered.insert(host) {
                tracing::warn!(host = %name, launcher = %url, "two launchers answer with the same name; only the first is used");
                continue;
            }
            self.answered(host, url, inventory, seat).await;
        }
        self.count_misses(&answered);
        self.publish_counts();
    }

    /// The number of the host called `name`: known hosts from memory (a
    /// database that does not answer must not make them miss rounds), new
    /// ones from the book; `None` if it cannot be had or the host is gone.
    async fn number_of(&self, name: &str, url: &Url) -> Option<u16> {
        let known = self
            .lock()
            .values()
            .find(|k| k.view.name == name)
            .map(|k| k.view.number);
        if known.is_some() {
            return known;
        }
        let row = match self.book.meet(name).await {
            Ok(row) => row,
            Err(err) => {
                tracing::warn!(host = %name, error = %err, "cannot record a discovered host; trying next round");
                return None;
            }
        };
        if row.retired_at.is_some() {
            tracing::warn!(host = %name, launcher = %url, "a host declared gone answers again; it is not used (give it a new DESKGATE_LAUNCHER_NAME to bring it back)");
            return None;
        }
        self.lock()
            .entry(row.host())
            .or_insert_with(|| Known::missing(&row));
        Some(row.host())
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

    /// Host `host`'s launcher answered at `url` with `inventory`.
    async fn answered(&self, host: u16, url: Url, inventory: HostInventory, seat: bool) {
        let (joined, new_gpus, health_changes, name) = {
            let mut hosts = self.lock();
            let Some(known) = hosts.get_mut(&host) else {
                return;
            };
            let name = known.view.name.clone();
            match &known.remote {
                Some(remote) if remote.base() != url => {
                    tracing::info!(host = %name, number = host, launcher = %url, "a host's launcher moved");
                    if let Err(err) = remote.repoint(url.clone()) {
                        tracing::warn!(host = %name, error = %err.0, "cannot re-point a launcher");
                    }
                }
                Some(_) => {}
                None if seat => {
                    // The URL was checked by the probe that reached it.
                    if let Ok(remote) = RemoteLauncher::new(url.clone(), self.token.clone()) {
                        self.pool.set_launcher(host, Arc::new(remote.clone()));
                        self.desktops.add(host, remote.clone());
                        known.remote = Some(remote);
                        tracing::info!(host = %name, number = host, launcher = %url, gpus = inventory.gpus.len(), "GPU host discovered");
                    }
                }
                None => {}
            }
            let before = std::mem::replace(&mut known.view.gpus, inventory.gpus.clone());
            if known.view.state == HostState::Unreachable {
                tracing::info!(host = %name, number = host, "a host answers again");
            }
            known.view.state = HostState::Up;
            known.view.url = Some(url.to_string());
            known.view.last_contact = Some(chrono::Utc::now());
            known.missed = 0;
            let joined = known.pooled.is_empty();
            let new_gpus: Vec<JoiningGpu> = if known.remote.is_some() {
                let out = known.is_out();
                inventory
                    .gpus
                    .iter()
                    .filter(|g| !known.pooled.contains(&g.index))
                    .map(|g| JoiningGpu {
                        addr: GpuAddr {
                            host,
                            index: g.index,
                        },
                        host_out: out,
                        unhealthy: unhealthy_reason(&g.health),
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let health_changes: Vec<(u32, Option<String>)> = inventory
                .gpus
                .iter()
                .filter(|g| known.pooled.contains(&g.index))
                .filter(|g| {
                    before
                        .iter()
                        .find(|b| b.index == g.index)
                        .map(|b| &b.health)
                        != Some(&g.health)
                })
                .map(|g| (g.index, unhealthy_reason(&g.health)))
                .collect();
            (joined, new_gpus, health_changes, name)
        };
        let Some(tree) = self.tree() else {
            return;
        };
        if !new_gpus.is_empty() {
            if joined && !self.sweep_strangers(host).await {
                // Its GPUs wait for the next round.
                return;
            }
            let mut hosts = self.lock();
            if let Some(known) = hosts.get_mut(&host) {
                // Joined in the state it has now (the sweep took time).
                let out = known.is_out();
                let joining: Vec<JoiningGpu> = new_gpus
                    .into_iter()
                    .map(|g| JoiningGpu { host_out: out, ..g })
                    .collect();
                known.pooled.extend(joining.iter().map(|g| g.addr.index));
                known.told_out = Some(out);
                tracing::info!(host = %name, number = host, gpus = joining.len(), "a host's GPUs joined the pool");
                tree.add_gpus(joining);
            }
        }
        for (index, unhealthy) in health_changes {
            tree.set_health(GpuAddr { host, index }, unhealthy);
        }
        self.tell_out(host);
    }

    /// Stops the session containers on `host` that belong to no live
    /// session (ended, or never known); true when nothing else runs there
    /// but its own live sessions. A container of a live session of another
    /// host (a node that rejoined under a new name) is left alone, and the
    /// host is not pooled: an operator has to look.
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
        let mut clean = true;
        for container in containers {
            let record = match store.load(container.session).await {
                Ok(record) => record.filter(|r| r.state != SessionState::Ended),
                Err(err) => {
                    tracing::warn!(number = host, error = %err, "cannot check a joining host's containers");
                    return false;
                }
            };
            match record {
                Some(r) if r.gpu_addrs.first().is_some_and(|g| g.host == host) => {}
                Some(_) => {
                    tracing::error!(number = host, session = %container.session, "a joining host runs a live session of another host; its GPUs stay out of the pool until that session ends");
                    clean = false;
                }
                None => {
                    tracing::warn!(number = host, session = %container.session, "stopping a container no live session owns on a joining host");
                    if let Err(err) = remote.stop(container.session).await {
                        tracing::warn!(number = host, error = %err.0, "cannot stop a stranger container");
                        return false;
                    }
                }
            }
        }
        clean
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
                lost.push(*host);
            }
        }
        for host in lost {
            self.tell_out(host);
        }
    }

    /// Every host, retired ones left out, by number.
    pub fn views(&self) -> Vec<HostView> {
        self.lock().values().map(|k| k.view.clone()).collect()
    }

    /// Drains `name` (no new leases on any of its GPUs) or puts it back;
    /// its view, or `None` if the gate never met it (or it is gone).
    pub async fn set_drained(
        &self,
        name: &str,
        on: bool,
    ) -> Result<Option<HostView>, HostBookError> {
        let _one = self.changes.lock().await;
        let Some(row) = self.book.set_drained(name, on).await? else {
            return Ok(None);
        };
        let host = row.host();
        let view = {
            let mut hosts = self.lock();
            let Some(known) = hosts.get_mut(&host) else {
                return Ok(None);
            };
            known.view.drained = on;
            known.view.clone()
        };
        tracing::info!(host = %name, number = host, drained = on, state = ?view.state, "an operator set a host's drain");
        self.tell_out(host);
        Ok(Some(view))
    }

    /// Declares `name` gone: it is no longer asked anything, its GPUs take
    /// no new leases and its sessions end (the ledger keeps what they were
    /// billed). Refused while its launcher answers.
    pub async fn retire(&self, name: &str) -> Result<Retired, HostBookError> {
        let _one = self.changes.lock().await;
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
        let gone = self.lock().remove(&host);
        self.pool.forget(host);
        self.desktops.remove(host);
        let mut ended = 0;
        if let Some((tree, store)) = self.tree.get() {
            if let Some(known) = gone
                && !known.pooled.is_empty()
            {
                tree.set_host_out(known.pooled_addrs(), true);
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

/// More GPUs than one host can hold is a launcher answering nonsense.
const MAX_GPUS_PER_HOST: usize = 64;

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
    /// A host met before, not seen yet by this fleet.
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
            told_out: None,
        }
    }
}

fn unhealthy_reason(health: &GpuHealth) -> Option<String> {
    match health {
        GpuHealth::Unhealthy(reason) => Some(reason.clone()),
        _ => None,
    }
}
