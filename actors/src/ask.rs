//! Request–reply between actors with a deadline. Every caller in the tree
//! treats "no answer" the same whatever the cause (the actor stopped, its
//! mailbox is gone, the deadline passed), so the answer is an `Option`.

use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};

/// How long an actor may take to answer another.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends the message `build` makes and waits up to [`ASK_TIMEOUT`] for the
/// reply.
pub async fn ask<M, T>(actor: &ActorRef<M>, build: impl FnOnce(RpcReplyPort<T>) -> M) -> Option<T>
where
    M: Message,
    T: Send + 'static,
{
    ask_within(actor, build, ASK_TIMEOUT).await
}

/// [`ask`] with its own deadline.
pub async fn ask_within<M, T>(
    actor: &ActorRef<M>,
    build: impl FnOnce(RpcReplyPort<T>) -> M,
    timeout: Duration,
) -> Option<T>
where
    M: Message,
    T: Send + 'static,
{
    match actor.call(build, Some(timeout)).await {
        Ok(CallResult::Success(answer)) => Some(answer),
        _ => None,
    }
}
