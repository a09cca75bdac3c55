//! Recording what was served: the last script per MAC (for
//! `offline.default_action = last_known`), written in batches off the boot
//! path, and flushed when the agent stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::mpsc;

use super::render::strip_header;
use crate::model::boot::BootAnswer;
use crate::model::decision::Decision;
use crate::model::mac::Mac;
use crate::store::LastScript;
use crate::store::rows::{self, BootRows};

/// Hands served scripts to the writer task; dropping every handle (the
/// boot service, at shutdown) lets the task write what it holds and end.
pub struct Recorder {
    tx: mpsc::Sender<(Mac, LastScript)>,
}

impl Recorder {
    /// Starts the writer task (needs a tokio runtime); join the handle to
    /// know that everything recorded is on disk.
    pub fn start(rows: Arc<dyn BootRows>) -> (Recorder, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(RECORDER_QUEUE);
        let task = crate::tasks::spawn(record_last_scripts(rows, rx));
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
async fn record_last_scripts(rows: Arc<dyn BootRows>, mut rx: mpsc::Receiver<(Mac, LastScript)>) {
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
        if let Err(e) = rows::blocking(&rows, move |r| r.put_last_scripts(&entries)).await {
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::model::boot::Source;
    use crate::model::decision::{Action, Banner};
    use crate::model::node::Workflow;
    use crate::model::script::Script;
    use crate::store::StoreError;

    /// Rows in memory: every commit the recorder makes, as it made it.
    #[derive(Default)]
    struct MemoryRows(Mutex<Vec<Vec<(Mac, LastScript)>>>);

    impl BootRows for MemoryRows {
        fn workflow(&self, _: &str) -> Result<Option<Workflow>, StoreError> {
            Ok(None)
        }
        fn workflows(&self) -> Result<Vec<Workflow>, StoreError> {
            Ok(Vec::new())
        }
        fn last_script(&self, _: Mac) -> Result<Option<LastScript>, StoreError> {
            Ok(None)
        }
        fn put_last_scripts(&self, scripts: &[(Mac, LastScript)]) -> Result<(), StoreError> {
            self.0.lock().unwrap().push(scripts.to_vec());
            Ok(())
        }
    }

    #[tokio::test]
    async fn served_scripts_reach_the_rows_it_was_given_once_per_mac() {
        let rows = Arc::new(MemoryRows::default());
        let (recorder, task) = Recorder::start(rows.clone());
        let answer = |text: &str| BootAnswer {
            script: Script::ipxe(format!("#!ipxe\n{text}\n")),
            source: Source::Standalone,
            action: Action::Local,
            state: None,
        };
        let decision = Decision {
            action: Action::Local,
            banner: Banner::None,
            workflow: None,
            conflict: None,
            missing_file: None,
        };
        let a = Mac::new([0x52, 0x54, 0, 0, 0, 1]);
        let b = Mac::new([0x52, 0x54, 0, 0, 0, 2]);
        recorder.record(a, &answer("exit"), &decision);
        recorder.record(a, &answer("sanboot --no-describe --drive 0x80"), &decision);
        recorder.record(b, &answer("exit"), &decision);
        drop(recorder);
        task.await.unwrap();
        let written: HashMap<Mac, String> = rows
            .0
            .lock()
            .unwrap()
            .iter()
            .flatten()
            .map(|(mac, last)| (*mac, last.script.clone()))
            .collect();
        assert_eq!(written.len(), 2);
        assert!(written[&a].contains("sanboot"), "the later script wins");
        assert!(written[&b].contains("exit"));
    }
}
