//! Every way a data directory can be unusable gets its own one-line message and the one
//! remedy that applies, checked here word for word: permissions (the server run as
//! `nobody` when the test runs as root), a missing directory and a missing parent, a
//! path that is a file, another program's directory, a directory in use, a damaged
//! sled configuration, random bytes over the log (lost writes; without the durability
//! marker, a log sled reads nothing from), a truncated log, and a read-only
//! file system (a tmpfs mounted read-only; skipped where mounting is not allowed). Only a
//! directory recognised as Rollcall's is ever moved aside. Also: after a loss accepted
//! with `--recovery=skip-corrupt`, client ids are never handed out twice.

#[path = "ops_support.rs"]
mod support;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rollcall_engine::{ClientId, Config, Engine, Heartbeat, Ttl, UnixMs};
use rollcall_tests::{Server, Started, moved_aside, noise, require};
use serde_json::Value;
use support::{Exit, exit_of, serve};

/// `rollcall serve` on a free port with `data` and `flags`, run to its exit.
fn refused(data: &Path, flags: &[&str]) -> Exit {
    let mut command = serve();
    command
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(flags);
    refused_by(command)
}

/// Runs `command`, which must fail with one `error:` line and nothing on stdout.
fn refused_by(command: Command) -> Exit {
    let exit = exit_of(command);
    assert!(!exit.status.success(), "started:\n{}", exit.stderr);
    assert!(
        exit.stdout.is_empty(),
        "printed on stdout: {:?}",
        exit.stdout
    );
    assert!(!exit.stderr.contains("panicked"), "{}", exit.stderr);
    exit
}

/// The `error:` line of a refusal; there must be exactly one, and no backtrace.
fn error_line(exit: &Exit) -> String {
    let lines: Vec<&str> = exit
        .stderr
        .lines()
        .filter(|line| line.starts_with("error:"))
        .collect();
    assert_eq!(lines.len(), 1, "one error line:\n{}", exit.stderr);
    assert!(!exit.stderr.contains("backtrace"), "{}", exit.stderr);
    lines[0].to_owned()
}

/// Names in a directory, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A heartbeat over REST; returns the client id the server gave it.
fn heartbeat(server: &Server, room: &str) -> u64 {
    let (status, body) = server.http(
        "POST",
        &format!("/v1/rooms/{room}/heartbeat"),
        Some(r#"{"data":1,"ttlMs":600000}"#),
    );
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("json");
    body["clientId"].as_u64().expect("a client id")
}

/// A data directory written by a server (three entries), cleanly shut down.
fn populated() -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("data");
    let mut server = Server::launch().data(&data).start();
    for _ in 0..3 {
        heartbeat(&server, "pr%3Aa");
    }
    assert!(server.terminate().success());
    (temp, data)
}

/// Overwrites `file` with noise of its own length.
fn scramble(file: &Path, seed: u64) {
    let len = std::fs::metadata(file).expect("stat").len() as usize;
    std::fs::write(file, noise(len, seed)).expect("overwrite");
}

/// Starts on `data` with `flags`; the server must come up.
fn starts(data: &Path, flags: &[&str]) -> Server {
    let mut launch = Server::launch().data(data);
    for flag in flags {
        launch = launch.arg(*flag);
    }
    match launch.try_start(Duration::from_secs(60)) {
        Started::Ready(server, _) => server,
        Started::Exited(exited) => panic!("did not start:\n{}", exited.stderr),
    }
}

#[test]
fn a_missing_directory_is_created_when_its_parent_exists() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("data");
    let server = starts(&data, &[]);
    heartbeat(&server, "pr%3Aa");
    drop(server);
    assert!(names(&data).contains(&"durable-tip".to_owned()));
}

#[test]
fn a_missing_parent_is_refused_and_nothing_is_created() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("typo").join("data");
    let exit = refused(&data, &[]);
    assert_eq!(
        error_line(&exit),
        format!(
            "error: cannot open the data directory {d}: neither it nor its parent {p} exists: \
             create it (mkdir -p {d}) or correct --data",
            d = data.display(),
            p = temp.path().join("typo").display()
        )
    );
    assert!(names(temp.path()).is_empty(), "created something");
}

