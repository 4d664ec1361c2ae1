//! Collects results and renders them as markdown (stdout + RESULTS.md) and
//! JSON (RESULTS.json).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::engine::Res;
use crate::machine;
use crate::workload::{self, AppendResult, Layout, ReplayResult};
use crate::{engine_name, Plan, Task};

/// Requirement thresholds the results are judged against.
const REQ_FLUSH_RATE: f64 = 100_000.0;
const REQ_FLUSH_TTD_P99_MS: f64 = 25.0;
const REQ_BUFFERED_RATE: f64 = 300_000.0;
const REQ_REPLAY_MS: f64 = 2_000.0;
const REQ_DISK_RATIO: f64 = 2.0;
/// A run "kept up" if it made this fraction of the offered rate durable.
const KEPT_UP: f64 = 0.97;

type Engine = &'static str;

/// One measurement as reported by a child process.
pub struct Row<R> {
    pub engine: Engine,
    pub layout: Layout,
    pub rate: Option<f64>,
    pub result: R,
    /// Peak RSS of the child process that measured it.
    pub peak_rss: u64,
    /// CPU used by other processes during the measurement (% of machine).
    pub foreign_cpu: f64,
}

/// All results of one invocation plus the context needed to reproduce it.
pub struct Report {
    pub date: String,
    pub command: String,
    pub cores: usize,
    pub kernel: String,
    pub fsync_p50_ms: f64,
    pub fsync_p99_ms: f64,
    pub plan: Plan,
    pub flush: Vec<Row<AppendResult>>,
    pub buffered: Vec<Row<AppendResult>>,
    pub replay: Vec<Row<ReplayResult>>,
    pub churn: Vec<Row<AppendResult>>,
    /// (task label, error) for measurements whose child process failed.
    pub failures: Vec<(String, String)>,
    pub total_secs: f64,
}

/// One-line progress summary of a child's JSON output.
pub fn one_line(task: &Task, v: &Value) -> String {
    let r = &v["result"];
    let rss = v["peak_rss_bytes"].as_u64().unwrap_or(0);
    let other = v["foreign_cpu_pct"].as_f64().unwrap_or(f64::NAN);
    let g = |p: &str| workload::num(r, p).unwrap_or(f64::NAN);
    match task.scenario {
        "replay" => format!(
            "open+scan first (cold) {:.0}+{:.0} ms, second (warm) {:.0}+{:.0} ms, du {:.1} MiB, rss {:.0} MiB, other CPU {other:.0}%",
            g("first_open_ms"),
            g("first_scan_ms"),
            g("second_open_ms"),
            g("second_scan_ms"),
            g("disk.allocated") / 1048576.0,
            mib(rss)
        ),
        _ => format!(
            "{:.0} ev/s, ttd p99 {:.2} ms, disk {:.1} MiB, rss {:.0} MiB, other CPU {other:.0}%",
            g("events_per_s"),
            g("time_to_durable_ms.p99"),
            g("disk_end.allocated") / 1048576.0,
            mib(rss)
        ),
    }
}

fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into())
}

