//! Exit watching for the Docker backend: follows Docker's event stream
//! (`die`/`oom`/`kill` of containers, on the launcher's host label when it
//! has one; those of no session are ignored), reconnecting when it breaks
//! and resuming from the last event seen, and reports each exit once. Exits
//! caused by [`deskgate_actors::ports::Launcher::stop`] are not reported.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::models::EventMessage;
use bollard::query_parameters::{EventsOptionsBuilder, InspectContainerOptions};
use futures::StreamExt;
use tokio::sync::mpsc;

use deskgate_actors::ports::ContainerExit;

use super::{Shared, session_of_container};
use crate::platform::backoff::Backoff;
use crate::platform::clock;

/// First wait before reconnecting a broken exit stream, and the longest.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_CEILING: Duration = Duration::from_secs(5);

/// What one watcher remembers between events.
#[derive(Default)]
struct WatchState {
    /// Containers that had an `oom` event and have not died yet.
    oom: HashSet<String>,
    /// `die` events already reported, by (container, time in ns), so a
    /// replay after a reconnect is not reported twice.
    reported: HashSet<(String, i64)>,
    /// Seconds since the epoch of the last event seen: where a reconnect resumes.
    last_time: Option<i64>,
}

pub(super) async fn watch_events(
    docker: Docker,
    shared: Arc<Shared>,
    labels: Vec<String>,
    sink: mpsc::UnboundedSender<ContainerExit>,
) {
    // Resume from the watcher's start, so that a break before the first
    // event loses nothing either.
    let started = clock::unix_seconds();
    let mut state = WatchState {
        last_time: i64::try_from(started).ok(),
        ..WatchState::default()
    };
    let mut backoff = Backoff::new(RECONNECT_FIRST, RECONNECT_CEILING);
    loop {
        let mut filters = HashMap::from([
            ("type", vec!["container"]),
            ("event", vec!["die", "oom", "kill"]),
        ]);
        if !labels.is_empty() {
            filters.insert("label", labels.iter().map(String::as_str).collect());
        }
        let mut builder = EventsOptionsBuilder::default().filters(&filters);
        let since = state.last_time.map(|t| t.to_string());
        if let Some(since) = &since {
            builder = builder.since(since);
        }
        let mut stream = Box::pin(docker.events(Some(builder.build())));
        loop {
            let next = tokio::select! {
                () = sink.closed() => return,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(event)) => {
                    backoff.reset();
                    if !handle_event(&docker, &shared, &sink, &mut state, event).await {
                        return;
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(error = %err, "Docker event stream broke; reconnecting");
                    break;
                }
                None => {
                    tracing::warn!("Docker event stream ended; reconnecting");
                    break;
                }
            }
        }
        tokio::select! {
            () = sink.closed() => return,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Handles one event; false when nobody listens any more.
async fn handle_event(
    docker: &Docker,
    shared: &Shared,
    sink: &mpsc::UnboundedSender<ContainerExit>,
    state: &mut WatchState,
    event: EventMessage,
) -> bool {
    if let Some(time) = event.time {
        state.last_time = Some(state.last_time.map_or(time, |t| t.max(time)));
    }
    let Some(actor) = event.actor else {
        return true;
    };
    let id = actor.id.unwrap_or_default();
    let attributes = actor.attributes.unwrap_or_default();
    // A taken warm desktop is known by its name (an event's `name`
    // attribute); an untaken one belongs to no session and is the pool's.
    let name = attributes.get("name").map(String::as_str);
    let Some(session) = session_of_container(Some(&attributes), name) else {
        return true;
    };
    match event.action.as_deref() {
        Some("oom") => {
            state.oom.insert(id);
        }
        Some("die") => {
            let key = (id.clone(), event.time_nano.unwrap_or_default());
            if !state.reported.insert(key) {
                return true;
            }
            if state.reported.len() > 4096 {
                state.reported.clear();
            }
            let mut oom = state.oom.remove(&id);
            if shared.was_stopped(session) || shared.was_removed(&id) {
                return true;
            }
            if !oom
                && let Ok(inspect) = docker
                    .inspect_container(&id, None::<InspectContainerOptions>)
                    .await
            {
                oom = inspect.state.and_then(|s| s.oom_killed).unwrap_or(false);
            }
            let code = attributes
                .get("exitCode")
                .and_then(|c| c.parse().ok())
                .unwrap_or(-1);
            tracing::info!(%session, code, oom, "session container exited");
            return sink.send(ContainerExit { session, code, oom }).is_ok();
        }
        _ => {}
    }
    true
}
