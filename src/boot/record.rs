//! Recording what was served: the last script per MAC (for
//! `offline.default_action = last_known`), written in batches off the boot
//! path, and flushed when the agent stops.

use std::collections::HashMap;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::render::strip_header;
use crate::model::boot::BootAnswer;
use crate::model::decision::Decision;
use crate::model::mac::Mac;
use crate::store::{LastScript, Store};

/// Hands served scripts to the writer task; dropping every handle (the
/// boot service, at shutdown) lets the task write what it holds and end.
pub struct Recorder {
    tx: mpsc::Sender<(Mac, LastScript)>,
}

impl Recorder {
    /// Starts the writer task (needs a tokio runtime); join the handle to
    /// know that everything recorded is on disk.
    pub fn start(store: Store) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(RECORDER_QUEUE);
        let task = crate::tasks::spawn(record_last_scripts(store, rx));
        (Recorder { tx }, task)
    }

    pub fn record(&self, mac: Mac, answer: &BootAnswer, decision: &Decision) {
        let body = strip_header(&answer.script);
        let entry = LastScript {
            script: body.to_string(),
            served_at: OffsetDateTime::now_utc(),
            action: answer.action.as_str().to_string(),
            destructive: answer.action.is_destructive(),
            workflow_id: decision.workflow.as_ref().map(|w| w.id.clone()),
        };
        // Never make a boot wait for bookkeeping: a full queue drops the entry.
        if self.tx.try_send((mac, entry)).is_err() {
            tracing::warn!(%mac, "last-script recorder is behind; entry dropped");
        }
    }
}

/// Bound of the recorder's queue; past it entries are dropped, not waited for.
const RECORDER_QUEUE: usize = 8192;
/// How long the recorder gathers entries before one commit.
const RECORDER_BATCH_WINDOW: Duration = Duration::from_millis(100);

/// A script identical to the one recorded for a MAC is written again only
/// after this long: a node that reboots with the same answer costs no disk
/// write, and `served_at` is at most this stale.
const RECORD_REFRESH: time::Duration = time::Duration::minutes(10);

/// Writes last-served scripts in batches: one commit per window, however
/// many nodes booted in it.
async fn record_last_scripts(store: Store, mut rx: mpsc::Receiver<(Mac, LastScript)>) {
    let mut recorded: HashMap<Mac, (u64, OffsetDateTime)> = HashMap::new();
    // Ends when every sender is gone (shutdown), after the last batch.
    while let Some(first) = rx.recv().await {
        let mut batch: HashMap<Mac, LastScript> = HashMap::new();
        let mut take = |mac: Mac, entry: LastScript| {
            let digest = digest(&entry);
            if let Some((previous, at)) = recorded.get(&mac)
                && *previous == digest
                && entry.served_at - *at < RECORD_REFRESH
            {
                return;
            }
            recorded.insert(mac, (digest, entry.served_at));
            batch.insert(mac, entry);
        };
        take(first.0, first.1);
        let deadline = tokio::time::Instant::now() + RECORDER_BATCH_WINDOW;
        while let Ok(Some((mac, entry))) = tokio::time::timeout_at(deadline, rx.recv()).await {
            take(mac, entry);
        }
        if batch.is_empty() {
            continue;
        }
        let entries: Vec<_> = batch.into_iter().collect();
        let count = entries.len();
        if let Err(e) = store.call(move |s| s.put_last_scripts(&entries)).await {
            tracing::error!(error = %e, count, "could not record last-served scripts");
        }
    }
}

fn digest(entry: &LastScript) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    entry.action.hash(&mut hasher);
    entry.script.hash(&mut hasher);
    entry.workflow_id.hash(&mut hasher);
    hasher.finish()
}
