//! The reverse-proxy example of the README ("Deploying"): Debian's nginx terminates
//! TLS with a self-signed certificate and forwards `wss://` to rollcall on loopback;
//! the origin check still tells the server's own pages, allowed origins and others
//! apart behind it.
//!
//! Needs `nginx`: under CI (`CI` set) a missing nginx fails the test, elsewhere the test
//! says loudly that it skipped.

#[path = "ops_support.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::SinkExt as _;
use rollcall_tests::require;
use support::{TestPki, free_port, serve, start, tls_connect};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// The proxy settings of the README, between the markers, with the ports filled in.
const LOCATION: &str = include_str!("../docs/nginx-rollcall.conf");

fn nginx() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

struct Nginx {
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts nginx in the foreground with its own prefix under `dir`, listening with TLS
/// on `port` and proxying to `upstream`.
fn start_nginx(
    binary: &Path,
    dir: &Path,
    port: u16,
    upstream: std::net::SocketAddr,
    cert: &Path,
    key: &Path,
) -> Nginx {
    let site = LOCATION
        .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port} ssl;"))
        .replace("127.0.0.1:7700", &upstream.to_string())
        .replace(
            "/etc/ssl/rollcall/fullchain.pem",
            &cert.display().to_string(),
        )
        .replace("/etc/ssl/rollcall/privkey.pem", &key.display().to_string());
    assert!(
        site.contains(&upstream.to_string()),
        "the example proxies to 127.0.0.1:7700"
    );
    let temp = dir.join("temp");
    std::fs::create_dir_all(&temp).expect("nginx temp dir");
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {dir}/nginx.pid;\n\
         error_log {dir}/error.log info;\nevents {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n\
         fastcgi_temp_path {t}/fastcgi;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n\
         {site}\n}}\n",
        dir = dir.display(),
        t = temp.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).expect("write nginx.conf");
    let child = Command::new(binary)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .spawn()
        .expect("start nginx");
    let mut nginx = Nginx { child };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = nginx.child.try_wait() {
            panic!(
                "nginx exited ({status}): {}",
                std::fs::read_to_string(dir.join("error.log")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "nginx did not listen in time");
        std::thread::sleep(Duration::from_millis(10));
    }
    nginx
}

/// Opens `wss://127.0.0.1:port/ws` through the proxy with this `Origin`; returns the
/// HTTP status of the upgrade, and the socket when it was accepted.
async fn open(
    pki: &TestPki,
    port: u16,
    origin: &str,
) -> (
    u16,
    Option<
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    >,
) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let stream = tls_connect(addr, "localhost", pki.client_config())
        .await
        .expect("TLS to nginx");
    let mut request = format!("wss://127.0.0.1:{port}/ws")
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("Origin", origin.parse().expect("header value"));
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, response)) => (response.status().as_u16(), Some(socket)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            (response.status().as_u16(), None)
        }
        Err(other) => panic!("upgrade through nginx: {other}"),
    }
}

#[tokio::test]
async fn wss_through_nginx_with_the_origin_check_right_behind_it() {
    let Some(binary) = nginx() else {
        require::cannot_run("nginx is not installed (apt-get install -y nginx)");
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new();
    let leaf = pki.leaf();
    let (cert, key) = leaf.write(dir.path());

    let mut command = serve();
    command
        .args([
            "--listen",
            "127.0.0.1:0",
            "--allowed-origin",
            "https://app.example.com",
            "--data",
        ])
        .arg(dir.path().join("data"));
    let server = start(command);
    let port = free_port();
    let nginx_dir = dir.path().join("nginx");
    std::fs::create_dir_all(&nginx_dir).expect("nginx dir");
    let _nginx = start_nginx(&binary, &nginx_dir, port, server.addr, &cert, &key);

    // The server's own pages, served through the proxy: same origin as the proxy's.
    let (status, socket) = open(&pki, port, &format!("https://127.0.0.1:{port}")).await;
    assert_eq!(status, 101, "own origin through the proxy");
    let mut socket = socket.expect("socket");
    socket
        .send(Message::Text(r#"{"type":"hello"}"#.into()))
        .await
        .expect("hello");
    let welcome = rollcall_tests::next_json(&mut socket).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");

    // An allowed origin, and one that is not.
    let (status, _) = open(&pki, port, "https://app.example.com").await;
    assert_eq!(status, 101, "allowed origin");
    let (status, _) = open(&pki, port, "https://evil.example.com").await;
    assert_eq!(status, 403, "a foreign origin is refused behind the proxy");
    // A page on the proxy's host under another port is another origin.
    let (status, _) = open(&pki, port, "https://127.0.0.1:1").await;
    assert_eq!(status, 403, "another port is another origin");
    drop(socket);
    server.stop();
}
