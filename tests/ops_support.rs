//! Shared by the `ops_*` tests: runs `rollcall serve` with a clean environment and
//! captures what it prints, and makes test certificates.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// `rollcall serve` with nothing inherited from the test's environment (no stray
/// `ROLLCALL_*` or `RUST_BACKTRACE`), logging at `info`.
pub fn serve() -> Command {
    let mut command = Command::new(rollcall_tests::binary());
    command
        .env_clear()
        .arg("serve")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A running server whose stderr is being collected.
#[derive(Debug)]
pub struct Running {
    child: Child,
    /// `http` or `https`.
    pub scheme: String,
    /// Where it listens.
    pub addr: SocketAddr,
    stderr: Option<std::thread::JoinHandle<String>>,
    seen: std::sync::Arc<std::sync::Mutex<String>>,
}

/// Starts `command` and waits for its "listening" line (printed once it is ready).
pub fn start(mut command: Command) -> Running {
    let mut child = command.spawn().expect("start rollcall");
    let stderr = child.stderr.take().expect("piped stderr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let stderr = std::thread::spawn({
        let seen = seen.clone();
        move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut seen = seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                seen.push_str(&line);
                seen.push('\n');
            }
            seen.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("read stdout");
    let Some((scheme, addr)) = line
        .trim()
        .strip_prefix("rollcall listening on ")
        .and_then(|rest| rest.split_once("://"))
    else {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "no listening line (got {line:?}); stderr:\n{}",
            stderr.join().unwrap_or_default()
        );
    };
    Running {
        scheme: scheme.to_owned(),
        addr: addr.parse().expect("an address"),
        child,
        stderr: Some(stderr),
        seen,
    }
}

impl Running {
    /// Stops it with SIGTERM; returns everything it printed on stderr.
    pub fn stop(mut self) -> String {
        self.signal("TERM");
        let status = self.child.wait().expect("wait");
        assert!(status.success(), "rollcall exited with {status}");
        self.stderr
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// Sends a signal (`TERM`, `HUP`...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name}");
    }

    /// Waits until its stderr holds `text` (30 s at most).
    pub fn wait_for_stderr(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let seen = self
                .seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if seen.contains(text) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "stderr never said {text:?}:\n{seen}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a command that was expected to exit by itself came out.
#[derive(Debug)]
pub struct Exit {
    /// Its exit status.
    pub status: ExitStatus,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr.
    pub stderr: String,
}

/// Runs `command` to its end (60 s at most).
pub fn exit_of(mut command: Command) -> Exit {
    let mut child = command.spawn().expect("start rollcall");
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = out.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = err.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rollcall did not exit within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Exit {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

/// A test CA and a certificate for `localhost` and 127.0.0.1 signed by it.
#[derive(Debug)]
pub struct TestPki {
    /// The CA's certificate, PEM.
    pub ca_pem: String,
    /// The CA's certificate, DER.
    pub ca_der: Vec<u8>,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

/// A server certificate: PEM chain (leaf, then CA), PEM key, and the leaf's DER.
#[derive(Debug)]
pub struct Leaf {
    /// Leaf and CA certificates, PEM.
    pub chain_pem: String,
    /// The leaf's private key, PEM.
    pub key_pem: String,
    /// The leaf certificate, DER.
    pub der: Vec<u8>,
}

impl TestPki {
    /// A new CA.
    pub fn new() -> TestPki {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Rollcall test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).expect("CA certificate");
        TestPki {
            ca_pem: cert.pem(),
            ca_der: cert.der().to_vec(),
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// A server certificate for `localhost` and 127.0.0.1.
    pub fn leaf(&self) -> Leaf {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("leaf params");
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.ca_pem),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A rustls client config that trusts only this CA.
    pub fn client_config(&self) -> std::sync::Arc<tokio_rustls::rustls::ClientConfig> {
        let mut roots = tokio_rustls::rustls::RootCertStore::empty();
        roots
            .add(self.ca_der.clone().into())
            .expect("add the test CA");
        let provider = std::sync::Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = tokio_rustls::rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        std::sync::Arc::new(config)
    }
}

impl Leaf {
    /// Writes the chain and key as `cert.pem` and `key.pem` in `dir`.
    pub fn write(&self, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        std::fs::write(&cert, &self.chain_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }
}

/// A TLS connection to `addr` (server name `name`) trusting `config`'s roots.
pub async fn tls_connect(
    addr: SocketAddr,
    name: &str,
    config: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(name.to_owned())
        .map_err(std::io::Error::other)?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
