//! The only module that speaks sled: a tree of records keyed by big-endian sequence
//! numbers, and a small tree of metadata.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::types::Seq;

const LOG_TREE: &str = "log";
const META_TREE: &str = "meta";
/// How long to wait for a directory lock that this process may still be releasing.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// The sled database behind a log.
#[derive(Debug, Clone)]
pub(crate) struct Store {
    db: sled::Db,
    log: sled::Tree,
    meta: sled::Tree,
}

impl Store {
    pub(crate) fn open(path: &Path, cache_capacity: u64) -> Result<Store> {
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
                Err(sled::Error::Io(error))
                    if error.to_string().contains("could not acquire lock")
                        && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(sled::Error::Io(error))
                    if error.to_string().contains("could not acquire lock") =>
                {
                    return Err(Error::Locked {
                        path: path.to_path_buf(),
                    });
                }
                Err(error) => return Err(error.into()),
            }
        };
        let log = db.open_tree(LOG_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        Ok(Store { db, log, meta })
    }

    /// Inserts and removes records in one atomic batch.
    pub(crate) fn write(&self, inserts: &[(Seq, &[u8])], removes: &[Seq]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for &seq in removes {
            batch.remove(&seq.to_key());
        }
        for (seq, value) in inserts {
            batch.insert(&seq.to_key(), *value);
        }
        self.log.apply_batch(batch)?;
        Ok(())
    }

    /// Makes every write so far durable (fsync).
    pub(crate) fn flush(&self) -> Result<()> {
        self.db.flush()?;
        Ok(())
    }

    pub(crate) fn get(&self, seq: Seq) -> Result<Option<sled::IVec>> {
        Ok(self.log.get(seq.to_key())?)
    }

    /// Every record in sequence order.
    pub(crate) fn records(&self) -> impl Iterator<Item = Result<(Seq, sled::IVec)>> + '_ {
        self.log.iter().map(|item| {
            let (key, value) = item?;
            let seq = Seq::from_key(&key).ok_or_else(|| Error::CorruptKey { key: key.to_vec() })?;
            Ok((seq, value))
        })
    }

    pub(crate) fn remove_raw_key(&self, key: &[u8]) -> Result<()> {
        self.log.remove(key)?;
        Ok(())
    }

    pub(crate) fn meta_get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.meta.get(key)?.map(|v| v.to_vec()))
    }

    pub(crate) fn meta_put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.meta.insert(key, value)?;
        self.db.flush()?;
        Ok(())
    }

    /// Bytes the database occupies on disk, as sled reports it.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}
