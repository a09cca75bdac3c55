//! The blocks of a transfer sent but not yet acknowledged (RFC 7440),
//! shared by both engines (the async one in `session.rs`, the threads in
//! `threaded.rs`): filled from the file, handed out as packets, and cut
//! at the block a client acknowledges.

use std::collections::VecDeque;

use super::content::ChunkReader;
use super::packet;

pub struct Window {
    /// Oldest first: (absolute block number, DATA packet). Block numbers
    /// on the wire wrap from 65535 to 0.
    blocks: VecDeque<(u64, Vec<u8>)>,
    /// Packet buffers recycled: no allocation per block.
    spare: Vec<Vec<u8>>,
    size: usize,
    blksize: usize,
    next_block: u64,
    reading_done: bool,
    /// File bytes put in packets so far.
    bytes: u64,
}

impl Window {
    pub fn new(size: usize, blksize: usize) -> Window {
        Window {
            blocks: VecDeque::with_capacity(size),
            spare: Vec::with_capacity(size),
            size,
            blksize,
            next_block: 1,
            reading_done: false,
            bytes: 0,
        }
    }

    /// Reads the next blocks until the window is full or the file ends.
    pub async fn fill(&mut self, reader: &mut ChunkReader) -> std::io::Result<()> {
        while self.blocks.len() < self.size && !self.reading_done {
            let mut buf = self
                .spare
                .pop()
                .unwrap_or_else(|| vec![0u8; 4 + self.blksize]);
            buf.resize(4 + self.blksize, 0);
            let len = reader.read(&mut buf[4..]).await?;
            buf.truncate(4 + len);
            buf[..4].copy_from_slice(&packet::data_header(self.next_block as u16));
            self.reading_done = len < self.blksize;
            self.bytes += len as u64;
            self.blocks.push_back((self.next_block, buf));
            self.next_block += 1;
        }
        Ok(())
    }

    /// Nothing left to send: the last (short) block was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The window's DATA packets, oldest first.
    pub fn packets(&self) -> Vec<&[u8]> {
        self.blocks
            .iter()
            .map(|(_, data)| data.as_slice())
            .collect()
    }

    /// Where the window holds `block` (as on the wire), if it does: an ACK
    /// for any other block is stale.
    pub fn position(&self, block: u16) -> Option<usize> {
        self.blocks.iter().position(|(abs, _)| *abs as u16 == block)
    }

    /// The blocks up to `position` acknowledged: they leave the window.
    pub fn acknowledge(&mut self, position: usize) {
        self.spare
            .extend(self.blocks.drain(..=position).map(|(_, buf)| buf));
    }
}