#[test]
fn a_regular_file_is_refused_and_never_moved_aside() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("notes.txt");
    std::fs::write(&data, "the user's file").expect("write");
    for flags in [&[][..], &["--on-corrupt-data=move-aside"][..]] {
        let exit = refused(&data, flags);
        assert_eq!(
            error_line(&exit),
            format!(
                "error: cannot open the data directory {}: it is a file, not a directory: point \
                 --data at a directory (a missing one is created)",
                data.display()
            )
        );
    }
    assert_eq!(names(temp.path()), ["notes.txt"]);
    assert_eq!(
        std::fs::read_to_string(&data).expect("read"),
        "the user's file"
    );
}

#[test]
fn another_programs_directory_is_refused_untouched_and_never_moved_aside() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("photos");
    std::fs::create_dir(&data).expect("mkdir");
    for name in ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"] {
        std::fs::write(data.join(name), name).expect("write");
    }
    for flags in [&[][..], &["--on-corrupt-data=move-aside"][..]] {
        let exit = refused(&data, flags);
        assert_eq!(
            error_line(&exit),
            format!(
                "error: cannot open the data directory {}: it is not empty and holds no Rollcall \
                 data (it holds a.jpg, b.jpg, c.jpg and 2 more), so it may belong to another \
                 program and nothing in it was changed: point --data at a new or empty directory",
                data.display()
            )
        );
    }
    assert_eq!(names(temp.path()), ["photos"], "moved aside");
    assert_eq!(
        names(&data),
        ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"],
        "written to"
    );
}

#[test]
fn an_empty_mount_point_with_lost_and_found_is_used() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("mnt");
    std::fs::create_dir_all(data.join("lost+found")).expect("mkdir");
    let server = starts(&data, &[]);
    heartbeat(&server, "pr%3Aa");
}

#[test]
fn a_directory_in_use_names_the_other_process() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("data");
    let _first = starts(&data, &[]);
    let exit = refused(&data, &[]);
    assert_eq!(
        error_line(&exit),
        format!(
            "error: cannot open the data directory {}: another process has it open (another \
             rollcall?): stop that process or choose another --data",
            data.display()
        )
    );
}

