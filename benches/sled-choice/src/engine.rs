//! A minimal storage interface covering exactly what Rollcall's event log
//! needs, implemented once per sled version.
//!
//! Keeping the benchmark loops generic over [`LogStore`] guarantees that both
//! versions run the *same* workload; every version-specific API call lives in
//! this file, so it doubles as a cheat sheet of how each version spells
//! open / batch / flush / iterate.

use std::error::Error;
use std::path::Path;

/// Result type used throughout the benchmark (sled 0.34 and 1.0 have
/// different error types; boxing keeps the interface uniform).
pub type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The operations Rollcall's event log performs.
///
/// Keys are `u64` sequence numbers stored big-endian, so byte order equals
/// numeric order and a full scan returns records in log order.
pub trait LogStore: Sized {
    /// Human-readable engine name used in reports.
    const NAME: &'static str;

    /// Open (creating if needed) a database in `path`, with any background
    /// periodic flushing disabled: durability happens only in [`flush`].
    ///
    /// [`flush`]: LogStore::flush
    fn open(path: &Path) -> Res<Self>;

    /// Atomically apply `inserts` and `removes` (one sled `Batch`).
    fn write_batch(&self, inserts: Vec<(u64, Vec<u8>)>, removes: &[u64]) -> Res<()>;

    /// Make every previously applied batch durable, as far as the engine's
    /// `flush()` does (see the sled 0.34 caveat below).
    fn flush(&self) -> Res<()>;

    /// Visit every record in key order. Returns the number of records.
    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Res<u64>;

    /// Engine-specific internals worth reporting (JSON), if any.
    fn diagnostics(&self) -> Option<serde_json::Value> {
        None
    }
}

/// sled 0.34.7 — the last stable release (log-structured page cache).
///
/// Caveat found while building this benchmark: on Linux, 0.34's `flush()`
/// ends in `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on its log
/// file, not `fsync`/`fdatasync` — it neither flushes the drive's volatile
/// write cache nor commits file metadata (sled issue #1452), and blob files
/// (log messages over segment size / 4 = 128 KiB by default, e.g. a node
/// holding a few per-group records; stored in `blobs/`) are written with no
/// sync at all. With `FDATASYNC = true` this wrapper additionally calls
/// `fdatasync` on the main `db` file after every flush, to show what real
/// durability of the log costs (blob files are still not synced).
pub struct Sled034<const FDATASYNC: bool> {
    db: sled034::Db,
    /// The `db` log file, opened separately for the extra fdatasync.
    log_file: Option<std::fs::File>,
}

impl<const FDATASYNC: bool> LogStore for Sled034<FDATASYNC> {
    const NAME: &'static str = if FDATASYNC {
        "sled 0.34.7 + fdatasync"
    } else {
        "sled 0.34.7"
    };

    fn open(path: &Path) -> Res<Self> {
        // Defaults otherwise (Mode::LowSpace, 1 GiB cache, no compression).
        // flush_every_ms(None) disables the 500 ms background flusher.
        let db = sled034::Config::new()
            .path(path)
            .flush_every_ms(None)
            .open()?;
        let log_file = if FDATASYNC {
            Some(std::fs::File::open(path.join("db"))?)
        } else {
            None
        };
        Ok(Sled034 { db, log_file })
    }

    fn write_batch(&self, inserts: Vec<(u64, Vec<u8>)>, removes: &[u64]) -> Res<()> {
        let mut batch = sled034::Batch::default();
        for key in removes {
            batch.remove(&key.to_be_bytes()[..]);
        }
        for (key, value) in inserts {
            batch.insert(&key.to_be_bytes()[..], value);
        }
        // Tree::apply_batch(&self, Batch) -> sled::Result<()>; atomic, not durable.
        self.db.apply_batch(batch)?;
        Ok(())
    }

    fn flush(&self) -> Res<()> {
        // Tree::flush(&self) -> sled::Result<usize> (bytes flushed). Writes the
        // IO buffers and sync_file_range()s them (see the caveat above).
        self.db.flush()?;
        if let Some(f) = &self.log_file {
            f.sync_data()?;
        }
        Ok(())
    }

    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Res<u64> {
        let mut n = 0;
        // Tree::iter() yields sled::Result<(IVec, IVec)> in key order.
        for kv in self.db.iter() {
            let (k, v) = kv?;
            visit(&k, &v);
            n += 1;
        }
        Ok(n)
    }
}

