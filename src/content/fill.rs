//! One fill: a controller file being written to a temporary file while
//! any number of clients read it (single flight, DESIGN §12). The fill
//! runs in a task of its own, so a client that goes away does not stop it
//! for the others; readers follow its progress through a watch channel
//! and read what is written with positional reads of a shared handle.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::watch;

/// How far a fill has got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The controller has not answered yet.
    Asking,
    /// Bytes are arriving: `written` of `total` (if the controller said).
    Filling { written: u64, total: Option<u64> },
    /// Complete and verified: `len` bytes.
    Done { len: u64 },
    /// The controller has no such file.
    Missing,
    /// Failed (the reason); nothing was kept.
    Failed(String),
}

/// The shared side of a fill: its progress, and the temporary file's
/// read handle (valid after the file is renamed or removed: the handle
/// keeps the data).
pub struct Fill {
    pub path: String,
    progress: watch::Receiver<Progress>,
    file: Arc<std::fs::File>,
    /// The controller's `X-Checksum-SHA256`, once it has answered.
    announced: std::sync::OnceLock<Option<String>>,
    /// A client waits for it (not a background prefetch, which is paced).
    urgent: std::sync::atomic::AtomicBool,
    /// Clients waiting for it now, and whether any ever did: a fill that
    /// only clients wanted is abandoned once none waits (DESIGN §12).
    waiting: std::sync::atomic::AtomicUsize,
    ever_waited: std::sync::atomic::AtomicBool,
}

/// One client waiting for a fill, for as long as it lives.
pub struct Waiting(Arc<Fill>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0
            .waiting
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// The filling task's side.
pub struct FillWriter {
    progress: watch::Sender<Progress>,
    fill: Arc<Fill>,
}

impl FillWriter {
    pub fn report(&self, progress: Progress) {
        self.progress.send_replace(progress);
    }

    /// The checksum the controller announced (before the first report).
    pub fn announce(&self, sha256: Option<String>) {
        let _ = self.fill.announced.set(sha256);
    }
}

impl Fill {
    /// A fill of `path` into `file` (opened for reading and writing).
    pub fn new(path: String, file: std::fs::File) -> (Arc<Fill>, FillWriter) {
        let (sender, receiver) = watch::channel(Progress::Asking);
        let fill = Arc::new(Fill {
            path,
            progress: receiver,
            file: Arc::new(file),
            announced: std::sync::OnceLock::new(),
            urgent: std::sync::atomic::AtomicBool::new(false),
            waiting: std::sync::atomic::AtomicUsize::new(0),
            ever_waited: std::sync::atomic::AtomicBool::new(false),
        });
        let writer = FillWriter {
            progress: sender,
            fill: fill.clone(),
        };
        (fill, writer)
    }

    /// Marks a client as waiting until the guard is dropped.
    pub fn waiting(self: &Arc<Self>) -> Waiting {
        self.waiting
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.ever_waited
            .store(true, std::sync::atomic::Ordering::Release);
        Waiting(self.clone())
    }

    /// Did clients wait for it, and none does any more?
    pub fn abandoned(&self) -> bool {
        self.ever_waited.load(std::sync::atomic::Ordering::Acquire)
            && self.waiting.load(std::sync::atomic::Ordering::Acquire) == 0
    }

    pub fn make_urgent(&self) {
        self.urgent
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn is_urgent(&self) -> bool {
        self.urgent.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The controller's checksum of the file, if it sent one.
    pub fn announced(&self) -> Option<String> {
        self.announced.get().cloned().flatten()
    }

    pub fn handle(&self) -> Arc<std::fs::File> {
        self.file.clone()
    }

    /// Waits until the controller has answered (or the fill has ended).
    pub async fn started(&self) -> Progress {
        let mut watch = self.progress.clone();
        let result = watch
            .wait_for(|p| !matches!(p, Progress::Asking))
            .await
            .map(|p| p.clone());
        result.unwrap_or_else(|_| Progress::Failed("the fill stopped".into()))
    }

    /// Waits until the fill has ended (done, missing or failed).
    pub async fn finished(&self) -> Progress {
        let mut watch = self.progress.clone();
        let result = watch
            .wait_for(|p| {
                matches!(
                    p,
                    Progress::Done { .. } | Progress::Missing | Progress::Failed(_)
                )
            })
            .await
            .map(|p| p.clone());
        result.unwrap_or_else(|_| Progress::Failed("the fill stopped".into()))
    }

    /// Reads bytes `from..end` (end None: to the end of the file) as the
    /// fill writes them; fails if the fill does.
    pub fn reader(self: &Arc<Self>, from: u64, end: Option<u64>) -> FillReader {
        FillReader {
            _waiting: self.waiting(),
            fill: self.clone(),
            watch: self.progress.clone(),
            pos: from,
            end,
        }
    }
}

/// A client's view of a fill.
pub struct FillReader {
    _waiting: Waiting,
    fill: Arc<Fill>,
    watch: watch::Receiver<Progress>,
    pos: u64,
    end: Option<u64>,
}

/// Read at most this much per chunk.
const CHUNK: u64 = 128 * 1024;

impl FillReader {
    /// The next chunk, None at the end, or the fill's failure.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, std::io::Error>> {
        loop {
            let (available, done) = match &*self.watch.borrow_and_update() {
                Progress::Asking => (0, false),
                Progress::Filling { written, .. } => (*written, false),
                Progress::Done { len } => {
                    if self.end.is_none() {
                        self.end = Some(*len);
                    }
                    (*len, true)
                }
                Progress::Missing => {
                    return Some(Err(std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        format!("{}: not at the controller", self.fill.path),
                    )));
                }
                Progress::Failed(reason) => {
                    return Some(Err(std::io::Error::other(format!(
                        "{}: the fill failed: {reason}",
                        self.fill.path
                    ))));
                }
            };
            if done && self.end.is_some_and(|end| self.pos >= end) {
                return None;
            }
            let mut limit = self.end.map_or(available, |end| end.min(available));
            // The last byte of an answer waits for the file to be verified:
            // a client whose answer is complete has a checked file, and one
            // whose fill fails is cut off short (DESIGN §12).
            if !done && let Some(end) = self.end {
                limit = limit.min(end.saturating_sub(1));
            }
            if self.pos < limit {
                let want = (limit - self.pos).min(CHUNK) as usize;
                let file = self.fill.file.clone();
                let at = self.pos;
                let read = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; want];
                    let n = file.read_at(&mut buf, at)?;
                    buf.truncate(n);
                    Ok::<_, std::io::Error>(buf)
                })
                .await
                .map_err(std::io::Error::other)
                .and_then(|r| r);
                return match read {
                    Ok(buf) if buf.is_empty() => Some(Err(std::io::Error::other(
                        "the fill's file is shorter than written",
                    ))),
                    Ok(buf) => {
                        self.pos += buf.len() as u64;
                        Some(Ok(Bytes::from(buf)))
                    }
                    Err(e) => Some(Err(e)),
                };
            }
            if self.watch.changed().await.is_err() {
                // The writer is gone: its last word is final.
                let last = self.watch.borrow().clone();
                if !matches!(last, Progress::Done { .. }) {
                    return Some(Err(std::io::Error::other(format!(
                        "{}: the fill stopped",
                        self.fill.path
                    ))));
                }
            }
        }
    }

    /// The reader as a byte stream (for an HTTP body).
    pub fn into_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures_util::stream::unfold(self, |mut reader| async move {
            reader.next_chunk().await.map(|chunk| (chunk, reader))
        })
    }
}
