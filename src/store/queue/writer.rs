//! Group commit: concurrent enqueues are gathered while the previous
//! commit is on disk and written together in the next one, so an fsync is
//! shared by every writer that arrived during it. A caller is answered only
//! after its item is durably committed.

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{NewItem, Queue, QueueError};
use crate::store::StoreError;
use crate::store::nodes::NodeCache;

/// Most items in one commit.
const MAX_BATCH: usize = 1024;

type Request = (NewItem, oneshot::Sender<Result<u64, QueueError>>);

/// Queues items in group commits: many writers, one transaction.
#[derive(Clone)]
pub struct QueueWriter {
    tx: mpsc::Sender<Request>,
}

impl QueueWriter {
    /// Starts the writer task (needs a tokio runtime).
    pub fn start(queue: Queue) -> QueueWriter {
        QueueWriter::spawn(queue, None)
    }

    /// Like [`QueueWriter::start`]; items' `local_state` changes are also
    /// published to `cache` (after their commit, under its write lock).
    pub fn start_with_cache(queue: Queue, cache: NodeCache) -> QueueWriter {
        QueueWriter::spawn(queue, Some(cache))
    }

    fn spawn(queue: Queue, cache: Option<NodeCache>) -> QueueWriter {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        crate::tasks::spawn(run(queue, cache, rx));
        QueueWriter { tx }
    }

    /// Enqueues one item; returns its id once it is durable.
    pub async fn enqueue(&self, item: NewItem) -> Result<u64, QueueError> {
        let (reply, answer) = oneshot::channel();
        let stopped = || {
            QueueError::Store(crate::store::StoreError::Task(
                "queue writer stopped".into(),
            ))
        };
        self.tx.send((item, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(queue: Queue, cache: Option<NodeCache>, mut rx: mpsc::Receiver<Request>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<NewItem>, Vec<_>) = batch.into_iter().unzip();
        let q = queue.clone();
        let cache = cache.clone();
        let written = tokio::task::spawn_blocking(move || {
            let now = OffsetDateTime::now_utc();
            match cache {
                Some(cache) => cache.write_blocking(|| q.enqueue_batch(items, now)),
                None => q.enqueue_many(items, now),
            }
        })
        .await;
        match written {
            Ok(Ok(results)) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Ok(Err(e)) => {
                let message = e.to_string();
                let io = matches!(&e, QueueError::Store(store) if store.is_io());
                tracing::error!(error = %message, "queue commit failed; nothing of this batch was accepted");
                for reply in replies {
                    let error = if io {
                        StoreError::Unwritable(message.clone())
                    } else {
                        StoreError::Task(message.clone())
                    };
                    let _ = reply.send(Err(QueueError::Store(error)));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(QueueError::Store(crate::store::StoreError::Task(
                        e.to_string(),
                    ))));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::queue::{Kind, Limits, Origin};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_enqueues_are_all_durable_with_distinct_ids() {
        let dir = tempfile::tempdir().unwrap();
        let queue =
            Queue::open(Store::open(dir.path()).unwrap(), Limits::unshared(10_000)).unwrap();
        let writer = QueueWriter::start(queue.clone());
        let mut tasks = Vec::new();
        for n in 0..200 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(async move {
                writer
                    .enqueue(NewItem {
                        kind: Kind::Event,
                        origin: Origin::Operator,
                        node: format!("node-{}", n % 7),
                        payload: serde_json::json!({ "n": n }),
                        key: None,
                        local_state: None,
                    })
                    .await
                    .unwrap()
            }));
        }
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap());
        }
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 200);
        let stats = tokio::task::spawn_blocking(move || queue.stats())
            .await
            .unwrap()
            .unwrap();
        assert_eq!((stats.total, stats.pending), (200, 200));
    }
}
