//! A fill's download: the controller's file fetched into a temporary file
//! (resumed with `Range` where it breaks, checked against the announced
//! length and checksum, within the room reserved for it), then kept and
//! indexed, or discarded (DESIGN §12).

use super::*;

impl ContentCache {
    /// Downloads into the temporary file, resuming a broken stream;
    /// returns what was kept (size, checksum) once verified.
    pub(super) async fn run_fill(
        &self,
        path: &str,
        fill: &Arc<Fill>,
        writer: &FillWriter,
        abandonable: bool,
    ) -> Result<Verified, String> {
        let file = &fill.handle();
        let mut hasher = Sha256::new();
        let mut written: u64 = 0;
        let mut expected: Option<(Option<u64>, Option<String>, Option<String>)> = None;
        let mut resumes = 0;
        let mut room: Option<Reservation> = None;
        loop {
            let Some(remote) = self.request_from(path, written, &mut resumes).await? else {
                continue;
            };
            let RemoteFile {
                offset,
                total,
                sha256,
                etag,
                mut body,
            } = remote;
            self.admit_answer(&mut expected, &mut room, writer, total, sha256, etag)
                .await?;
            let total = expected.as_ref().and_then(|e| e.0);
            if let Some(total) = total
                && written == 0
            {
                writer.report(Progress::Filling {
                    written,
                    total: Some(total),
                });
            }
            // A controller that does not take Range sends the whole file
            // again: the part already kept is skipped.
            let mut skip = written - offset.min(written);
            let target = FillTarget {
                file,
                fill,
                writer,
                abandonable,
                total,
                reserved: room.is_some(),
            };
            let broken = self
                .receive(&target, &mut body, &mut hasher, &mut written, &mut skip)
                .await?;
            match broken {
                Some(e) if resumes < RESUMES => {
                    resumes += 1;
                    tracing::warn!(path, written, error = %e, "fill interrupted; resuming");
                    continue;
                }
                Some(e) => return Err(format!("the controller's stream broke: {e}")),
                None if skip > 0 => {
                    return Err("the controller's answer ended before the part kept".into());
                }
                None => {}
            }
            if let Some(total) = total
                && written != total
            {
                if resumes < RESUMES {
                    resumes += 1;
                    tracing::warn!(path, written, total, "fill cut short; resuming");
                    continue;
                }
                return Err(format!("{written} bytes of the {total} announced"));
            }
            return verified(hasher, written, expected, room);
        }
    }

    /// Reads one answer's body into the file after the `written` bytes
    /// kept (dropping the first `skip` bytes, already kept), hashing as
    /// it goes, in batches that report progress to the fill's readers.
    /// Returns how the stream ended: None whole, Some(error) broken.
    async fn receive(
        &self,
        target: &FillTarget<'_>,
        body: &mut RemoteBody,
        hasher: &mut Sha256,
        written: &mut u64,
        skip: &mut u64,
    ) -> Result<Option<String>, String> {
        let FillTarget {
            file,
            fill,
            writer,
            total,
            ..
        } = *target;
        let mut buffer = Vec::with_capacity(WRITE_BATCH);
        let broken = loop {
            let next = if buffer.is_empty() {
                body.next().await
            } else {
                // A slow stream still shows progress to the readers.
                match tokio::time::timeout(std::time::Duration::from_millis(20), body.next()).await
                {
                    Ok(next) => next,
                    Err(_) => {
                        *written = flush(file, &mut buffer, *written).await?;
                        writer.report(Progress::Filling {
                            written: *written,
                            total,
                        });
                        continue;
                    }
                }
            };
            let mut chunk = match next {
                Some(Ok(_)) if target.abandonable && fill.abandoned() => {
                    return Err(ABANDONED.into());
                }
                Some(Ok(chunk)) => chunk,
                Some(Err(e)) => break Some(e.to_string()),
                None => break None,
            };
            if !fill.is_urgent() {
                self.pace.take(chunk.len() as u64).await;
            }
            if *skip > 0 {
                let n = (*skip).min(chunk.len() as u64) as usize;
                let _ = chunk.split_to(n);
                *skip -= n as u64;
            }
            hasher.update(&chunk);
            buffer.extend_from_slice(&chunk);
            self.within_bounds(*written + buffer.len() as u64, total, target.reserved)?;
            if buffer.len() >= WRITE_BATCH {
                *written = flush(file, &mut buffer, *written).await?;
                writer.report(Progress::Filling {
                    written: *written,
                    total,
                });
            }
        };
        *written = flush(file, &mut buffer, *written).await?;
        writer.report(Progress::Filling {
            written: *written,
            total,
        });
        Ok(broken)
    }

