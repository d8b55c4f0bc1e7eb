//! `SessionActor`: one session's life — Queued → Launching → Running →
//! Stopping → Ended — and its server-clocked billing, whose debits are in
//! `session/billing.rs`.
//!
//! The session stops exactly when its credit runs out: the moment is
//! computed from the balance after each debit and armed as a timer (one
//! timer for whatever is due first: a debit, a low-credit warning, the
//! presence timeout or exhaustion), never discovered late. Every way
//! of ending — stop, credit exhausted, presence timeout, idle timeout, container exit,
//! launch failure, admin kill — goes through `SessionActorState::finish`,
//! which bills, stops the container, records why, and only then releases
//! the lease (through [`release_lease`]). Stopping the container and
//! recording the end are retried until they succeed: until both have, the
//! GPUs stay with this session, so they never go to another while a
//! container may still run on them or while the records say this session
//! holds them.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::ask::ask;
use crate::ports::{
    CreditSeconds, EndReason, LaunchError, LaunchSpec, Launcher, SessionRecord, SessionState,
    SessionStore,
};
use crate::protocol::{Lease, LeaseGrant, Millis, SessionEvent, SessionView, release_lease};
use crate::scheduler::SchedulerMsg;
use crate::wallet::WalletMsg;

mod billing;

/// Timing of billing and presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionSettings {
    /// Time between debits; whole seconds.
    pub billing_interval: Duration,
    /// A running session without presence for this long is stopped.
    pub presence_timeout: Duration,
    /// A running session without input (keys or pointer on a media stream,
    /// or "keep my desktop") for this long is stopped; `None`: never.
    pub idle_timeout: Option<Duration>,
    /// How long before the idle stop the browser is warned.
    pub idle_warning: Duration,
    /// Remaining-time marks at which a low-credit warning is sent, largest
    /// first.
    pub low_credit_warnings: Vec<Duration>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            billing_interval: Duration::from_secs(10),
            presence_timeout: Duration::from_secs(60),
            idle_timeout: Some(Duration::from_secs(1800)),
            idle_warning: Duration::from_secs(60),
            low_credit_warnings: vec![Duration::from_secs(300), Duration::from_secs(60)],
        }
    }
}

/// Messages to a [`SessionActor`].
#[derive(Debug)]
pub enum SessionMsg {
    /// The launch finished.
    LaunchFinished(Result<String, LaunchError>),
    /// The browser proved presence.
    Presence,
    /// The user gave input (on a media stream, or "keep my desktop"): proves
    /// presence and restarts the idle clock.
    Input,
    /// The container exited by itself.
    ContainerExited {
        /// Exit code.
        code: i64,
        /// Killed for memory.
        oom: bool,
    },
    /// The wallet's credit changed outside billing (a deposit): re-plan.
    CreditChanged,
    /// End the session for `reason`; answers once it has ended.
    Stop {
        /// Why.
        reason: EndReason,
        /// Told when the session has ended.
        reply: Option<RpcReplyPort<()>>,
    },
    /// A timer fired; stale generations are ignored.
    Wake {
        /// The timer generation it was armed for.
        generation: u64,
    },
    /// Asks for the current view.
    View {
        /// The answer.
        reply: RpcReplyPort<SessionView>,
    },
    /// Panics inside the actor, to exercise supervision in tests.
    #[cfg(any(test, feature = "testing"))]
    Crash,
}

/// How a session actor starts. A session waiting in the queue has no
/// actor; its actor starts once its GPUs are leased.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartMode {
    /// GPUs were just granted: launch the container on them.
    Granted(LeaseGrant),
    /// The container survived a gate restart and the scheduler holds its
    /// GPUs again: resume billing from the persisted billing clock.
    Adopted,
    /// Restarted after a crash: carry on from the persisted record.
    Restarted,
}

/// Arguments of a [`SessionActor`].
#[derive(Clone)]
pub struct SessionArgs {
    /// The record to start from.
    pub record: SessionRecord,
    /// How to start.
    pub mode: StartMode,
    /// The wallet's actor.
    pub wallet: ActorRef<WalletMsg>,
    /// The scheduler.
    pub scheduler: ActorRef<SchedulerMsg>,
    /// Where containers run.
    pub launcher: Arc<dyn Launcher>,
    /// Where records are persisted.
    pub store: Arc<dyn SessionStore>,
    /// Timing.
    pub settings: SessionSettings,
    /// Where events for the browser go.
    pub events: broadcast::Sender<SessionEvent>,
    /// The billing clock's origin, shared with the supervisor so that an
    /// actor restarted after a crash bills the time the container kept
    /// running while the actor was down.
    pub run_origin: RunOrigin,
}

