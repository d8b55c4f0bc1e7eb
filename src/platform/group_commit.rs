//! [`GroupCommit`]: one task that commits whatever has queued up, as one
//! batch, back to back. An item that arrives while a batch commits waits for
//! the next one, which takes everything queued by then (up to `max_batch`):
//! an idle committer adds no delay, a busy one spends one commit on many
//! items. The billing ledger's debits and new claims' rows use it.
//!
//! Invariant: every item gets its own answer, the one the commit function
//! gave for it, and only after the commit that held it has returned.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

/// A submitted item and where its answer goes.
type Queued<T, A> = (T, oneshot::Sender<A>);

/// The handle to a group-commit task; the task ends when every clone is
/// dropped.
#[derive(Debug)]
pub struct GroupCommit<T, A> {
    queue: mpsc::Sender<Queued<T, A>>,
}

impl<T, A> Clone for GroupCommit<T, A> {
    fn clone(&self) -> Self {
        Self {
            queue: self.queue.clone(),
        }
    }
}

impl<T: Send + 'static, A: Send + 'static> GroupCommit<T, A> {
    /// Starts the task on the current runtime. `commit` gets each batch and
    /// returns one answer per item, in order.
    pub fn spawn<F, Fut>(max_batch: usize, mut commit: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<A>> + Send,
    {
        let max_batch = max_batch.max(1);
        let (queue, mut incoming) = mpsc::channel::<Queued<T, A>>(max_batch * 4);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(max_batch);
            while incoming.recv_many(&mut batch, max_batch).await > 0 {
                let (items, replies): (Vec<T>, Vec<oneshot::Sender<A>>) = batch.drain(..).unzip();
                let answers = commit(items).await;
                debug_assert_eq!(answers.len(), replies.len(), "one answer per item");
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // The submitter may have given up; its item was committed.
                    let _ = reply.send(answer);
                }
            }
        });
        Self { queue }
    }

    /// Queues `item` for the next batch and waits for its answer; `None`
    /// when the task has stopped.
    pub async fn submit(&self, item: T) -> Option<A> {
        let (reply, answer) = oneshot::channel();
        self.queue.send((item, reply)).await.ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn each_item_gets_its_own_answer_and_waiting_items_share_a_commit() {
        let commits = Arc::new(AtomicUsize::new(0));
        let counted = commits.clone();
        let doubler = GroupCommit::spawn(64, move |items: Vec<u32>| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::task::yield_now().await;
                items.into_iter().map(|n| n * 2).collect::<Vec<_>>()
            }
        });
        let submits: Vec<_> = (0..200u32)
            .map(|n| {
                let doubler = doubler.clone();
                tokio::spawn(async move { (n, doubler.submit(n).await) })
            })
            .collect();
        for submit in submits {
            let (n, answer) = submit.await.unwrap();
            assert_eq!(answer, Some(n * 2));
        }
        let commits = commits.load(Ordering::SeqCst);
        assert!(commits < 200, "{commits} commits for 200 items");
    }
}
