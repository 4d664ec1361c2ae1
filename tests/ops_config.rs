//! Running it in production: the config file and its precedence (flags > env > file >
//! defaults), host names in `--listen`, user errors without backtraces, JSON and
//! plain-text logs, and `/metrics` with help lines in a stable order.

#[path = "ops_support.rs"]
mod support;

use std::path::Path;

use serde_json::Value;
use support::{exit_of, serve, start};

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

/// Whether every non-empty line of `stderr` is a JSON log object.
fn all_json(stderr: &str) -> bool {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.is_empty()).collect();
    !lines.is_empty()
        && lines.iter().all(|line| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|v| v["level"].is_string() && v["message"].is_string())
        })
}

/// Runs a server with `extra` env and flags, with a config file holding `file`;
/// returns its stderr once stopped.
fn stderr_of(file: &str, env: &[(&str, &str)], flags: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(dir.path(), "rollcall.toml", file);
    let mut command = serve();
    command
        .arg("--config")
        .arg(&config)
        .args(["--data", dir.path().join("data").to_str().expect("utf-8")])
        .envs(env.iter().copied())
        .args(flags);
    start(command).stop()
}

#[test]
fn precedence_is_flags_then_env_then_file_then_defaults() {
    let listen = "listen = \"127.0.0.1:0\"\n";
    // Default: text.
    let default = stderr_of(listen, &[], &[]);
    assert!(!all_json(&default), "default is text:\n{default}");
    assert!(default.contains("INFO"), "{default}");
    // The file beats the default.
    let file = format!("{listen}log-format = \"json\"\n");
    let from_file = stderr_of(&file, &[], &[]);
    assert!(all_json(&from_file), "the file's json:\n{from_file}");
    // The environment beats the file.
    let from_env = stderr_of(&file, &[("ROLLCALL_LOG_FORMAT", "text")], &[]);
    assert!(!all_json(&from_env), "the env's text:\n{from_env}");
    // A flag beats the environment.
    let from_flag = stderr_of(
        &file,
        &[("ROLLCALL_LOG_FORMAT", "text")],
        &["--log-format", "json"],
    );
    assert!(all_json(&from_flag), "the flag's json:\n{from_flag}");
    // Also for a setting the user did not touch in the env: the file's log filter
    // applies while the env changes the format.
    let quiet = stderr_of(
        &format!("{file}log = \"warn\"\n"),
        &[("ROLLCALL_LOG_FORMAT", "text")],
        &[],
    );
    assert!(!quiet.contains("INFO"), "the file's filter: {quiet}");
}

#[test]
fn the_config_file_is_found_through_rollcall_config_and_sets_lists() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        "rollcall.toml",
        "listen = \"127.0.0.1:0\"\nallowed-origin = [\"https://app.example.com\", \"https://admin.example.com\"]\n",
    );
    let mut command = serve();
    command
        .env("ROLLCALL_CONFIG", &config)
        .args(["--data", dir.path().join("data").to_str().expect("utf-8")]);
    let server = start(command);
    let upgrade = |origin: &str| {
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Origin: {origin}\r\n\r\n",
            server.addr
        );
        let mut socket = std::net::TcpStream::connect(server.addr).expect("connect");
        std::io::Write::write_all(&mut socket, request.as_bytes()).expect("send");
        let mut head = [0_u8; 12];
        std::io::Read::read_exact(&mut socket, &mut head).expect("status line");
        String::from_utf8_lossy(&head[9..12]).into_owned()
    };
    assert_eq!(upgrade("https://app.example.com"), "101");
    assert_eq!(upgrade("https://admin.example.com"), "101");
    assert_eq!(upgrade("https://evil.example.com"), "403");
    server.stop();
}

#[test]
fn an_unknown_key_is_an_error_naming_the_key_and_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(
        dir.path(),
        "rollcall.toml",
        "listen = \"127.0.0.1:0\"\nmax_connections = 5\n",
    );
    let mut command = serve();
    command.arg("--config").arg(&config);
    let exit = exit_of(command);
    assert_eq!(exit.status.code(), Some(2), "{exit:?}");
    assert!(
        exit.stderr.contains(&format!(
            "unknown key `max_connections` in the config file {}",
            config.display()
        )),
        "{}",
        exit.stderr
    );
    assert!(exit.stderr.contains("max-connections"), "lists the keys");
    assert!(
        exit.stdout.is_empty(),
        "never said it listens: {}",
        exit.stdout
    );
}

