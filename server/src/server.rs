//! Runs the server: opens the engine, serves HTTP and WebSockets, sweeps, shuts down.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rollcall_engine::{Config, Durability, Engine, ReplayReport, Ticket, UnixMs};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::task::TaskTracker;

use crate::cluster;
use crate::config::{CorruptDataPolicy, ServerConfig};
use crate::datadir;
use crate::error::{DataDirProblem, Error, Result};
use crate::http::{self, AppState};
use crate::hub::Hub;
use crate::identity;
use crate::listener;
use crate::metrics::{self, Metrics};
use crate::shutdown::{Shutdown, Trigger};
use crate::tls::{self, Tls};

/// Serves on `listener` until `shutdown` completes, then closes every session with
/// 1001, flushes the log and returns.
///
/// The listener answers at once: `/healthz` says 503 until the log is replayed.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future + Send + 'static,
) -> Result<()> {
    run_notify(listener, config, shutdown, |_| {}).await
}

/// [`run`], calling `ready` with the listener's address once the log is replayed and
/// the server serves every request (the moment `/healthz` turns 200).
pub async fn run_notify(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future + Send + 'static,
    ready: impl FnOnce(SocketAddr) + Send,
) -> Result<()> {
    // A bad certificate or key fails here, before anything is opened.
    let tls = config.tls.as_ref().map(Tls::load).transpose()?;
    let local_addr = listener.local_addr()?;
    let prometheus = metrics::install();
    let metrics = Metrics::new();
    let trigger = Trigger::new();
    let sessions = TaskTracker::new();
    let state = AppState::new(
        config.clone(),
        trigger.subscribe(),
        sessions.clone(),
        prometheus.clone(),
    );

    let opening = tokio::task::spawn_blocking({
        let config = config.clone();
        let metrics = metrics.clone();
        move || open(&config, metrics)
    });

    // Accept at once: `/healthz` answers 503 until the replay is done.
    let router = http::router(state.clone());
    let acceptor = tokio::spawn(listener::accept_loop(
        listener,
        router,
        config.connections,
        tls.clone(),
        trigger.subscribe(),
        sessions.clone(),
    ));
    let reloader = tokio::spawn(tls::watch(tls, trigger.subscribe()));
    let mut stop = trigger.subscribe();
    let signal = tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutting down: closing sessions");
    });

    let hub = match opening.await {
        Ok(Ok(hub)) => Arc::new(hub),
        Ok(Err(error)) => {
            trigger.fire();
            let _ = acceptor.await;
            return Err(error);
        }
        Err(join) => {
            trigger.fire();
            let _ = acceptor.await;
            return Err(Error::Task(join.to_string()));
        }
    };
    // With webhooks in a cluster, each room's events are sent by one node.
    let members = (config.cluster.is_some() && config.webhooks.is_some())
        .then(|| Arc::new(cluster::owner::Members::new(config.node_id)));
    let cluster =
        start_cluster(&config, &hub, &state, members.clone(), trigger.subscribe()).await?;
    // After the replay: replayed entries are not news.
    if let Some(webhooks) = &config.webhooks {
        let sink = crate::webhooks::start(webhooks, config.node_id, &trigger.subscribe())
            .map_err(Error::Config)?;
        if let (Some(members), Some(cluster_config)) = (&members, &config.cluster) {
            sink.send_for(members, cluster_config.node_timeout);
        }
        hub.set_webhooks(sink);
    }
    state.set_hub(hub.clone());
    let sweeper = tokio::spawn(sweep(
        hub.clone(),
        config.tick,
        prometheus,
        trigger.subscribe(),
    ));
    ready(local_addr);

    // Run until the caller's signal (or until every listener of it is gone).
    tokio::select! {
        _ = signal => {}
        () = stop.recv() => {}
    }
    trigger.fire();
    let _ = acceptor.await;
    let _ = reloader.await;
    let _ = sweeper.await;
    if let Some(cluster) = cluster {
        let _ = cluster.await;
    }

    drain(&sessions, config.drain_timeout).await;
    // The last handles to the hub go with the state; then the engine can close.
    drop(state);
    tokio::task::spawn_blocking(move || hub.close())
        .await
        .map_err(|e| Error::Task(e.to_string()))??;
    tracing::info!("log flushed; bye");
    Ok(())
}

/// Cluster mode, if `config` asks for it: links the hub to the bus and starts the
/// cluster task (returned, to wait for at shutdown).
async fn start_cluster(
    config: &ServerConfig,
    hub: &Arc<Hub>,
    state: &AppState,
    members: Option<Arc<cluster::owner::Members>>,
    shutdown: Shutdown,
) -> Result<Option<JoinHandle<()>>> {
    let Some(cluster_config) = &config.cluster else {
        return Ok(None);
    };
    let (links, queues) = cluster::links();
    hub.enable_cluster(config.node_id, links);
    let status = Arc::new(cluster::Status::default());
    state.set_cluster(status.clone());
    let task = cluster::start(
        hub.clone(),
        cluster_config,
        config.node_id,
        queues,
        members,
        status,
        shutdown,
    )
    .await?;
    Ok(Some(task))
}

