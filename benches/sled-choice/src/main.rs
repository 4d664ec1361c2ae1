//! # sled-choice
//!
//! Benchmark behind Rollcall's choice between sled 0.34.7 and
//! sled 1.0.0-alpha.124 for the event log, using Rollcall's own workload:
//! u64 big-endian sequence-number keys, ~70-byte heartbeat events, a single
//! writer thread doing group commit (one atomic batch of inserts + removes of
//! superseded records, then one flush), in two record layouts (one record per
//! event vs one record per commit group).
//!
//! Scenarios (each run for both sled versions and, where relevant, both
//! layouts):
//!
//! 1. `flush` — group commit, flush after every batch, producer offering
//!    100k and 300k events/s; throughput, group size, flush and
//!    time-to-durable latency.
//! 2. `buffered` — same writer, but flush only every 100 ms; sustained rate
//!    at 300k events/s offered (and unthrottled, per-group).
//! 3. `replay` — 1M live events written and flushed, db closed; time for a
//!    fresh process to reopen + scan everything in key order (cold page
//!    cache, then warm), disk usage vs logical bytes.
//! 4. `churn` — steady insert+delete at 40k events/s, per-group layout,
//!    ~200 KB live set, flush per group; does disk stay bounded?
//!
//! Engines: `0.34` and `1.0` (`Db<1024>`) with default settings, plus tuned
//! variants run in the per-group layout only: `0.34+fdatasync` (a real
//! fdatasync of the log after each flush — 0.34's own flush only calls
//! `sync_file_range`; flush scenario only), `1.0-z1` (zstd level 1: sled 1.0
//! re-compresses every dirty leaf on flush), and optional fanout / zstd
//! variants.
//!
//! Every measurement runs in a fresh child process (this same binary with
//! `--child TASK`) on a fresh temporary directory: sled 0.34 keeps memory and
//! background state alive after a `Db` is dropped, which measurably slowed
//! later runs in the same process. The parent collects the JSON each child
//! prints and renders the report.
//!
//! Run `cargo run --release -- --help` for options; `--quick` for a smoke run.

mod engine;
mod machine;
mod report;
mod workload;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{json, Value};

use engine::{LogStore, Res, Sled034, Sled1};
use report::Report;
use workload::{AppendSpec, FlushPolicy, Layout};

/// Command-line options. Defaults are the full run used for RESULTS.md.
#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmark sled 0.34.7 vs 1.0.0-alpha.124 on Rollcall's event-log workload")]
pub struct Args {
    /// Short smoke run: 2 s append runs, 10 s churn, 200k-event replay; does
    /// not write RESULTS.md unless --results is given.
    #[arg(long)]
    pub quick: bool,

    /// Scenarios to run (comma-separated): flush, buffered, replay, churn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "flush,buffered,replay,churn"
    )]
    pub only: Vec<String>,

    /// Engines to run (comma-separated): the two versions with default
    /// settings, `0.34` and `1.0`; and tuned variants, which run the per-group
    /// layout only: `0.34+fdatasync` (0.34 plus a real fdatasync of its log
    /// after every flush; flush scenario only), `1.0-z1` (zstd level 1
    /// instead of 3), `1.0-z-5` (zstd level -5), `1.0-f16`, `1.0-f8`, `1.0-f4`
    /// (leaf fanout 16/8/4 instead of 1024).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "0.34,0.34+fdatasync,1.0,1.0-z1"
    )]
    pub engines: Vec<String>,

    /// Record layouts to run (comma-separated): per-event, per-group.
    #[arg(long, value_delimiter = ',', default_value = "per-event,per-group")]
    pub layouts: Vec<String>,

    /// Where to write the markdown results (default: RESULTS.md next to
    /// Cargo.toml for a full run; nothing for --quick). A JSON file with the
    /// raw figures is written beside it (same name, .json).
    #[arg(long)]
    pub results: Option<PathBuf>,

    /// Directory under which temporary databases are created
    /// (default: the system temp dir). Each is deleted after its run, even if
    /// the measuring process had to be killed.
    #[arg(long)]
    pub tmp_dir: Option<PathBuf>,

    /// Internal: run a single measurement (SCENARIO:ENGINE:LAYOUT:RATE) and
    /// print its result as JSON.
    #[arg(long, hide = true)]
    pub child: Option<String>,

    /// Internal (replay): reopen and scan the database in DIR, written by a
    /// `--child` process for the task given with --child. Reads the write-phase
    /// result as JSON on stdin, prints the completed result.
    #[arg(long, hide = true, requires = "child")]
    pub reopen: Option<PathBuf>,
}

