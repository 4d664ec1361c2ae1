//! Servers for the tests: in-process on a runtime thread of their own, or the real
//! `rollcall` binary as a child process. Both listen on a free port of 127.0.0.1 with a
//! fresh temporary data directory unless told otherwise, and stop on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{http, metrics, procfs};

/// The `rollcall` binary that [`Server::start`] runs: `$ROLLCALL_BIN`, or
/// `target/<profile>/rollcall` next to the test binary. Tests do not build it: a
/// missing one, or one older than the server's or engine's sources (a change not
/// rebuilt), is a panic naming the command that builds it.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("ROLLCALL_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test> -> target/<profile>/rollcall
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    let binary = profile_dir.join("rollcall");
    let build = format!(
        "cargo build -p rollcall-server --bin rollcall{} (scripts/test.sh does), or set \
         ROLLCALL_BIN",
        if profile_dir.ends_with("release") {
            " --release"
        } else {
            ""
        }
    );
    let Ok(built) = std::fs::metadata(&binary).and_then(|m| m.modified()) else {
        panic!("{} does not exist: build it with {build}", binary.display());
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest = ["server", "engine"]
        .iter()
        .filter_map(|krate| newest_change(&workspace.join(krate)))
        .max();
    if let Some((changed, file)) = newest
        && changed > built
    {
        panic!(
            "{} is older than {}: rebuild it with {build}",
            binary.display(),
            file.display()
        );
    }
    binary
}

/// The most recently modified file of a crate's `Cargo.toml` and `src/`, and when.
fn newest_change(krate: &Path) -> Option<(std::time::SystemTime, PathBuf)> {
    fn walk(dir: &Path, newest: &mut Option<(std::time::SystemTime, PathBuf)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, newest);
            } else if let Ok(modified) = entry.metadata().and_then(|m| m.modified())
                && newest.as_ref().is_none_or(|(at, _)| modified > *at)
            {
                *newest = Some((modified, path));
            }
        }
    }
    let mut newest = std::fs::metadata(krate.join("Cargo.toml"))
        .and_then(|m| m.modified())
        .ok()
        .map(|at| (at, krate.join("Cargo.toml")));
    walk(&krate.join("src"), &mut newest);
    newest
}

/// A running server: in-process or a child process.
#[derive(Debug)]
pub struct Server {
    backend: Backend,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory.
    pub data: PathBuf,
    /// The temporary directories it uses (its data, its flags' files).
    _temp: Vec<Arc<tempfile::TempDir>>,
    args: Vec<String>,
    /// What it has printed on stderr so far, when started with [`Launch::try_start`].
    stderr: Option<Arc<Mutex<String>>>,
}

#[derive(Debug)]
enum Backend {
    /// `rollcall_server::run` on a runtime thread of this process.
    InProcess(InProcess),
    /// The `rollcall` binary (`None` once killed or terminated).
    Process(Option<Child>),
}

#[derive(Debug)]
struct InProcess {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<rollcall_server::Result<()>>>,
}

impl InProcess {
    /// Asks the server to shut down and waits for it; its result.
    fn stop(&mut self) -> Option<rollcall_server::Result<()>> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let thread = self.thread.take()?;
        Some(thread.join().unwrap_or_else(|panic| {
            std::panic::resume_unwind(panic);
        }))
    }
}

/// Starts servers.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    args: Vec<String>,
    data: Option<PathBuf>,
    listen: Option<SocketAddr>,
    /// The directories of the files written by [`Launch::file_arg`].
    files: Vec<Arc<tempfile::TempDir>>,
}

impl Launch {
    /// Adds a `rollcall serve` flag.
    #[must_use]
    pub fn arg(mut self, arg: impl Into<String>) -> Launch {
        self.args.push(arg.into());
        self
    }