    /// The first answer's length and checksum are what the fill expects
    /// (room is reserved for the length before a byte is written: DESIGN
    /// §12); a later answer (a resumption) must announce the same.
    async fn admit_answer(
        &self,
        expected: &mut Option<(Option<u64>, Option<String>, Option<String>)>,
        room: &mut Option<Reservation>,
        writer: &FillWriter,
        total: Option<u64>,
        sha256: Option<String>,
        etag: Option<String>,
    ) -> Result<(), String> {
        match expected {
            None => {
                if let Some(total) = total {
                    *room = Some(self.reserve(total).await?);
                }
                writer.announce(sha256.clone());
                *expected = Some((total, sha256, etag));
            }
            Some((first_total, first_sum, _)) => {
                if (total.is_some() && total != *first_total)
                    || (sha256.is_some() && sha256 != *first_sum)
                {
                    return Err("the file changed at the controller during the fill".into());
                }
            }
        }
        Ok(())
    }

    /// One request for the file from byte `written` on. None: it could
    /// not be sent and is to be tried again (counted in `resumes`).
    async fn request_from(
        &self,
        path: &str,
        written: u64,
        resumes: &mut u32,
    ) -> Result<Option<RemoteFile>, String> {
        let request = FileRequest {
            from: written,
            if_none_match: None,
        };
        match self.port.fetch_file(path, request).await {
            Ok(FileAnswer::Body(remote)) => Ok(Some(remote)),
            Ok(FileAnswer::Missing) => Err(MISSING.into()),
            Ok(FileAnswer::NotModified) => {
                Err("the controller answered 304 to an unconditional request".into())
            }
            // A broken stream resumes where it stopped; a request that
            // could not be sent (a pooled connection the controller had
            // just closed, a connect refused under load) is tried again
            // too, a few times.
            Err(e)
                if *resumes < RESUMES
                    && (written > 0 || matches!(e, CentralError::Unreachable(_))) =>
            {
                *resumes += 1;
                tracing::warn!(path, written, error = %e, "fill interrupted; resuming");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                Ok(None)
            }
            Err(e) => Err(e.to_string()),
        }
    }

    /// `so_far` bytes received: no more than announced, and with no length
    /// announced (no room reserved), no more than the cache has left.
    fn within_bounds(&self, so_far: u64, total: Option<u64>, reserved: bool) -> Result<(), String> {
        if !reserved && so_far > self.room_left() {
            return Err(format!(
                "{UNCACHEABLE}: {so_far} bytes so far, with no length \
                 announced, and no more room under cache.max_bytes"
            ));
        }
        if let Some(total) = total
            && so_far > total
        {
            return Err(format!(
                "the controller sent more than the {total} bytes it announced"
            ));
        }
        Ok(())
    }

