//! Test kit for Rollcall's end-to-end tests (`tests/`) and benches (`benches/`).
//!
//! - [`Server`] starts a server **in-process** on port 0 with a temporary data
//!   directory ([`Server::in_process`], [`Launch::in_process`]): the cheap default for
//!   protocol, auth, HTTP and page tests. Tests that kill, restart or measure the
//!   server (kill -9, restart, disk full, cluster, memory, CPU, `/metrics`) start the
//!   real `rollcall` binary as a child process instead ([`Server::start`],
//!   [`Launch::start`]). Both shut down on drop.
//! - [`Raw`] is a WebSocket client for exact messages and close codes; [`wire`] writes
//!   and reads WebSocket frames by hand (also the load generator's framing); [`http`]
//!   speaks plain HTTP/1.1.
//! - [`procfs`] reads CPU time, memory and descriptors of a process from `/proc`;
//!   [`metrics`] reads Prometheus text.
//! - [`keys`] and [`jwt`] hold the test keys and mint tokens.
//! - [`require`] is how a test that cannot run says so: it fails under CI (`CI` set)
//!   and says so loudly otherwise; no test passes silently for want of a tool.
#![deny(missing_docs)]

pub mod http;
pub mod jwt;
pub mod keys;
pub mod metrics;
pub mod procfs;
pub mod require;
mod server;
pub mod wire;
mod ws;

use std::time::{Duration, Instant};

pub use http::{http, http_with};
pub use procfs::{cpu_time_of, listen_overflows};
pub use server::{Exited, Launch, Server, Started, binary};
pub use ws::{Raw, RawEvent, next_json};

/// Polls `condition` until it holds or `timeout` passes.
pub async fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    condition()
}

/// Raises this process's open-file limit to its hard limit (servers started by the
/// tests inherit it). Returns the new soft limit.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// The `p`-th percentile (0–100) of `samples` (nearest rank); 0 when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return 0.0;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Serializes the tests of one test binary that measure time, CPU or memory, so that
/// they do not disturb each other's figures (tests in one binary run in parallel).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Deterministic "random" bytes (xorshift), so that a failure can be reproduced from
/// its seed.
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// The directories next to the data directory `data` that
/// `--on-corrupt-data=move-aside` renamed it to (`<name>.corrupt-<unix ms>`).
pub fn moved_aside(data: &std::path::Path) -> Vec<std::path::PathBuf> {
    let name = data
        .file_name()
        .expect("a name")
        .to_string_lossy()
        .into_owned();
    let prefix = format!("{name}.corrupt-");
    std::fs::read_dir(data.parent().expect("a parent"))
        .expect("list the parent")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .collect()
}

/// An environment variable parsed as a number, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn percentile_is_nearest_rank() {
        let samples = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert!((percentile(&samples, 50.0) - 3.0).abs() < f64::EPSILON);
        assert!((percentile(&samples, 100.0) - 5.0).abs() < f64::EPSILON);
        assert!((percentile(&samples, 0.0) - 1.0).abs() < f64::EPSILON);
        assert!(percentile(&[], 50.0).abs() < f64::EPSILON);
    }
}
