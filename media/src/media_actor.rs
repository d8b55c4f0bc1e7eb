//! [`MediaActor`]: one browser stream (a VNC relay or a WebRTC peer) for one
//! session. It runs the stream as a task, reports its counts, and closes it
//! when told to (the session ended) or when the stream ends by itself.
//! Active viewers are the `deskgate_media_viewers{path}` gauge.

use std::sync::Arc;

use futures::future::BoxFuture;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tracing::{debug, info};

use crate::relay::{MediaPath, RelayEnd, StreamCounters};

/// What a stream task returns: which side ended it, or why it failed.
pub type StreamOutcome = Result<RelayEnd, String>;

/// Messages to a [`MediaActor`].
#[derive(Debug)]
pub enum MediaMsg {
    /// The stream task finished (sent by the task itself).
    Finished(StreamOutcome),
    /// Close the stream now; the reason is logged.
    Close(String),
}

/// Everything one stream needs.
pub struct MediaArgs {
    /// VNC or WebRTC (the metric label).
    pub path: MediaPath,
    /// The session's id, for logs.
    pub session: String,
    /// Counts the stream updates as it runs.
    pub counters: Arc<StreamCounters>,
    /// The stream itself; it runs until it returns or the actor stops.
    pub stream: BoxFuture<'static, StreamOutcome>,
}

impl std::fmt::Debug for MediaArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaArgs")
            .field("path", &self.path)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// The actor; see the module documentation.
#[derive(Debug)]
pub struct MediaActor;

/// A running stream.
#[derive(Debug)]
pub struct MediaState {
    path: MediaPath,
    session: String,
    counters: Arc<StreamCounters>,
    task: JoinHandle<()>,
}

impl Actor for MediaActor {
    type Msg = MediaMsg;
    type State = MediaState;
    type Arguments = MediaArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: MediaArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let stream = args.stream;
        let task = tokio::spawn(async move {
            let outcome = stream.await;
            // The actor may already be stopping (closed): nothing to tell.
            let _ = myself.send_message(MediaMsg::Finished(outcome));
        });
        metrics::gauge!("deskgate_media_viewers", "path" => args.path.as_str()).increment(1.0);
        debug!(session = %args.session, path = args.path.as_str(), "media stream opened");
        Ok(MediaState {
            path: args.path,
            session: args.session,
            counters: args.counters,
            task,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            MediaMsg::Finished(outcome) => {
                let counts = state.counters.snapshot();
                match outcome {
                    Ok(end) => info!(
                        session = %state.session,
                        path = state.path.as_str(),
                        ended_by = ?end,
                        bytes_up = counts.bytes_up,
                        bytes_down = counts.bytes_down,
                        "media stream closed"
                    ),
                    Err(error) => info!(
                        session = %state.session,
                        path = state.path.as_str(),
                        %error,
                        bytes_up = counts.bytes_up,
                        bytes_down = counts.bytes_down,
                        "media stream failed"
                    ),
                }
                myself.stop(None);
            }
            MediaMsg::Close(reason) => {
                info!(session = %state.session, path = state.path.as_str(), %reason, "media stream closed by the gate");
                myself.stop(Some(reason));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Aborting drops both ends of the stream: the browser's socket and
        // the desktop connection close with it.
        state.task.abort();
        metrics::gauge!("deskgate_media_viewers", "path" => state.path.as_str()).decrement(1.0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn args(stream: BoxFuture<'static, StreamOutcome>) -> MediaArgs {
        MediaArgs {
            path: MediaPath::Vnc,
            session: "s-1".into(),
            counters: Arc::new(StreamCounters::default()),
            stream,
        }
    }

    #[tokio::test]
    async fn close_stops_the_stream_and_drops_its_resources() {
        let (held, mut gone) = tokio::sync::mpsc::channel::<()>(1);
        let stream = Box::pin(async move {
            // Holds `held` until aborted; its drop is how the test sees it.
            let _held = held;
            futures::future::pending::<StreamOutcome>().await
        });
        let (actor, handle) = Actor::spawn(None, MediaActor, args(stream)).await.unwrap();
        actor
            .send_message(MediaMsg::Close("session ended".into()))
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("actor stopped")
            .unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(5), gone.recv()).await;
        assert_eq!(closed, Ok(None), "the stream's resources were not dropped");
    }

    #[tokio::test]
    async fn a_stream_that_ends_stops_its_actor() {
        let stream = Box::pin(async { Ok(RelayEnd::BrowserClosed) });
        let (_actor, handle) = Actor::spawn(None, MediaActor, args(stream)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), handle)
            .await
            .expect("actor stopped by itself")
            .unwrap();
    }
}
