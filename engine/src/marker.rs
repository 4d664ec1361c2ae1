//! The durability marker: a small file beside sled's, saying how far the log had been
//! made durable.
//!
//! sled 0.34 recovers after a crash by reading its log up to the first message whose
//! checksum fails and treating everything after it as a torn write, which it then
//! overwrites. That is right for a write the crash interrupted, and wrong for a bit
//! that flipped inside data that had been flushed and acknowledged: sled drops the
//! rest of the log without a word. So every write to sled also stores a [`Tip`] (a
//! count of writes and the next record sequence number) in sled itself, and after each
//! flush the same tip is written to this file and synced. On open, a tip in sled
//! older than the marker's means that sled lost writes it had made durable.
//!
//! The file holds two slots, written alternately, each `magic | writes | next seq |
//! crc32`. A write torn by a crash spoils at most the slot being written; the other
//! still holds the previous tip, which is a safe lower bound. The file never changes
//! size after it is created (atomically, by rename), so `fdatasync` has no metadata to
//! write.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::types::Seq;

/// The marker file inside the data directory.
pub(crate) const MARKER_FILE: &str = "durable-tip";
const MAGIC: &[u8; 8] = b"rctip\x00\x00\x01";
const SLOT_BYTES: usize = 28;
/// Slots sit in separate 512-byte sectors, so writing one never tears the other.
const SLOT_STRIDE: u64 = 512;

/// How far the log has been written: the number of writes sled has applied (log
/// batches and metadata puts, counted across restarts) and the next record sequence
/// number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Tip {
    pub(crate) writes: u64,
    pub(crate) next_seq: Seq,
}

impl Tip {
    pub(crate) fn encode(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.writes.to_le_bytes());
        bytes[8..].copy_from_slice(&self.next_seq.0.to_le_bytes());
        bytes
    }

    pub(crate) fn decode(bytes: &[u8]) -> Option<Tip> {
        let writes = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let next_seq = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        (bytes.len() == 16).then_some(Tip {
            writes,
            next_seq: Seq(next_seq),
        })
    }

    /// The later of two tips, field by field.
    pub(crate) fn max(self, other: Tip) -> Tip {
        Tip {
            writes: self.writes.max(other.writes),
            next_seq: self.next_seq.max(other.next_seq),
        }
    }
}

fn slot(tip: Tip) -> [u8; SLOT_BYTES] {
    let mut bytes = [0; SLOT_BYTES];
    bytes[..8].copy_from_slice(MAGIC);
    bytes[8..24].copy_from_slice(&tip.encode());
    let crc = crc32fast::hash(&bytes[..24]);
    bytes[24..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn parse_slot(bytes: &[u8]) -> Option<Tip> {
    let bytes: &[u8; SLOT_BYTES] = bytes.get(..SLOT_BYTES)?.try_into().ok()?;
    if &bytes[..8] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[24..].try_into().ok()?);
    if crc32fast::hash(&bytes[..24]) != crc {
        return None;
    }
    Tip::decode(&bytes[8..24])
}

/// What the marker file said when the log was opened.
#[derive(Debug)]
pub(crate) enum Found {
    /// No marker: a new directory, or one written before markers existed.
    Missing,
    /// The latest intact slot.
    Tip(Tip),
    /// The file exists but neither slot is intact.
    Unreadable,
}

/// Reads the marker in `dir`.
pub(crate) fn read(dir: &Path) -> std::io::Result<Found> {
    let bytes = match std::fs::read(dir.join(MARKER_FILE)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Found::Missing),
        Err(error) => return Err(error),
    };
    let slots = [0, SLOT_STRIDE as usize].map(|at| bytes.get(at..).and_then(parse_slot));
    Ok(match slots {
        [Some(a), Some(b)] => Found::Tip(a.max(b)),
        [Some(tip), None] | [None, Some(tip)] => Found::Tip(tip),
        [None, None] => Found::Unreadable,
    })
}

/// The open marker file.
#[derive(Debug)]
pub(crate) struct Marker {
    file: File,
    /// The slot the next write goes to.
    next_slot: u64,
    /// The latest tip written: a tip is never recorded lower than this.
    recorded: Tip,
}

impl Marker {
    /// Replaces the marker in `dir` by one holding `tip` in both slots: written to a
    /// temporary file, synced, renamed over the old one, and the directory synced.
    pub(crate) fn create(dir: &Path, tip: Tip) -> std::io::Result<Marker> {
        let path = dir.join(MARKER_FILE);
        let temporary: PathBuf = dir.join(format!("{MARKER_FILE}.new"));
        let mut bytes = vec![0; SLOT_STRIDE as usize + SLOT_BYTES];
        bytes[..SLOT_BYTES].copy_from_slice(&slot(tip));
        bytes[SLOT_STRIDE as usize..].copy_from_slice(&slot(tip));
        {
            let mut file = File::create(&temporary)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&temporary, &path)?;
        File::open(dir)?.sync_all()?;
        let file = OpenOptions::new().write(true).open(&path)?;
        Ok(Marker {
            file,
            next_slot: 0,
            recorded: tip,
        })
    }

    /// Records that everything up to `tip` is durable: one 28-byte write and an
    /// `fdatasync`.
    pub(crate) fn record(&mut self, tip: Tip) -> std::io::Result<()> {
        let tip = tip.max(self.recorded);
        if tip == self.recorded {
            return Ok(());
        }
        self.file
            .write_all_at(&slot(tip), self.next_slot * SLOT_STRIDE)?;
        self.file.sync_data()?;
        self.next_slot ^= 1;
        self.recorded = tip;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_intact_slot_wins() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Found::Missing));
        let first = Tip {
            writes: 3,
            next_seq: Seq(10),
        };
        let mut marker = Marker::create(dir.path(), first).unwrap();
        let second = Tip {
            writes: 4,
            next_seq: Seq(12),
        };
        marker.record(second).unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Found::Tip(t) if t == second));
        // A lower tip is never recorded.
        marker.record(first).unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Found::Tip(t) if t == second));

        // A torn write of the newest slot leaves the previous tip.
        let path = dir.path().join(MARKER_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Found::Tip(t) if t == first));
        bytes[SLOT_STRIDE as usize + 10] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(read(dir.path()).unwrap(), Found::Unreadable));
    }
}
