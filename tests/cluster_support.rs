//! A real `nats-server` for the cluster tests (shared by `cluster.rs` and
//! `cluster_auth.rs`).

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// A `nats-server` on a loopback port, stopped on drop.
pub struct Nats {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    /// Extra arguments (`--user`, `--auth`, `-c FILE`, …).
    args: Vec<String>,
}

/// `nats-server` from the PATH, or where Debian puts it.
fn nats_binary() -> Option<&'static str> {
    ["nats-server", "/usr/sbin/nats-server"]
        .into_iter()
        .find(|binary| {
            Command::new(binary)
                .arg("--version")
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

impl Nats {
    /// `None` when nats-server is not installed, said loudly (a failure under CI).
    pub fn start() -> Option<Nats> {
        Nats::start_with(&[])
    }

    /// [`Nats::start`] with extra arguments; `{port}` in them is replaced by the port.
    pub fn start_with(args: &[&str]) -> Option<Nats> {
        if !rollcall_tests::require::that(
            nats_binary().is_some(),
            "nats-server is not installed (apt-get install -y nats-server)",
        ) {
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let args = args
            .iter()
            .map(|a| a.replace("{port}", &port.to_string()))
            .collect();
        let mut nats = Nats {
            child: None,
            port,
            args,
        };
        nats.restart();
        Some(nats)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "stop it first");
        let child = Command::new(nats_binary().expect("nats-server"))
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            // A configuration it refuses (say, a JWT with a bad signature) ends it at once.
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "nats-server exited ({status}): it refused its arguments or configuration {:?}",
                    self.args
                );
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
