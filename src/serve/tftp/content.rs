//! File content for a transfer.
//!
//! Blocks are read 16 KiB at a time with `preadv2(RWF_NOWAIT)`, which
//! succeeds only when the data is in the page cache (boot files almost
//! always are) and so never blocks the transfer's thread. When the data is not cached, or the filesystem does not support
//! the flag, a chunk is read on the blocking pool instead (which also
//! starts the kernel's readahead for the blocks after it).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

/// Bytes read per blocking read.
const CHUNK: usize = 128 * 1024;
/// Bytes read per read from the page cache: eleven blocks of 1468 bytes,
/// and at most 16 KiB held per session (1,024 sessions hold 16 MiB).
const CACHED_CHUNK: usize = 16 * 1024;

/// What a transfer sends.
pub enum Content {
    /// Already in memory (rendered scripts).
    Memory(Bytes),
    /// A file on disk, read at increasing offsets.
    File(File),
}

pub struct ChunkReader {
    file: Option<Arc<File>>,
    /// Bytes read ahead by a blocking read, served before the file.
    buffered: Bytes,
    pos: usize,
    /// File offset of the first byte not yet read from the file.
    offset: u64,
    /// Cleared once the filesystem answers RWF_NOWAIT with "unsupported".
    nowait: bool,
}

impl ChunkReader {
    pub fn new(content: Content) -> ChunkReader {
        match content {
            Content::Memory(bytes) => ChunkReader {
                file: None,
                buffered: bytes,
                pos: 0,
                offset: 0,
                nowait: false,
            },
            Content::File(file) => ChunkReader {
                file: Some(Arc::new(file)),
                buffered: Bytes::new(),
                pos: 0,
                offset: 0,
                nowait: true,
            },
        }
    }

    /// Copies the next bytes into `out`; fewer than `out.len()` only at the end.
    pub async fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let mut filled = 0;
        while filled < out.len() {
            if self.pos < self.buffered.len() {
                let n = (out.len() - filled).min(self.buffered.len() - self.pos);
                out[filled..filled + n].copy_from_slice(&self.buffered[self.pos..self.pos + n]);
                self.pos += n;
                filled += n;
                continue;
            }
            let Some(file) = self.file.clone() else {
                break;
            };
            if self.nowait {
                // Several blocks per system call: a lockstep transfer makes
                // about five calls per block, and this was one of them.
                let mut chunk = self.spare(CACHED_CHUNK.max(out.len() - filled));
                match read_cached(&file, &mut chunk, self.offset) {
                    Ok(0) => break,
                    Ok(n) => {
                        chunk.truncate(n);
                        self.offset += n as u64;
                        self.buffered = chunk.freeze();
                        self.pos = 0;
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e)
                        if e.raw_os_error() == Some(libc::EOPNOTSUPP)
                            || e.raw_os_error() == Some(libc::ENOSYS) =>
                    {
                        self.nowait = false;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let offset = self.offset;
            let chunk = tokio::task::spawn_blocking(move || read_chunk(&file, offset))
                .await
                .map_err(|e| std::io::Error::other(format!("file read task failed: {e}")))??;
            if chunk.is_empty() {
                break;
            }
            self.offset += chunk.len() as u64;
            self.buffered = chunk;
            self.pos = 0;
        }
        Ok(filled)
    }

    /// A buffer of `len` bytes for the next read: the one just sent from,
    /// taken back. A new one per read was a fresh allocation each 16 KiB
    /// of every transfer, and in a storm the allocator handed back and
    /// faulted in (zeroed) whole pages for them: 6.5 % of the agent's CPU
    /// in 200 x 80 KB storms (perf, docs/benchmarks.md).
    fn spare(&mut self, len: usize) -> BytesMut {
        let sent = std::mem::take(&mut self.buffered);
        let mut buf = sent.try_into_mut().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        buf
    }
}

/// Reads from the page cache only: `WouldBlock` if that would need the disk.
fn read_cached(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let offset = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
    // SAFETY: `iov` points at `buf`, which is valid for writes of its length
    // for the duration of the call; the descriptor is open for `file`'s life.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn read_chunk(file: &File, offset: u64) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; CHUNK];
    let mut filled = 0;
    while filled < CHUNK {
        let n = file.read_at(&mut buf[filled..], offset + filled as u64)?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    buf.truncate(filled);
    Ok(Bytes::from(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn read_all(mut reader: ChunkReader, piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; piece];
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            out.extend_from_slice(&buf[..n]);
            if n < piece {
                return out;
            }
        }
    }

    fn file_with(data: &[u8]) -> File {
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(data).unwrap();
        file
    }

    #[tokio::test]
    async fn reads_files_of_every_shape() {
        for len in [
            0,
            1,
            511,
            512,
            CACHED_CHUNK - 1,
            CACHED_CHUNK,
            CACHED_CHUNK + 1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 1,
            3 * CHUNK + 17,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let got = read_all(ChunkReader::new(Content::File(file_with(&data))), 512).await;
            assert_eq!(got.len(), len);
            assert!(got == data, "content differs at len {len}");
        }
    }

    #[tokio::test]
    async fn blocking_fallback_reads_the_same_bytes() {
        let data: Vec<u8> = (0..3 * CHUNK + 5).map(|i| (i % 253) as u8).collect();
        let mut reader = ChunkReader::new(Content::File(file_with(&data)));
        reader.nowait = false;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 1468];
        loop {
            let n = reader.read(&mut buf).await.unwrap();
            out.extend_from_slice(&buf[..n]);
            if n < buf.len() {
                break;
            }
        }
        assert!(out == data);
    }

    #[tokio::test]
    async fn reads_memory() {
        let got = read_all(
            ChunkReader::new(Content::Memory(Bytes::from_static(b"hello"))),
            2,
        )
        .await;
        assert_eq!(got, b"hello");
    }
}
