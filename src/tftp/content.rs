//! File content for a transfer, read ahead in chunks on the blocking pool
//! so that the transfer loop neither blocks its thread on disk reads nor
//! waits for one chunk while the next could already be loading.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;

/// Bytes read per disk read. Two chunks (current and prefetched) per
/// session bound memory at 256 KiB per transfer.
const CHUNK: usize = 128 * 1024;

/// What a transfer sends.
pub enum Content {
    /// Already in memory (rendered scripts).
    Memory(Bytes),
    /// A file on disk, read at increasing offsets.
    File(File),
}

pub struct ChunkReader {
    file: Option<Arc<File>>,
    current: Bytes,
    pos: usize,
    next_offset: u64,
    prefetch: Option<JoinHandle<std::io::Result<Bytes>>>,
    exhausted: bool,
}

impl ChunkReader {
    pub fn new(content: Content) -> ChunkReader {
        match content {
            Content::Memory(bytes) => ChunkReader {
                file: None,
                current: bytes,
                pos: 0,
                next_offset: 0,
                prefetch: None,
                exhausted: true,
            },
            Content::File(file) => {
                let mut reader = ChunkReader {
                    file: Some(Arc::new(file)),
                    current: Bytes::new(),
                    pos: 0,
                    next_offset: 0,
                    prefetch: None,
                    exhausted: false,
                };
                reader.start_prefetch();
                reader
            }
        }
    }

    fn start_prefetch(&mut self) {
        let Some(file) = self.file.clone() else {
            return;
        };
        if self.exhausted || self.prefetch.is_some() {
            return;
        }
        let offset = self.next_offset;
        self.next_offset += CHUNK as u64;
        self.prefetch = Some(tokio::task::spawn_blocking(move || {
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
        }));
    }

    /// Copies the next bytes into `out`; fewer than `out.len()` only at the end.
    pub async fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let mut filled = 0;
        while filled < out.len() {
            if self.pos < self.current.len() {
                let n = (out.len() - filled).min(self.current.len() - self.pos);
                out[filled..filled + n].copy_from_slice(&self.current[self.pos..self.pos + n]);
                self.pos += n;
                filled += n;
                continue;
            }
            let Some(pending) = self.prefetch.take() else {
                break;
            };
            let chunk = pending
                .await
                .map_err(|e| std::io::Error::other(format!("file read task failed: {e}")))??;
            if chunk.len() < CHUNK {
                self.exhausted = true;
            }
            self.current = chunk;
            self.pos = 0;
            self.start_prefetch();
        }
        Ok(filled)
    }
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

    #[tokio::test]
    async fn reads_files_across_chunk_boundaries() {
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 17] {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut file = tempfile::tempfile().unwrap();
            file.write_all(&data).unwrap();
            let got = read_all(ChunkReader::new(Content::File(file)), 1468).await;
            assert_eq!(got.len(), len);
            assert!(got == data, "content differs at len {len}");
        }
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
