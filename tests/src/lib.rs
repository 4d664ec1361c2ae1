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
    /// What it has printed on stderr so far, when started with [`Launch::try_start`].
    stderr: Option<std::sync::Arc<std::sync::Mutex<String>>>,
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

    /// The data directory (a fresh temporary one unless given) and the listen address.
    fn place(&mut self) -> (Option<tempfile::TempDir>, PathBuf, String) {
        let (temp, data) = match self.data.take() {
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
        (temp, data, listen)
    }

    /// Starts the server and waits until `/healthz` says it is ready.
    pub fn start(mut self) -> Server {
        let (temp, data, listen) = self.place();
        let (child, addr) = spawn(&listen, &data, &self.args);
        Server {
            child: Some(child),
            addr,
            data,
            _temp: temp,
            args: self.args,
            stderr: None,
        }
    }
}

/// `rollcall serve` on `listen` and `data` with `args`, stdout piped (its first line
/// says where it listens), logging at `$ROLLCALL_LOG` (default `warn`).
fn serve_command(listen: &str, data: &Path, args: &[String]) -> Command {
    let mut command = Command::new(binary());
    command
        .arg("serve")
        .args(["--listen", listen])
        .arg("--data")
        .arg(data)
        .args(args)
        .env(
            "ROLLCALL_LOG",
            std::env::var("ROLLCALL_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped());
    command
}

fn spawn(listen: &str, data: &Path, args: &[String]) -> (Child, SocketAddr) {
    let mut child = serve_command(listen, data, args)
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

    /// What the server has printed on stderr so far (started with
    /// [`Launch::try_start`]; empty otherwise, where stderr is inherited).
    pub fn stderr_so_far(&self) -> String {
        self.stderr.as_ref().map_or_else(String::new, |printed| {
            printed
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        })
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
    http_with(addr, method, path, &[], body)
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

// ---- Helpers for the fault and security tests (tests/fault_*.rs, tests/auth.rs) ----

/// What a server that was expected to stop by itself left behind.
#[derive(Debug)]
pub struct Exited {
    /// Its exit status.
    pub status: ExitStatus,
    /// Everything it printed on stdout.
    pub stdout: String,
    /// Everything it printed on stderr.
    pub stderr: String,
    /// From spawn to exit.
    pub elapsed: Duration,
}

/// How a server started with [`Launch::try_start`] came out.
#[derive(Debug)]
pub enum Started {
    /// It became ready (`/healthz` 200) after this long.
    Ready(Server, Duration),
    /// It exited first.
    Exited(Exited),
}

impl Launch {
    /// Starts the server and reports whether it became ready or exited (and with
    /// what output), instead of panicking on an exit. Stderr is captured.
    pub fn try_start(mut self, timeout: Duration) -> Started {
        let (temp, data, listen) = self.place();
        let started = Instant::now();
        let mut child = serve_command(&listen, &data, &self.args)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start rollcall");
        // Drain stderr on a thread so a chatty server never blocks on a full pipe; keep
        // what it printed for `Server::stderr_so_far`.
        let pipe = child.stderr.take().expect("piped stderr");
        let printed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let stderr = std::thread::spawn({
            let printed = printed.clone();
            move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut printed = printed
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    printed.push_str(&line);
                    printed.push('\n');
                }
                let printed = printed
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                printed.clone()
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let addr = line
            .trim()
            .strip_prefix("rollcall listening on http://")
            .and_then(|a| a.parse::<SocketAddr>().ok());
        let deadline = started + timeout;
        loop {
            if let Some(addr) = addr {
                if let Ok((200, _)) = http(addr, "GET", "/healthz", None) {
                    // Keep draining stderr in the background; the thread ends with the process.
                    drop(stderr);
                    return Started::Ready(
                        Server {
                            child: Some(child),
                            addr,
                            data,
                            _temp: temp,
                            args: self.args,
                            stderr: Some(printed),
                        },
                        started.elapsed(),
                    );
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                let elapsed = started.elapsed();
                let mut rest = String::new();
                let _ = stdout.read_to_string(&mut rest);
                line.push_str(&rest);
                return Started::Exited(Exited {
                    status,
                    stdout: line,
                    stderr: stderr.join().unwrap_or_default(),
                    elapsed,
                });
            }
            assert!(
                Instant::now() < deadline,
                "rollcall neither became ready nor exited within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Server {
    /// Kills the server (SIGKILL) and starts it again on the same address and data
    /// directory; returns how long the new process took to become ready (spawn to
    /// `/healthz` 200, polled every 10 ms).
    pub fn kill9_and_restart(&mut self) -> Duration {
        self.kill9();
        let started = Instant::now();
        self.restart();
        started.elapsed()
    }

    /// Peak resident set size of the server so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmHWM:")
    }

    /// Open file descriptors of the server (entries of `/proc/PID/fd`).
    pub fn fd_count(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid())).map_or(0, Iterator::count)
    }

    /// CPU time the server has used so far (user + system), from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Duration {
        cpu_time_of(self.pid())
    }

    /// Whether the process is still running (not exited, not a zombie).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process, from `/proc/PID/stat` (clock ticks of 10 ms,
/// the Linux default `USER_HZ` of 100).
pub fn cpu_time_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
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

/// An environment variable parsed as a number, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Raw {
    /// Connects and sends this `hello` (e.g. with a token or a resume token); returns
    /// the first answer, which is a `welcome` or an `error`.
    pub async fn hello_with(url: &str, hello: &Value) -> (Raw, RawEvent) {
        let mut raw = Raw::connect(url).await;
        raw.send(&hello.to_string()).await;
        let first = raw.next().await;
        (raw, first)
    }

    /// Reads for `window` and returns every JSON message received (stops early if the
    /// connection closes).
    pub async fn drain_for(&mut self, window: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + window;
        let mut messages = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, self.socket.next()).await {
                Ok(Some(Ok(Message::Text(text)))) => {
                    messages.push(serde_json::from_str(&text).expect("JSON"));
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(_)) | None) | Err(_) => return messages,
            }
        }
    }
}

/// WebSocket frames written by hand on a plain TCP stream, for the tests that must
/// send what no well-behaved client library would (huge frames, endless fragments).
pub mod wire {
    use std::io::{self, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    /// Text frame opcode.
    pub const TEXT: u8 = 0x1;
    /// Continuation frame opcode.
    pub const CONTINUATION: u8 = 0x0;
    /// Close frame opcode.
    pub const CLOSE: u8 = 0x8;
    /// Ping frame opcode.
    pub const PING: u8 = 0x9;
    /// Pong frame opcode.
    pub const PONG: u8 = 0xA;

    /// An HTTP/1.1 WebSocket upgrade request for `/ws` with extra header lines.
    pub fn upgrade_request(addr: SocketAddr, extra: &[(&str, &str)]) -> String {
        let mut request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in extra {
            request.push_str(name);
            request.push_str(": ");
            request.push_str(value);
            request.push_str("\r\n");
        }
        request.push_str("\r\n");
        request
    }

    /// Reads an HTTP response head byte by byte (so no frame byte after it is
    /// consumed); returns the status code and the head.
    pub fn read_head(stream: &mut TcpStream) -> io::Result<(u16, String)> {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte)? == 0 {
                break;
            }
            head.push(byte[0]);
            if head.len() > 64 * 1024 {
                return Err(io::Error::other("response head too long"));
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Ok((status, head))
    }

    /// Sends an upgrade request with `extra` headers and returns the response status.
    pub fn upgrade_status(addr: SocketAddr, extra: &[(&str, &str)]) -> io::Result<u16> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(upgrade_request(addr, extra).as_bytes())?;
        Ok(read_head(&mut stream)?.0)
    }

    /// Opens a TCP connection and completes a real WebSocket upgrade (101).
    pub fn connect_upgraded(addr: SocketAddr) -> io::Result<TcpStream> {
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.write_all(upgrade_request(addr, &[]).as_bytes())?;
        let (status, head) = read_head(&mut stream)?;
        if status != 101 {
            return Err(io::Error::other(format!("upgrade refused: {head}")));
        }
        Ok(stream)
    }

    /// The header of a client frame (masked, with an all-zero masking key, so the
    /// payload that follows is sent as is).
    pub fn header(opcode: u8, fin: bool, len: u64) -> Vec<u8> {
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if let Ok(len) = u16::try_from(len) {
            out.push(0x80 | 0x7e);
            out.extend_from_slice(&len.to_be_bytes());
        } else {
            out.push(0x80 | 0x7f);
            out.extend_from_slice(&len.to_be_bytes());
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out
    }

    /// A whole client frame.
    pub fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut out = header(opcode, fin, payload.len() as u64);
        out.extend_from_slice(payload);
        out
    }

    /// Reads one (unmasked) server frame: opcode and payload.
    pub fn read_frame(stream: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
        let mut head = [0u8; 2];
        stream.read_exact(&mut head)?;
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => {
                let mut len = [0u8; 2];
                stream.read_exact(&mut len)?;
                u64::from(u16::from_be_bytes(len))
            }
            127 => {
                let mut len = [0u8; 8];
                stream.read_exact(&mut len)?;
                u64::from_be_bytes(len)
            }
            short => u64::from(short),
        };
        if len > 16 * 1024 * 1024 {
            return Err(io::Error::other("server frame too long"));
        }
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload)?;
        Ok((opcode, payload))
    }

    /// Reads server frames until a close frame and returns its code (1005 without
    /// one); `None` if the stream ended or failed first.
    pub fn read_close(stream: &mut impl Read) -> Option<u16> {
        loop {
            match read_frame(stream) {
                Ok((CLOSE, payload)) if payload.len() >= 2 => {
                    return Some(u16::from_be_bytes([payload[0], payload[1]]));
                }
                Ok((CLOSE, _)) => return Some(1005),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Upgrades, says hello in a hand-written frame and reads the `welcome`.
    pub fn hello(addr: SocketAddr) -> io::Result<TcpStream> {
        let mut stream = connect_upgraded(addr)?;
        stream.write_all(&frame(TEXT, true, br#"{"type":"hello"}"#))?;
        let (opcode, payload) = read_frame(&mut stream)?;
        if opcode != TEXT || !String::from_utf8_lossy(&payload).contains("welcome") {
            return Err(io::Error::other("no welcome"));
        }
        Ok(stream)
    }

    /// Writes `chunks` until the server closes (seen by `read`, running on a clone of
    /// the stream) or a write fails; returns the bytes written, what `read` returned
    /// and how long the writing took.
    pub fn write_until_closed<T: Send + 'static>(
        mut stream: TcpStream,
        chunks: impl Iterator<Item = Vec<u8>>,
        read: impl FnOnce(TcpStream) -> T + Send + 'static,
    ) -> (u64, T, Duration) {
        stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .expect("write timeout");
        let closed = Arc::new(AtomicBool::new(false));
        let reader = {
            let stream = stream.try_clone().expect("clone the stream");
            let closed = closed.clone();
            std::thread::spawn(move || {
                let result = read(stream);
                closed.store(true, Ordering::SeqCst);
                result
            })
        };
        let started = Instant::now();
        let mut written = 0u64;
        for chunk in chunks {
            if closed.load(Ordering::SeqCst) || stream.write_all(&chunk).is_err() {
                break;
            }
            written += chunk.len() as u64;
        }
        let elapsed = started.elapsed();
        let result = reader.join().expect("the reader thread");
        (written, result, elapsed)
    }
}

/// An HTTP/1.1 request with extra header lines (e.g. `Authorization`); returns
/// status and body.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(name);
        request.push_str(": ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
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

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExtListenOverflows` in `/proc/net/netstat`; system-wide).
pub fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}
