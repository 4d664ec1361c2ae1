//! Prometheus metrics: one global recorder, and handles created once so the hot path
//! never looks a metric up by name.
//!
//! Every metric is described in [`DESCRIPTIONS`] (its `# HELP` line); [`render`] sorts
//! the exporter's output so that two scrapes list the same series in the same order.

use std::sync::OnceLock;

use metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
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
                Ok(handle) => {
                    describe();
                    handle
                }
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

/// What a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution in buckets.
    Histogram,
}

/// Every metric the server and its engine export: name, kind and `# HELP` text.
pub const DESCRIPTIONS: &[(&str, Kind, &str)] = &[
    (
        "rollcall_broadcasts_missed_total",
        Kind::Counter,
        "Broadcast deliveries dropped because the subscriber had 1,024 unsent messages.",
    ),
    (
        "rollcall_broadcasts_total",
        Kind::Counter,
        "Broadcasts accepted (each goes to the room's current subscribers).",
    ),
    (
        "rollcall_cluster_broadcasts_published_total",
        Kind::Counter,
        "Cluster mode: local clients' broadcasts published to the other nodes.",
    ),
    (
        "rollcall_cluster_broadcasts_received_total",
        Kind::Counter,
        "Cluster mode: other nodes' broadcasts delivered to this node's subscribers.",
    ),
    (
        "rollcall_cluster_connected",
        Kind::Gauge,
        "Cluster mode: 1 while connected to NATS.",
    ),
    (
        "rollcall_cluster_dropped_total",
        Kind::Counter,
        "Cluster mode: changes not published because the queue to NATS was full.",
    ),
    (
        "rollcall_cluster_nodes",
        Kind::Gauge,
        "Cluster mode: other nodes heard from within the node timeout.",
    ),
    (
        "rollcall_cluster_published_total",
        Kind::Counter,
        "Cluster mode: changes of this node's entries published to the other nodes.",
    ),
    (
        "rollcall_cluster_received_total",
        Kind::Counter,
        "Cluster mode: changes received from other nodes.",
    ),
    (
        "rollcall_cluster_rejected_total",
        Kind::Counter,
        "Cluster mode: bus messages dropped, by reason (mac, stale, replay, malformed, data_size, ttl, room_full, owner).",
    ),
    (
        "rollcall_cluster_remote_entries",
        Kind::Gauge,
        "Cluster mode: entries held for other nodes.",
    ),
    (
        "rollcall_connections",
        Kind::Gauge,
        "Open WebSocket sessions.",
    ),
    (
        "rollcall_connections_refused_total",
        Kind::Counter,
        "Connections refused at accept by --max-connections or --max-connections-per-ip.",
    ),
    (
        "rollcall_data_moved_aside_total",
        Kind::Counter,
        "Data directories moved aside at startup (--on-corrupt-data=move-aside).",
    ),
    (
        "rollcall_errors_total",
        Kind::Counter,
        "Errors answered to clients, by error code.",
    ),
    (
        "rollcall_expirations_total",
        Kind::Counter,
        "Entries expired by sweeps.",
    ),
    (
        "rollcall_fanout_bytes_total",
        Kind::Counter,
        "Bytes of frames written to WebSockets.",
    ),
    (
        "rollcall_fanout_changes_total",
        Kind::Counter,
        "Changes queued for subscribers (before conflation).",
    ),
    (
        "rollcall_fanout_delivered_total",
        Kind::Counter,
        "Changes written to subscribers (after conflation).",
    ),
    (
        "rollcall_fanout_frames_total",
        Kind::Counter,
        "Frames written to WebSockets.",
    ),
    (
        "rollcall_fanout_resyncs_total",
        Kind::Counter,
        "Subscribers that fell behind their room's window and were sent its state again.",
    ),
    (
        "rollcall_heartbeats_total",
        Kind::Counter,
        "Heartbeats accepted.",
    ),
    (
        "rollcall_hub_lock_hold_microseconds",
        Kind::Histogram,
        "Microseconds a room shard's lock was held, per acquisition, all shards \
         together (a summary: quantile 0.99 shows a serialized room).",
    ),
    ("rollcall_leaves_total", Kind::Counter, "Leaves accepted."),
    (
        "rollcall_live_entries",
        Kind::Gauge,
        "Entries held (live, or expired and not yet swept).",
    ),
    (
        "rollcall_log_bytes",
        Kind::Gauge,
        "Bytes of records in the log.",
    ),
    (
        "rollcall_log_errors_total",
        Kind::Counter,
        "Failed log writes (each retried with backoff).",
    ),
    (
        "rollcall_log_failing",
        Kind::Gauge,
        "1 while the log's writes are failing.",
    ),
    (
        "rollcall_log_flush_seconds",
        Kind::Histogram,
        "Seconds from the start of a log write to the end of its flush.",
    ),
    (
        "rollcall_log_group_events",
        Kind::Histogram,
        "Events per log write (group commit size).",
    ),
    (
        "rollcall_log_live_bytes",
        Kind::Gauge,
        "Bytes of log records that still hold a live event.",
    ),
    ("rollcall_log_records", Kind::Gauge, "Records in the log."),
    (
        "rollcall_log_stalled_seconds",
        Kind::Gauge,
        "Seconds the log writer has been inside one storage call (0 normally).",
    ),
    (
        "rollcall_log_write_seconds",
        Kind::Histogram,
        "Seconds one log write took, before its flush.",
    ),
    (
        "rollcall_replay_live_entries",
        Kind::Gauge,
        "Live entries after the last replay.",
    ),
    (
        "rollcall_replay_lost_records",
        Kind::Gauge,
        "Log records the last replay found missing below the durable tip (--recovery=skip-corrupt).",
    ),
    (
        "rollcall_replay_lost_writes",
        Kind::Gauge,
        "Acknowledged log writes the last replay found missing (--recovery=skip-corrupt).",
    ),
    (
        "rollcall_replay_seconds",
        Kind::Gauge,
        "Seconds the last replay of the log took.",
    ),
    (
        "rollcall_replay_skipped_records",
        Kind::Gauge,
        "Damaged log records the last replay skipped (--recovery=skip-corrupt).",
    ),
    (
        "rollcall_rooms",
        Kind::Gauge,
        "Rooms with at least one entry.",
    ),
    (
        "rollcall_sse_streams",
        Kind::Gauge,
        "Open Server-Sent Events streams (GET /v1/rooms/{room}/events).",
    ),
    (
        "rollcall_subscribed_rooms",
        Kind::Gauge,
        "Rooms with at least one subscriber.",
    ),
    (
        "rollcall_tcp_connections",
        Kind::Gauge,
        "Open TCP connections (HTTP and WebSocket).",
    ),
    (
        "rollcall_webhook_batches_dropped_total",
        Kind::Counter,
        "Webhook batches given up after every retry failed.",
    ),
    (
        "rollcall_webhook_batches_sent_total",
        Kind::Counter,
        "Webhook batches a receiver accepted (2xx).",
    ),
    (
        "rollcall_webhook_events_dropped_total",
        Kind::Counter,
        "Webhook events dropped because a receiver's queue (10,000 events) was full.",
    ),
    (
        "rollcall_webhook_events_resent_total",
        Kind::Counter,
        "Cluster mode: webhook events sent again by a room's new owner after its owner left.",
    ),
    (
        "rollcall_webhook_failures_total",
        Kind::Counter,
        "Webhook POSTs that failed (no connection, timeout, non-2xx); each is retried.",
    ),
];

