//! The only module that speaks sled: a tree of records keyed by big-endian sequence
//! numbers, and a small tree of metadata.
//!
//! Three things sled 0.34 does not do are done here. Its `flush` ends in
//! `sync_file_range`, which neither flushes the drive's cache nor the file's metadata,
//! so the store follows it with an `fdatasync` of the database file. After an I/O
//! error (a full disk) sled refuses every later call until the database is opened
//! again, so the store can be reopened in place. And after a crash sled reads its log
//! only up to the first damaged message and silently drops the rest, so every write
//! also stores a [`Tip`] in sled and every flush records it in the durability marker
//! beside sled's files (see [`crate::marker`]): opening compares the two.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::marker::{self, Marker, Tip};
use crate::types::Seq;

const LOG_TREE: &str = "log";
const META_TREE: &str = "meta";
/// sled's single data file inside the directory.
const DATA_FILE: &str = "db";
/// Key of the [`Tip`] in the meta tree, rewritten by every write.
const TIP_KEY: &str = "rollcall.tip";
/// How long to wait for a directory lock that this process may still be releasing.
const LOCK_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug)]
struct Open {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
    data_file: File,
}

/// The sled database behind a log. Clones share one open database.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    path: PathBuf,
    cache_capacity: u64,
    open: Arc<RwLock<Option<Open>>>,
    /// The tip of the last write applied to sled. Held across a write, so tips reach
    /// sled in the order they count.
    tip: Arc<Mutex<Tip>>,
    /// Where flushes record the tip they made durable; `None` until [`Store::resume`].
    marker: Arc<Mutex<Option<Marker>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn open_sled(path: &Path, cache_capacity: u64) -> Result<Open> {
    let config = sled::Config::new()
        .path(path)
        .cache_capacity(cache_capacity)
        // The writer thread decides when to flush; sled's own timer would add
        // flushes nobody waits for.
        .flush_every_ms(None);
    // sled releases its directory lock from a background thread shortly after the
    // last handle drops, so a reopen in the same process can briefly see it held.
    let deadline = Instant::now() + LOCK_WAIT;
    let db = loop {
        match config.open() {
            Ok(db) => break db,
            Err(sled::Error::Io(error)) if error.to_string().contains("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(Error::Locked {
                        path: path.to_path_buf(),
                    });
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => return Err(damaged(path, error)),
        }
    };
    let log = db.open_tree(LOG_TREE).map_err(|e| damaged(path, e))?;
    let meta = db.open_tree(META_TREE).map_err(|e| damaged(path, e))?;
    let data_file = File::open(path.join(DATA_FILE)).map_err(sled::Error::Io)?;
    Ok(Open {
        db,
        log,
        meta,
        data_file,
    })
}

/// sled's configuration file in the data directory.
const CONF_FILE: &str = "conf";

/// Names the file behind a sled error that means its files cannot be read (a failed
/// checksum in its log, a configuration it cannot parse); other errors pass through.
fn damaged(path: &Path, error: sled::Error) -> Error {
    match error {
        sled::Error::Corruption { at, .. } => Error::Damaged {
            file: path.join(DATA_FILE),
            // `at` is sled's own pointer type; its Debug form holds the offset.
            detail: match format!("{at:?}")
                .split(|c: char| !c.is_ascii_digit())
                .find(|digits| !digits.is_empty())
            {
                Some(offset) => format!("a checksum fails at byte {offset}"),
                None => "a checksum fails".to_owned(),
            },
        },
        sled::Error::Unsupported(why) | sled::Error::ReportableBug(why) => {
            if conf_checksum_fails(path) {
                Error::Damaged {
                    file: path.join(CONF_FILE),
                    detail: "its checksum fails".to_owned(),
                }
            } else {
                Error::Damaged {
                    file: path.to_path_buf(),
                    detail: why,
                }
            }
        }
        other => Error::Storage(other),
    }
}

