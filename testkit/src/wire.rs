//! WebSocket frames written by hand on a plain TCP stream, for the tests that must
//! send what no well-behaved client library would (huge frames, endless fragments),
//! and the frame layout the load generator reads and writes on its own sockets.

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

/// Binary frame opcode.
pub const BINARY: u8 = 0x2;

/// An HTTP/1.1 WebSocket upgrade request for `/ws` with extra header lines.
pub fn upgrade_request(addr: SocketAddr, extra: &[(&str, &str)]) -> String {
    upgrade_request_for(&addr.to_string(), "/ws", extra)
}

/// An HTTP/1.1 WebSocket upgrade request for `path` on `host` with extra header lines.
pub fn upgrade_request_for(host: &str, path: &str, extra: &[(&str, &str)]) -> String {
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
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
    let mut out = Vec::with_capacity(14);
    put_header(&mut out, opcode, fin, len);
    out
}

/// Appends the header of a client frame to `out` (see [`header`]).
pub fn put_header(out: &mut Vec<u8>, opcode: u8, fin: bool, len: u64) {
    out.push(if fin { 0x80 } else { 0 } | opcode);
    // The mask bit (0x80) is set on every length form: clients must mask.
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
}

/// Where a (server, unmasked) frame at the start of `buf` stands: its opcode, the
/// length of its header and of its payload; `None` until the whole header is there.
pub fn parse_header(buf: &[u8]) -> Option<(u8, usize, u64)> {
    let (&first, &second) = (buf.first()?, buf.get(1)?);
    let opcode = first & 0x0f;
    match second & 0x7f {
        126 => {
            let len = buf.get(2..4)?;
            Some((opcode, 4, u64::from(u16::from_be_bytes([len[0], len[1]]))))
        }
        127 => {
            let mut len = [0u8; 8];
            len.copy_from_slice(buf.get(2..10)?);
            Some((opcode, 10, u64::from_be_bytes(len)))
        }
        short => Some((opcode, 2, u64::from(short))),
    }
}

/// A whole client frame.
pub fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = header(opcode, fin, payload.len() as u64);
    out.extend_from_slice(payload);
    out
}

/// Reads one (unmasked) server frame: opcode and payload.
pub fn read_frame(stream: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut head = [0u8; 10];
    stream.read_exact(&mut head[..2])?;
    let extra = match head[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    stream.read_exact(&mut head[2..2 + extra])?;
    let (opcode, _, len) = parse_header(&head[..2 + extra])
        .ok_or_else(|| io::Error::other("incomplete frame header"))?;
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

#[cfg(test)]
mod tests {
    use super::{TEXT, frame, parse_header, read_frame};

    #[test]
    fn headers_round_trip_at_every_length_form() {
        for len in [0usize, 125, 126, 65_535, 65_536, 70_000] {
            let payload = vec![b'x'; len];
            let sent = frame(TEXT, true, &payload);
            // A server frame is the same without the mask bit and key.
            let (opcode, header_len, parsed) = parse_header(&sent).expect("a whole header");
            assert_eq!((opcode, parsed), (TEXT, len as u64));
            let mut unmasked = sent[..header_len].to_vec();
            unmasked[1] &= 0x7f;
            unmasked.extend_from_slice(&payload);
            let (opcode, read) = read_frame(&mut unmasked.as_slice()).expect("a frame");
            assert_eq!((opcode, read.len()), (TEXT, len));
        }
        assert_eq!(parse_header(&[0x81]), None);
        assert_eq!(parse_header(&[0x81, 126, 1]), None);
    }
}
