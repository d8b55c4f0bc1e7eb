//! The scheduling policy as a plain data structure, so that it can be tested
//! exhaustively and benchmarked without actors or clocks.
//!
//! - **FIFO across wallets.** Waiters are served in arrival order; with
//!   `one_per_wallet` a wallet has at most one queued-or-running claim.
//! - **Gang allocation.** A claim for k GPUs gets k GPUs on one host (best
//!   fit: the host with the fewest free GPUs that still has k).
//! - **Backfill that cannot delay the head.** When the head does not fit,
//!   its *shadow time* is the earliest moment enough GPUs are certain to be
//!   free, because every running session has a latest possible end (its
//!   wallet's credit bounds it). A later claim may start now only if it fits
//!   now and its own latest end is no later than the shadow time, so the head
//!   starts no later than if it had not run. A head that can never fit (its GPUs are drained)
//!   blocks nobody.
//! - **ETAs.** [`Queue::statuses`] simulates strict FIFO with every session
//!   running to its latest end. The head's simulated start is its shadow
//!   time, a guaranteed bound; on a single host every waiter's is. On
//!   several hosts, sessions that end early can make best fit pick another
//!   host than the simulation did, so for waiters behind the head it is an
//!   estimate, recomputed and republished on every change. It is O(n log n)
//!   for n waiters; the grant path is O(log n) plus a bounded backfill scan.
//!
//! Time is plain milliseconds on the caller's clock ([`Millis`]). Claims
//! and their refusals travel between actors, so they live in
//! [`crate::protocol`]; [`Grant`] and [`WaiterStatus`] are this structure's
//! answers, which the scheduler turns into messages.
//!
//! The file runs past 700 lines because its unit tests take the last 250;
//! the policy itself is about 615.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};

use crate::ports::{GpuAddr, SessionId, WalletId};
use crate::protocol::{Claim, ClaimError, Millis};

/// How many waiters behind a blocked head one backfill pass examines. Bounds
/// the cost of a decision; the head itself is never passed over by FIFO.
pub const DEFAULT_BACKFILL_DEPTH: usize = 256;

/// Scheduling options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// Allow later claims to start ahead of a blocked head when they cannot
    /// delay it.
    pub backfill: bool,
    /// At most one queued-or-running claim per wallet.
    pub one_per_wallet: bool,
    /// Waiters behind a blocked head examined per backfill pass.
    pub backfill_depth: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            backfill: true,
            one_per_wallet: true,
            backfill_depth: DEFAULT_BACKFILL_DEPTH,
        }
    }
}

/// GPUs the queue assigns to a session. The scheduler leases them and
/// announces a [`crate::protocol::LeaseGrant`]; this never leaves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The session.
    pub session: SessionId,
    /// Its wallet.
    pub wallet: WalletId,
    /// The host all its GPUs are on.
    pub host: u16,
    /// The GPUs, lowest index first.
    pub gpus: Vec<GpuAddr>,
    /// Its latest possible end (start + runway).
    pub latest_end: Millis,
    /// True when it started ahead of an earlier waiter.
    pub backfilled: bool,
}

/// Where a waiter stands; the scheduler publishes it as a
/// [`crate::protocol::QueueStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaiterStatus {
    /// The session.
    pub session: SessionId,
    /// 1 for the head of the queue.
    pub position: usize,
    /// Upper bound on its start, or `None` when no host can currently ever
    /// fit it (its GPUs are drained or unhealthy).
    pub start_bound: Option<Millis>,
}

#[derive(Clone, Debug)]
struct Waiter {
    session: SessionId,
    wallet: WalletId,
    gpus: u32,
    runway_ms: Millis,
}

#[derive(Clone, Debug)]
struct Running {
    wallet: WalletId,
    host: u16,
    gpus: Vec<GpuAddr>,
    latest_end: Millis,
}

#[derive(Clone, Copy, Debug)]
enum Entry {
    Waiting(u64),
    Running,
}

/// Why a GPU is out of the pool. Each reason is set and cleared on its own
/// (an operator's undrain does not put back an unhealthy GPU, a host that
/// answers again does not undo an operator's drain); a GPU is offered only
/// while no reason holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutReason {
    /// An operator drained this GPU.
    Drained,
    /// Its launcher or NVML reports it unhealthy.
    Unhealthy,
    /// Its host is drained by an operator or does not answer.
    HostOut,
    /// It refused a lease the scheduler chose it for, until an operator
    /// undrains it.
    Refused,
}

impl OutReason {
    fn bit(self) -> u8 {
        match self {
            Self::Drained => 1,
            Self::Unhealthy => 2,
            Self::HostOut => 4,
            Self::Refused => 8,
        }
    }
}

