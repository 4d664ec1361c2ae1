//! Disk full: the data directory lives on a small tmpfs that a filler file fills up.
//! While the disk is full, heartbeats keep being served from memory (subscribers see
//! them at once), the failure is counted in `/metrics` (`rollcall_log_errors_total`,
//! `rollcall_log_failing`), and acknowledgments in `flush` mode turn into
//! `storage_unavailable` after the 10 s ack timeout. When the filler is deleted, the
//! log writes again: new heartbeats are acknowledged and survive a kill -9.
//!
//! Needs root (it mounts a tmpfs); elsewhere it prints a SKIPPED banner and passes, and
//! under CI (`CI` set) it fails.
//! Prints the time to `storage_unavailable` and the time to recover.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use rollcall_tests::{Raw, Server, eventually, require};
use serde_json::json;

/// A mounted tmpfs, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).map_err(|e| e.to_string())?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !output.status.success() {
            return Err(String::from_utf8_lossy(&output.stderr).trim().to_owned());
        }
        Ok(Tmpfs { path, _dir: dir })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Writes a filler file until the file system is full; returns its size.
fn fill(path: &Path) -> u64 {
    let mut file = std::fs::File::create(path).unwrap();
    let chunk = vec![0xA5u8; 64 * 1024];
    let mut written = 0u64;
    loop {
        match file.write(&chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => written += n as u64,
        }
    }
    let _ = file.sync_all();
    written
}

#[tokio::test]
async fn a_full_disk_is_served_from_memory_counted_and_recovered_from() {
    let tmpfs = match Tmpfs::mount("32m") {
        Ok(tmpfs) => tmpfs,
        Err(why) => {
            require::cannot_run(&format!(
                "the disk-full test needs to mount a tmpfs (as root): {why}"
            ));
            return;
        }
    };
    let data = tmpfs.path.join("data");
    let mut server = Server::launch().data(&data).start();
    let (mut watcher, _) = Raw::hello(&server.ws_url()).await;
    watcher
        .send(r#"{"type":"subscribe","room":"pr:disk"}"#)
        .await;
    watcher.until("snapshot").await;
    let (mut writer, welcome) = Raw::hello(&server.ws_url()).await;
    let id = welcome["clientId"].as_u64().unwrap();
    writer
        .send(r#"{"type":"heartbeat","room":"pr:disk","data":"before","ttlMs":600000,"ref":1}"#)
        .await;
    assert_eq!(writer.until("ack").await["ref"], 1);

    // Fill the disk.
    let filler = tmpfs.path.join("filler");
    let filled = fill(&filler);
    let errors_before = server.metric("rollcall_log_errors_total");

    // Enough new data (8 connections x 120 rooms x 3.5 KiB) that the log must grow.
    let bulk = "z".repeat(3_500);
    let mut bulk_writers = Vec::new();
    for c in 0..8 {
        let (mut raw, _) = Raw::hello(&server.ws_url()).await;
        for r in 0..120 {
            raw.socket
                .feed(tokio_tungstenite::tungstenite::Message::Text(
                    json!({"type": "heartbeat", "room": format!("pr:bulk-{c}-{r}"), "data": bulk, "ttlMs": 600_000})
                        .to_string()
                        .into(),
                ))
                .await
                .unwrap();
        }
        raw.socket.flush().await.unwrap();
        bulk_writers.push(raw);
    }

    // Heartbeats are still served from memory: the watcher sees each at once.
    let full_at = Instant::now();
    for i in 0..20 {
        let data = format!("full-{i}");
        writer
            .send(
                &json!({"type": "heartbeat", "room": "pr:disk", "data": data, "ttlMs": 600_000, "ref": 100 + i})
                    .to_string(),
            )
            .await;
        loop {
            let changes = watcher.until("changes").await;
            if changes["changes"][0]["data"] == data.as_str() {
                break;
            }
        }
    }
    let served_in = full_at.elapsed();
    let room = server.get_json("/v1/rooms/pr%3Adisk");
    assert_eq!(room["entries"][0]["data"], "full-19", "{room}");

    // The failure is counted and flagged.
    let counted = eventually(Duration::from_secs(15), || {
        server.metric("rollcall_log_errors_total") > errors_before
            && server.metric("rollcall_log_failing") > 0.5
    })
    .await;
    let errors = server.metric("rollcall_log_errors_total");
    assert!(
        counted,
        "the disk failure is not in /metrics ({errors} errors)"
    );

    // Acks in flush mode turn into storage_unavailable after the ack timeout.
    let error = writer.until("error").await;
    let unavailable_after = full_at.elapsed();
    assert_eq!(error["code"], "storage_unavailable", "{error}");
    assert!(
        error["ref"]
            .as_u64()
            .is_some_and(|r| (100..120).contains(&r)),
        "{error}"
    );
    assert!(
        unavailable_after >= Duration::from_secs(9),
        "storage_unavailable came before the 10 s timeout: {unavailable_after:?}"
    );

    // Space comes back: the log writes again and acknowledges.
    std::fs::remove_file(&filler).unwrap();
    let freed_at = Instant::now();
    writer
        .send(r#"{"type":"heartbeat","room":"pr:disk","data":"after","ttlMs":600000,"ref":500}"#)
        .await;
    let answer = loop {
        let message = writer.json().await;
        if message["ref"] == 500 && (message["type"] == "ack" || message["type"] == "error") {
            break message;
        }
    };
    let recovered_in = freed_at.elapsed();
    let failing = server.metric("rollcall_log_failing");
    println!(
        "figure: disk full ({filled} bytes of filler, then 3.3 MiB of heartbeats): 20 heartbeats served from memory in {served_in:?}; rollcall_log_errors_total {errors}, rollcall_log_failing 1; storage_unavailable after {unavailable_after:?}; after freeing space the next heartbeat got {} in {recovered_in:?}, rollcall_log_failing {failing}",
        answer["type"]
    );
    assert_eq!(
        answer["type"], "ack",
        "writing did not resume once space was back: {answer}"
    );
    assert!(
        eventually(Duration::from_secs(10), || server
            .metric("rollcall_log_failing")
            == 0.0)
        .await,
        "rollcall_log_failing stayed 1"
    );

    // What was acknowledged after recovery survives a crash.
    server.kill9_and_restart();
    let room = server.get_json("/v1/rooms/pr%3Adisk");
    let entry = room["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["clientId"] == id)
        .cloned();
    assert_eq!(
        entry.map(|e| e["data"].clone()),
        Some(json!("after")),
        "{room}"
    );
    drop(bulk_writers);
    drop(server);
}