pub fn rate_label(rate: Option<f64>) -> String {
    match rate {
        Some(r) => format!("{:.0}k/s", r / 1e3),
        None => "unthrottled".into(),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn kilo(x: f64) -> String {
    format!("{:.1}k", x / 1e3)
}

/// Format a latency in ms with precision suited to its magnitude.
fn lat(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

fn yes_no(ok: bool) -> &'static str {
    if ok {
        "✅ yes"
    } else {
        "❌ no"
    }
}

impl Report {
    pub fn new(plan: &Plan, tmp: &Path) -> Res<Self> {
        let mut command = match machine::niceness() {
            0 => String::new(),
            n => format!("nice -n {n} "),
        };
        command.push_str("cargo run --release --");
        for a in std::env::args().skip(1) {
            command.push(' ');
            command.push_str(&a);
        }
        let probe_dir = tempfile::Builder::new()
            .prefix("sled-choice-fsync-")
            .tempdir_in(tmp)?;
        let (fsync_p50_ms, fsync_p99_ms) = machine::fsync_probe(probe_dir.path(), 500)?;
        Ok(Report {
            date: sh("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]),
            command,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            kernel: sh("uname", &["-sr"]),
            fsync_p50_ms,
            fsync_p99_ms,
            plan: plan.clone(),
            flush: Vec::new(),
            buffered: Vec::new(),
            replay: Vec::new(),
            churn: Vec::new(),
            failures: Vec::new(),
            total_secs: 0.0,
        })
    }

    /// Record a child's output for `task`.
    pub fn add(&mut self, task: &Task, v: &Value) -> Res<()> {
        let engine = engine_name(&task.engine)?;
        let peak_rss = v["peak_rss_bytes"].as_u64().unwrap_or(0);
        let foreign_cpu = v["foreign_cpu_pct"].as_f64().unwrap_or(f64::NAN);
        let (layout, rate) = (task.layout, task.rate);
        let r = &v["result"];
        match task.scenario {
            "flush" | "buffered" | "churn" => {
                let row = Row {
                    engine,
                    layout,
                    rate,
                    result: AppendResult::from_json(r)?,
                    peak_rss,
                    foreign_cpu,
                };
                match task.scenario {
                    "flush" => self.flush.push(row),
                    "buffered" => self.buffered.push(row),
                    _ => self.churn.push(row),
                }
            }
            "replay" => {
                let result = ReplayResult::from_json(r)?;
                self.replay.push(Row {
                    engine,
                    layout,
                    rate,
                    result,
                    peak_rss,
                    foreign_cpu,
                });
            }
            other => return Err(format!("unknown scenario {other:?}").into()),
        }
        Ok(())
    }

    pub fn environment_summary(&self) -> String {
        format!(
            "{} cores, {}, 4 KiB write+fdatasync p50 {:.2} ms / p99 {:.2} ms",
            self.cores, self.kernel, self.fsync_p50_ms, self.fsync_p99_ms
        )
    }

    pub fn to_markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# sled-choice results\n");
        let _ = writeln!(md, "- Date: {}", self.date);
        let _ = writeln!(
            md,
            "- Command (in `benches/sled-choice/`): `{}`",
            self.command
        );
        let _ = writeln!(md, "- Machine: {}", self.environment_summary());
        let _ = writeln!(
            md,
            "- Plan: {} s per append run, {} s churn, {} replay events; events are {} bytes; \
             removes of records older than 50 ms (churn: 70 ms); both engines opened with \
             `flush_every_ms(None)` (flushes are explicit), other settings default \
             (sled 1.0: `Db<1024>`, zstd level 3; sled 0.34: LowSpace mode, no compression). \
             Each measurement ran in its own process on a fresh directory.",
            self.plan.append_secs,
            self.plan.churn_secs,
            self.plan.replay_events,
            workload::EVENT_BYTES
        );
        let _ = writeln!(md, "- Total benchmark time: {:.0} s\n", self.total_secs);
        let _ = writeln!(
            md,
            "Time-to-durable (ttd) = scheduled enqueue time → return of the flush that covered \
             the event. Achieved = events made durable / time until the last flush \
             (including draining the backlog after the producer stopped; the producer blocks \
             when 600k events are queued, so \"offered\" can fall below the target). \
             RSS = peak resident memory of the measuring process. Other CPU % = share of the \
             machine's CPU used by *other* processes during the measurement (the machine is shared; \
             high values mean the figures are pessimistic).\n"
        );

        if !self.flush.is_empty() {
            let _ = writeln!(md, "## 1. Group commit, flush after every batch\n");
            let _ = writeln!(
                md,
                "| engine | layout | target ev/s | offered ev/s | achieved ev/s | groups/s | mean group (ev) | \
                 apply p50 / p99 ms | flush p50 / p99 / max ms | ttd p50 / p99 / p999 ms | RSS MiB | other CPU % |"
            );
            let _ = writeln!(
                md,
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for row in &self.flush {
                let r = &row.result;
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {} / {} | {} / {} / {} | {} / {} / {} | {:.0} | {:.0} |",
                    row.engine,
                    row.layout.name(),
                    rate_label(row.rate),
                    kilo(r.offered_per_s),
                    kilo(r.events_per_s),
                    r.batches_per_s,
                    r.mean_batch_events,
                    lat(r.apply_p50),
                    lat(r.apply_p99),
                    lat(r.flush_p50),
                    lat(r.flush_p99),
                    lat(r.flush_max),
                    lat(r.ttd_p50),
                    lat(r.ttd_p99),
                    lat(r.ttd_p999),
                    mib(row.peak_rss),
                    row.foreign_cpu
                );
            }
            md.push('\n');
        }

        let breakdown: Vec<&Row<AppendResult>> = self
            .flush
            .iter()
            .filter(|r| r.result.diagnostics.is_object())
            .collect();
        if !breakdown.is_empty() {
            let _ = writeln!(
                md,
                "### Where sled 1.0's flush time goes (mean per flush, ms)\n"
            );
            let _ = writeln!(
                md,
                "From sled 1.0's own `Db::stats().cache.flush_sum`. Storage = heap slab writes + \
                 their fsyncs + metadata-log write + its fsyncs.\n"
            );
            let _ = writeln!(
                md,
                "| engine | layout | target | flushes | total | wait (prev. flush + quiescence) | \
                 serialize | storage | of which heap fsync | of which metadata | objects / flush | KiB written / flush |"
            );
            let _ = writeln!(
                md,
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for row in breakdown {
                let r = &row.result;
                let d = &r.diagnostics;
                let n = r.flushes.max(1) as f64;
                let g = |p: &str| workload::num(d, p).unwrap_or(f64::NAN) / n;
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {:.0} |",
                    row.engine,
                    row.layout.name(),
                    rate_label(row.rate),
                    r.flushes,
                    g("flush_sum_ms.wait_previous_flush")
                        + g("flush_sum_ms.wait_quiescence")
                        + g("flush_sum_ms.serialization")
                        + g("flush_sum_ms.compute_defrag")
                        + g("flush_sum_ms.storage")
                        + g("flush_sum_ms.post_write_eviction"),
                    g("flush_sum_ms.wait_previous_flush") + g("flush_sum_ms.wait_quiescence"),
                    g("flush_sum_ms.serialization"),
                    g("flush_sum_ms.storage"),
                    g("flush_sum_ms.heap_sync"),
                    g("flush_sum_ms.metadata_write"),
                    g("objects_flushed"),
                    g("heap_bytes_written") / 1024.0
                );
            }
            md.push('\n');
        }

        if !self.buffered.is_empty() {
            let _ = writeln!(
                md,
                "## 2. Buffered: batches applied continuously, flush every 100 ms\n"
            );
            let _ = writeln!(
                md,
                "| engine | layout | target | offered ev/s | achieved ev/s | batches/s | mean batch (ev) | \
                 apply p50 / p99 ms | flush p50 / p99 / max ms | ttd p50 / p99 / p999 ms | RSS MiB | other CPU % |"
            );
            let _ = writeln!(
                md,
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for row in &self.buffered {
                let r = &row.result;
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {} / {} | {} / {} / {} | {} / {} / {} | {:.0} | {:.0} |",
                    row.engine,
                    row.layout.name(),
                    rate_label(row.rate),
                    kilo(r.offered_per_s),
                    kilo(r.events_per_s),
                    r.batches_per_s,
                    r.mean_batch_events,
                    lat(r.apply_p50),
                    lat(r.apply_p99),
                    lat(r.flush_p50),
                    lat(r.flush_p99),
                    lat(r.flush_max),
                    lat(r.ttd_p50),
                    lat(r.ttd_p99),
                    lat(r.ttd_p999),
                    mib(row.peak_rss),
                    row.foreign_cpu
                );
            }
            md.push('\n');
        }

        if !self.replay.is_empty() {
            let _ = writeln!(
                md,
                "## 3. Replay: {} live events written (one batch per 1,000 events), one flush, closed, reopened\n",
                self.plan.replay_events
            );
            let _ = writeln!(
                md,
                "First reopen = the restart case, in a fresh process: the db files are evicted from the OS page cache \
                 (`dd iflag=nocache count=0` per file) before it (\"(warm)\" marks a run where that \
                 failed), and sled's first open after a close does recovery work. Second reopen = \
                 immediately after, warm. Ready = first open + full key-order scan touching every \
                 byte (record count, byte count and key order are verified).\n"
            );
            let _ = writeln!(
                md,
                "| engine | layout | records | logical MiB | du MiB (apparent) | du / logical | \
                 write+flush s | first open / scan ms | second open / scan ms | ready ms | RSS MiB | other CPU % |"
            );
            let _ = writeln!(
                md,
                "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
            );
            for row in &self.replay {
                let r = &row.result;
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {:.1} | {:.1} ({:.1}) | {:.2}× | {:.1} | {:.0} / {:.0}{} | {:.0} / {:.0} | {:.0} | {:.0} | {:.0} |",
                    row.engine,
                    row.layout.name(),
                    r.records,
                    mib(r.logical_bytes),
                    mib(r.disk.allocated),
                    mib(r.disk.apparent),
                    r.disk.allocated as f64 / r.logical_bytes as f64,
                    r.write_ms / 1e3,
                    r.first_open_ms,
                    r.first_scan_ms,
                    if r.first_cold { "" } else { " (warm)" },
                    r.second_open_ms,
                    r.second_scan_ms,
                    r.first_open_ms + r.first_scan_ms,
                    mib(row.peak_rss.max(r.reopen_peak_rss)),
                    row.foreign_cpu
                );
            }
            md.push('\n');
        }

        if !self.churn.is_empty() {
            let _ = writeln!(
                md,
                "## 4. Churn: per-group layout, 40k ev/s insert + delete, flush per group, {} s\n",
                self.plan.churn_secs
            );
            let _ = writeln!(
                md,
                "Disk = allocated bytes of the db directory, sampled every second; Q2 / Q4 = median \
                 of the samples in the second / last quarter of the run (sizes spike briefly during \
                 sled's space reclamation, hence medians). Growing = Q4 exceeds Q2 by >20% and >1 MiB. \
                 End / live = Q4 / logical live bytes.\n"
            );
            let _ = writeln!(
                md,
                "| engine | achieved ev/s | mean group (ev) | live KiB (logical) | disk MiB Q2 / Q4 / max | \
                 end / live | growth Q2→Q4 MiB/min | keeps growing? | RSS MiB | other CPU % |"
            );
            let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|");
            for row in &self.churn {
                let r = &row.result;
                let c = ChurnSummary::of(r);
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.0} | {:.0} | {:.1} / {:.1} / {:.1} | {:.0}× | {:.2} | {} | {:.0} | {:.0} |",
                    row.engine,
                    kilo(r.events_per_s),
                    r.mean_batch_events,
                    r.live_bytes_end as f64 / 1024.0,
                    mib(c.q2),
                    mib(c.q4),
                    mib(c.max),
                    c.q4 as f64 / r.live_bytes_end.max(1) as f64,
                    c.growth_mib_per_min,
                    if c.growing { "yes" } else { "no" },
                    mib(row.peak_rss),
                    row.foreign_cpu
                );
            }
            md.push('\n');
        }

        md.push_str(&self.verdict_markdown());

        if !self.failures.is_empty() {
            let _ = writeln!(md, "## Failed measurements\n");
            for (label, err) in &self.failures {
                let _ = writeln!(md, "- {label}: {err}");
            }
            md.push('\n');
        }
        md
    }

    /// Requirement check per engine × layout (– where not measured).
    fn verdict_markdown(&self) -> String {
        let mut md = String::new();
        let mut engines: Vec<Engine> = Vec::new();
        let all = self
            .flush
            .iter()
            .chain(&self.buffered)
            .chain(&self.churn)
            .map(|r| r.engine);
        for e in all.chain(self.replay.iter().map(|r| r.engine)) {
            if !engines.contains(&e) {
                engines.push(e);
            }
        }
        let dash = || "–".to_string();
        let mut rows = Vec::new();
        for e in engines {
            for l in [Layout::PerEvent, Layout::PerGroup] {
                let flush = self
                    .flush
                    .iter()
                    .find(|row| {
                        row.engine == e && row.layout == l && row.rate == Some(REQ_FLUSH_RATE)
                    })
                    .map(|row| {
                        let r = &row.result;
                        let ok = r.events_per_s >= KEPT_UP * REQ_FLUSH_RATE
                            && r.ttd_p99 <= REQ_FLUSH_TTD_P99_MS;
                        format!(
                            "{} ({}/s, p99 {} ms)",
                            yes_no(ok),
                            kilo(r.events_per_s),
                            lat(r.ttd_p99)
                        )
                    });
                let buffered = self
                    .buffered
                    .iter()
                    .filter(|row| row.engine == e && row.layout == l)
                    .map(|row| row.result.events_per_s)
                    .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x))))
                    .map(|best| {
                        format!(
                            "{} (best {}/s)",
                            yes_no(best >= KEPT_UP * REQ_BUFFERED_RATE),
                            kilo(best)
                        )
                    });
                let replay = self
                    .replay
                    .iter()
                    .find(|row| row.engine == e && row.layout == l)
                    .map(|row| {
                        let r = &row.result;
                        let ready = r.first_open_ms + r.first_scan_ms;
                        let ratio = r.disk.allocated as f64 / r.logical_bytes as f64;
                        (
                            format!("{} ({:.2} s)", yes_no(ready <= REQ_REPLAY_MS), ready / 1e3),
                            format!("{} ({:.2}×)", yes_no(ratio <= REQ_DISK_RATIO), ratio),
                        )
                    });
                let churn = self
                    .churn
                    .iter()
                    .find(|row| row.engine == e && row.layout == l)
                    .map(|row| {
                        let c = ChurnSummary::of(&row.result);
                        format!(
                            "{} ({:.1} → {:.1} MiB)",
                            yes_no(!c.growing),
                            mib(c.q2),
                            mib(c.q4)
                        )
                    });
                if flush.is_none() && buffered.is_none() && replay.is_none() && churn.is_none() {
                    continue;
                }
                let (rp, dk) = replay.unwrap_or_else(|| (dash(), dash()));
                rows.push(format!(
                    "| {e} | {} | {} | {} | {} | {} | {} |",
                    l.name(),
                    flush.unwrap_or_else(dash),
                    buffered.unwrap_or_else(dash),
                    rp,
                    dk,
                    churn.unwrap_or_else(dash)
                ));
            }
        }
        if rows.is_empty() {
            return md;
        }
        let _ = writeln!(md, "## Requirements check\n");
        let _ = writeln!(
            md,
            "| engine | layout | flush mode ≥100k ev/s, ttd p99 ≤25 ms | buffered ≥300k ev/s | \
             replay ready ≤2 s (first reopen) | disk ≤2× live (replay) | churn: disk bounded |"
        );
        let _ = writeln!(md, "|---|---|---|---|---|---|---|");
        for r in rows {
            let _ = writeln!(md, "{r}");
        }
        md.push('\n');
        md
    }

    pub fn to_json(&self) -> Value {
        fn rows<R>(rows: &[Row<R>], f: impl Fn(&R) -> Value) -> Vec<Value> {
            rows.iter()
                .map(|r| {
                    json!({"engine": r.engine, "layout": r.layout.name(), "offered_rate": r.rate,
                           "peak_rss_bytes": r.peak_rss, "foreign_cpu_pct": r.foreign_cpu,
                           "result": f(&r.result)})
                })
                .collect()
        }
        json!({
            "date": self.date,
            "command": self.command,
            "machine": {"cores": self.cores, "kernel": self.kernel,
                        "fsync_p50_ms": self.fsync_p50_ms, "fsync_p99_ms": self.fsync_p99_ms},
            "plan": {"append_secs": self.plan.append_secs, "churn_secs": self.plan.churn_secs,
                     "replay_events": self.plan.replay_events},
            "flush": rows(&self.flush, AppendResult::to_json),
            "buffered": rows(&self.buffered, AppendResult::to_json),
            "replay": rows(&self.replay, ReplayResult::to_json),
            "churn": rows(&self.churn, AppendResult::to_json),
            "failures": self.failures,
            "total_secs": self.total_secs,
        })
    }
}

