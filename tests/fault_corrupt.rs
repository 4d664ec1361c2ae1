//! A damaged data directory: a corrupt sled config, random bytes over the log file,
//! a truncated log file. By default the server must refuse to start with a clear
//! message (exit non-zero, no panic) rather than silently start without the data;
//! with `--on-corrupt-data=move-aside` it moves the directory aside and starts empty.
//! A truncated file may also be read as a torn tail: then only original entries may
//! come back, never invented ones. Prints each outcome and the move-aside start time.
//!
//! After a kill -9, one flipped bit in `db` at 16 spread offsets: sled's recovery reads
//! its log only up to the damaged message, so the default (strict) start must refuse
//! or come back with every entry, never with fewer; with `--recovery=skip-corrupt` it
//! starts and must report what it lost (error line and `/metrics`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rollcall_tests::{Server, Started, moved_aside, noise};
use serde_json::Value;

const ENTRIES: usize = 60;

/// A data directory with `ENTRIES` live entries, cleanly shut down; returns it with
/// the entries it holds (`(room, clientId) -> data`).
fn populated() -> (tempfile::TempDir, PathBuf, BTreeMap<(String, u64), Value>) {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let mut server = Server::launch().data(&data).start();
    let expected = write_entries(&server);
    assert!(server.terminate().success());
    (temp, data, expected)
}

/// Like [`populated`], but the server is killed with SIGKILL once every write was
/// acknowledged (each REST heartbeat answers after its group was flushed), so sled
/// recovers by scanning its log instead of reading a snapshot from a clean shutdown.
fn crashed() -> (tempfile::TempDir, PathBuf, BTreeMap<(String, u64), Value>) {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join("data");
    let mut server = Server::launch().data(&data).start();
    let expected = write_entries(&server);
    server.kill9();
    (temp, data, expected)
}

