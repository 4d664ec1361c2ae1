//! A real local HTTP receiver for webhooks (shared by `webhooks.rs` and
//! `cluster.rs`).

use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

pub const SECRET: &str = "webhook-test-secret-of-at-least-32-bytes";

/// One POST the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub head: String,
    pub body: String,
    /// The status it was answered with.
    pub status: u16,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| value.trim().to_owned())
        })
    }
}

/// A minimal HTTP/1.1 receiver: answers the first `failures` requests 500, then 200.
pub async fn receiver(failures: usize) -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut buffer = Vec::new();
            let mut chunk = [0u8; 4096];
            let split = loop {
                let Ok(n) = stream.read(&mut chunk).await else {
                    break None;
                };
                if n == 0 {
                    break None;
                }
                buffer.extend_from_slice(&chunk[..n]);
                if let Some(i) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
            };
            let Some(split) = split else { continue };
            let head = String::from_utf8_lossy(&buffer[..split]).into_owned();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buffer.len() < split + length {
                let Ok(n) = stream.read(&mut chunk).await else {
                    break;
                };
                if n == 0 {
                    break;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buffer[split..]).into_owned();
            let status = {
                let mut log = log.lock().unwrap();
                let status = if log.len() < failures { 500 } else { 200 };
                log.push(Received { head, body, status });
                status
            };
            let answer =
                format!("HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    });
    (url, received)
}

pub fn secret_file() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("webhook-secret");
    std::fs::write(&path, format!("{SECRET}\n")).unwrap();
    let path = path.display().to_string();
    (dir, path)
}

pub fn verifies(request: &Received) -> bool {
    let (Some(timestamp), Some(signature)) = (
        request.header("x-rollcall-timestamp"),
        request.header("x-rollcall-signature"),
    ) else {
        return false;
    };
    let Some(hex) = signature.strip_prefix("sha256=") else {
        return false;
    };
    let Ok(expected) = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.{}", request.body).as_bytes());
    mac.verify_slice(&expected).is_ok()
}

/// Every event of every accepted (2xx) batch, in order.
pub fn delivered(received: &Mutex<Vec<Received>>) -> Vec<Value> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.status == 200)
        .flat_map(|r| {
            let body: Value = serde_json::from_str(&r.body).expect("a JSON body");
            body["events"].as_array().cloned().unwrap_or_default()
        })
        .collect()
}
