//! TLS without a proxy: `wss://` and HTTPS with `--tls-cert`/`--tls-key`, a Rust
//! client trusting a test CA, the certificate reloaded on SIGHUP and when its files
//! change, and a clear error for a key that does not fit.

#[path = "ops_support.rs"]
mod support;

use std::time::Duration;

use futures_util::SinkExt as _;
use support::{TestPki, exit_of, serve, start, tls_connect};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::Message;

fn tls_server(
    dir: &std::path::Path,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> support::Running {
    let mut command = serve();
    command
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.join("data"))
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key);
    start(command)
}

/// The leaf certificate a new connection is served.
async fn served_cert(pki: &TestPki, addr: std::net::SocketAddr) -> Vec<u8> {
    let stream = tls_connect(addr, "localhost", pki.client_config())
        .await
        .expect("TLS handshake");
    let (_, connection) = stream.get_ref();
    connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .expect("a certificate")
        .to_vec()
}

#[tokio::test]
async fn a_rust_client_speaks_wss_with_the_test_ca() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = pki.leaf().write(dir.path());
    let server = tls_server(dir.path(), &cert, &key);
    assert_eq!(server.scheme, "https");
    let addr = server.addr;

    // wss:// with the test CA: hello, heartbeat, and our own entry in the snapshot.
    let stream = tls_connect(addr, "localhost", pki.client_config())
        .await
        .expect("TLS handshake");
    let url = format!("wss://localhost:{}/ws", addr.port());
    let (mut socket, response) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("WebSocket over TLS");
    assert_eq!(response.status(), 101);
    socket
        .send(Message::Text(r#"{"type":"hello"}"#.into()))
        .await
        .expect("send hello");
    let welcome = rollcall_tests::next_json(&mut socket).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    socket
        .send(Message::Text(r#"{"type":"subscribe","room":"tls"}"#.into()))
        .await
        .expect("subscribe");
    socket
        .send(Message::Text(
            r#"{"type":"heartbeat","room":"tls","data":{"over":"tls"},"ttlMs":30000}"#.into(),
        ))
        .await
        .expect("heartbeat");
    let mut seen = false;
    for _ in 0..10 {
        let message = rollcall_tests::next_json(&mut socket).await;
        if message.to_string().contains(r#""over":"tls""#) {
            seen = true;
            break;
        }
    }
    assert!(seen, "our entry came back over wss://");

    // HTTPS too.
    let mut stream = tls_connect(addr, "localhost", pki.client_config())
        .await
        .expect("TLS handshake");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await.expect("reply");
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");

    // A client that does not trust the CA is refused by its own TLS stack.
    let stranger = TestPki::new();
    let refused = tls_connect(addr, "localhost", stranger.client_config()).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| format!("{e:?}").contains("InvalidCertificate")),
        "{refused:?}"
    );
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = rollcall_tests::http(addr, "GET", "/healthz", None);
    assert!(!matches!(plain, Ok((200, _))), "{plain:?}");
    server.stop();
}

/// Waits until new connections are served the leaf `want` (20 s at most).
async fn until_served(pki: &TestPki, addr: std::net::SocketAddr, want: &[u8]) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if served_cert(pki, addr).await == want {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_certificate_is_reloaded_on_sighup_and_when_its_files_change() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let first = pki.leaf();
    let (cert, key) = first.write(dir.path());
    let mut server = tls_server(dir.path(), &cert, &key);
    assert_eq!(served_cert(&pki, server.addr).await, first.der);

    // Renewed files are picked up without a signal.
    let second = pki.leaf();
    second.write(dir.path());
    assert!(
        until_served(&pki, server.addr, &second.der).await,
        "the changed files were not picked up"
    );
    server.wait_for_stderr("the files changed");

    // A broken key is refused: the server keeps the last good certificate.
    std::fs::write(&key, "not a key").expect("break the key");
    server.signal("HUP");
    server.wait_for_stderr("kept the current TLS certificate");
    assert_eq!(served_cert(&pki, server.addr).await, second.der);

    // Fixed files and SIGHUP (what `systemctl reload` sends): read again.
    let third = pki.leaf();
    third.write(dir.path());
    server.signal("HUP");
    assert!(
        until_served(&pki, server.addr, &third.der).await,
        "SIGHUP did not reload"
    );
    assert!(server.is_running(), "SIGHUP must not stop the server");
    let stderr = server.stop();
    assert!(stderr.contains("SIGHUP"), "{stderr}");
}

#[test]
fn a_key_that_does_not_fit_the_certificate_is_a_clear_error() {
    let pki = TestPki::new();
    let dir = tempfile::tempdir().expect("temp dir");
    let (cert, key) = pki.leaf().write(dir.path());
    std::fs::write(&key, pki.leaf().key_pem).expect("another key");
    let mut command = serve();
    command
        .args(["--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key);
    let exit = exit_of(command);
    assert_eq!(exit.status.code(), Some(1), "{exit:?}");
    assert!(
        exit.stderr.contains(&format!(
            "the TLS key {} does not fit the certificate {}",
            key.display(),
            cert.display()
        )),
        "{}",
        exit.stderr
    );
    assert!(exit.stdout.is_empty());

    // --tls-cert without --tls-key is refused by the flag parser.
    let mut command = serve();
    command.arg("--tls-cert").arg(&cert);
    let exit = exit_of(command);
    assert_eq!(exit.status.code(), Some(2), "{exit:?}");
    assert!(exit.stderr.contains("--tls-key"), "{}", exit.stderr);
}