/// sled 1.0.0-alpha.124 — the rewrite (in-memory B+ tree index, leaves
/// serialized + zstd-compressed into slab "heap" files on flush, each dirty
/// slab file fsynced, then a metadata log write + fsync).
///
/// `LEAF_FANOUT` is the `Db<LEAF_FANOUT>` const generic (crate default 1024).
/// 1.0 splits leaves by *entry count only* and rewrites (re-serializes and
/// re-compresses) a whole dirty leaf on every flush, so the fanout bounds how
/// many bytes one flush rewrites. `ZSTD` is `Config::zstd_compression_level`
/// (crate default 3).
pub struct Sled1<const LEAF_FANOUT: usize, const ZSTD: i32 = 3>(sled1::Db<LEAF_FANOUT>);

impl<const LEAF_FANOUT: usize, const ZSTD: i32> LogStore for Sled1<LEAF_FANOUT, ZSTD> {
    const NAME: &'static str = match (LEAF_FANOUT, ZSTD) {
        (1024, 3) => "sled 1.0.0-alpha.124",
        (16, 3) => "sled 1.0.0-alpha.124 (fanout 16)",
        (8, 3) => "sled 1.0.0-alpha.124 (fanout 8)",
        (4, 3) => "sled 1.0.0-alpha.124 (fanout 4)",
        (1024, 1) => "sled 1.0.0-alpha.124 (zstd 1)",
        (1024, -5) => "sled 1.0.0-alpha.124 (zstd -5)",
        _ => "sled 1.0.0-alpha.124 (custom)",
    };

    fn open(path: &Path) -> Res<Self> {
        // Config::open is generic over the leaf fanout; the annotation picks it.
        // flush_every_ms(None) disables the 200 ms background flusher (with it
        // disabled, dropping the last Db handle flushes synchronously).
        // Defaults otherwise: 512 MiB cache.
        let db: sled1::Db<LEAF_FANOUT> = sled1::Config::new()
            .path(path)
            .flush_every_ms(None)
            .zstd_compression_level(ZSTD)
            .open()?;
        Ok(Sled1(db))
    }

    fn write_batch(&self, inserts: Vec<(u64, Vec<u8>)>, removes: &[u64]) -> Res<()> {
        // 1.0's Batch is a BTreeMap<InlineArray, Option<InlineArray>>:
        // keys/values are `Into<InlineArray>`; remove() records a `None`.
        let mut batch = sled1::Batch::default();
        for key in removes {
            batch.remove(&key.to_be_bytes()[..]);
        }
        for (key, value) in inserts {
            batch.insert(&key.to_be_bytes()[..], value);
        }
        // Tree::apply_batch(&self, Batch) -> io::Result<()> (via Deref<Target = Tree>).
        self.0.apply_batch(batch)?;
        Ok(())
    }

    fn flush(&self) -> Res<()> {
        // Tree::flush(&self) -> io::Result<FlushStats>; serializes dirty
        // leaves, writes them to the heap files and fsyncs.
        self.0.flush()?;
        Ok(())
    }

    fn scan(&self, visit: &mut dyn FnMut(&[u8], &[u8])) -> Res<u64> {
        let mut n = 0;
        // Tree::iter() yields io::Result<(InlineArray, InlineArray)> in key order.
        for kv in self.0.iter() {
            let (k, v) = kv?;
            visit(&k, &v);
            n += 1;
        }
        Ok(n)
    }

    /// Where flush time went: sled 1.0 sums its own per-flush timings
    /// (`Db::stats().cache.flush_sum`). Totals in ms over the whole run.
    fn diagnostics(&self) -> Option<serde_json::Value> {
        let f = self.0.stats().cache.flush_sum;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        Some(serde_json::json!({
            "flush_sum_ms": {
                "wait_previous_flush": ms(f.pre_block_on_previous_flush),
                "wait_quiescence": ms(f.pre_block_on_current_quiescence),
                "serialization": ms(f.serialization_latency),
                "compute_defrag": ms(f.compute_defrag_latency),
                "storage": ms(f.storage_latency),
                "heap_write_incl_sync": ms(f.write_batch.heap_write_latency),
                "heap_sync": ms(f.write_batch.heap_sync_latency),
                "metadata_write": ms(f.write_batch.metadata_write_latency),
                "post_write_eviction": ms(f.post_write_eviction_latency),
            },
            "objects_flushed": f.objects_flushed,
            "heap_bytes_written": f.write_batch.heap_bytes_written,
            "metadata_bytes_written": f.write_batch.metadata_bytes_written,
        }))
    }
}