/// Writes `ENTRIES` entries over REST in six rooms; returns them.
fn write_entries(server: &Server) -> BTreeMap<(String, u64), Value> {
    let mut expected = BTreeMap::new();
    for i in 0..ENTRIES {
        let room = format!("pr:c-{}", i % 6);
        let body = format!(r#"{{"data":{{"i":{i}}},"ttlMs":600000}}"#);
        let (status, answer) = server.http(
            "POST",
            &format!("/v1/rooms/{}/heartbeat", room.replace(':', "%3A")),
            Some(&body),
        );
        assert_eq!(status, 200, "{answer}");
        let answer: Value = serde_json::from_str(&answer).unwrap();
        expected.insert(
            (room, answer["clientId"].as_u64().unwrap()),
            serde_json::json!({"i": i}),
        );
    }
    expected
}

/// Every live entry the server holds.
fn entries(server: &Server) -> BTreeMap<(String, u64), Value> {
    let mut all = BTreeMap::new();
    let rooms = server.get_json("/v1/rooms?limit=1000");
    for room in rooms["rooms"].as_array().unwrap() {
        let name = room["room"].as_str().unwrap();
        let body = server.get_json(&format!("/v1/rooms/{}", name.replace(':', "%3A")));
        for entry in body["entries"].as_array().unwrap() {
            all.insert(
                (name.to_owned(), entry["clientId"].as_u64().unwrap()),
                entry["data"].clone(),
            );
        }
    }
    all
}

/// What a start on a damaged directory did.
enum Outcome {
    Refused { stderr: String },
    Started(Box<Server>, Duration),
}

fn start(data: &Path, args: &[&str]) -> Outcome {
    let mut launch = Server::launch().data(data);
    for arg in args {
        launch = launch.arg(*arg);
    }
    match launch.try_start(Duration::from_secs(60)) {
        Started::Ready(server, took) => Outcome::Started(Box::new(server), took),
        Started::Exited(exited) => {
            assert!(!exited.status.success(), "exited 0 on a damaged directory");
            assert!(
                !exited.stderr.contains("panicked"),
                "a panic instead of a message:\n{}",
                exited.stderr
            );
            Outcome::Refused {
                stderr: exited.stderr,
            }
        }
    }
}

/// The refusal names the directory and the way out.
fn assert_clear(stderr: &str, data: &Path) {
    assert!(
        stderr.contains("cannot open the data directory"),
        "unclear message:\n{stderr}"
    );
    assert!(stderr.contains(&data.display().to_string()), "{stderr}");
    assert!(
        stderr.contains("--on-corrupt-data=move-aside"),
        "the message does not say how to recover:\n{stderr}"
    );
}

/// Starts with move-aside on a damaged directory: the directory is renamed, the
/// server starts empty and serves. Returns the start time.
fn move_aside_starts_empty(data: &Path) -> Duration {
    let Outcome::Started(server, took) = start(data, &["--on-corrupt-data=move-aside"]) else {
        panic!("move-aside did not start");
    };
    let aside = moved_aside(data);
    assert_eq!(aside.len(), 1, "the damaged directory was not moved aside");
    assert!(
        aside[0].join("db").exists(),
        "the damaged files were not kept"
    );
    assert!(
        entries(&server).is_empty(),
        "started with data from a damaged directory"
    );
    let (status, body) = server.http(
        "POST",
        "/v1/rooms/pr%3Aafter/heartbeat",
        Some(r#"{"data":1,"ttlMs":60000}"#),
    );
    assert_eq!(status, 200, "{body}");
    took
}

#[test]
fn a_corrupt_sled_config_is_refused_and_move_aside_starts_empty() {
    let (_temp, data, _) = populated();
    let conf = data.join("conf");
    let len = std::fs::metadata(&conf).unwrap().len() as usize;
    std::fs::write(&conf, noise(len, 7)).unwrap();
    let Outcome::Refused { stderr } = start(&data, &[]) else {
        panic!("started on a corrupt config");
    };
    assert_clear(&stderr, &data);
    let took = move_aside_starts_empty(&data);
    println!(
        "figure: random bytes over sled's conf: default refuses (exit non-zero, clear message); move-aside started empty in {took:?}"
    );
}

#[test]
fn random_bytes_over_the_log_file_are_refused_not_silently_dropped() {
    let (_temp, data, expected) = populated();
    let db = data.join("db");
    let len = std::fs::metadata(&db).unwrap().len() as usize;
    std::fs::write(&db, noise(len, 42)).unwrap();
    match start(&data, &[]) {
        Outcome::Refused { stderr } => {
            assert_clear(&stderr, &data);
            let took = move_aside_starts_empty(&data);
            println!(
                "figure: random bytes over sled's db ({len} bytes): default refuses; move-aside started empty in {took:?}"
            );
        }
        Outcome::Started(server, _) => {
            let found = entries(&server);
            println!(
                "figure: random bytes over sled's db ({len} bytes): the server STARTED with {} of {} entries and no error",
                found.len(),
                expected.len()
            );
            panic!(
                "the server started on a damaged log and silently dropped {} entries",
                expected.len() - found.len()
            );
        }
    }
}

#[test]
fn a_truncated_log_file_never_brings_back_anything_but_original_entries() {
    for keep in [0.9, 0.5, 0.0] {
        let (_temp, data, expected) = populated();
        let db = data.join("db");
        let len = std::fs::metadata(&db).unwrap().len();
        let cut = (len as f64 * keep) as u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&db)
            .unwrap()
            .set_len(cut)
            .unwrap();
        match start(&data, &[]) {
            Outcome::Refused { stderr } => {
                assert_clear(&stderr, &data);
                println!(
                    "figure: db truncated to {cut} of {len} bytes: refused with a clear message"
                );
            }
            Outcome::Started(server, _) => {
                let found = entries(&server);
                for (key, value) in &found {
                    assert_eq!(
                        expected.get(key),
                        Some(value),
                        "an entry that was never written"
                    );
                }
                println!(
                    "figure: db truncated to {cut} of {len} bytes: started with {} of {} entries (a torn tail; {} lost without an error)",
                    found.len(),
                    expected.len(),
                    expected.len() - found.len()
                );
            }
        }
    }
}

/// Bits flipped per test: spread over the bytes sled wrote.
const FLIPS: usize = 16;

/// Copies a data directory (sled's files, its subdirectories, the durability marker).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// Where to flip a bit in `db`: `FLIPS` byte offsets spread evenly over the bytes sled
/// wrote (its segments are zero past what it wrote), each with a bit from a seeded
/// xorshift, so a run is reproducible from the file.
fn flip_points(db: &[u8], mut seed: u64) -> Vec<(usize, u8)> {
    let written: Vec<usize> = (0..db.len()).filter(|&i| db[i] != 0).collect();
    assert!(written.len() > FLIPS, "sled wrote almost nothing");
    (0..FLIPS)
        .map(|k| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (written[k * written.len() / FLIPS], (seed % 8) as u8)
        })
        .collect()
}

/// A copy of the crashed directory `pristine` with one bit of its `db` flipped.
fn flipped_copy(pristine: &Path, at: (usize, u8), name: &str) -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().unwrap();
    let data = temp.path().join(name);
    copy_dir(pristine, &data);
    let db = data.join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes[at.0] ^= 1 << at.1;
    std::fs::write(&db, bytes).unwrap();
    (temp, data)
}

