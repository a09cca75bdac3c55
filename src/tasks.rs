//! Every task the agent runs beside the one answering a request is spawned
//! here, on one tracker, so that shutdown joins them all
//! (docs/architecture.md, "Lifecycle"). Two kinds:
//!
//! * [`spawn`] runs to its end, and shutdown waits for it: the queue
//!   writer and the last-script recorder (they end once their senders are
//!   gone and write what they hold), the background loops (they watch the
//!   agent's cancellation token), a sync-log line, a boot event's enqueue.
//! * [`spawn_until_shutdown`] is work that may be cut once the servers
//!   have stopped: content-cache fills, revalidations and prefetches, a
//!   controller lookup for a boot already answered. A fill cut there
//!   leaves a partial file in the cache's `tmp/`, which the next start
//!   removes (DESIGN §12).
//!
//! The tracker is process-wide: one agent runs per process, and tasks are
//! started deep inside services that need not know who will join them.
//! `tests/architecture.rs` keeps `tokio::spawn` out of the rest of `src/`.

use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

struct Tasks {
    tracker: TaskTracker,
    /// Cancelled by [`join`]: ends the `spawn_until_shutdown` tasks.
    cut: CancellationToken,
}

static TASKS: LazyLock<Tasks> = LazyLock::new(|| Tasks {
    tracker: TaskTracker::new(),
    cut: CancellationToken::new(),
});

/// Spawns `future`; shutdown waits for it to end.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    TASKS.tracker.spawn(future)
}

/// Spawns `future`; it is dropped where it stands when [`join`] begins
/// (None then).
pub fn spawn_until_shutdown<F>(future: F) -> JoinHandle<Option<F::Output>>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let cut = TASKS.cut.clone();
    TASKS.tracker.spawn(async move {
        tokio::select! {
            biased;
            () = cut.cancelled() => None,
            output = future => Some(output),
        }
    })
}

/// The end of the agent: cuts the `spawn_until_shutdown` tasks, then
/// waits up to `grace` for every task. Returns how many were still
/// running when the grace ran out (0: all joined).
pub async fn join(grace: Duration) -> usize {
    TASKS.cut.cancel();
    TASKS.tracker.close();
    match tokio::time::timeout(grace, TASKS.tracker.wait()).await {
        Ok(()) => 0,
        Err(_) => TASKS.tracker.len(),
    }
}