#[derive(Clone, Debug)]
struct Slot {
    addr: GpuAddr,
    /// No reason of [`OutReason`] holds.
    available: bool,
    /// The [`OutReason`]s that hold, as bits.
    out: u8,
    holder: Option<SessionId>,
}

#[derive(Clone, Debug)]
struct Host {
    id: u16,
    slots: Vec<Slot>,
    /// Slots that are available and not held.
    free: u32,
}

impl Host {
    /// GPUs this host could ever offer at once (available ones).
    fn capacity(&self) -> u32 {
        self.slots.iter().filter(|s| s.available).count() as u32
    }
}

/// The queue and the pool it allocates from.
#[derive(Clone, Debug)]
pub struct Queue {
    policy: Policy,
    hosts: Vec<Host>,
    /// Waiters in FIFO order, by ticket.
    waiting: BTreeMap<u64, Waiter>,
    running: HashMap<SessionId, Running>,
    /// Running sessions by latest end, for shadow-time computation.
    ends: BTreeSet<(Millis, SessionId)>,
    entries: HashMap<SessionId, Entry>,
    wallets: HashSet<WalletId>,
    next_ticket: u64,
    /// What [`Queue::status_of`] keeps between calls; any change but an
    /// appended claim drops it.
    status_cache: Option<StatusCache>,
}

/// The simulation behind the last full status pass, kept so that claims
/// appended since get their status by simulating only themselves: with
/// thousands waiting, answering each new claim with its position must not
/// cost a pass over the whole queue.
#[derive(Clone, Debug)]
struct StatusCache {
    /// The pool's future after every simulated waiter.
    timeline: Timeline,
    /// The last ticket simulated.
    last_ticket: Option<u64>,
    /// The simulated waiters' statuses.
    statuses: HashMap<SessionId, WaiterStatus>,
    /// The earliest end of a running session and the earliest start bound
    /// simulated: after either, a pass made then would place the waiters
    /// differently (it starts nothing and returns nothing before its now).
    valid_until: Millis,
}

impl Queue {
    /// A queue over `gpus` (any order; grouped by host).
    pub fn new(gpus: impl IntoIterator<Item = GpuAddr>, policy: Policy) -> Self {
        let mut by_host: BTreeMap<u16, Vec<GpuAddr>> = BTreeMap::new();
        for addr in gpus {
            by_host.entry(addr.host).or_default().push(addr);
        }
        let hosts = by_host
            .into_iter()
            .map(|(id, mut addrs)| {
                addrs.sort();
                addrs.dedup();
                Host {
                    id,
                    free: addrs.len() as u32,
                    slots: addrs
                        .into_iter()
                        .map(|addr| Slot {
                            addr,
                            available: true,
                            out: 0,
                            holder: None,
                        })
                        .collect(),
                }
            })
            .collect();
        Self {
            policy,
            hosts,
            waiting: BTreeMap::new(),
            running: HashMap::new(),
            ends: BTreeSet::new(),
            entries: HashMap::new(),
            wallets: HashSet::new(),
            next_ticket: 0,
            status_cache: None,
        }
    }

    /// Adds GPUs to the pool (a host that joined, or one that offers more
    /// now), available and free; GPUs already in the pool are left as they
    /// are. Call [`Queue::schedule`] after.
    pub fn add_gpus(&mut self, gpus: impl IntoIterator<Item = GpuAddr>) {
        for addr in gpus {
            let index = match self.hosts.binary_search_by_key(&addr.host, |h| h.id) {
                Ok(index) => index,
                Err(at) => {
                    self.hosts.insert(
                        at,
                        Host {
                            id: addr.host,
                            slots: Vec::new(),
                            free: 0,
                        },
                    );
                    at
                }
            };
            let host = &mut self.hosts[index];
            if host.slots.iter().any(|s| s.addr == addr) {
                continue;
            }
            let at = host.slots.partition_point(|s| s.addr < addr);
            host.slots.insert(
                at,
                Slot {
                    addr,
                    available: true,
                    out: 0,
                    holder: None,
                },
            );
            host.free += 1;
            self.status_cache = None;
        }
    }