/// Durations and sizes derived from `--quick`.
#[derive(Debug, Clone)]
pub struct Plan {
    pub append_secs: u64,
    pub churn_secs: u64,
    pub replay_events: u64,
}

impl Plan {
    fn new(quick: bool) -> Self {
        Plan {
            append_secs: if quick { 2 } else { 10 },
            churn_secs: if quick { 10 } else { 60 },
            replay_events: if quick { 200_000 } else { 1_000_000 },
        }
    }
}

/// Offered rates (events/s) for the flush-per-batch scenario.
const FLUSH_RATES: [f64; 2] = [100_000.0, 300_000.0];
/// Offered rates for the buffered scenario (`None` = unthrottled).
const BUFFERED_RATES: [Option<f64>; 2] = [Some(300_000.0), None];
/// Removes of records older than this keep the live set small (scenarios 1–2).
const RETENTION: Duration = Duration::from_millis(50);
/// Buffered-mode flush interval.
const BUFFERED_FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Events per record in the per-group replay (and per batch in both layouts).
const REPLAY_GROUP: u64 = 1_000;
/// Churn: offered rate and retention giving a ~200 KB live set
/// (40k ev/s × 78 B × 70 ms ≈ 218 KB).
const CHURN_RATE: f64 = 40_000.0;
const CHURN_RETENTION: Duration = Duration::from_millis(70);

/// Before each measurement, wait (at most QUIET_MAX_WAIT, sampling 1 s at a
/// time) until other processes use less than this share of the machine's CPU.
const QUIET_CPU_PCT: f64 = 15.0;
const QUIET_MAX_WAIT: Duration = Duration::from_secs(1);

/// How long the reopen half of a replay may take before it counts as hung.
const REOPEN_TIMEOUT: Duration = Duration::from_secs(300);

/// Scenario names, in the order they run.
const SCENARIOS: [&str; 4] = ["flush", "buffered", "replay", "churn"];

/// Engine ids accepted by `--engines`, with the display name.
pub fn engine_name(id: &str) -> Res<&'static str> {
    match id {
        "0.34" => Ok(Sled034::<false>::NAME),
        "0.34+fdatasync" => Ok(Sled034::<true>::NAME),
        "1.0" => Ok(Sled1::<1024>::NAME),
        "1.0-f16" => Ok(Sled1::<16>::NAME),
        "1.0-f8" => Ok(Sled1::<8>::NAME),
        "1.0-f4" => Ok(Sled1::<4>::NAME),
        "1.0-z1" => Ok(Sled1::<1024, 1>::NAME),
        "1.0-z-5" => Ok(Sled1::<1024, -5>::NAME),
        other => Err(format!(
            "unknown engine {other:?} (use 0.34, 0.34+fdatasync, 1.0, 1.0-f16, 1.0-f8, 1.0-f4, 1.0-z1 or 1.0-z-5)"
        )
        .into()),
    }
}

/// One measurement; runs in its own child process.
#[derive(Debug, Clone)]
pub struct Task {
    pub scenario: &'static str,
    /// "0.34" or "1.0".
    pub engine: String,
    pub layout: Layout,
    /// Offered events/s (`None` = unthrottled, or not applicable for replay).
    pub rate: Option<f64>,
}