    /// Adds several `rollcall serve` flags.
    #[must_use]
    pub fn args<S: Into<String>>(mut self, args: impl IntoIterator<Item = S>) -> Launch {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Adds `flag` with the path of a temporary file holding `contents` (a secret, a
    /// key, a config file), kept for as long as the server.
    #[must_use]
    pub fn file_arg(mut self, flag: &str, contents: impl AsRef<[u8]>) -> Launch {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("file");
        std::fs::write(&path, contents).expect("write the flag's file");
        self.files.push(Arc::new(dir));
        self.arg(flag).arg(path.display().to_string())
    }

    /// Turns auth on with HS256 and [`crate::jwt::SECRET`] (sign tokens with
    /// [`crate::jwt::hs256`]).
    #[must_use]
    pub fn auth_secret(self) -> Launch {
        self.file_arg("--auth-secret-file", crate::jwt::SECRET)
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

    /// The temporary directories to keep (a fresh data directory unless one was
    /// given, the flags' files), the data directory and the listen address.
    fn place(&mut self) -> (Vec<Arc<tempfile::TempDir>>, PathBuf, String) {
        let mut temp = std::mem::take(&mut self.files);
        let data = match self.data.take() {
            Some(data) => data,
            None => {
                let dir = tempfile::tempdir().expect("temp dir");
                let data = dir.path().join("data");
                temp.push(Arc::new(dir));
                data
            }
        };
        let listen = self
            .listen
            .map_or_else(|| "127.0.0.1:0".to_string(), |a| a.to_string());
        (temp, data, listen)
    }

    /// Starts the server in this process (the flags parsed as `rollcall serve` parses
    /// them) and returns once it is ready (`/healthz` 200). Stopped on drop.
    ///
    /// What needs a process of its own panics on such a server: killing or restarting
    /// it, its pid, memory, CPU or descriptors, and `/metrics` (the metrics recorder is
    /// one per process, shared by every in-process server of a test binary). Use
    /// [`Launch::start`] for those.
    pub fn in_process(mut self) -> Server {
        let (temp, data, listen) = self.place();
        let mut argv: Vec<String> = vec!["rollcall".into(), "serve".into()];
        argv.extend(["--listen".into(), listen.clone(), "--data".into()]);
        argv.push(data.display().to_string());
        argv.extend(self.args.iter().cloned());
        let cli = rollcall_server::cli::parse_from(&argv)
            .unwrap_or_else(|error| panic!("rollcall serve {:?}: {error}", self.args));
        let rollcall_server::cli::Command::Serve(serve) = cli.command else {
            unreachable!("the command is `serve`")
        };
        let config = serve
            .config()
            .unwrap_or_else(|error| panic!("rollcall serve {:?}: {error}", self.args));
        let addr: SocketAddr = listen.parse().expect("the listen address");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("rollcall-server-{addr}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("rollcall-server")
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let listener = bind(addr)?;
                    let stop = async move {
                        let _ = stop_rx.await;
                    };
                    rollcall_server::run_notify(listener, config, stop, move |addr| {
                        let _ = ready_tx.send(addr);
                    })
                    .await
                })
            })
            .expect("spawn the server thread");
        let mut backend = InProcess {
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        let Ok(addr) = ready_rx.recv() else {
            let result = backend.stop();
            panic!("the in-process server stopped during startup: {result:?}");
        };
        Server {
            backend: Backend::InProcess(backend),
            addr,
            data,
            _temp: temp,
            args: self.args,
            stderr: None,
        }
    }

    /// Starts the real `rollcall` binary ([`binary`]) as a child process and waits
    /// until `/healthz` says it is ready. For tests that kill, restart or measure it.
    pub fn start(mut self) -> Server {
        let (temp, data, listen) = self.place();
        let (child, addr) = spawn(&listen, &data, &self.args);
        Server::process(child, addr, data, temp, self.args, None)
    }
}

/// A listener on `addr` (the default backlog: tests that storm the listener run the
/// binary, which sets its own).
fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::TcpListener::from_std(listener)
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

/// The address of the first line `rollcall serve` prints, if it is that line.
fn listening_on(line: &str) -> Option<SocketAddr> {
    line.trim()
        .strip_prefix("rollcall listening on http://")?
        .parse()
        .ok()
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
    let addr = listening_on(&line).unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((200, _)) = http::http(addr, "GET", "/healthz", None) {
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
    fn process(
        child: Child,
        addr: SocketAddr,
        data: PathBuf,
        temp: Vec<Arc<tempfile::TempDir>>,
        args: Vec<String>,
        stderr: Option<Arc<Mutex<String>>>,
    ) -> Server {
        Server {
            backend: Backend::Process(Some(child)),
            addr,
            data,
            _temp: temp,
            args,
            stderr,
        }
    }

    /// An in-process server with default flags (see [`Launch::in_process`]).
    pub fn in_process() -> Server {
        Launch::default().in_process()
    }

    /// A `rollcall` child process with default flags (see [`Launch::start`]).
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

    /// Whether the server runs in this process.
    pub fn is_in_process(&self) -> bool {
        matches!(self.backend, Backend::InProcess(_))
    }

    /// The child process; panics, saying what to do, for an in-process server.
    fn child(&self, what: &str) -> Option<&Child> {
        match &self.backend {
            Backend::Process(child) => child.as_ref(),
            Backend::InProcess(_) => panic!(
                "{what} needs a server process: start this server with Server::start() or \
                 Launch::start() instead of in_process()"
            ),
        }
    }

    fn child_mut(&mut self, what: &str) -> &mut Option<Child> {
        match &mut self.backend {
            Backend::Process(child) => child,
            Backend::InProcess(_) => panic!(
                "{what} needs a server process: start this server with Server::start() or \
                 Launch::start() instead of in_process()"
            ),
        }
    }

    /// The process id (0 once killed).
    pub fn pid(&self) -> u32 {
        self.child("pid()").map_or(0, Child::id)
    }

    /// Sends an HTTP request; returns status and body.
    pub fn http(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http::http(self.addr, method, path, body).expect("HTTP request")
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
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
        })
    }

