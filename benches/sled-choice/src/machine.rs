//! Machine context for interpreting the figures: fsync latency, memory, and
//! how much CPU *other* processes used while we measured (the benchmark
//! machine has 2 cores and may be shared with builds and tests).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::engine::Res;

/// Linux reports /proc/stat and /proc/self/stat in USER_HZ ticks, which is
/// 100 on every mainstream architecture.
const USER_HZ: f64 = 100.0;

/// A point-in-time reading of system-wide and own CPU time.
#[derive(Clone, Copy, Debug)]
pub struct CpuSnapshot {
    at: Instant,
    /// Busy ticks of all CPUs (user+nice+system+irq+softirq+steal).
    system_busy: u64,
    /// utime+stime ticks of this process (all threads).
    own: u64,
}

impl CpuSnapshot {
    pub fn now() -> CpuSnapshot {
        let system_busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_string();
                let f: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal ...
                Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)? + f.get(7)?)
            })
            .unwrap_or(0);
        let own = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| {
                // Fields after the parenthesised command name; utime and
                // stime are fields 14 and 15 overall, i.e. 12 and 13 here.
                let rest = &s[s.rfind(')')? + 1..];
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
            })
            .unwrap_or(0);
        CpuSnapshot {
            at: Instant::now(),
            system_busy,
            own,
        }
    }

    /// Percentage of the machine's total CPU capacity used by processes other
    /// than this one since `self` was taken (0–100).
    pub fn foreign_cpu_pct_since(&self) -> f64 {
        let now = CpuSnapshot::now();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let wall = (now.at - self.at).as_secs_f64().max(1e-6);
        let foreign_ticks = now.system_busy.saturating_sub(self.system_busy) as f64
            - now.own.saturating_sub(self.own) as f64;
        (foreign_ticks.max(0.0) / USER_HZ / (wall * cores) * 100.0).clamp(0.0, 100.0)
    }
}

/// Wait (up to `max_wait`) until other processes use less than
/// `threshold_pct` of the machine over a 1 s window. Returns the last
/// reading, so callers can report how busy the machine was.
pub fn wait_for_quiet(threshold_pct: f64, max_wait: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let snap = CpuSnapshot::now();
        std::thread::sleep(Duration::from_secs(1));
        let busy = snap.foreign_cpu_pct_since();
        if busy < threshold_pct || start.elapsed() >= max_wait {
            return busy;
        }
    }
}

/// Scheduling niceness of this process (recorded with the command, since
/// the benchmark may be run with `nice -n -10` on a shared machine).
pub fn niceness() -> i64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = &s[s.rfind(')')? + 1..];
            // Field 19 overall (nice) is the 17th after the command name.
            rest.split_whitespace().nth(16)?.parse().ok()
        })
        .unwrap_or(0)
}

/// Peak resident set size of this process (VmHWM), in bytes.
pub fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
        })
        .map_or(0, |kb| kb * 1024)
}

/// Measure raw 4 KiB append + fdatasync latency in `dir` (context for the
/// results). Returns (p50 ms, p99 ms).
pub fn fsync_probe(dir: &Path, iterations: usize) -> Res<(f64, f64)> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let block = [0xA5u8; 4096];
    for _ in 0..iterations {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        h.saturating_record(t.elapsed().as_micros() as u64);
    }
    drop(f);
    std::fs::remove_file(&path)?;
    Ok((
        h.value_at_quantile(0.5) as f64 / 1e3,
        h.value_at_quantile(0.99) as f64 / 1e3,
    ))
}