/// Gives every metric of [`DESCRIPTIONS`] its help text.
fn describe() {
    for &(name, kind, help) in DESCRIPTIONS {
        match kind {
            Kind::Counter => describe_counter!(name, help),
            Kind::Gauge => describe_gauge!(name, help),
            Kind::Histogram => describe_histogram!(name, help),
        }
    }
}

/// The exporter's text, in a stable order: families sorted by name, and a counter's
/// or gauge's series sorted by labels (a histogram's lines keep their bucket order).
pub fn render(handle: &PrometheusHandle) -> String {
    sorted(&handle.render())
}

fn sorted(text: &str) -> String {
    let mut families: Vec<(String, Vec<&str>)> = Vec::new();
    for block in text.split("\n\n") {
        let mut lines: Vec<&str> = block.lines().filter(|l| !l.is_empty()).collect();
        let Some(name) = lines
            .iter()
            .find(|l| !l.starts_with('#'))
            .or_else(|| lines.first())
            .map(|l| {
                l.trim_start_matches("# HELP ")
                    .trim_start_matches("# TYPE ")
                    .split(['{', ' '])
                    .next()
                    .unwrap_or_default()
                    .to_owned()
            })
        else {
            continue;
        };
        let sortable = lines.iter().any(|l| {
            l.starts_with("# TYPE ") && (l.ends_with(" counter") || l.ends_with(" gauge"))
        });
        if sortable {
            let comments = lines.iter().take_while(|l| l.starts_with('#')).count();
            lines[comments..].sort_unstable();
        }
        families.push((name, lines));
    }
    families.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::with_capacity(text.len());
    for (_, lines) in families {
        for line in lines {
            out.push_str(line);
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

/// Handles to the server's metrics.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// Open WebSocket sessions.
    pub connections: Gauge,
    /// Rooms with at least one entry.
    pub rooms: Gauge,
    /// Open Server-Sent Events streams.
    pub sse_streams: Gauge,
    /// Entries held (live, or expired and not yet swept).
    pub entries: Gauge,
    /// Rooms with at least one subscriber.
    pub subscribed_rooms: Gauge,
    /// 1 while the log's writes are failing.
    pub log_failing: Gauge,
    /// Seconds the log writer has been inside one storage call (0 normally).
    pub log_stalled: Gauge,
    /// How long a room shard's lock is held, in microseconds, all shards together (a
    /// summary: its p99 shows a serialized room).
    pub hub_lock_hold: Histogram,
    /// Heartbeats accepted.
    pub heartbeats: Counter,
    /// Leaves accepted.
    pub leaves: Counter,
    /// Broadcasts accepted.
    pub broadcasts: Counter,
    /// Broadcast deliveries dropped for subscribers that do not read.
    pub broadcasts_missed: Counter,
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
    /// Subscribers resent their room's state after falling out of its window.
    pub fanout_resyncs: Counter,
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
    /// Cluster mode: other nodes heard from within the node timeout.
    pub cluster_nodes: Gauge,
    /// Cluster mode: local clients' broadcasts published to the other nodes.
    pub cluster_broadcasts_published: Counter,
    /// Cluster mode: other nodes' broadcasts delivered to this node's subscribers.
    pub cluster_broadcasts_received: Counter,
}

impl Metrics {
    /// Registers every metric with the installed recorder.
    pub fn new() -> Metrics {
        Metrics {
            connections: gauge!("rollcall_connections"),
            rooms: gauge!("rollcall_rooms"),
            sse_streams: gauge!("rollcall_sse_streams"),
            entries: gauge!("rollcall_live_entries"),
            subscribed_rooms: gauge!("rollcall_subscribed_rooms"),
            log_failing: gauge!("rollcall_log_failing"),
            log_stalled: gauge!("rollcall_log_stalled_seconds"),
            hub_lock_hold: histogram!("rollcall_hub_lock_hold_microseconds"),
            heartbeats: counter!("rollcall_heartbeats_total"),
            leaves: counter!("rollcall_leaves_total"),
            broadcasts: counter!("rollcall_broadcasts_total"),
            broadcasts_missed: counter!("rollcall_broadcasts_missed_total"),
            expirations: counter!("rollcall_expirations_total"),
            fanout_changes: counter!("rollcall_fanout_changes_total"),
            fanout_delivered: counter!("rollcall_fanout_delivered_total"),
            fanout_frames: counter!("rollcall_fanout_frames_total"),
            fanout_bytes: counter!("rollcall_fanout_bytes_total"),
            fanout_resyncs: counter!("rollcall_fanout_resyncs_total"),
            replay_seconds: gauge!("rollcall_replay_seconds"),
            replay_entries: gauge!("rollcall_replay_live_entries"),
            cluster_connected: gauge!("rollcall_cluster_connected"),
            cluster_remote_entries: gauge!("rollcall_cluster_remote_entries"),
            cluster_published: counter!("rollcall_cluster_published_total"),
            cluster_received: counter!("rollcall_cluster_received_total"),
            cluster_dropped: counter!("rollcall_cluster_dropped_total"),
            cluster_nodes: gauge!("rollcall_cluster_nodes"),
            cluster_broadcasts_published: counter!("rollcall_cluster_broadcasts_published_total"),
            cluster_broadcasts_received: counter!("rollcall_cluster_broadcasts_received_total"),
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

    /// Counts a bus message dropped in cluster mode.
    #[allow(
        clippy::unused_self,
        reason = "called on the handles like every other metric"
    )]
    pub fn cluster_rejected(&self, reason: &'static str) {
        counter!("rollcall_cluster_rejected_total", "reason" => reason).increment(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_sorts_families_and_series_but_not_buckets() {
        let text = "# TYPE b_total counter\nb_total{code=\"z\"} 1\nb_total{code=\"a\"} 2\n\n\
                    # HELP a help\n# TYPE a gauge\na 3\n\n\
                    # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.1\nh_count 1\n\n";
        assert_eq!(
            sorted(text),
            "# HELP a help\n# TYPE a gauge\na 3\n\n\
             # TYPE b_total counter\nb_total{code=\"a\"} 2\nb_total{code=\"z\"} 1\n\n\
             # TYPE h histogram\nh_bucket{le=\"0.5\"} 1\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.1\nh_count 1\n\n"
        );
    }

    #[test]
    fn every_metric_in_the_sources_is_described() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut checked = 0;
        let mut dirs = vec![root.join("src"), root.join("../engine/src")];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("source directory") {
                let path = entry.expect("directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs") {
                    continue;
                }
                let source = std::fs::read_to_string(&path).expect("source file");
                let compact: String = source.split_whitespace().collect();
                let mut from = 0;
                while let Some(at) = compact[from..].find("!(\"rollcall_") {
                    let start = from + at + 3;
                    let end = start + compact[start..].find('"').expect("closing quote");
                    let name = &compact[start..end];
                    assert!(
                        DESCRIPTIONS.iter().any(|(n, _, _)| *n == name),
                        "{name} ({}) has no entry in DESCRIPTIONS",
                        path.display()
                    );
                    checked += 1;
                    from = end;
                }
            }
        }
        assert!(
            checked >= DESCRIPTIONS.len(),
            "found only {checked} metrics"
        );
    }
}