impl Task {
    /// `SCENARIO:ENGINE:LAYOUT:RATE`, RATE being a number or `max`.
    fn encode(&self) -> String {
        let rate = self.rate.map_or("max".to_string(), |r| format!("{r}"));
        format!(
            "{}:{}:{}:{}",
            self.scenario,
            self.engine,
            self.layout.name(),
            rate
        )
    }

    fn decode(s: &str) -> Res<Task> {
        let parts: Vec<&str> = s.split(':').collect();
        let [scenario, engine, layout, rate] = parts[..] else {
            return Err(format!("bad task {s:?}").into());
        };
        let scenario = SCENARIOS
            .into_iter()
            .find(|x| *x == scenario)
            .ok_or("unknown scenario")?;
        let layout = match layout {
            "per-event" => Layout::PerEvent,
            "per-group" => Layout::PerGroup,
            _ => return Err(format!("unknown layout {layout:?}").into()),
        };
        let rate = if rate == "max" {
            None
        } else {
            Some(rate.parse()?)
        };
        Ok(Task {
            scenario,
            engine: engine.to_string(),
            layout,
            rate,
        })
    }

    /// How long the child may take before it is considered hung.
    fn timeout(&self, plan: &Plan) -> Duration {
        let secs = match self.scenario {
            "replay" => 600,
            "churn" => plan.churn_secs + 60,
            _ => plan.append_secs + 60,
        };
        Duration::from_secs(secs)
    }

    pub fn label(&self) -> String {
        let rate = match (self.scenario, self.rate) {
            ("replay", _) => String::new(),
            (_, r) => format!(" @ {}", report::rate_label(r)),
        };
        let name = engine_name(&self.engine).unwrap_or("?");
        format!(
            "[{}] {} {}{}",
            self.scenario,
            name,
            self.layout.name(),
            rate
        )
    }
}

/// All tasks selected by the command line, scenario-major so the two
/// engines' runs of one scenario are close together in time.
fn tasks(args: &Args) -> Res<Vec<Task>> {
    let mut out = Vec::new();
    for &scenario in SCENARIOS
        .iter()
        .filter(|s| args.only.iter().any(|o| o == *s))
    {
        for engine in &args.engines {
            engine_name(engine)?;
            // Tuned variants only run the per-group layout (the one both
            // versions can sustain); 0.34+fdatasync is a durability-cost probe
            // that only changes flush latency, so it only runs `flush`.
            let variant = engine != "0.34" && engine != "1.0";
            if engine == "0.34+fdatasync" && scenario != "flush" {
                continue;
            }
            let mut add = |layout: Layout, rate| {
                let wanted = args.layouts.iter().any(|l| l == layout.name());
                if wanted && !(variant && layout == Layout::PerEvent) {
                    out.push(Task {
                        scenario,
                        engine: engine.clone(),
                        layout,
                        rate,
                    })
                }
            };
            match scenario {
                "flush" => {
                    for layout in [Layout::PerEvent, Layout::PerGroup] {
                        for r in FLUSH_RATES {
                            add(layout, Some(r));
                        }
                    }
                }
                "buffered" => {
                    // Per-event cannot absorb 300k/s on either version; its
                    // 300k/s run already shows its saturated rate, so the
                    // unthrottled run is only done for per-group.
                    add(Layout::PerEvent, BUFFERED_RATES[0]);
                    for r in BUFFERED_RATES {
                        add(Layout::PerGroup, r);
                    }
                }
                "replay" => {
                    add(Layout::PerEvent, None);
                    add(Layout::PerGroup, None);
                }
                "churn" => add(Layout::PerGroup, Some(CHURN_RATE)),
                _ => unreachable!(),
            }
        }
    }
    Ok(out)
}