#[test]
fn flipped_bit_after_crash_is_refused_in_strict_mode() {
    let (_temp, pristine, expected) = crashed();
    let db = std::fs::read(pristine.join("db")).unwrap();
    let mut refused = 0;
    let mut whole = 0;
    let mut silent = Vec::new();
    let mut unnamed = Vec::new();
    for (n, at) in flip_points(&db, 19).into_iter().enumerate() {
        let (_copy, data) = flipped_copy(&pristine, at, &format!("flip-{n}"));
        match start(&data, &[]) {
            Outcome::Refused { stderr } => {
                assert_clear(&stderr, &data);
                let named = stderr.contains("--recovery=skip-corrupt");
                if !named {
                    unnamed.push(at);
                }
                refused += 1;
                println!(
                    "flip byte {} bit {}: refused{}",
                    at.0,
                    at.1,
                    if named {
                        ""
                    } else {
                        " without naming --recovery=skip-corrupt"
                    }
                );
            }
            Outcome::Started(server, _) => {
                let found = entries(&server);
                for (key, value) in &found {
                    assert_eq!(expected.get(key), Some(value), "an invented entry");
                }
                println!(
                    "flip byte {} bit {}: started with {} of {} entries",
                    at.0,
                    at.1,
                    found.len(),
                    expected.len()
                );
                if found.len() == expected.len() {
                    whole += 1;
                } else {
                    silent.push((at, found.len()));
                }
            }
        }
    }
    println!(
        "figure: one bit flipped after kill -9 at {FLIPS} offsets over the {} bytes of db: \
         {refused} refused, {whole} started with all {ENTRIES} entries, {} started with fewer \
         and no error {silent:?}",
        db.len(),
        silent.len()
    );
    assert!(
        silent.is_empty(),
        "strict recovery started without acknowledged entries: (offset, bit), entries back: {silent:?}"
    );
    assert!(
        refused > 0,
        "no flip was detected at all: the test flipped nothing sled reads"
    );
    assert!(
        unnamed.is_empty(),
        "refusals that do not name --recovery=skip-corrupt: {unnamed:?}"
    );
}

/// Whether the server printed `needle` on stderr, and what it printed. The line is
/// logged before `/healthz` turns 200, but the harness reads the pipe on its own
/// thread: wait for it (up to 10 s) rather than race it.
fn printed(server: &Server, needle: &str) -> (bool, String) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let stderr = server.stderr_so_far();
        if stderr.contains(needle) || std::time::Instant::now() >= deadline {
            return (stderr.contains(needle), stderr);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn flipped_bit_after_crash_is_reported_loudly_with_skip_corrupt() {
    let (_temp, pristine, expected) = crashed();
    let db = std::fs::read(pristine.join("db")).unwrap();
    let mut lossy = 0;
    for (n, at) in flip_points(&db, 23).into_iter().enumerate() {
        let (_copy, data) = flipped_copy(&pristine, at, &format!("skip-{n}"));
        let Outcome::Started(server, _) = start(&data, &["--recovery=skip-corrupt"]) else {
            panic!("skip-corrupt refused to start after a flip at {at:?}");
        };
        let found = entries(&server);
        for (key, value) in &found {
            assert_eq!(expected.get(key), Some(value), "an invented entry");
        }
        let lost_records = server.metric("rollcall_replay_lost_records");
        let (reported, stderr) = printed(&server, "acknowledged log writes were lost");
        println!(
            "flip byte {} bit {}: started with {} of {ENTRIES} entries; lost records metric {lost_records}; reported on stderr: {reported}",
            at.0,
            at.1,
            found.len(),
        );
        if found.len() < expected.len() {
            lossy += 1;
            assert!(
                reported && lost_records > 0.0,
                "entries were dropped without a loud report (metric {lost_records}):\n{stderr}"
            );
            // A restart after the report starts quietly: the loss was reported once.
            drop(server);
            let Outcome::Started(again, _) = start(&data, &["--recovery=skip-corrupt"]) else {
                panic!("the second start refused");
            };
            assert_eq!(entries(&again).len(), found.len());
            let again_lost = again.metric("rollcall_replay_lost_records");
            assert!(again_lost < 0.5, "reported again: {again_lost}");
        }
    }
    println!(
        "figure: --recovery=skip-corrupt, one bit flipped after kill -9 at {FLIPS} offsets: \
         {lossy} started with fewer entries, every one of them reported (error log line and \
         rollcall_replay_lost_records > 0), then restarted quietly"
    );
    assert!(
        lossy > 0,
        "no flip lost anything: the test flipped nothing sled reads"
    );
}