/// The instant a session's running time counts from, kept outside the actor.
pub type RunOrigin = Arc<std::sync::Mutex<Option<Instant>>>;

impl std::fmt::Debug for SessionArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionArgs")
            .field("session", &self.record.id)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// The session actor.
#[derive(Debug, Default)]
pub struct SessionActor;

/// The billing clock of a running session.
#[derive(Clone, Copy, Debug)]
struct RunClock {
    /// The instant at which running time is zero: running time now is
    /// `now - origin`. After a restart it is set so that already-billed time
    /// stays billed and the downtime is not.
    origin: Instant,
    /// Wallet balance after the last debit (or read).
    balance: CreditSeconds,
    last_presence: Instant,
    /// The last input; the idle clock counts from here.
    last_input: Instant,
    /// The idle warning for the current idle stretch was sent.
    idle_warned: bool,
    /// Low-credit warnings already sent.
    warned: usize,
    /// Billing failed; do not try again before this.
    retry_after: Option<Instant>,
}

/// A [`SessionActor`]'s state.
pub struct SessionActorState {
    args: SessionArgs,
    record: SessionRecord,
    clock: Option<RunClock>,
    generation: u64,
    /// A stop asked for while the container was launching.
    stop_after_launch: Option<EndReason>,
    waiting_stop: Vec<RpcReplyPort<()>>,
    /// This session's place in `deskgate_sessions_current{state}`.
    counted: StateGauge,
}

/// One session's contribution to the `deskgate_sessions_current` gauge:
/// moved from state to state with it, and taken off when the actor's state
/// is dropped, whichever way it ends (a crash included). Queued sessions
/// have no actor; the scheduler counts them (`deskgate_scheduler_waiting_claims`).
#[derive(Debug, Default)]
struct StateGauge(Option<&'static str>);

const SESSIONS_GAUGE: &str = "deskgate_sessions_current";
/// Delay between attempts at recording a session's end.
const PERSIST_END_RETRY: Duration = Duration::from_secs(1);
/// Delay between attempts at stopping a session's container.
const STOP_RETRY: Duration = Duration::from_secs(1);

impl StateGauge {
    fn set(&mut self, state: Option<SessionState>) {
        let label = state.map(SessionState::as_str);
        if label == self.0 {
            return;
        }
        if let Some(old) = self.0 {
            metrics::gauge!(SESSIONS_GAUGE, "state" => old).decrement(1.0);
        }
        if let Some(new) = label {
            metrics::gauge!(SESSIONS_GAUGE, "state" => new).increment(1.0);
        }
        self.0 = label;
    }
}

impl Drop for StateGauge {
    fn drop(&mut self) {
        self.set(None);
    }
}

impl std::fmt::Debug for SessionActorState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionActorState")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionActorState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: SessionArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut counted = StateGauge::default();
        if matches!(args.mode, StartMode::Restarted) {
            // It goes on from the state it crashed in, without announcing it.
            counted.set(Some(args.record.state));
        }
        Ok(SessionActorState {
            record: args.record.clone(),
            args,
            clock: None,
            generation: 0,
            stop_after_launch: None,
            waiting_stop: Vec::new(),
            counted,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match state.args.mode.clone() {
            StartMode::Granted(grant) => {
                state.launch(&myself, grant.host, &grant.leases).await;
                Ok(())
            }
            StartMode::Adopted => {
                state.start_running(&myself).await;
                Ok(())
            }
            StartMode::Restarted => state.resume_after_crash(&myself).await,
        }
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMsg::LaunchFinished(result) => state.launch_finished(&myself, result).await,
            SessionMsg::Presence => {
                if let Some(clock) = &mut state.clock {
                    clock.last_presence = Instant::now();
                    state.arm(&myself);
                }
            }
            SessionMsg::Input => {
                if let Some(clock) = &mut state.clock {
                    let now = Instant::now();
                    clock.last_presence = now;
                    clock.last_input = now;
                    clock.idle_warned = false;
                    state.arm(&myself);
                }
            }
            SessionMsg::ContainerExited { code, oom } => {
                if matches!(
                    state.record.state,
                    SessionState::Running | SessionState::Launching
                ) {
                    state
                        .finish(
                            &myself,
                            EndReason::ContainerExited { code, oom },
                            Instant::now(),
                        )
                        .await;
                }
            }
            SessionMsg::CreditChanged => {
                if state.clock.is_some() {
                    if let Ok(balance) = state.read_balance(true).await
                        && let Some(clock) = &mut state.clock
                    {
                        clock.balance = balance;
                        clock.warned = 0;
                    }
                    state.report_bound();
                    state.wake(&myself).await;
                }
            }
            SessionMsg::Stop { reason, reply } => {
                if let Some(reply) = reply {
                    state.waiting_stop.push(reply);
                }
                if state.record.state == SessionState::Launching {
                    state.stop_after_launch = Some(reason);
                } else {
                    state.finish(&myself, reason, Instant::now()).await;
                }
            }
            SessionMsg::Wake { generation } => {
                if generation == state.generation {
                    state.wake(&myself).await;
                }
            }
            SessionMsg::View { reply } => {
                let _ = reply.send(state.view());
            }
            #[cfg(any(test, feature = "testing"))]
            SessionMsg::Crash => panic!("session {} crashed on request", state.record.id),
        }
        Ok(())
    }
}

