//! The only module that speaks sled: a tree of records keyed by big-endian sequence
//! numbers, and a small tree of metadata.
//!
//! Two things sled 0.34 does not do are done here. Its `flush` ends in
//! `sync_file_range`, which neither flushes the drive's cache nor the file's metadata,
//! so the store follows it with an `fdatasync` of the database file. And after an I/O
//! error (a full disk) sled refuses every later call until the database is opened
//! again, so the store can be reopened in place.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::types::Seq;

const LOG_TREE: &str = "log";
const META_TREE: &str = "meta";
/// sled's single data file inside the directory.
const DATA_FILE: &str = "db";
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
            Err(error) => return Err(error.into()),
        }
    };
    let log = db.open_tree(LOG_TREE)?;
    let meta = db.open_tree(META_TREE)?;
    let data_file = File::open(path.join(DATA_FILE)).map_err(sled::Error::Io)?;
    Ok(Open {
        db,
        log,
        meta,
        data_file,
    })
}

impl Store {
    pub(crate) fn open(path: &Path, cache_capacity: u64) -> Result<Store> {
        let open = open_sled(path, cache_capacity)?;
        Ok(Store {
            path: path.to_path_buf(),
            cache_capacity,
            open: Arc::new(RwLock::new(Some(open))),
        })
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

    /// Inserts and removes records in one atomic batch.
    pub(crate) fn write(&self, inserts: &[(Seq, &[u8])], removes: &[Seq]) -> Result<()> {
        self.with(|open| {
            let mut batch = sled::Batch::default();
            for &seq in removes {
                batch.remove(&seq.to_key());
            }
            for (seq, value) in inserts {
                batch.insert(&seq.to_key(), *value);
            }
            open.log.apply_batch(batch)?;
            Ok(())
        })
    }

    /// Makes every write so far durable: sled's flush, then an fdatasync of its file.
    pub(crate) fn flush(&self) -> Result<()> {
        self.with(|open| {
            open.db.flush()?;
            open.data_file.sync_data().map_err(sled::Error::Io)?;
            Ok(())
        })
    }

    pub(crate) fn get(&self, seq: Seq) -> Result<Option<sled::IVec>> {
        self.with(|open| Ok(open.log.get(seq.to_key())?))
    }

    /// Every record in sequence order. The iterator holds the database open: drop it
    /// before any `reopen`.
    pub(crate) fn records(&self) -> Result<impl Iterator<Item = Result<(Seq, sled::IVec)>>> {
        let tree = self.with(|open| Ok(open.log.clone()))?;
        Ok(tree.iter().map(|item| {
            let (key, value) = item?;
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
        self.with(|open| {
            open.meta.insert(key, value)?;
            Ok(())
        })?;
        self.flush()
    }

    /// Bytes the database occupies on disk, as sled reports it.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        self.with(|open| Ok(open.db.size_on_disk()?))
    }
}