/// Runs `rollcall serve` as `nobody` when the test runs as root (root ignores file
/// modes); as the test's own user otherwise. `None` where that is impossible.
fn as_unprivileged(data: &Path) -> Option<(Command, String)> {
    let root = std::fs::metadata("/proc/self")
        .is_ok_and(|meta| std::os::unix::fs::MetadataExt::uid(&meta) == 0);
    if !root {
        let user = std::env::var("USER").unwrap_or_default();
        let mut command = serve();
        command
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(data);
        return Some((command, user));
    }
    let setpriv = Command::new("setpriv").arg("--version").output();
    if !setpriv.is_ok_and(|out| out.status.success()) {
        require::cannot_run(
            "running as root without setpriv, so no permission problem can be made; install \
             util-linux (apt-get install -y util-linux)",
        );
        return None;
    }
    let mut command = Command::new("setpriv");
    command
        .env_clear()
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(rollcall_tests::binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    Some((command, "nobody".to_owned()))
}

/// A temporary directory anyone may enter (tempfile's are private to their owner).
fn open_tempdir() -> tempfile::TempDir {
    let temp = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(temp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    temp
}

#[test]
fn permission_problems_name_the_user_and_the_fix_not_corruption() {
    // A directory the server's user cannot write to.
    let temp = open_tempdir();
    let data = temp.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let Some((command, user)) = as_unprivileged(&data) else {
        return;
    };
    let exit = refused_by(command);
    let line = error_line(&exit);
    let owner = if user == "nobody" { "root (uid 0)" } else { "" };
    let runs_as = if user == "nobody" {
        "nobody (uid 65534)"
    } else {
        ""
    };
    if user == "nobody" {
        assert_eq!(
            line,
            format!(
                "error: cannot open the data directory {d}: permission denied (cannot create \
                 files in it): the server runs as {runs_as} and {d} belongs to {owner} with mode \
                 0555; give nobody read and write access to it (e.g. chown -R nobody {d}) or \
                 choose another --data",
                d = data.display()
            )
        );
    } else {
        assert!(
            line.contains("permission denied (cannot create files in it)"),
            "{line}"
        );
    }
    assert!(
        !line.contains("skip-corrupt") && !line.contains("move-aside"),
        "{line}"
    );
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    // A missing directory in a parent it cannot write to.
    let missing = data.join("sub");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    let Some((command, _)) = as_unprivileged(&missing) else {
        return;
    };
    let line = error_line(&refused_by(command));
    if user == "nobody" {
        assert_eq!(
            line,
            format!(
                "error: cannot open the data directory {m}: permission denied (cannot create \
                 it): the server runs as {runs_as} and {d} belongs to {owner} with mode 0555; \
                 give nobody read and write access to it (e.g. chown -R nobody {d}) or choose \
                 another --data",
                m = missing.display(),
                d = data.display()
            )
        );
    } else {
        assert!(
            line.contains("permission denied (cannot create it)"),
            "{line}"
        );
    }
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

#[test]
fn a_log_file_the_user_cannot_open_is_a_permission_problem() {
    let temp = open_tempdir();
    let (_populated, pristine) = populated();
    let data = temp.path().join("data");
    std::fs::rename(&pristine, &data).expect("move in");
    let Some((command, user)) = as_unprivileged(&data) else {
        return;
    };
    if user == "nobody" {
        // The directory is nobody's; the log file stays root's, private.
        let status = Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(&data)
            .status()
            .expect("chown");
        assert!(status.success());
        let status = Command::new("chown")
            .arg("root:root")
            .arg(data.join("db"))
            .status()
            .expect("chown");
        assert!(status.success());
    }
    std::fs::set_permissions(data.join("db"), std::fs::Permissions::from_mode(0o400))
        .expect("chmod");
    let line = error_line(&refused_by(command));
    let db = data.join("db");
    if user == "nobody" {
        assert_eq!(
            line,
            format!(
                "error: cannot open the data directory {d}: permission denied (cannot open {db} \
                 for reading and writing): the server runs as nobody (uid 65534) and {db} \
                 belongs to root (uid 0) with mode 0400; give nobody read and write access to \
                 it (e.g. chown -R nobody {db}) or choose another --data",
                d = data.display(),
                db = db.display()
            )
        );
    } else {
        assert!(line.contains("permission denied (cannot open"), "{line}");
    }
}

/// The refusal for damage sled cannot open, whatever `--recovery` says.
fn sled_cannot_open(data: &Path, file: &str, detail: &str) -> String {
    format!(
        "error: cannot open the data directory {}: sled cannot open its file {}: {detail}. \
         --recovery=skip-corrupt cannot help when sled cannot open its files; presence is soft \
         state: start with --on-corrupt-data=move-aside to move the directory aside and start \
         empty",
        data.display(),
        data.join(file).display()
    )
}

/// Moved aside with `--on-corrupt-data=move-aside`: the server starts empty and the
/// damaged files are kept.
fn moves_aside(data: &Path) {
    let server = starts(data, &["--on-corrupt-data=move-aside"]);
    let aside = moved_aside(data);
    assert_eq!(aside.len(), 1, "not moved aside");
    assert!(aside[0].join("db").exists());
    let rooms = server.get_json("/v1/rooms");
    assert_eq!(rooms["rooms"].as_array().map(Vec::len), Some(0), "{rooms}");
}

#[test]
fn a_damaged_sled_config_says_so() {
    let (_temp, data) = populated();
    scramble(&data.join("conf"), 7);
    let expected = sled_cannot_open(&data, "conf", "its checksum fails");
    for flags in [&[][..], &["--recovery=skip-corrupt"][..]] {
        let exit = refused(&data, flags);
        assert_eq!(error_line(&exit), expected);
        assert!(
            !exit.stderr.contains("0.29"),
            "sled's guess:\n{}",
            exit.stderr
        );
    }
    moves_aside(&data);
}

/// The refusal for lost writes, which `--recovery=skip-corrupt` accepts.
fn assert_lost_writes(line: &str, data: &Path) {
    assert!(
        line.starts_with(&format!(
            "error: cannot open the data directory {}: the log lost writes that had been made \
             durable: ",
            data.display()
        )),
        "{line}"
    );
    assert!(
        line.ends_with(
            "; sled stopped reading its log at a damaged message and discarded the rest \
             (corruption, not a write torn by a crash). Start with --recovery=skip-corrupt to \
             start without the damaged part (reported in the log and /metrics), or with \
             --on-corrupt-data=move-aside to move the directory aside and start empty"
        ),
        "{line}"
    );
}

#[test]
fn random_bytes_over_the_log_name_skip_corrupt_which_then_starts() {
    let (_temp, data) = populated();
    scramble(&data.join("db"), 42);
    let line = error_line(&refused(&data, &[]));
    assert_eq!(
        line,
        format!(
            "error: cannot open the data directory {}: the log lost writes that had been made \
             durable: 6 of 6 acknowledged writes are missing (4 log record(s) #0 to #3, each a \
             commit group of events); sled stopped reading its log at a damaged message and \
             discarded the rest (corruption, not a write torn by a crash). Start with \
             --recovery=skip-corrupt to start without the damaged part (reported in the log and \
             /metrics), or with --on-corrupt-data=move-aside to move the directory aside and \
             start empty",
            data.display()
        )
    );
    let server = starts(&data, &["--recovery=skip-corrupt"]);
    let lost = server.metric("rollcall_replay_lost_writes");
    assert!((lost - 6.0).abs() < 0.5, "lost writes metric {lost}");
    heartbeat(&server, "pr%3Aafter");
}

#[test]
fn random_bytes_over_a_log_without_the_marker_say_sled_read_nothing() {
    // A directory from before the durability marker: nothing tells what was lost.
    let (_temp, data) = populated();
    std::fs::remove_file(data.join("durable-tip")).expect("remove the marker");
    scramble(&data.join("db"), 42);
    let expected = format!(
        "error: cannot open the data directory {}: it holds Rollcall's files but sled read no \
         data from them (damaged or truncated). --recovery=skip-corrupt cannot help when sled \
         cannot read its files; presence is soft state: start with \
         --on-corrupt-data=move-aside to move the directory aside and start empty",
        data.display()
    );
    for flags in [&[][..], &["--recovery=skip-corrupt"][..]] {
        assert_eq!(error_line(&refused(&data, flags)), expected);
    }
    moves_aside(&data);
}

#[test]
fn lost_writes_name_skip_corrupt_which_then_starts() {
    let (_temp, data) = populated();
    std::fs::OpenOptions::new()
        .write(true)
        .open(data.join("db"))
        .expect("open")
        .set_len(0)
        .expect("truncate");
    assert_lost_writes(&error_line(&refused(&data, &[])), &data);
    let server = starts(&data, &["--recovery=skip-corrupt"]);
    assert!(server.metric("rollcall_replay_lost_writes") > 0.0);
}

#[test]
fn client_ids_are_not_handed_out_twice_after_their_reservation_was_lost() {
    // A log whose entries hold ids 1 to 3, without the write that reserved them (as
    // after a loss accepted with --recovery=skip-corrupt).
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("data");
    {
        let (mut engine, _) = Engine::open(Config::new(&data)).expect("open");
        engine
            .meta_put("resume_secret", &[7; 32])
            .expect("a secret");
        for id in 1..=3 {
            let (_, ticket) = engine.heartbeat(Heartbeat {
                room: "pr:a".into(),
                client: ClientId(id),
                user: None,
                data: (&b"1"[..]).into(),
                ttl: Ttl(600_000),
                at: UnixMs::now(),
            });
            assert!(engine.wait_durable(ticket, Duration::from_secs(30)));
        }
        engine.close().expect("close");
    }
    let server = starts(&data, &[]);
    let mut given = Vec::new();
    for _ in 0..3 {
        given.push(heartbeat(&server, "pr%3Ab"));
    }
    assert!(
        given.iter().all(|id| *id > 3),
        "ids of entries in the log handed out again: {given:?}"
    );
    let room = server.get_json("/v1/rooms/pr%3Aa");
    assert_eq!(room["entries"].as_array().map(Vec::len), Some(3), "{room}");
}

/// Unmounts on drop, even if an assertion fails.
struct Unmount<'a>(&'a Path);

impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0).status();
    }
}

#[test]
fn a_read_only_file_system_says_so() {
    let temp = tempfile::tempdir().expect("temp dir");
    let data = temp.path().join("mnt");
    std::fs::create_dir(&data).expect("mkdir");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"])
        .arg(&data)
        .output();
    match mounted {
        Ok(output) if output.status.success() => {}
        Ok(output) => {
            require::cannot_run(&format!(
                "needs to mount a read-only tmpfs (as root): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
            return;
        }
        Err(error) => {
            require::cannot_run(&format!("cannot run mount: {error}"));
            return;
        }
    }
    let _unmount = Unmount(&data);
    let exit = refused(&data, &["--on-corrupt-data=move-aside"]);
    assert_eq!(
        error_line(&exit),
        format!(
            "error: cannot open the data directory {}: it is on a read-only file system: mount \
             it read-write or choose another --data",
            data.display()
        )
    );
}
