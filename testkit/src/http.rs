//! Plain HTTP/1.1 written by hand: whole requests with `Connection: close`, and the
//! pieces (a head with any header lines, a body sent in part or not at all, a response
//! read within a time) for tests of what a well-behaved client never sends.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::wire;

/// A minimal HTTP/1.1 request (the server is ours; `Connection: close`); returns
/// status and body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> io::Result<(u16, String)> {
    http_with(addr, method, path, &[], body)
}

/// An HTTP/1.1 request with extra header lines (e.g. `Authorization`); returns
/// status and body.
pub fn http_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    push_headers(&mut request, headers);
    request.push_str(body);
    stream.write_all(request.as_bytes())?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    Ok(parse_response(&String::from_utf8_lossy(&response)))
}

/// `GET path` from `host:port` without blocking the runtime (the load generator's
/// scrapes); the body as text.
pub async fn get(host: &str, port: u16, path: &str) -> io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect((host, port)).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    Ok(parse_response(&String::from_utf8_lossy(&response)).1)
}

/// Status and body of a whole response (chunked framing removed).
pub fn parse_response(response: &str) -> (u16, String) {
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    // Bodies of our JSON answers are short and sent whole; strip chunked framing if any.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
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

/// Header lines, then the blank line that ends a head.
fn push_headers(request: &mut String, headers: &[(&str, &str)]) {
    for (name, value) in headers {
        request.push_str(name);
        request.push_str(": ");
        request.push_str(value);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
}

/// Opens a connection and writes a request head (`"POST /v1/..."`) with these header
/// lines, then `body` (all, some or none of the body the head announces).
pub fn send(addr: SocketAddr, head: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    let mut request = format!("{head} HTTP/1.1\r\nHost: {addr}\r\n");
    push_headers(&mut request, headers);
    stream
        .write_all(request.as_bytes())
        .expect("write the head");
    stream.write_all(body).expect("write the body");
    stream
}

/// Reads one response within `within`: status and JSON body (`Null` if empty, a
/// string if not JSON).
pub fn response(stream: &mut TcpStream, within: Duration) -> io::Result<(u16, Value)> {
    stream.set_read_timeout(Some(within))?;
    let (status, head) = wire::read_head(stream)?;
    if status == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "closed without a response",
        ));
    }
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    let body = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()))
    };
    Ok((status, body))
}

/// A whole request with `Connection: close` and a `Content-Length`: status and JSON
/// body.
pub fn request(addr: SocketAddr, head: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let length = body.len().to_string();
    let mut all = vec![("Connection", "close"), ("Content-Length", length.as_str())];
    all.extend_from_slice(headers);
    let mut stream = send(addr, head, &all, body.as_bytes());
    response(&mut stream, Duration::from_secs(30)).expect("a response")
}

/// Percent-encodes `text` for a URL path segment or query value (unreserved
/// characters stay).
pub fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{parse_response, urlencode};

    #[test]
    fn chunked_bodies_are_joined() {
        let response =
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        assert_eq!(parse_response(response), (200, "abcde".to_owned()));
        let plain = "HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(parse_response(plain), (404, "{}".to_owned()));
    }

    #[test]
    fn urlencode_keeps_unreserved_characters() {
        assert_eq!(urlencode("pr:a b☃"), "pr%3Aa%20b%E2%98%83");
        assert_eq!(urlencode("A-z_0.~"), "A-z_0.~");
    }
}