    /// Moves a verified fill into place (synced) and indexes it.
    async fn keep(
        &self,
        path: &str,
        name: &str,
        temp: &Path,
        pinned: bool,
        verified: Verified,
    ) -> Result<Entry, String> {
        let target = self.files.join(name);
        let files = self.files.clone();
        let moved = tokio::task::spawn_blocking({
            let temp = temp.to_path_buf();
            move || -> std::io::Result<()> {
                std::fs::File::open(&temp)?.sync_all()?;
                std::fs::rename(&temp, &target)?;
                std::fs::File::open(&files)?.sync_all()
            }
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        if let Err(e) = moved {
            return Err(format!("cannot move the complete file into place: {e}"));
        }
        let at = now();
        let entry = Entry {
            path: path.to_string(),
            file: name.to_string(),
            size: verified.size,
            sha256: verified.sha256,
            verified: verified.verified,
            etag: verified.etag,
            fetched_at: at,
            validated_at: at,
            last_used: at,
            pinned,
        };
        let stored = entry.clone();
        match self.index_call(move |i| i.put_entries(&[stored])).await {
            Ok(()) => Ok(entry),
            Err(e) => {
                let _ = std::fs::remove_file(self.files.join(name));
                Err(format!("not indexed: {e}"))
            }
        }
    }

    /// Renames a verified fill into place and indexes it, or removes what
    /// a failed one left; then tells the readers.
    pub(super) async fn finish_fill(
        self: &Arc<Self>,
        path: &str,
        name: String,
        temp: PathBuf,
        pinned: bool,
        outcome: Result<Verified, String>,
        writer: FillWriter,
    ) {
        let kept = match outcome {
            Ok(verified) => self.keep(path, &name, &temp, pinned, verified).await,
            Err(e) => Err(e),
        };
        if kept.is_err() {
            let _ = tokio::fs::remove_file(&temp).await;
        }
        {
            let mut fills = self.fills.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(entry) = &kept {
                let replaced = self
                    .entries
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(path.to_string(), entry.clone());
                // A changed file fetched again: the old copy goes (a client
                // reading it keeps its open handle).
                if let Some(old) = replaced.filter(|old| old.file != entry.file) {
                    let _ = std::fs::remove_file(self.files.join(&old.file));
                }
            }
            fills.remove(path);
        }
        match kept {
            Ok(entry) => {
                tracing::info!(
                    path,
                    bytes = entry.size,
                    verified = entry.verified,
                    "file cached"
                );
                writer.report(Progress::Done { len: entry.size });
                self.evict_over_limit().await;
            }
            Err(reason) if reason.starts_with(UNCACHEABLE) => {
                tracing::info!(path, %reason, "file not kept; its clients get it passed through");
                writer.report(Progress::Failed(reason));
            }
            Err(reason) if reason == ABANDONED => {
                crate::metrics::metrics().content_request("abandoned");
                tracing::debug!(path, "fill abandoned: no client waits for it any more");
                writer.report(Progress::Failed(reason));
            }
            Err(reason) if reason == MISSING => {
                self.remember_missing(path);
                writer.report(Progress::Missing)
            }
            Err(reason) => {
                self.counters.fill_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(path, %reason, "fill failed; nothing kept");
                writer.report(Progress::Failed(reason));
            }
        }
    }
}

/// A fill's bytes, all received: checked against the checksum the
/// controller announced, if any.
fn verified(
    hasher: Sha256,
    written: u64,
    expected: Option<(Option<u64>, Option<String>, Option<String>)>,
    room: Option<Reservation>,
) -> Result<Verified, String> {
    let sum = hex(&hasher.finalize());
    let (_, announced, etag) = expected.unwrap_or_default();
    if let Some(announced) = &announced
        && announced.trim_start_matches("sha256:") != sum
    {
        return Err(format!(
            "checksum mismatch: the controller announced {announced}, the bytes hash to {sum}"
        ));
    }
    Ok(Verified {
        size: written,
        sha256: sum,
        verified: announced.is_some(),
        etag,
        _room: room,
    })
}

/// Where one fill's bytes go, and what bounds them.
#[derive(Clone, Copy)]
struct FillTarget<'a> {
    file: &'a Arc<std::fs::File>,
    fill: &'a Fill,
    writer: &'a FillWriter,
    /// The fill stops when no client waits for it any more.
    abandonable: bool,
    /// The length the controller announced.
    total: Option<u64>,
    /// Room was reserved for `total` (else the cache's room left bounds it).
    reserved: bool,
}

/// A controller file's body as it streams in.
type RemoteBody = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>,
>;
