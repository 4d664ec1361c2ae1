//! Harness for end-to-end tests: starts the real `rollcall` binary on a free port with
//! a temporary data directory, and speaks to it over HTTP and raw WebSockets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// The `rollcall` binary: `$ROLLCALL_BIN`, or built next to this test binary.
pub fn binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Some(path) = std::env::var_os("ROLLCALL_BIN") {
                return PathBuf::from(path);
            }
            // target/<profile>/deps/<test> -> target/<profile>/rollcall
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("test binary lives in target/<profile>/deps");
            let release = profile_dir.ends_with("release");
            let mut build = Command::new(env!("CARGO"));
            build.args(["build", "-p", "rollcall-server", "--bin", "rollcall"]);
            if release {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build");
            assert!(status.success(), "building rollcall failed");
            profile_dir.join("rollcall")
        })
        .clone()
}

/// A running `rollcall serve` process.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data: PathBuf,
    _temp: Option<tempfile::TempDir>,
    args: Vec<String>,
}

/// Starts servers.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    args: Vec<String>,
    data: Option<PathBuf>,
    listen: Option<SocketAddr>,
}

impl Launch {
    /// Adds a `rollcall serve` flag.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Launch {
        self.args.push(arg.into());
        self
    }

    /// Uses this data directory instead of a fresh temporary one.
    #[must_use]
    pub fn data(mut self, path: &Path) -> Launch {
        self.data = Some(path.to_path_buf());
        self
    }

    /// Listens on this address instead of a free port.
    #[must_use]
    pub fn listen(mut self, addr: SocketAddr) -> Launch {
        self.listen = Some(addr);
        self
    }

    /// Starts the server and waits until `/healthz` says it is ready.
    pub fn start(self) -> Server {
        let (temp, data) = match self.data {
            Some(data) => (None, data),
            None => {
                let temp = tempfile::tempdir().expect("temp dir");
                let data = temp.path().join("data");
                (Some(temp), data)
            }
        };
        let listen = self
            .listen
            .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        let (child, addr) = spawn(&listen, &data, &self.args);
        Server {
            child: Some(child),
            addr,
            data,
            _temp: temp,
            args: self.args,
        }
    }
}

fn spawn(listen: &str, data: &Path, args: &[String]) -> (Child, SocketAddr) {
    let mut child = Command::new(binary())
        .arg("serve")
        .args(["--listen", listen])
        .arg("--data")
        .arg(data)
        .args(args)
        .env(
            "ROLLCALL_LOG",
            std::env::var("ROLLCALL_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start rollcall");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr: SocketAddr = line
        .trim()
        .strip_prefix("rollcall listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .expect("an address");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = http(addr, "GET", "/healthz", None) {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("rollcall exited during startup: {status}");
        }
        assert!(Instant::now() < deadline, "rollcall not ready in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    (child, addr)
}

impl Server {
    /// A server with default flags.
    pub fn start() -> Server {
        Launch::default().start()
    }

    /// A server with extra flags.
    pub fn launch() -> Launch {
        Launch::default()
    }

    /// The WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends an HTTP request; returns status and body.
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(self.addr, method, path, body).expect("HTTP request")
    }

    /// GET `path` and parse the JSON body.
    pub fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.http("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).expect("JSON body")
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        child.wait().expect("wait")
    }

    /// Starts the server again on the same address and data directory.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop the server first");
        let (child, addr) = spawn(&self.addr.to_string(), &self.data, &self.args);
        assert_eq!(addr, self.addr);
        self.child = Some(child);
    }

    /// Resident set size of the server, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// A counter or gauge from `/metrics` (summing all label sets).
    pub fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http("GET", "/metrics", None);
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| l.split(['{', ' ']).next() == Some(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A minimal HTTP/1.1 request (the server is ours; `Connection: close`).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    // Bodies of our JSON answers are short and sent whole; strip chunked framing if any.
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

type RawSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw protocol client, for testing exact messages and close codes.
#[derive(Debug)]
pub struct Raw {
    /// The socket.
    pub socket: RawSocket,
}

/// How a raw read ended.
#[derive(Debug, PartialEq)]
pub enum RawEvent {
    /// A text message, parsed.
    Json(Value),
    /// A close frame with this code.
    Closed(u16),
    /// The stream ended without a close frame.
    Ended,
}

impl Raw {
    /// Connects without saying hello.
    pub async fn connect(url: &str) -> Raw {
        let (socket, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .expect("connect");
        Raw { socket }
    }

    /// Connects and completes the handshake; returns the welcome.
    pub async fn hello(url: &str) -> (Raw, Value) {
        let mut raw = Raw::connect(url).await;
        raw.send(r#"{"type":"hello"}"#).await;
        let welcome = raw.json().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (raw, welcome)
    }

    /// Sends a text frame.
    pub async fn send(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.to_owned().into()))
            .await
            .expect("send");
    }

    /// The next message or close (10 s at most).
    pub async fn next(&mut self) -> RawEvent {
        loop {
            let next = tokio::time::timeout(Duration::from_secs(10), self.socket.next())
                .await
                .expect("a message within 10 s");
            match next {
                Some(Ok(Message::Text(text))) => {
                    return RawEvent::Json(serde_json::from_str(&text).expect("JSON"));
                }
                Some(Ok(Message::Close(frame))) => {
                    return RawEvent::Closed(frame.map_or(1005, |f| u16::from(f.code)));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return RawEvent::Ended,
            }
        }
    }

    /// The next message, which must be JSON text.
    pub async fn json(&mut self) -> Value {
        match self.next().await {
            RawEvent::Json(value) => value,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Reads until a message with this `type` (skipping others).
    pub async fn until(&mut self, kind: &str) -> Value {
        loop {
            let value = self.json().await;
            if value["type"] == kind {
                return value;
            }
        }
    }
}

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