fn main() -> Res<()> {
    let args = Args::parse();
    let plan = Plan::new(args.quick);
    let tmp_root = args.tmp_dir.clone().unwrap_or_else(std::env::temp_dir);

    if let Some(task) = &args.child {
        return run_child(
            &Task::decode(task)?,
            &plan,
            &tmp_root,
            args.reopen.as_deref(),
        );
    }

    let started = Instant::now();
    let mut report = Report::new(&plan, &tmp_root)?;
    eprintln!("{}", report.environment_summary());

    for task in tasks(&args)? {
        let busy = machine::wait_for_quiet(QUIET_CPU_PCT, QUIET_MAX_WAIT);
        eprintln!("{}  (other processes: {busy:.0}% CPU)", task.label());
        match spawn_child(&task, &args, &plan, &tmp_root) {
            Ok(v) => {
                eprintln!("    -> {}", report::one_line(&task, &v));
                report.add(&task, &v)?;
            }
            Err(e) => {
                eprintln!("    !! FAILED: {e}");
                report.failures.push((task.label(), e.to_string()));
            }
        }
    }

    report.total_secs = started.elapsed().as_secs_f64();
    let markdown = report.to_markdown();
    println!("{markdown}");

    let results = args.results.clone().or_else(|| {
        (!args.quick).then(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("RESULTS.md"))
    });
    if let Some(path) = results {
        std::fs::write(&path, &markdown)?;
        let json_path = path.with_extension("json");
        std::fs::write(&json_path, serde_json::to_string_pretty(&report.to_json())?)?;
        eprintln!("wrote {} and {}", path.display(), json_path.display());
    }
    Ok(())
}