/// Whether sled's configuration file exists and its trailing CRC-32 does not match
/// (sled itself only warns about that, then fails to parse the file).
fn conf_checksum_fails(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path.join(CONF_FILE)) else {
        return false;
    };
    let Some(split) = bytes.len().checked_sub(4) else {
        return false;
    };
    let (body, crc) = bytes.split_at(split);
    let mut expected = [0; 4];
    expected.copy_from_slice(crc);
    crc32fast::hash(body) != u32::from_le_bytes(expected)
}

impl Store {
    pub(crate) fn open(path: &Path, cache_capacity: u64) -> Result<Store> {
        let open = open_sled(path, cache_capacity)?;
        let store = Store {
            path: path.to_path_buf(),
            cache_capacity,
            open: Arc::new(RwLock::new(Some(open))),
            tip: Arc::new(Mutex::new(Tip::default())),
            marker: Arc::new(Mutex::new(None)),
        };
        *lock(&store.tip) = store.sled_tip()?;
        Ok(store)
    }

    /// The tip sled holds: that of the last write it recovered. A directory written
    /// before tips existed, or one sled read as empty, has none (all zero); so has one
    /// whose tip value is damaged.
    pub(crate) fn sled_tip(&self) -> Result<Tip> {
        Ok(self
            .with(|open| Ok(open.meta.get(TIP_KEY)?))?
            .and_then(|value| Tip::decode(&value))
            .unwrap_or_default())
    }

    /// What the durability marker says (read once, on open).
    pub(crate) fn read_marker(&self) -> Result<marker::Found> {
        marker::read(&self.path).map_err(|e| Error::Storage(sled::Error::Io(e)))
    }

    /// Starts recording flushes in a fresh marker. The tip continues from `floor` (the
    /// old marker's) if sled's is lower, and is written to sled and flushed first, so
    /// that sled and the marker agree from here on.
    pub(crate) fn resume(&self, floor: Tip) -> Result<Tip> {
        let tip = {
            let mut tip = lock(&self.tip);
            let resumed = tip.max(floor);
            let next = Tip {
                writes: resumed.writes + 1,
                next_seq: resumed.next_seq,
            };
            self.with(|open| {
                open.meta.insert(TIP_KEY, &next.encode())?;
                Ok(())
            })?;
            *tip = next;
            next
        };
        self.with(|open| {
            open.db.flush()?;
            open.data_file.sync_data().map_err(sled::Error::Io)?;
            Ok(())
        })?;
        let marker = Marker::create(&self.path, tip).map_err(sled::Error::Io)?;
        *lock(&self.marker) = Some(marker);
        Ok(tip)
    }

    fn with<T>(&self, f: impl FnOnce(&Open) -> Result<T>) -> Result<T> {
        let guard: RwLockReadGuard<'_, Option<Open>> =
            self.open.read().unwrap_or_else(PoisonError::into_inner);
        match guard.as_ref() {
            Some(open) => f(open),
            None => Err(Error::Storage(sled::Error::Io(std::io::Error::other(
                "the data directory is being reopened after an error",
            )))),
        }
    }

    /// Drops the database and opens it again: sled's state after an I/O error.
    /// Writes that were applied but not flushed are lost and must be written again.
    pub(crate) fn reopen(&self) -> Result<()> {
        let mut guard = self.open.write().unwrap_or_else(PoisonError::into_inner);
        // Every handle lives in the guard, so dropping it releases sled's lock.
        drop(guard.take());
        *guard = Some(open_sled(&self.path, self.cache_capacity)?);
        Ok(())
    }

    /// Inserts and removes records in one atomic batch, then advances the tip in
    /// sled (after the batch in sled's log, so a recovered tip implies its batch).
    pub(crate) fn write(&self, inserts: &[(Seq, &[u8])], removes: &[Seq]) -> Result<()> {
        let mut tip = lock(&self.tip);
        self.with(|open| {
            let mut batch = sled::Batch::default();
            for &seq in removes {
                batch.remove(&seq.to_key());
            }
            for (seq, value) in inserts {
                batch.insert(&seq.to_key(), *value);
            }
            open.log.apply_batch(batch)?;
            let next = Tip {
                writes: tip.writes + 1,
                next_seq: inserts
                    .iter()
                    .map(|(seq, _)| Seq(seq.0 + 1))
                    .fold(tip.next_seq, Seq::max),
            };
            open.meta.insert(TIP_KEY, &next.encode())?;
            *tip = next;
            Ok(())
        })
    }