impl SessionActorState {
    fn gpus(&self) -> u32 {
        self.record.gpus
    }

    async fn launch(&mut self, myself: &ActorRef<SessionMsg>, host: u16, leases: &[Lease]) {
        self.record.state = SessionState::Launching;
        self.record.gpu_addrs = leases.iter().map(|l| l.addr).collect();
        self.persist().await;
        self.emit_state();
        let spec = LaunchSpec {
            session: self.record.id,
            host,
            gpu_indices: self.record.gpu_addrs.iter().map(|g| g.index).collect(),
        };
        let launcher = self.args.launcher.clone();
        let me = myself.clone();
        // Launch off the actor's task so that messages (a stop) still arrive.
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = launcher.launch(&spec).await;
            metrics::histogram!("deskgate_session_launch_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            let _ = me.cast(SessionMsg::LaunchFinished(result));
        });
    }

    async fn launch_finished(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        result: Result<String, LaunchError>,
    ) {
        if self.record.state != SessionState::Launching {
            return;
        }
        match result {
            Ok(container_id) => {
                self.record.container_id = Some(container_id);
                if let Some(reason) = self.stop_after_launch.take() {
                    self.finish(myself, reason, Instant::now()).await;
                } else {
                    self.start_running(myself).await;
                }
            }
            Err(err) => {
                tracing::warn!(session = %self.record.id, %err, "launch failed");
                self.finish(myself, EndReason::LaunchFailed(err.0), Instant::now())
                    .await;
            }
        }
    }

    /// Starts (or resumes) the billing clock. Time already billed stays
    /// billed; billing resumes from there.
    async fn start_running(&mut self, myself: &ActorRef<SessionMsg>) {
        let now = Instant::now();
        let balance = match self.read_balance(true).await {
            Ok(balance) => balance,
            Err(err) => {
                tracing::warn!(session = %self.record.id, %err, "cannot read the balance; billing will retry");
                0
            }
        };
        let origin = {
            let mut shared = self
                .args
                .run_origin
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // A crash restart keeps the origin; a new run or an adoption
            // after a gate restart starts from the billed time, so downtime
            // is not billed.
            let origin = match (&self.args.mode, *shared) {
                (StartMode::Restarted, Some(origin)) => origin,
                _ => now - Duration::from_millis(self.record.billed_ms),
            };
            *shared = Some(origin);
            origin
        };
        self.clock = Some(RunClock {
            origin,
            balance,
            last_presence: now,
            last_input: now,
            idle_warned: false,
            warned: 0,
            retry_after: None,
        });
        self.record.state = SessionState::Running;
        self.persist().await;
        self.emit_state();
        self.report_bound();
        tracing::info!(session = %self.record.id, gpus = self.gpus(), balance, "running");
        self.wake(myself).await;
    }

    /// Tells the scheduler how long this session can still run.
    fn report_bound(&self) {
        if let Some(clock) = &self.clock {
            let left = self
                .exhaustion_at(clock)
                .saturating_duration_since(Instant::now());
            let _ = self.args.scheduler.cast(SchedulerMsg::UpdateBound {
                session: self.record.id,
                runway_ms: left.as_millis() as Millis,
            });
        }
    }

    /// Does whatever is due now, then arms the timer for the next thing.
    async fn wake(&mut self, myself: &ActorRef<SessionMsg>) {
        loop {
            let Some(clock) = self.clock else { return };
            let now = Instant::now();
            let exhaustion = self.exhaustion_at(&clock);
            if now >= exhaustion {
                self.finish(myself, EndReason::CreditExhausted, exhaustion)
                    .await;
                return;
            }
            if now >= clock.last_presence + self.args.settings.presence_timeout {
                self.finish(myself, EndReason::PresenceTimeout, now).await;
                return;
            }
            if let Some(idle_end) = self.idle_end(&clock) {
                if now >= idle_end {
                    self.finish(myself, EndReason::IdleTimeout, now).await;
                    return;
                }
                if !clock.idle_warned && now + self.args.settings.idle_warning >= idle_end {
                    if let Some(clock) = &mut self.clock {
                        clock.idle_warned = true;
                    }
                    // Rounded up: the timer fires a little after its due
                    // instant, and "3 s" reads truer than "2 s" at 2.99.
                    let left = idle_end.saturating_duration_since(now);
                    let seconds_left = left.as_millis().div_ceil(1000) as u64;
                    self.emit(SessionEvent::IdleWarning { seconds_left });
                }
            }
            let billing_blocked = clock.retry_after.is_some_and(|t| now < t);
            if now >= self.next_tick(&clock) && !billing_blocked {
                self.bill_interval().await;
                continue;
            }
            self.send_due_warnings(exhaustion, now);
            break;
        }
        self.arm(myself);
    }

    fn send_due_warnings(&mut self, exhaustion: Instant, now: Instant) {
        let Some(clock) = &mut self.clock else { return };
        let marks = &self.args.settings.low_credit_warnings;
        let before = clock.warned;
        while clock.warned < marks.len() && now + marks[clock.warned] >= exhaustion {
            clock.warned += 1;
        }
        // Several marks passed at once (a session that starts short of
        // credit) make one warning, not one per mark.
        if clock.warned > before {
            let seconds_left = exhaustion.saturating_duration_since(now).as_secs();
            let _ = self
                .args
                .events
                .send(SessionEvent::LowCredit { seconds_left });
        }
    }

    /// Arms one timer for the earliest thing due.
    fn arm(&mut self, myself: &ActorRef<SessionMsg>) {
        let Some(clock) = self.clock else { return };
        let exhaustion = self.exhaustion_at(&clock);
        let mut due = exhaustion
            .min(clock.last_presence + self.args.settings.presence_timeout)
            .min(
                self.next_tick(&clock)
                    .max(clock.retry_after.unwrap_or(clock.origin)),
            );
        if let Some(mark) = self.args.settings.low_credit_warnings.get(clock.warned) {
            due = due.min(exhaustion.checked_sub(*mark).unwrap_or(clock.origin));
        }
        if let Some(idle_end) = self.idle_end(&clock) {
            due = due.min(idle_end);
            if !clock.idle_warned {
                let warning = self.args.settings.idle_warning;
                due = due.min(idle_end.checked_sub(warning).unwrap_or(clock.origin));
            }
        }
        self.generation += 1;
        let generation = self.generation;
        let delay = due.saturating_duration_since(Instant::now());
        myself.send_after(delay, move || SessionMsg::Wake { generation });
    }

    /// Ends the session for `reason` as of `at`: bills, stops the container,
    /// releases the GPUs, records why. Every ending path comes here.
    async fn finish(&mut self, myself: &ActorRef<SessionMsg>, reason: EndReason, at: Instant) {
        if self.record.state == SessionState::Ended {
            self.answer_stop_waiters();
            return;
        }
        let was = self.record.state;
        self.generation += 1; // disarm timers
        if was == SessionState::Running {
            self.bill_final(at).await;
        }
        self.clock = None;
        self.record.state = SessionState::Stopping;
        self.persist().await;
        self.emit_state();
        // Any session past the queue may have a container, whether or not
        // its id is on record (a gate that died mid-launch never learnt it);
        // stopping one that has none is a no-op.
        let may_have_container = was != SessionState::Queued || self.record.container_id.is_some();
        if may_have_container {
            self.stop_container().await;
        }
        // The end is on record before the GPUs go back: a GPU is never on
        // record as held by this session and by the next one at once, and a
        // crash in between leaves an ended session, not a live one whose GPUs
        // someone else holds.
        self.record.end(reason.clone());
        self.persist_end().await;
        release_lease(&self.args.scheduler, self.record.id);
        self.counted.set(None);
        metrics::counter!("deskgate_sessions_ended_total", "reason" => reason_label(&reason))
            .increment(1);
        tracing::info!(session = %self.record.id, ?reason, billed = self.record.billed_credit, "ended");
        let _ = self.args.events.send(SessionEvent::State {
            state: SessionState::Ended,
            reason: Some(reason),
        });
        self.answer_stop_waiters();
        myself.stop(Some("ended".into()));
    }

    fn answer_stop_waiters(&mut self) {
        for reply in self.waiting_stop.drain(..) {
            let _ = reply.send(());
        }
    }

    /// Carries on after the previous actor of this session crashed.
    async fn resume_after_crash(
        &mut self,
        myself: &ActorRef<SessionMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let id = self.record.id;
        match self.record.state {
            SessionState::Queued | SessionState::Launching => {
                let leases = ask(&self.args.scheduler, |reply| SchedulerMsg::Leases {
                    session: id,
                    reply,
                })
                .await
                .flatten();
                match leases {
                    Some(leases) => {
                        // Granted before the crash: launch again, cleanly.
                        let _ = self.args.launcher.stop(id).await;
                        let host = leases.first().map_or(0, |l| l.addr.host);
                        self.launch(myself, host, &leases).await;
                    }
                    _ => {
                        self.finish(
                            myself,
                            EndReason::Crashed("no GPUs held after a crash".into()),
                            Instant::now(),
                        )
                        .await;
                    }
                }
            }
            SessionState::Running => {
                let containers = self.args.launcher.running().await.unwrap_or_default();
                if containers.iter().any(|c| c.session == id) {
                    self.start_running(myself).await;
                } else {
                    self.finish(myself, EndReason::LostOnRestart, Instant::now())
                        .await;
                }
            }
            SessionState::Stopping => {
                let reason = self.record.end_reason.clone().unwrap_or_else(|| {
                    EndReason::Crashed("stopping when the actor crashed".into())
                });
                self.finish(myself, reason, Instant::now()).await;
            }
            SessionState::Ended => myself.stop(None),
        }
        Ok(())
    }

    fn view(&self) -> SessionView {
        SessionView {
            record: self.record.clone(),
            queue: None,
            seconds_left: self.clock.map(|c| {
                self.exhaustion_at(&c)
                    .saturating_duration_since(Instant::now())
                    .as_secs()
            }),
        }
    }

    /// Stops and removes the container, retrying until its launcher says it
    /// is gone. Until then the session stays stopping and keeps its GPUs:
    /// a container the launcher could not be told to stop (its host cut off,
    /// its Docker Engine restarting) may still be running on them.
    async fn stop_container(&self) {
        let mut failures = 0u64;
        while let Err(err) = self.args.launcher.stop(self.record.id).await {
            if failures.is_multiple_of(30) {
                tracing::warn!(session = %self.record.id, %err, failures,
                    "container stop failed; retrying, the GPUs stay held until it is gone");
            }
            failures += 1;
            tokio::time::sleep(STOP_RETRY).await;
        }
    }

    /// Saves the ended record, retrying until the store takes it: until it
    /// does, the GPUs stay leased to this session rather than go to another
    /// while the record still says this one holds them.
    async fn persist_end(&self) {
        let mut failures = 0u64;
        while let Err(err) = self.args.store.save(&self.record).await {
            metrics::counter!("deskgate_session_persist_failures_total").increment(1);
            if failures.is_multiple_of(30) {
                tracing::error!(session = %self.record.id, %err, failures,
                    "cannot record the session's end; its GPUs stay held until it is");
            }
            failures += 1;
            tokio::time::sleep(PERSIST_END_RETRY).await;
        }
    }

    async fn persist(&self) {
        if let Err(err) = self.args.store.save(&self.record).await {
            metrics::counter!("deskgate_session_persist_failures_total").increment(1);
            tracing::error!(session = %self.record.id, %err, "cannot persist the session");
        }
    }

    fn emit_state(&mut self) {
        self.counted.set(Some(self.record.state));
        self.emit(SessionEvent::State {
            state: self.record.state,
            reason: self.record.end_reason.clone(),
        });
    }

    /// When the idle clock ends the session, if idle culling is on.
    fn idle_end(&self, clock: &RunClock) -> Option<Instant> {
        self.args
            .settings
            .idle_timeout
            .map(|idle| clock.last_input + idle)
    }

    fn emit(&self, event: SessionEvent) {
        // No subscriber is fine: nobody is watching.
        let _ = self.args.events.send(event);
    }
}

fn reason_label(reason: &EndReason) -> &'static str {
    match reason {
        EndReason::UserStopped => "user_stopped",
        EndReason::CreditExhausted => "credit_exhausted",
        EndReason::PresenceTimeout => "presence_timeout",
        EndReason::IdleTimeout => "idle_timeout",
        EndReason::ContainerExited { .. } => "container_exited",
        EndReason::LaunchFailed(_) => "launch_failed",
        EndReason::Crashed(_) => "crashed",
        EndReason::AdminKilled => "admin_killed",
        EndReason::LostOnRestart => "lost_on_restart",
    }
}