/// Waits for the sessions to close (they were told to), at most `timeout`.
async fn drain(sessions: &TaskTracker, timeout: std::time::Duration) {
    sessions.close();
    if tokio::time::timeout(timeout, sessions.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = sessions.len(),
            "sessions did not close within the drain timeout"
        );
    }
}

/// Presence is soft state: what to do when the directory's content is damaged.
const MOVE_ASIDE: &str = "presence is soft state: start with --on-corrupt-data=move-aside to \
     move the directory aside and start empty";

/// The engine's refusal as a data directory error with its one remedy.
fn engine_problem(path: &Path, error: rollcall_engine::Error) -> Error {
    use rollcall_engine::Error as E;
    let (kind, reason) = match error {
        E::Damaged { file, detail } => (
            DataDirProblem::Damaged,
            format!(
                "sled cannot open its file {}: {detail}. --recovery=skip-corrupt cannot help \
                 when sled cannot open its files; {MOVE_ASIDE}",
                file.display()
            ),
        ),
        E::Locked { .. } => (
            DataDirProblem::Locked,
            "another process has it open (another rollcall?): stop that process or choose \
             another --data"
                .to_owned(),
        ),
        error @ (E::CorruptRecord { .. }
        | E::LostWrites(_)
        | E::CorruptMarker { .. }
        | E::CorruptKey { .. }) => {
            let what = match error {
                E::CorruptRecord { seq, source } => {
                    format!("log record {seq} is corrupt ({source})")
                }
                E::LostWrites(lost) => format!(
                    "the log lost writes that had been made durable: {lost}; sled stopped \
                     reading its log at a damaged message and discarded the rest (corruption, \
                     not a write torn by a crash)"
                ),
                E::CorruptMarker { path } => format!(
                    "the durability marker {} is damaged, so the log cannot be checked for \
                     lost writes",
                    path.display()
                ),
                other => other.to_string(),
            };
            (
                DataDirProblem::Corrupt,
                format!(
                    "{what}. Start with --recovery=skip-corrupt to start without the damaged \
                     part (reported in the log and /metrics), or with \
                     --on-corrupt-data=move-aside to move the directory aside and start empty"
                ),
            )
        }
        error if error.io_kind() == Some(std::io::ErrorKind::PermissionDenied) => {
            return datadir::permission_denied(path, path, "sled cannot open its files");
        }
        error if error.io_kind() == Some(std::io::ErrorKind::ReadOnlyFilesystem) => (
            DataDirProblem::ReadOnly,
            "it is on a read-only file system: mount it read-write or choose another --data"
                .to_owned(),
        ),
        error => (DataDirProblem::Io, error.to_string()),
    };
    Error::DataDirectory {
        path: path.to_path_buf(),
        kind,
        reason,
    }
}

/// Opens the engine (replaying the log) and wraps it in a hub. Blocking.
fn open(config: &ServerConfig, metrics: Metrics) -> Result<Hub> {
    let started = Instant::now();
    let (durable_tx, durable_rx) = watch::channel(Ticket(0));
    let engine_config = || {
        let durable_tx = durable_tx.clone();
        Config::new(&config.data_dir)
            .durability(config.durability)
            .layout(config.layout)
            .commit_delay(config.commit_delay)
            .recovery(config.recovery)
            .on_durable(move |ticket| {
                durable_tx.send_replace(ticket);
            })
            .on_progress(|progress| {
                if progress.elapsed.as_secs() < 1 {
                    return;
                }
                tracing::info!(
                    records = progress.records,
                    events = progress.events,
                    elapsed_ms = progress.elapsed.as_millis() as u64,
                    "replaying the log"
                );
            })
    };
    let (engine, report) = open_engine(config, engine_config)?;
    // Ids are never handed out twice, even if the writes that reserved them were lost
    // while entries holding them survived.
    let space = u64::from(config.node_id);
    if let Some(highest) = report.highest_clients.get(&space) {
        if identity::Identity::raise_counter(engine.journal(), config.node_id, *highest)? {
            tracing::warn!(
                highest = highest.0,
                "the client id counter was behind ids in the log (its reservation was \
                 lost): moved it past them"
            );
        }
    }
    report_replay(config, &report, &metrics, started);
    Hub::new(
        engine,
        config.node_id,
        config.resume_secret.as_deref(),
        config.limits.clone(),
        durable_rx,
        metrics,
    )
}