    /// Makes every write so far durable and records it in the marker: see
    /// [`Store::flush_data`] and [`Store::record_durable`].
    pub(crate) fn flush(&self) -> Result<()> {
        let tip = self.flush_data()?;
        self.record_durable(tip)
    }

    /// Makes every write so far durable in sled: sled's flush, then an fdatasync of its
    /// file. Returns the tip those writes reached, for [`Store::record_durable`].
    pub(crate) fn flush_data(&self) -> Result<Tip> {
        let tip = *lock(&self.tip);
        self.with(|open| {
            open.db.flush()?;
            open.data_file.sync_data().map_err(sled::Error::Io)?;
            Ok(())
        })?;
        Ok(tip)
    }

    /// Records in the marker that sled holds `tip` durably (one small write and an
    /// fdatasync). Call only with a tip returned by a [`Store::flush_data`] that
    /// succeeded: never before sled's data is on disk.
    pub(crate) fn record_durable(&self, tip: Tip) -> Result<()> {
        if let Some(marker) = lock(&self.marker).as_mut() {
            marker.record(tip).map_err(sled::Error::Io)?;
        }
        Ok(())
    }

    pub(crate) fn get(&self, seq: Seq) -> Result<Option<sled::IVec>> {
        self.with(|open| Ok(open.log.get(seq.to_key())?))
    }

    /// Every record in sequence order. The iterator holds the database open: drop it
    /// before any `reopen`.
    pub(crate) fn records(&self) -> Result<impl Iterator<Item = Result<(Seq, sled::IVec)>>> {
        let tree = self.with(|open| Ok(open.log.clone()))?;
        let path = self.path.clone();
        Ok(tree.iter().map(move |item| {
            let (key, value) = item.map_err(|e| damaged(&path, e))?;
            let seq = Seq::from_key(&key).ok_or_else(|| Error::CorruptKey { key: key.to_vec() })?;
            Ok((seq, value))
        }))
    }

    pub(crate) fn remove_raw_key(&self, key: &[u8]) -> Result<()> {
        self.with(|open| {
            open.log.remove(key)?;
            Ok(())
        })
    }

    pub(crate) fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.with(|open| Ok(open.meta.get(key)?.map(|v| v.to_vec())))
    }

    pub(crate) fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        {
            let mut tip = lock(&self.tip);
            self.with(|open| {
                open.meta.insert(key, value)?;
                let next = Tip {
                    writes: tip.writes + 1,
                    ..*tip
                };
                open.meta.insert(TIP_KEY, &next.encode())?;
                *tip = next;
                Ok(())
            })?;
        }
        self.flush()
    }

    /// Bytes the database occupies on disk, as sled reports it.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        self.with(|open| Ok(open.db.size_on_disk()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sled_corruption_names_the_damaged_file_and_offset() {
        let dir = Path::new("/data");
        let error = damaged(
            dir,
            sled::Error::Corruption {
                at: Some(sled::DiskPtr::Inline(194)),
                bt: (),
            },
        );
        assert_eq!(
            error.to_string(),
            "sled cannot open its file /data/db: a checksum fails at byte 194"
        );
        let error = damaged(dir, sled::Error::Corruption { at: None, bt: () });
        assert_eq!(
            error.to_string(),
            "sled cannot open its file /data/db: a checksum fails"
        );
    }

    #[test]
    fn a_conf_with_a_bad_checksum_is_named() {
        let temp = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            temp.path().join(CONF_FILE),
            b"segment_size: 8\x00\x00\x00\x00",
        )
        .expect("write");
        let error = damaged(
            temp.path(),
            sled::Error::Unsupported("earlier than 0.29".to_owned()),
        );
        assert!(
            matches!(&error, Error::Damaged { file, .. } if file.ends_with(CONF_FILE)),
            "{error}"
        );
    }
}