/// Run `task` in a child process and return the JSON it reports.
///
/// The child's database lives in a temp dir owned by the parent, so it is
/// removed even if the child has to be killed. A child that produces no
/// result within [`Task::timeout`] is killed and reported as hung (sled 0.34
/// deadlocked once in this benchmark; see README.md).
fn spawn_child(task: &Task, args: &Args, plan: &Plan, tmp_root: &Path) -> Res<Value> {
    let tmp = tempfile::Builder::new()
        .prefix("sled-choice-")
        .tempdir_in(tmp_root)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--child")
        .arg(task.encode())
        .arg("--tmp-dir")
        .arg(tmp.path());
    if args.quick {
        cmd.arg("--quick");
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let line = wait_for_result(child, task.timeout(plan), "")?;
    Ok(serde_json::from_str(&line)?)
}

/// Wait for `child` to exit (killing it after `timeout`) and return the JSON
/// text of its `RESULT` line. `input` is written to its stdin first.
fn wait_for_result(mut child: std::process::Child, timeout: Duration, input: &str) -> Res<String> {
    use std::io::{Read, Write};
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    // Drain stdout on a thread so a chatty child can never block on the pipe.
    let mut stdout = child.stdout.take().ok_or("child stdout not captured")?;
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill(); // our own child, by handle
            let _ = child.wait();
            return Err(format!(
                "HUNG: no result after {} s, child killed",
                timeout.as_secs()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let stdout = reader.join().map_err(|_| "stdout reader panicked")?;
    if !status.success() {
        return Err(format!("child exited with {status}").into());
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or("child printed no RESULT line")?;
    Ok(line.to_string())
}

/// Child side: run one measurement in a fresh temp dir and print
/// `RESULT {"result": ..., "peak_rss_bytes": ..., "foreign_cpu_pct": ...}`
/// on stdout (or, with `reopen`, the second half of a replay measurement).
fn run_child(task: &Task, plan: &Plan, tmp: &Path, reopen: Option<&Path>) -> Res<()> {
    fn go<S: LogStore>(task: &Task, plan: &Plan, tmp: &Path, reopen: Option<&Path>) -> Res<()> {
        match reopen {
            Some(dir) => reopen_child::<S>(dir),
            None => measure::<S>(task, plan, tmp),
        }
    }
    match task.engine.as_str() {
        "0.34" => go::<Sled034<false>>(task, plan, tmp, reopen),
        "0.34+fdatasync" => go::<Sled034<true>>(task, plan, tmp, reopen),
        "1.0" => go::<Sled1<1024>>(task, plan, tmp, reopen),
        "1.0-f16" => go::<Sled1<16>>(task, plan, tmp, reopen),
        "1.0-f8" => go::<Sled1<8>>(task, plan, tmp, reopen),
        "1.0-f4" => go::<Sled1<4>>(task, plan, tmp, reopen),
        "1.0-z1" => go::<Sled1<1024, 1>>(task, plan, tmp, reopen),
        "1.0-z-5" => go::<Sled1<1024, -5>>(task, plan, tmp, reopen),
        other => Err(format!("unknown engine {other:?}").into()),
    }
}

/// Replay, restart half: a fresh process reopens the database that the
/// parent child wrote (write-phase result arrives as JSON on stdin).
fn reopen_child<S: LogStore>(dir: &Path) -> Res<()> {
    let mut input = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)?;
    let mut r = workload::ReplayResult::from_json(&serde_json::from_str(&input)?)?;
    workload::reopen_replay::<S>(dir, &mut r)?;
    r.reopen_peak_rss = machine::peak_rss_bytes();
    println!("RESULT {}", r.to_json());
    Ok(())
}

/// Run the reopen half of a replay measurement in a fresh process.
fn spawn_reopen(
    task: &Task,
    dir: &Path,
    written: &workload::ReplayResult,
) -> Res<workload::ReplayResult> {
    let child = Command::new(std::env::current_exe()?)
        .arg("--child")
        .arg(task.encode())
        .arg("--reopen")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let line = wait_for_result(child, REOPEN_TIMEOUT, &written.to_json().to_string())?;
    workload::ReplayResult::from_json(&serde_json::from_str(&line)?)
}

fn measure<S: LogStore>(task: &Task, plan: &Plan, tmp: &Path) -> Res<()> {
    let dir = tempfile::Builder::new()
        .prefix("sled-choice-")
        .tempdir_in(tmp)?;
    let cpu = machine::CpuSnapshot::now();
    let append = |policy, duration, retention, disk_sample_every| AppendSpec {
        layout: task.layout,
        policy,
        rate: task.rate,
        duration,
        retention,
        disk_sample_every,
    };
    let result = match task.scenario {
        "flush" => {
            let spec = append(
                FlushPolicy::EveryBatch,
                Duration::from_secs(plan.append_secs),
                RETENTION,
                None,
            );
            workload::run_append::<S>(dir.path(), &spec)?.to_json()
        }
        "buffered" => {
            let policy = FlushPolicy::Every(BUFFERED_FLUSH_EVERY);
            let spec = append(
                policy,
                Duration::from_secs(plan.append_secs),
                RETENTION,
                None,
            );
            workload::run_append::<S>(dir.path(), &spec)?.to_json()
        }
        "replay" => {
            let written = workload::write_replay::<S>(
                dir.path(),
                task.layout,
                plan.replay_events,
                REPLAY_GROUP,
            )?;
            spawn_reopen(task, dir.path(), &written)?.to_json()
        }
        "churn" => {
            let spec = append(
                FlushPolicy::EveryBatch,
                Duration::from_secs(plan.churn_secs),
                CHURN_RETENTION,
                Some(Duration::from_secs(1)),
            );
            workload::run_append::<S>(dir.path(), &spec)?.to_json()
        }
        other => return Err(format!("unknown scenario {other:?}").into()),
    };
    let out = json!({
        "result": result,
        "peak_rss_bytes": machine::peak_rss_bytes(),
        "foreign_cpu_pct": cpu.foreign_cpu_pct_since(),
    });
    println!("RESULT {out}");
    dir.close()?;
    Ok(())
}