    /// The policy in force.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Adds a claim at the back of the queue. Call [`Queue::schedule`] after.
    pub fn claim(&mut self, claim: Claim) -> Result<(), ClaimError> {
        if claim.gpus == 0 {
            return Err(ClaimError::NoGpus);
        }
        let largest = self
            .hosts
            .iter()
            .map(|h| h.slots.len() as u32)
            .max()
            .unwrap_or(0);
        if claim.gpus > largest {
            return Err(ClaimError::TooLarge {
                asked: claim.gpus,
                largest,
            });
        }
        if claim.runway_ms < 1000 {
            return Err(ClaimError::NoCredit { gpus: claim.gpus });
        }
        if self.entries.contains_key(&claim.session) {
            return Err(ClaimError::Duplicate(claim.session));
        }
        if self.policy.one_per_wallet && self.wallets.contains(&claim.wallet) {
            return Err(ClaimError::WalletBusy(claim.wallet));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.wallets.insert(claim.wallet.clone());
        self.entries.insert(claim.session, Entry::Waiting(ticket));
        self.waiting.insert(
            ticket,
            Waiter {
                session: claim.session,
                wallet: claim.wallet,
                gpus: claim.gpus,
                runway_ms: claim.runway_ms,
            },
        );
        Ok(())
    }

    /// Removes a waiter; false if it was not waiting.
    pub fn cancel(&mut self, session: SessionId) -> bool {
        let Some(Entry::Waiting(ticket)) = self.entries.get(&session).copied() else {
            return false;
        };
        self.entries.remove(&session);
        self.status_cache = None;
        if let Some(waiter) = self.waiting.remove(&ticket) {
            self.forget_wallet(&waiter.wallet);
        }
        true
    }

    /// Frees a running session's GPUs; returns them, or `None` if the
    /// session was not running. Call [`Queue::schedule`] after.
    pub fn release(&mut self, session: SessionId) -> Option<Vec<GpuAddr>> {
        let Some(Entry::Running) = self.entries.get(&session) else {
            return None;
        };
        self.entries.remove(&session);
        self.status_cache = None;
        let running = self.running.remove(&session)?;
        self.ends.remove(&(running.latest_end, session));
        let host = self.host_mut(running.host);
        for slot in host.slots.iter_mut().filter(|s| s.holder == Some(session)) {
            slot.holder = None;
            if slot.available {
                host.free += 1;
            }
        }
        self.forget_wallet(&running.wallet);
        Some(running.gpus)
    }

    /// Marks `gpus` as held by a session that is already running (recovery
    /// after a restart). Fails if any is held by another session.
    pub fn adopt(
        &mut self,
        session: SessionId,
        wallet: WalletId,
        gpus: &[GpuAddr],
        latest_end: Millis,
    ) -> Result<(), ClaimError> {
        if self.entries.contains_key(&session) {
            return Err(ClaimError::Duplicate(session));
        }
        if self.policy.one_per_wallet && self.wallets.contains(&wallet) {
            return Err(ClaimError::WalletBusy(wallet));
        }
        let host_id = gpus.first().map(|g| g.host).ok_or(ClaimError::NoGpus)?;
        let host_index = self.host_index(host_id).ok_or(ClaimError::TooLarge {
            asked: gpus.len() as u32,
            largest: 0,
        })?;
        let host = &mut self.hosts[host_index];
        let all_free = gpus.iter().all(|g| {
            g.host == host_id
                && host
                    .slots
                    .iter()
                    .any(|s| s.addr == *g && s.holder.is_none())
        });
        if !all_free {
            return Err(ClaimError::Duplicate(session));
        }
        for slot in host.slots.iter_mut().filter(|s| gpus.contains(&s.addr)) {
            slot.holder = Some(session);
            if slot.available {
                host.free -= 1;
            }
        }
        self.status_cache = None;
        self.start_running(session, wallet, host_id, gpus.to_vec(), latest_end);
        Ok(())
    }

    /// Changes how long a session can run: for a waiter its runway, for a
    /// running session its latest end (credit was added or used up early).
    pub fn update_bound(&mut self, session: SessionId, runway_ms: Millis, now: Millis) {
        self.status_cache = None;
        match self.entries.get(&session).copied() {
            Some(Entry::Waiting(ticket)) => {
                if let Some(waiter) = self.waiting.get_mut(&ticket) {
                    waiter.runway_ms = runway_ms;
                }
            }
            Some(Entry::Running) => {
                if let Some(running) = self.running.get_mut(&session) {
                    self.ends.remove(&(running.latest_end, session));
                    running.latest_end = now + runway_ms;
                    self.ends.insert((running.latest_end, session));
                }
            }
            None => {}
        }
    }

    /// Sets (`on`) or clears one reason for a GPU to be out of the pool; it
    /// is available while none holds. A held GPU stays with its session; it
    /// just does not come back to the pool while out.
    pub fn set_out(&mut self, addr: GpuAddr, reason: OutReason, on: bool) {
        let Some(index) = self.host_index(addr.host) else {
            return;
        };
        let host = &mut self.hosts[index];
        let Some(slot) = host.slots.iter_mut().find(|s| s.addr == addr) else {
            return;
        };
        slot.out = if on {
            slot.out | reason.bit()
        } else {
            slot.out & !reason.bit()
        };
        let available = slot.out == 0;
        if slot.available != available {
            self.status_cache = None;
            slot.available = available;
            if slot.holder.is_none() {
                if available {
                    host.free += 1;
                } else {
                    host.free -= 1;
                }
            }
        }
    }

    /// Grants every claim that may start now: the head while it fits, then
    /// backfill behind a blocked head.
    pub fn schedule(&mut self, now: Millis) -> Vec<Grant> {
        let mut grants = Vec::new();
        while let Some((&ticket, head)) = self.waiting.first_key_value() {
            match self.best_fit(head.gpus) {
                Some(host_index) => grants.push(self.grant(ticket, host_index, now, false)),
                None => break,
            }
        }
        if !self.policy.backfill {
            return grants;
        }
        let Some((&head_ticket, head)) = self.waiting.first_key_value() else {
            return grants;
        };
        let shadow = self.shadow_time(head.gpus, now);
        loop {
            let max_free = self.hosts.iter().map(|h| h.free).max().unwrap_or(0);
            if max_free == 0 {
                break;
            }
            let candidate = self
                .waiting
                .range(head_ticket + 1..)
                .take(self.policy.backfill_depth)
                .find(|(_, w)| w.gpus <= max_free && shadow.is_none_or(|s| now + w.runway_ms <= s))
                .map(|(&t, w)| (t, w.gpus));
            let Some((ticket, gpus)) = candidate else {
                break;
            };
            // `max_free` says some host fits it.
            let host_index = self.best_fit(gpus).expect("a host with enough free GPUs");
            grants.push(self.grant(ticket, host_index, now, true));
        }
        grants
    }

    /// When a claim for `gpus` GPUs could start at the latest if every
    /// running session ran to its latest end; `None` if no host can ever
    /// offer that many.
    pub fn shadow_time(&self, gpus: u32, now: Millis) -> Option<Millis> {
        let mut timeline = Timeline::new(self, now);
        timeline.start_when_fits(gpus).map(|(t, _)| t)
    }

    /// Every waiter's position and start bound, head first.
    pub fn statuses(&self, now: Millis) -> Vec<WaiterStatus> {
        let mut timeline = Timeline::new(self, now);
        self.waiting
            .values()
            .enumerate()
            .map(|(i, w)| timeline.simulate(w, i + 1))
            .collect()
    }

    /// One waiter's position and start bound, as [`Queue::statuses`] gives
    /// it, without a pass over the whole queue for each new claim: the last
    /// pass is kept while claims were only appended (and the clock has not
    /// passed a running session's end or a simulated start), and extended by
    /// the claims appended since.
    pub fn status_of(&mut self, session: SessionId, now: Millis) -> Option<WaiterStatus> {
        let Some(Entry::Waiting(ticket)) = self.entries.get(&session).copied() else {
            return None;
        };
        if self
            .status_cache
            .as_ref()
            .is_none_or(|cache| now > cache.valid_until)
        {
            self.status_cache = Some(StatusCache {
                timeline: Timeline::new(self, now),
                last_ticket: None,
                statuses: HashMap::with_capacity(self.waiting.len()),
                valid_until: self.ends.first().map_or(Millis::MAX, |(end, _)| *end),
            });
        }
        let cache = self.status_cache.as_mut().expect("just made");
        let from = cache.last_ticket.map_or(0, |last| last + 1);
        if ticket >= from {
            // As a pass made now would: nothing starts before now.
            cache.timeline.now = cache.timeline.now.max(now);
            for (&ticket, waiter) in self.waiting.range(from..) {
                let status = cache.timeline.simulate(waiter, cache.statuses.len() + 1);
                if let Some(start) = status.start_bound {
                    cache.valid_until = cache.valid_until.min(start);
                }
                cache.statuses.insert(waiter.session, status);
                cache.last_ticket = Some(ticket);
            }
        }
        cache.statuses.get(&session).copied()
    }

    /// Waiters.
    pub fn waiting_len(&self) -> usize {
        self.waiting.len()
    }

    /// Running sessions.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Free, available GPUs.
    pub fn free_gpus(&self) -> u32 {
        self.hosts.iter().map(|h| h.free).sum()
    }

    /// GPUs in the pool, available or not.
    pub fn total_gpus(&self) -> u32 {
        self.hosts.iter().map(|h| h.slots.len() as u32).sum()
    }

    /// Waiters asking for exactly `gpus` GPUs.
    pub fn waiting_for(&self, gpus: u32) -> usize {
        self.waiting.values().filter(|w| w.gpus == gpus).count()
    }

    /// True if any host has `gpus` free GPUs now.
    pub fn fits_now(&self, gpus: u32) -> bool {
        self.best_fit(gpus).is_some()
    }

    /// The GPUs a running session holds.
    pub fn gpus_of(&self, session: SessionId) -> Option<&[GpuAddr]> {
        self.running.get(&session).map(|r| r.gpus.as_slice())
    }

    /// True if the session is waiting.
    pub fn is_waiting(&self, session: SessionId) -> bool {
        matches!(self.entries.get(&session), Some(Entry::Waiting(_)))
    }

    fn grant(&mut self, ticket: u64, host_index: usize, now: Millis, backfilled: bool) -> Grant {
        let waiter = self.waiting.remove(&ticket).expect("granted waiter exists");
        self.status_cache = None;
        let host = &mut self.hosts[host_index];
        let mut gpus = Vec::with_capacity(waiter.gpus as usize);
        for slot in host
            .slots
            .iter_mut()
            .filter(|s| s.available && s.holder.is_none())
            .take(waiter.gpus as usize)
        {
            slot.holder = Some(waiter.session);
            gpus.push(slot.addr);
        }
        debug_assert_eq!(gpus.len(), waiter.gpus as usize);
        host.free -= waiter.gpus;
        let host_id = host.id;
        let latest_end = now.saturating_add(waiter.runway_ms);
        self.start_running(
            waiter.session,
            waiter.wallet.clone(),
            host_id,
            gpus.clone(),
            latest_end,
        );
        Grant {
            session: waiter.session,
            wallet: waiter.wallet,
            host: host_id,
            gpus,
            latest_end,
            backfilled,
        }
    }

    fn start_running(
        &mut self,
        session: SessionId,
        wallet: WalletId,
        host: u16,
        gpus: Vec<GpuAddr>,
        latest_end: Millis,
    ) {
        self.wallets.insert(wallet.clone());
        self.entries.insert(session, Entry::Running);
        self.ends.insert((latest_end, session));
        self.running.insert(
            session,
            Running {
                wallet,
                host,
                gpus,
                latest_end,
            },
        );
    }

    /// The host with the fewest free GPUs that still has `gpus` free.
    fn best_fit(&self, gpus: u32) -> Option<usize> {
        best_fit(self.hosts.iter().map(|h| h.free), gpus)
    }

    fn host_index(&self, id: u16) -> Option<usize> {
        self.hosts.iter().position(|h| h.id == id)
    }

    fn host_mut(&mut self, id: u16) -> &mut Host {
        let index = self
            .host_index(id)
            .expect("running sessions hold GPUs of known hosts");
        &mut self.hosts[index]
    }

    fn forget_wallet(&mut self, wallet: &WalletId) {
        // With one claim per wallet the set holds exactly the busy wallets;
        // without it, keep the wallet while it still has another claim.
        let still_busy = !self.policy.one_per_wallet
            && (self.waiting.values().any(|w| &w.wallet == wallet)
                || self.running.values().any(|r| &r.wallet == wallet));
        if !still_busy {
            self.wallets.remove(wallet);
        }
    }
}

fn best_fit(free: impl Iterator<Item = u32>, gpus: u32) -> Option<usize> {
    free.enumerate()
        .filter(|&(_, f)| f >= gpus)
        .min_by_key(|&(i, f)| (f, i))
        .map(|(i, _)| i)
}

/// A what-if view of the pool's future: free GPUs per host and the times
/// held GPUs come back.
#[derive(Clone, Debug)]
struct Timeline {
    now: Millis,
    free: Vec<u32>,
    capacity: Vec<u32>,
    /// (time, host index, GPUs returning).
    returns: BinaryHeap<Reverse<(Millis, usize, u32)>>,
}

impl Timeline {
    fn new(queue: &Queue, now: Millis) -> Self {
        let free = queue.hosts.iter().map(|h| h.free).collect();
        let capacity = queue.hosts.iter().map(Host::capacity).collect();
        let mut returns = BinaryHeap::with_capacity(queue.running.len());
        for (end, session) in &queue.ends {
            let running = &queue.running[session];
            let host_index = queue.host_index(running.host).expect("known host");
            let host = &queue.hosts[host_index];
            let back = host
                .slots
                .iter()
                .filter(|s| s.holder == Some(*session) && s.available)
                .count() as u32;
            if back > 0 {
                returns.push(Reverse(((*end).max(now), host_index, back)));
            }
        }
        Self {
            now,
            free,
            capacity,
            returns,
        }
    }

