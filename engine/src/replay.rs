//! Opening a log: fold every record in sequence order, then drop what has expired.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::compaction::{Index, Indexed, Key};
use crate::config::{ProgressHook, Recovery, ReplayProgress};
use crate::error::{Error, LostWrites, Result};
use crate::event::Event;
use crate::materializer::Materializer;
use crate::record::{self, DecodeError};
use crate::store::Store;
use crate::types::{ClientId, Seq, UnixMs};

const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Client ids are grouped by their bits from here up in
/// [`ReplayReport::highest_clients`].
pub const CLIENT_SPACE_SHIFT: u32 = 40;

/// What a replay found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records folded.
    pub records: u64,
    /// Events folded.
    pub events: u64,
    /// Entries live after the replay.
    pub live_entries: usize,
    /// Entries that had expired by wall time and were dropped.
    pub expired: usize,
    /// Records cut short at the end of the log and written after the last flush the
    /// durability marker recorded, deleted with a warning.
    pub torn: Vec<Seq>,
    /// Unreadable records deleted under [`Recovery::SkipCorrupt`].
    pub skipped: Vec<Seq>,
    /// Durable writes sled no longer held, accepted under [`Recovery::SkipCorrupt`]
    /// (under [`Recovery::Strict`] the open fails with [`Error::LostWrites`]).
    pub lost: Option<LostWrites>,
    /// The durability marker was damaged and a new one was started under
    /// [`Recovery::SkipCorrupt`]: lost writes, if any, could not be detected.
    pub marker_rebuilt: bool,
    /// The highest client id of any event replayed (live, left or expired), for each
    /// value of the id's bits from [`CLIENT_SPACE_SHIFT`] up (how a cluster splits ids
    /// between nodes). An id allocator starts above these, even if writes that
    /// reserved ids were lost.
    pub highest_clients: BTreeMap<u64, ClientId>,
    /// Bytes of log records after the replay.
    pub log_bytes: u64,
    /// How long the replay took.
    pub elapsed: Duration,
}

pub(crate) fn replay(
    store: &Store,
    materializer: &mut Materializer,
    index: &mut Index,
    recovery: Recovery,
    durable_end: Seq,
    mut progress: Option<&mut ProgressHook>,
    now: UnixMs,
) -> Result<ReplayReport> {
    let started = Instant::now();
    let mut last_report = started;
    let mut report = ReplayReport::default();
    let mut failed: Vec<(Seq, DecodeError)> = Vec::new();

    for item in store.records()? {
        let (seq, value) = match item {
            Ok(item) => item,
            Err(Error::CorruptKey { key }) if recovery == Recovery::SkipCorrupt => {
                tracing::warn!(
                    ?key,
                    "skipping a log entry whose key is not a sequence number"
                );
                store.remove_raw_key(&key)?;
                continue;
            }
            Err(error) => return Err(error),
        };
        let events = match record::decode(&value) {
            Ok(events) => events,
            Err(error) => {
                failed.push((seq, error));
                continue;
            }
        };
        if !failed.is_empty() {
            // Readable records follow unreadable ones: this is not a torn tail.
            skip_or_fail(store, recovery, std::mem::take(&mut failed), &mut report)?;
        }
        fold_record(materializer, index, seq, value.len(), events, &mut report);
        if let Some(hook) = progress.as_mut() {
            if last_report.elapsed() >= PROGRESS_EVERY {
                last_report = Instant::now();
                hook(&ReplayProgress {
                    records: report.records,
                    events: report.events,
                    elapsed: started.elapsed(),
                });
            }
        }
    }

    if !failed.is_empty() {
        // A record cut short at the end is a torn write only if it lies past what the
        // writer had made durable: below `durable_end` it was written whole (sled's
        // batches are atomic) and flushed, so a short one there is corruption.
        if failed
            .iter()
            .all(|(seq, error)| error.is_torn() && *seq >= durable_end)
        {
            for (seq, error) in failed {
                tracing::warn!(%seq, %error, "truncating a torn record at the end of the log");
                store.write(&[], &[seq])?;
                report.torn.push(seq);
            }
        } else {
            skip_or_fail(store, recovery, failed, &mut report)?;
        }
    }

    let mut expired = Vec::new();
    report.expired = materializer.sweep_due(now, &mut expired);
    for change in &expired {
        index.mark_expired(&Key {
            room: change.room.clone(),
            client: change.entry.client,
        });
    }
    report.live_entries = materializer.len();
    report.log_bytes = index.total_bytes();
    report.elapsed = started.elapsed();
    if let Some(hook) = progress.as_mut() {
        hook(&ReplayProgress {
            records: report.records,
            events: report.events,
            elapsed: report.elapsed,
        });
    }
    Ok(report)
}

fn fold_record(
    materializer: &mut Materializer,
    index: &mut Index,
    seq: Seq,
    bytes: usize,
    events: Vec<Event>,
    report: &mut ReplayReport,
) {
    report.records += 1;
    report.events += events.len() as u64;
    // Per-event sizes are not stored; share the record's bytes out evenly. Compaction
    // only needs the totals to be consistent, not exact.
    let size = u32::try_from(bytes / events.len().max(1)).unwrap_or(u32::MAX);
    let mut indexed = Vec::with_capacity(events.len());
    for event in events {
        let client = event.client();
        let highest = report
            .highest_clients
            .entry(client.0 >> CLIENT_SPACE_SHIFT)
            .or_insert(client);
        *highest = (*highest).max(client);
        materializer.fold(&event);
        indexed.push(Indexed {
            key: Key::of(&event),
            size,
            live: matches!(event, Event::Heartbeat(_)),
        });
    }
    index.add_record(seq, bytes as u64, indexed);
}

fn skip_or_fail(
    store: &Store,
    recovery: Recovery,
    failed: Vec<(Seq, DecodeError)>,
    report: &mut ReplayReport,
) -> Result<()> {
    match recovery {
        Recovery::Strict => {
            let (seq, source) = failed.into_iter().next().expect("called with failures");
            Err(Error::CorruptRecord { seq, source })
        }
        Recovery::SkipCorrupt => {
            for (seq, error) in failed {
                tracing::warn!(%seq, %error, "deleting an unreadable log record");
                store.write(&[], &[seq])?;
                report.skipped.push(seq);
            }
            Ok(())
        }
    }
}