    /// Kills the process with SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child_mut("kill9()").take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child_mut("terminate()").take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success());
        child.wait().expect("wait")
    }

    /// Starts the server again on the same address and data directory.
    pub fn restart(&mut self) {
        let (addr, data, args) = (self.addr, self.data.clone(), self.args.clone());
        let child = self.child_mut("restart()");
        assert!(child.is_none(), "stop the server first");
        let (started, new_addr) = spawn(&addr.to_string(), &data, &args);
        assert_eq!(new_addr, addr);
        *child = Some(started);
    }

    /// Kills the server (SIGKILL) and starts it again on the same address and data
    /// directory; returns how long the new process took to become ready (spawn to
    /// `/healthz` 200, polled every 10 ms).
    pub fn kill9_and_restart(&mut self) -> Duration {
        self.kill9();
        let started = Instant::now();
        self.restart();
        started.elapsed()
    }

    /// Resident set size of the server, in KiB.
    pub fn rss_kib(&self) -> u64 {
        procfs::rss_kib(self.pid_for("rss_kib()"))
    }

    /// Peak resident set size of the server so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        procfs::peak_rss_kib(self.pid_for("peak_rss_kib()"))
    }

    /// Open file descriptors of the server (entries of `/proc/PID/fd`).
    pub fn fd_count(&self) -> usize {
        procfs::fd_count(self.pid_for("fd_count()"))
    }

    /// CPU time the server has used so far (user + system), from `/proc/PID/stat`.
    pub fn cpu_time(&self) -> Duration {
        procfs::cpu_time_of(self.pid_for("cpu_time()"))
    }

    fn pid_for(&self, what: &str) -> u32 {
        self.child(what).map_or(0, Child::id)
    }

    /// Whether the server is still running (not exited, not a zombie).
    pub fn is_running(&mut self) -> bool {
        match &mut self.backend {
            Backend::Process(child) => child
                .as_mut()
                .is_some_and(|child| matches!(child.try_wait(), Ok(None))),
            Backend::InProcess(server) => server
                .thread
                .as_ref()
                .is_some_and(|thread| !thread.is_finished()),
        }
    }

    /// A counter or gauge from `/metrics` (summing all label sets).
    pub fn metric(&self, name: &str) -> f64 {
        self.child("metric()");
        let (_, body) = self.http("GET", "/metrics", None);
        metrics::sum(&body, name)
    }

    /// Shuts an in-process server down (as SIGTERM would the binary) and returns how
    /// `run` ended.
    pub fn shut_down(mut self) -> rollcall_server::Result<()> {
        match &mut self.backend {
            Backend::InProcess(server) => server.stop().expect("running"),
            Backend::Process(_) => panic!("shut_down() is for in-process servers; use terminate()"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        match &mut self.backend {
            Backend::Process(child) => {
                if let Some(mut child) = child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
            Backend::InProcess(server) => {
                if let Some(Err(error)) = server.stop()
                    && !std::thread::panicking()
                {
                    panic!("the in-process server failed: {error}");
                }
            }
        }
    }
}

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
    /// Starts the binary and reports whether it became ready or exited (and with
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
        let printed = Arc::new(Mutex::new(String::new()));
        let stderr = std::thread::spawn({
            let printed = printed.clone();
            move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut printed = printed.lock().unwrap_or_else(PoisonError::into_inner);
                    printed.push_str(&line);
                    printed.push('\n');
                }
                let printed = printed.lock().unwrap_or_else(PoisonError::into_inner);
                printed.clone()
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let addr = listening_on(&line);
        let deadline = started + timeout;
        loop {
            if let Some(addr) = addr
                && let Ok((200, _)) = http::http(addr, "GET", "/healthz", None)
            {
                let server = Server::process(child, addr, data, temp, self.args, Some(printed));
                return Started::Ready(server, started.elapsed());
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

#[cfg(test)]
mod tests {
    use super::newest_change;

    #[test]
    fn the_newest_file_of_a_crate_is_found() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("src/deep")).expect("mkdir");
        std::fs::write(dir.path().join("Cargo.toml"), "").expect("write");
        std::fs::write(dir.path().join("src/lib.rs"), "").expect("write");
        let file = std::fs::File::create(dir.path().join("src/deep/new.rs")).expect("create");
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
        file.set_modified(later).expect("set mtime");
        let (at, path) = newest_change(dir.path()).expect("files");
        assert_eq!(path, dir.path().join("src/deep/new.rs"));
        assert_eq!(at, later);
    }
}