/// Disk-usage trajectory of a churn run. Quarter medians rather than single
/// samples, because sled's on-disk size spikes briefly around segment
/// cleaning / heap defragmentation.
struct ChurnSummary {
    /// Median of the samples in the second quarter of the run.
    q2: u64,
    /// Median of the samples in the last quarter of the run.
    q4: u64,
    max: u64,
    growth_mib_per_min: f64,
    growing: bool,
}

impl ChurnSummary {
    fn of(r: &AppendResult) -> Self {
        // The first sample is taken before the db has written anything.
        let s: Vec<(f64, u64)> = r.disk_samples.iter().skip(1).copied().collect();
        if s.len() < 4 {
            let end = r.disk_end.allocated;
            return ChurnSummary {
                q2: end,
                q4: end,
                max: end,
                growth_mib_per_min: 0.0,
                growing: false,
            };
        }
        let n = s.len();
        let median = |part: &[(f64, u64)]| {
            let mut v: Vec<u64> = part.iter().map(|x| x.1).collect();
            v.sort_unstable();
            v[v.len() / 2]
        };
        let mid_time = |part: &[(f64, u64)]| (part[0].0 + part[part.len() - 1].0) / 2.0;
        let (second, last) = (&s[n / 4..n / 2], &s[n - n / 4..]);
        let (q2, q4) = (median(second), median(last));
        let minutes = ((mid_time(last) - mid_time(second)) / 60.0).max(1e-9);
        ChurnSummary {
            q2,
            q4,
            max: s.iter().map(|x| x.1).max().unwrap_or(0),
            growth_mib_per_min: (mib(q4) - mib(q2)) / minutes,
            growing: q4 as f64 > q2 as f64 * 1.2 && q4.saturating_sub(q2) > 1 << 20,
        }
    }
}
