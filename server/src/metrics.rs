//! Prometheus metrics: one global recorder, and handles created once so the hot path
//! never looks a metric up by name.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::ErrorCode;

static RECORDER: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> PrometheusHandle {
    RECORDER
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".into()),
                    &[
                        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
                        0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("rollcall_log_group_events".into()),
                        &[1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0],
                    )
                });
            match builder.and_then(PrometheusBuilder::install_recorder) {
                Ok(handle) => handle,
                Err(error) => {
                    // Another recorder is installed (e.g. embedding tests): render an
                    // empty exporter rather than fail the server.
                    tracing::warn!(%error, "metrics recorder not installed");
                    PrometheusBuilder::new().build_recorder().handle()
                }
            }
        })
        .clone()
}

/// Handles to the server's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Open WebSocket sessions.
    pub connections: Gauge,
    /// Rooms with at least one entry.
    pub rooms: Gauge,
    /// Entries held (live, or expired and not yet swept).
    pub entries: Gauge,
    /// Rooms with at least one subscriber.
    pub subscribed_rooms: Gauge,
    /// 1 while the log's writes are failing.
    pub log_failing: Gauge,
    /// Seconds the log writer has been inside one storage call (0 normally).
    pub log_stalled: Gauge,
    /// How long the hub lock is held, in microseconds (a summary: its p99 shows a
    /// serialized hub).
    pub hub_lock_hold: Histogram,
    /// Heartbeats accepted.
    pub heartbeats: Counter,
    /// Leaves accepted.
    pub leaves: Counter,
    /// Entries expired by sweeps.
    pub expirations: Counter,
    /// Changes queued for subscribers (before conflation).
    pub fanout_changes: Counter,
    /// Changes written to subscribers (after conflation).
    pub fanout_delivered: Counter,
    /// Frames written to WebSockets.
    pub fanout_frames: Counter,
    /// Bytes of frames written to WebSockets.
    pub fanout_bytes: Counter,
    /// Seconds the last replay took.
    pub replay_seconds: Gauge,
    /// Live entries after the last replay.
    pub replay_entries: Gauge,
    /// Cluster mode: 1 while connected to NATS.
    pub cluster_connected: Gauge,
    /// Cluster mode: entries held for other nodes.
    pub cluster_remote_entries: Gauge,
    /// Cluster mode: changes of this node's entries published to the other nodes.
    pub cluster_published: Counter,
    /// Cluster mode: changes received from other nodes.
    pub cluster_received: Counter,
    /// Cluster mode: changes not published because the queue to NATS was full (the
    /// other nodes catch up at the entry's next heartbeat or by TTL).
    pub cluster_dropped: Counter,
}

impl Metrics {
    /// Registers every metric with the installed recorder.
    pub fn new() -> Metrics {
        Metrics {
            connections: gauge!("rollcall_connections"),
            rooms: gauge!("rollcall_rooms"),
            entries: gauge!("rollcall_live_entries"),
            subscribed_rooms: gauge!("rollcall_subscribed_rooms"),
            log_failing: gauge!("rollcall_log_failing"),
            log_stalled: gauge!("rollcall_log_stalled_seconds"),
            hub_lock_hold: histogram!("rollcall_hub_lock_hold_microseconds"),
            heartbeats: counter!("rollcall_heartbeats_total"),
            leaves: counter!("rollcall_leaves_total"),
            expirations: counter!("rollcall_expirations_total"),
            fanout_changes: counter!("rollcall_fanout_changes_total"),
            fanout_delivered: counter!("rollcall_fanout_delivered_total"),
            fanout_frames: counter!("rollcall_fanout_frames_total"),
            fanout_bytes: counter!("rollcall_fanout_bytes_total"),
            replay_seconds: gauge!("rollcall_replay_seconds"),
            replay_entries: gauge!("rollcall_replay_live_entries"),
            cluster_connected: gauge!("rollcall_cluster_connected"),
            cluster_remote_entries: gauge!("rollcall_cluster_remote_entries"),
            cluster_published: counter!("rollcall_cluster_published_total"),
            cluster_received: counter!("rollcall_cluster_received_total"),
            cluster_dropped: counter!("rollcall_cluster_dropped_total"),
        }
    }

    /// Counts an error answered to a client.
    #[allow(
        clippy::unused_self,
        reason = "called on the handles like every other metric"
    )]
    pub fn error(&self, code: ErrorCode) {
        counter!("rollcall_errors_total", "code" => code.as_str()).increment(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