    /// Advances time until some host has `gpus` free; returns that time and
    /// host, or `None` if no host can ever have that many.
    fn start_when_fits(&mut self, gpus: u32) -> Option<(Millis, usize)> {
        if !self.capacity.iter().any(|&c| c >= gpus) {
            return None;
        }
        loop {
            if let Some(host) = best_fit(self.free.iter().copied(), gpus) {
                return Some((self.now, host));
            }
            // Take every return due at that instant before fitting, as the
            // real scheduler sees them all at once; best fit may differ
            // otherwise.
            let Reverse((time, host, count)) = self.returns.pop()?;
            self.now = self.now.max(time);
            self.free[host] += count;
            while let Some(&Reverse((next, host, count))) = self.returns.peek()
                && next <= time
            {
                self.returns.pop();
                self.free[host] += count;
            }
        }
    }

    /// Takes `gpus` on `host` until `until`.
    fn occupy(&mut self, host: usize, gpus: u32, until: Millis) {
        self.free[host] -= gpus;
        self.returns.push(Reverse((until, host, gpus)));
    }

    /// Places `waiter`, at `position`, after everyone placed so far.
    fn simulate(&mut self, waiter: &Waiter, position: usize) -> WaiterStatus {
        let start_bound = self.start_when_fits(waiter.gpus).map(|(t, host)| {
            self.occupy(host, waiter.gpus, t.saturating_add(waiter.runway_ms));
            t
        });
        WaiterStatus {
            session: waiter.session,
            position,
            start_bound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(hosts: &[u32]) -> Vec<GpuAddr> {
        hosts
            .iter()
            .enumerate()
            .flat_map(|(h, &n)| {
                (0..n).map(move |index| GpuAddr {
                    host: h as u16,
                    index,
                })
            })
            .collect()
    }

    fn claim(wallet: &str, gpus: u32, runway_s: u64) -> Claim {
        Claim {
            session: SessionId::new(),
            wallet: WalletId::new(wallet),
            gpus,
            runway_ms: runway_s * 1000,
        }
    }

    #[test]
    fn grants_in_fifo_order_while_gpus_last() {
        let mut q = Queue::new(pool(&[2]), Policy::default());
        let (a, b, c) = (claim("a", 1, 60), claim("b", 1, 60), claim("c", 1, 60));
        for c in [&a, &b, &c] {
            q.claim(c.clone()).unwrap();
        }
        let grants = q.schedule(0);
        let granted: Vec<_> = grants.iter().map(|g| g.session).collect();
        assert_eq!(granted, [a.session, b.session]);
        assert_ne!(grants[0].gpus, grants[1].gpus);
        assert_eq!(q.statuses(0)[0].session, c.session);
        q.release(a.session).unwrap();
        assert_eq!(q.schedule(1)[0].session, c.session);
    }

    #[test]
    fn one_claim_per_wallet() {
        let mut q = Queue::new(pool(&[2]), Policy::default());
        q.claim(claim("a", 1, 60)).unwrap();
        assert!(matches!(
            q.claim(claim("A", 1, 60)),
            Err(ClaimError::WalletBusy(_))
        ));
    }

    #[test]
    fn wallet_may_claim_again_after_release_or_cancel() {
        let mut q = Queue::new(pool(&[1]), Policy::default());
        let first = claim("a", 1, 60);
        q.claim(first.clone()).unwrap();
        q.schedule(0);
        q.release(first.session).unwrap();
        let second = claim("a", 1, 60);
        q.claim(second.clone()).unwrap();
        assert!(q.cancel(second.session));
        q.claim(claim("a", 1, 60)).unwrap();
    }

    #[test]
    fn refuses_impossible_and_unfunded_claims() {
        let mut q = Queue::new(pool(&[4, 2]), Policy::default());
        assert_eq!(
            q.claim(claim("a", 8, 60)),
            Err(ClaimError::TooLarge {
                asked: 8,
                largest: 4
            })
        );
        assert_eq!(q.claim(claim("a", 0, 60)), Err(ClaimError::NoGpus));
        assert_eq!(
            q.claim(claim("a", 1, 0)),
            Err(ClaimError::NoCredit { gpus: 1 })
        );
    }

    #[test]
    fn a_host_that_joins_serves_the_waiters_and_a_drained_one_serves_none() {
        // Host 0 has one free GPU left; a 2-GPU claim waits for a host that
        // has two.
        let mut q = Queue::new(pool(&[2]), Policy::default());
        let running = claim("r", 1, 600);
        q.claim(running.clone()).unwrap();
        q.schedule(0);
        let medium = claim("m", 2, 60);
        q.claim(medium.clone()).unwrap();
        assert!(q.schedule(1).is_empty());

        // Host 3 joins with two GPUs (adding one twice changes nothing).
        let joined = [GpuAddr { host: 3, index: 0 }, GpuAddr { host: 3, index: 1 }];
        q.add_gpus(joined);
        q.add_gpus([joined[1]]);
        assert_eq!(q.total_gpus(), 4);
        let grants = q.schedule(2);
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].session, medium.session);
        assert_eq!(grants[0].gpus, joined.to_vec());

        // Host 0 out (drained, or not answering): a new claim waits although its
        // second GPU is free, and gets it once the host is back.
        for index in 0..2 {
            q.set_out(GpuAddr { host: 0, index }, OutReason::HostOut, true);
        }
        let small = claim("s", 1, 60);
        q.claim(small.clone()).unwrap();
        assert!(q.schedule(3).is_empty());
        for index in 0..2 {
            q.set_out(GpuAddr { host: 0, index }, OutReason::HostOut, false);
        }
        let grants = q.schedule(4);
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].host, 0);
    }

    #[test]
    fn gang_allocation_stays_on_one_host_with_best_fit() {
        let mut q = Queue::new(pool(&[4, 2]), Policy::default());
        let small = claim("s", 2, 60);
        let big = claim("b", 4, 60);
        q.claim(small.clone()).unwrap();
        q.claim(big.clone()).unwrap();
        let grants = q.schedule(0);
        // Best fit puts the 2-GPU claim on the 2-GPU host, leaving room for 4.
        assert_eq!(grants[0].host, 1);
        assert_eq!(grants[1].host, 0);
        assert!(grants[1].gpus.iter().all(|g| g.host == 0));
        assert_eq!(q.free_gpus(), 0);
    }

    #[test]
    fn backfill_only_when_it_cannot_delay_the_head() {
        let mut q = Queue::new(pool(&[4]), Policy::default());
        let running = claim("r", 2, 100); // ends by t=100 s
        q.claim(running.clone()).unwrap();
        q.schedule(0);
        let head = claim("head", 4, 600); // must wait for `running`
        let long = claim("long", 1, 500); // would hold a GPU past t=100 s
        let short = claim("short", 2, 90); // done by t=90 s
        for c in [&head, &long, &short] {
            q.claim(c.clone()).unwrap();
        }
        assert_eq!(q.shadow_time(4, 0), Some(100_000));
        let grants = q.schedule(0);
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].session, short.session);
        assert!(grants[0].backfilled);
        // The head still starts at the shadow time at the latest.
        assert_eq!(q.statuses(0)[0].start_bound, Some(100_000));
    }

    #[test]
    fn strict_fifo_never_backfills() {
        let policy = Policy {
            backfill: false,
            ..Policy::default()
        };
        let mut q = Queue::new(pool(&[4]), policy);
        q.claim(claim("r", 2, 100)).unwrap();
        q.schedule(0);
        q.claim(claim("head", 4, 600)).unwrap();
        q.claim(claim("short", 1, 10)).unwrap();
        assert!(q.schedule(0).is_empty());
    }

    #[test]
    fn etas_are_simulated_in_fifo_order() {
        let mut q = Queue::new(pool(&[2]), Policy::default());
        let a = claim("a", 2, 100);
        q.claim(a).unwrap();
        q.schedule(0);
        let b = claim("b", 1, 50);
        let c = claim("c", 2, 10);
        let d = claim("d", 1, 10);
        for x in [&b, &c, &d] {
            q.claim(x.clone()).unwrap();
        }
        let statuses = q.statuses(0);
        let bounds: Vec<_> = statuses
            .iter()
            .map(|s| (s.position, s.start_bound))
            .collect();
        // b starts when a ends (100 s); c needs both GPUs, so after b (150 s);
        // d after c (160 s).
        assert_eq!(
            bounds,
            [(1, Some(100_000)), (2, Some(150_000)), (3, Some(160_000))]
        );
    }

    #[test]
    fn drained_gpus_leave_the_pool_and_a_head_that_can_never_fit_blocks_nobody() {
        let gpus = pool(&[2]);
        let mut q = Queue::new(gpus.clone(), Policy::default());
        q.set_out(gpus[1], OutReason::Drained, true);
        let head = claim("head", 2, 60);
        let small = claim("small", 1, 600);
        q.claim(head.clone()).unwrap();
        q.claim(small.clone()).unwrap();
        let statuses = q.statuses(0);
        assert_eq!(statuses[0].start_bound, None);
        let grants = q.schedule(0);
        assert_eq!(grants.len(), 1);
        assert_eq!(grants[0].session, small.session);
        assert_eq!(grants[0].gpus, [gpus[0]]);
        q.set_out(gpus[1], OutReason::Drained, false);
        assert_eq!(q.free_gpus(), 1);
    }

    #[test]
    fn each_reason_to_leave_the_pool_is_cleared_on_its_own() {
        let gpus = pool(&[1]);
        let mut q = Queue::new(gpus.clone(), Policy::default());
        q.set_out(gpus[0], OutReason::Drained, true);
        q.set_out(gpus[0], OutReason::HostOut, true);
        q.set_out(gpus[0], OutReason::Unhealthy, true);
        // The host answers again and the operator undrains: still unhealthy.
        q.set_out(gpus[0], OutReason::HostOut, false);
        q.set_out(gpus[0], OutReason::Drained, false);
        assert_eq!(q.free_gpus(), 0);
        q.claim(claim("a", 1, 60)).unwrap();
        assert!(q.schedule(0).is_empty());
        // Healthy again: offered.
        q.set_out(gpus[0], OutReason::Unhealthy, false);
        assert_eq!(q.free_gpus(), 1);
        assert_eq!(q.schedule(1).len(), 1);
        // Setting a reason twice and clearing it once clears it.
        let mut q = Queue::new(gpus.clone(), Policy::default());
        q.set_out(gpus[0], OutReason::HostOut, true);
        q.set_out(gpus[0], OutReason::HostOut, true);
        q.set_out(gpus[0], OutReason::HostOut, false);
        assert_eq!(q.free_gpus(), 1);
    }

    #[test]
    fn a_drained_gpu_stays_with_its_session_until_released() {
        let gpus = pool(&[1]);
        let mut q = Queue::new(gpus.clone(), Policy::default());
        let a = claim("a", 1, 60);
        q.claim(a.clone()).unwrap();
        q.schedule(0);
        q.set_out(gpus[0], OutReason::Drained, true);
        assert_eq!(q.gpus_of(a.session), Some(&gpus[..]));
        q.release(a.session).unwrap();
        assert_eq!(q.free_gpus(), 0);
    }

    #[test]
    fn simultaneous_returns_are_taken_together_as_the_scheduler_sees_them() {
        // Two hosts of 2: a(2) on host 0, b(1) and c(1) on host 1.
        let mut q = Queue::new(pool(&[2, 2]), Policy::default());
        for c in [claim("a", 2, 110), claim("b", 1, 110), claim("c", 1, 130)] {
            q.claim(c).unwrap();
        }
        q.schedule(0);
        for c in [claim("d", 1, 60), claim("e", 1, 40), claim("f", 2, 40)] {
            q.claim(c).unwrap();
        }
        // At 110 s a and b end together; best fit then puts d on host 1 and
        // e on host 0, so f needs host 0 after e: 150 s, not 130 s.
        let bounds: Vec<_> = q.statuses(0).iter().map(|s| s.start_bound).collect();
        assert_eq!(bounds, [Some(110_000), Some(110_000), Some(150_000)]);
    }

    #[test]
    fn adoption_respects_one_claim_per_wallet() {
        let gpus = pool(&[2]);
        let mut q = Queue::new(gpus.clone(), Policy::default());
        q.adopt(SessionId::new(), WalletId::new("a"), &gpus[..1], 5_000)
            .unwrap();
        assert!(matches!(
            q.adopt(SessionId::new(), WalletId::new("a"), &gpus[1..], 5_000),
            Err(ClaimError::WalletBusy(_))
        ));
    }

    #[test]
    fn adopted_sessions_hold_their_gpus() {
        let gpus = pool(&[2]);
        let mut q = Queue::new(gpus.clone(), Policy::default());
        let adopted = SessionId::new();
        q.adopt(adopted, WalletId::new("a"), &gpus[1..], 5_000)
            .unwrap();
        assert!(
            q.adopt(SessionId::new(), WalletId::new("b"), &gpus[1..], 5_000)
                .is_err()
        );
        assert!(matches!(
            q.claim(claim("a", 1, 60)),
            Err(ClaimError::WalletBusy(_))
        ));
        let b = claim("b", 1, 60);
        q.claim(b).unwrap();
        assert_eq!(q.schedule(0)[0].gpus, [gpus[0]]);
    }

    #[test]
    fn updating_a_running_bound_moves_the_shadow() {
        let mut q = Queue::new(pool(&[1]), Policy::default());
        let a = claim("a", 1, 100);
        q.claim(a.clone()).unwrap();
        q.schedule(0);
        assert_eq!(q.shadow_time(1, 0), Some(100_000));
        q.update_bound(a.session, 300_000, 10_000);
        assert_eq!(q.shadow_time(1, 10_000), Some(310_000));
    }
}