#[test]
fn a_bad_value_or_bad_toml_names_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write(dir.path(), "rollcall.toml", "tick-ms = 5000\n");
    let mut command = serve();
    command.arg("--config").arg(&config);
    let exit = exit_of(command);
    assert_eq!(exit.status.code(), Some(2), "{exit:?}");
    assert!(
        exit.stderr
            .contains(&format!("in the config file {}", config.display()))
            && exit.stderr.contains("5000"),
        "{}",
        exit.stderr
    );

    let config = write(dir.path(), "broken.toml", "listen = \n");
    let mut command = serve();
    command.arg("--config").arg(&config);
    let exit = exit_of(command);
    assert_eq!(exit.status.code(), Some(2), "{exit:?}");
    assert!(
        exit.stderr.contains(&format!(
            "the config file {} is not valid TOML",
            config.display()
        )),
        "{}",
        exit.stderr
    );

    let missing = dir.path().join("missing.toml");
    let mut command = serve();
    command.arg("--config").arg(&missing);
    let exit = exit_of(command);
    assert_eq!(exit.status.code(), Some(2), "{exit:?}");
    assert!(
        exit.stderr.contains(&format!(
            "cannot read the config file {}",
            missing.display()
        )),
        "{}",
        exit.stderr
    );
}

#[test]
fn listen_accepts_a_host_name() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = serve();
    command.args([
        "--listen",
        "localhost:0",
        "--data",
        dir.path().join("data").to_str().expect("utf-8"),
    ]);
    let server = start(command);
    assert!(server.addr.ip().is_loopback(), "{}", server.addr);
    let (status, _) = rollcall_tests::http(server.addr, "GET", "/healthz", None).expect("GET");
    assert_eq!(status, 200);
    server.stop();

    let mut command = serve();
    command.args(["--listen", "7700"]);
    let exit = exit_of(command);
    assert_eq!(exit.status.code(), Some(1));
    assert!(
        exit.stderr.contains("expected HOST:PORT or IP:PORT"),
        "{}",
        exit.stderr
    );
}

#[test]
fn a_user_error_prints_one_line_and_no_backtrace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("no-such-secret");
    let mut command = serve();
    command
        .env("RUST_BACKTRACE", "1")
        .args(["--listen", "127.0.0.1:0", "--auth-secret-file"])
        .arg(&missing);
    let exit = exit_of(command);
    assert_eq!(exit.status.code(), Some(1), "{exit:?}");
    assert_eq!(
        exit.stderr.trim(),
        format!(
            "error: invalid configuration: cannot read the auth secret {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    assert!(exit.stdout.is_empty(), "never said it listens");
}

#[test]
fn json_logs_are_one_object_per_line_and_text_logs_have_no_colours_off_a_terminal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut command = serve();
    command
        .args(["--listen", "127.0.0.1:0", "--log-format", "json", "--data"])
        .arg(&data);
    let stderr = start(command).stop();
    assert!(all_json(&stderr), "{stderr}");
    let ready = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["message"] == "ready")
        .expect("a ready line");
    assert_eq!(ready["level"], "INFO");
    assert_eq!(ready["target"], "rollcall_server::server");
    assert!(
        ready["live_entries"].is_u64(),
        "fields are top-level: {ready}"
    );
    assert!(ready["timestamp"].is_string());

    let mut command = serve();
    command
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(&data);
    let stderr = start(command).stop();
    assert!(
        stderr.contains("INFO") && stderr.contains("ready"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\u{1b}'),
        "no ANSI escapes in a pipe: {stderr:?}"
    );
}

#[test]
fn metrics_have_help_and_type_lines_in_a_stable_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = serve();
    command
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"));
    let server = start(command);
    // Some activity, so that labelled counters and the log's histograms exist.
    for (i, room) in ["a", "b", "c"].iter().enumerate() {
        let (status, body) = rollcall_tests::http(
            server.addr,
            "POST",
            &format!("/v1/rooms/{room}/heartbeat"),
            Some(&format!(r#"{{"data":{{"n":{i}}},"ttlMs":60000}}"#)),
        )
        .expect("POST");
        assert_eq!(status, 200, "{body}");
    }
    let _ = rollcall_tests::http(server.addr, "GET", "/v1/rooms/%ZZ", None);
    let scrape = || {
        let (status, body) =
            rollcall_tests::http(server.addr, "GET", "/metrics", None).expect("GET /metrics");
        assert_eq!(status, 200);
        body
    };
    let first = scrape();
    let names = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| l.split(' ').next().unwrap_or_default().to_owned())
            .collect()
    };
    let lines: Vec<&str> = first.lines().collect();
    let mut families = 0;
    for (i, line) in lines.iter().enumerate() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            families += 1;
            let name = rest.split(' ').next().unwrap_or_default();
            assert!(
                i > 0 && lines[i - 1].starts_with(&format!("# HELP {name} ")),
                "{name} has no HELP line:\n{first}"
            );
        }
    }
    assert!(families >= 20, "{first}");
    for sample in lines
        .iter()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let family = sample.split(['{', ' ']).next().unwrap_or_default();
        let base = family
            .strip_suffix("_bucket")
            .or_else(|| family.strip_suffix("_sum"))
            .or_else(|| family.strip_suffix("_count"))
            .filter(|base| {
                first.contains(&format!("# TYPE {base} histogram"))
                    || first.contains(&format!("# TYPE {base} summary"))
            })
            .unwrap_or(family);
        assert!(
            first.contains(&format!("# TYPE {base} ")),
            "{sample} has no TYPE line"
        );
    }
    for _ in 0..5 {
        assert_eq!(names(&scrape()), names(&first), "the order changed");
    }
    server.stop();
}