/// Opens the engine on `config.data_dir` (configured by `engine_config`), telling a
/// first start from a damaged directory, and moving a damaged one aside if
/// `--on-corrupt-data=move-aside` says so. Blocking.
fn open_engine(
    config: &ServerConfig,
    engine_config: impl Fn() -> Config,
) -> Result<(Engine, ReplayReport)> {
    if config.durability == Durability::Memory {
        tracing::info!("durability is memory: nothing is written to disk");
    } else {
        tracing::info!(data = %config.data_dir.display(), durability = ?config.durability, "opening the log");
    }
    // Classified before sled touches it: sled would create files in any directory.
    let found = if config.durability == Durability::Memory {
        None
    } else {
        Some(datadir::prepare(&config.data_dir)?)
    };
    // sled reads a damaged or truncated file as an empty database: tell that apart
    // from a first start by the resume secret every earlier run wrote.
    let had_files = found == Some(datadir::Found::Rollcall);
    let path = config.data_dir.as_path();
    let open_checked = || -> Result<_> {
        let (engine, report) =
            Engine::open(engine_config()).map_err(|error| engine_problem(path, error))?;
        let secret = engine
            .meta_get(identity::SECRET_KEY)
            .map_err(|error| engine_problem(path, error))?;
        // Under skip-corrupt, writes sled lost were reported by the replay: starting
        // without them (even without all of them) is what was asked for.
        if had_files && secret.is_none() && report.lost.is_none() {
            return Err(Error::DataDirectory {
                path: path.to_path_buf(),
                kind: DataDirProblem::Damaged,
                reason: format!(
                    "it holds Rollcall's files but sled read no data from them (damaged or \
                     truncated). --recovery=skip-corrupt cannot help when sled cannot read \
                     its files; {MOVE_ASIDE}"
                ),
            });
        }
        Ok((engine, report))
    };
    let is_damage =
        |error: &Error| matches!(error, Error::DataDirectory { kind, .. } if kind.is_damage());
    match open_checked() {
        Ok(opened) => Ok(opened),
        // Only a directory recognised as Rollcall's is ever renamed.
        Err(error)
            if is_damage(&error)
                && had_files
                && config.on_corrupt_data == CorruptDataPolicy::MoveAside =>
        {
            let aside = PathBuf::from(format!(
                "{}.corrupt-{}",
                config.data_dir.display(),
                UnixMs::now().0
            ));
            std::fs::rename(&config.data_dir, &aside).map_err(|e| Error::DataDirectory {
                path: path.to_path_buf(),
                kind: DataDirProblem::Io,
                reason: format!(
                    "it is damaged and could not be moved aside to {}: {e}",
                    aside.display()
                ),
            })?;
            tracing::error!(
                %error,
                moved_to = %aside.display(),
                "the data directory could not be opened; moved it aside and starting empty"
            );
            ::metrics::counter!("rollcall_data_moved_aside_total").increment(1);
            Engine::open(engine_config()).map_err(|error| engine_problem(path, error))
        }
        Err(error) => Err(error),
    }
}

/// Logs what the replay found and publishes it in `/metrics`.
fn report_replay(
    config: &ServerConfig,
    report: &ReplayReport,
    metrics: &Metrics,
    started: Instant,
) {
    metrics.replay_seconds.set(started.elapsed().as_secs_f64());
    metrics.replay_entries.set(report.live_entries as f64);
    if !report.torn.is_empty() {
        tracing::warn!(records = ?report.torn, "truncated a torn tail");
    }
    if !report.skipped.is_empty() {
        tracing::error!(records = ?report.skipped, "skipped unreadable log records");
    }
    if let Some(lost) = report.lost {
        tracing::error!(
            data = %config.data_dir.display(),
            lost_writes = lost.writes(),
            lost_records = lost.records(),
            "acknowledged log writes were lost: {lost}. sled read its log only up to a \
             damaged message; started without them (--recovery=skip-corrupt). Entries and \
             leaves in them are gone; an entry whose leave was lost can reappear until its TTL"
        );
    }
    if report.marker_rebuilt {
        tracing::error!(
            data = %config.data_dir.display(),
            "the durability marker was damaged and has been started anew: writes lost \
             before this start could not be checked"
        );
    }
    // Set at every start, so a dashboard sees 0 after a clean one.
    let (lost_writes, lost_records) = report.lost.map_or((0, 0), |l| (l.writes(), l.records()));
    ::metrics::gauge!("rollcall_replay_lost_writes").set(lost_writes as f64);
    ::metrics::gauge!("rollcall_replay_lost_records").set(lost_records as f64);
    ::metrics::gauge!("rollcall_replay_skipped_records").set(report.skipped.len() as f64);
    tracing::info!(
        live_entries = report.live_entries,
        expired = report.expired,
        records = report.records,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "ready"
    );
}

/// Expires due entries every tick, so an entry disappears within TTL + one tick.
async fn sweep(
    hub: Arc<Hub>,
    tick: std::time::Duration,
    prometheus: metrics_exporter_prometheus::PrometheusHandle,
    mut shutdown: Shutdown,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_upkeep = Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = shutdown.recv() => return,
        }
        hub.sweep(UnixMs::now());
        if last_upkeep.elapsed().as_secs() >= 5 {
            last_upkeep = Instant::now();
            prometheus.run_upkeep();
            hub.record_gauges();
        }
    }
}
