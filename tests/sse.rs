//! `GET /v1/rooms/{room}/events`: Server-Sent Events read with a plain HTTP client.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rollcall_tests::Server;
use rollcall_tests::jwt::{hs256, now_s};
use serde_json::{Value, json};

/// An open event stream.
struct Events {
    reader: BufReader<TcpStream>,
    /// The response head's status and lines.
    status: u16,
    head: String,
}

/// One thing read from the stream.
#[derive(Debug, PartialEq)]
enum Item {
    /// `event:` and the parsed `data:`.
    Event(String, Value),
    /// A `:` comment line.
    Comment(String),
    /// The server ended the response.
    End,
}

impl Events {
    fn open(addr: SocketAddr, path: &str, token: Option<&str>) -> Events {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut request =
            format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(token) = token {
            request = request + "Authorization: Bearer " + token + "\r\n";
        }
        request.push_str("\r\n");
        (&stream).write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("response head");
            if line == "\r\n" || line.is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        Events {
            reader,
            status,
            head,
        }
    }

    /// The rest of the body (for an error answer).
    fn body(mut self) -> Value {
        let mut body = String::new();
        std::io::Read::read_to_string(&mut self.reader, &mut body).unwrap();
        serde_json::from_str(&body).unwrap_or(Value::String(body))
    }

    /// The next event or comment (10 s at most).
    fn next(&mut self) -> Item {
        let mut event = None;
        loop {
            let mut line = String::new();
            let read = self.reader.read_line(&mut line).expect("read the stream");
            if read == 0 {
                return Item::End;
            }
            let line = line.trim_end_matches('\n');
            if let Some(comment) = line.strip_prefix(':') {
                return Item::Comment(comment.trim().to_owned());
            }
            if let Some(name) = line.strip_prefix("event: ") {
                event = Some(name.to_owned());
            } else if let Some(data) = line.strip_prefix("data: ") {
                let data = serde_json::from_str(data).expect("data is JSON");
                return Item::Event(event.take().unwrap_or_else(|| "message".into()), data);
            }
        }
    }

    /// The next event, skipping keep-alive comments.
    fn event(&mut self) -> (String, Value) {
        loop {
            match self.next() {
                Item::Event(name, data) => return (name, data),
                Item::Comment(_) => {}
                Item::End => panic!("the stream ended"),
            }
        }
    }
}

fn beat(server: &Server, room: &str, body: &str) -> u64 {
    let (status, answer) = server.http("POST", &format!("/v1/rooms/{room}/heartbeat"), Some(body));
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    answer["clientId"].as_u64().unwrap()
}

#[test]
fn a_snapshot_then_changes_then_keep_alives_and_a_close_on_shutdown() {
    let mut server = Server::launch()
        .arg("--ping-interval-secs")
        .arg("1")
        .start();
    let first = beat(&server, "sse%3Aa", r#"{"data":{"n":1},"ttlMs":30000}"#);

    let mut events = Events::open(server.addr, "/v1/rooms/sse%3Aa/events", None);
    assert_eq!(events.status, 200, "{}", events.head);
    let head = events.head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");

    let (name, snapshot) = events.event();
    assert_eq!(name, "snapshot");
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["room"], "sse:a");
    assert_eq!(snapshot["entries"][0]["clientId"], first);
    assert_eq!(snapshot["entries"][0]["data"], json!({"n": 1}));
    assert!(server.metric("rollcall_sse_streams") >= 1.0);

    let second = beat(&server, "sse%3Aa", r#"{"data":{"n":2},"ttlMs":30000}"#);
    let (name, changes) = events.event();
    assert_eq!(name, "changes");
    assert_eq!(changes["type"], "changes");
    assert_eq!(changes["changes"][0]["op"], "upsert");
    assert_eq!(changes["changes"][0]["clientId"], second);

    let (status, _) = server.http(
        "DELETE",
        &format!("/v1/rooms/sse%3Aa/entries/{first}"),
        None,
    );
    assert_eq!(status, 204);
    let (_, changes) = events.event();
    assert_eq!(
        changes["changes"][0],
        json!({"op": "leave", "clientId": first})
    );

    // Quiet: a keep-alive comment within the ping interval (1 s).
    assert_eq!(events.next(), Item::Comment("keep-alive".into()));

    // Shutdown ends the stream with a close event, then the response ends.
    let stopping = std::thread::spawn(move || server.terminate());
    assert_eq!(
        events.event(),
        (
            "close".to_owned(),
            json!({"reason": "server shutting down"})
        )
    );
    assert_eq!(events.next(), Item::End);
    assert!(stopping.join().unwrap().success());
}

#[test]
fn a_client_that_goes_away_ends_its_stream() {
    let server = Server::start();
    let mut events = Events::open(server.addr, "/v1/rooms/sse%3Ab/events", None);
    assert_eq!(events.event().0, "snapshot");
    assert!((server.metric("rollcall_sse_streams") - 1.0).abs() < f64::EPSILON);
    drop(events);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.metric("rollcall_sse_streams") > 0.0 {
        assert!(Instant::now() < deadline, "the stream outlived its client");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn events_are_authorized_as_rest_reads() {
    let server = Server::launch().auth_secret().start();
    let token = |exp_in: i64, read: &[&str]| {
        hs256(&json!({"sub": "u", "exp": now_s() + exp_in, "rooms": {"read": read, "write": []}}))
    };

    let refused = Events::open(server.addr, "/v1/rooms/sse%3Ac/events", None);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.body()["error"], "unauthorized");
    let reader = token(3_600, &["sse:*"]);
    let other = Events::open(server.addr, "/v1/rooms/other/events", Some(&reader));
    assert_eq!(other.status, 403);
    assert_eq!(other.body()["error"], "forbidden");
    let long_room = format!("/v1/rooms/{}/events", "r".repeat(300));
    let invalid = Events::open(server.addr, &long_room, Some(&reader));
    assert_eq!(invalid.status, 400);
    assert_eq!(invalid.body()["error"], "invalid_room");

    let mut events = Events::open(server.addr, "/v1/rooms/sse%3Ac/events", Some(&reader));
    assert_eq!(events.status, 200, "{}", events.head);
    assert_eq!(events.event().0, "snapshot");

    // A stream ends when its token expires.
    let short = token(2, &["sse:*"]);
    let mut expiring = Events::open(server.addr, "/v1/rooms/sse%3Ac/events", Some(&short));
    assert_eq!(expiring.event().0, "snapshot");
    assert_eq!(
        expiring.event(),
        ("close".to_owned(), json!({"reason": "token expired"}))
    );
    assert_eq!(expiring.next(), Item::End);
}

#[test]
fn broadcasts_reach_event_streams() {
    let server = Server::start();
    let mut events = Events::open(server.addr, "/v1/rooms/sse%3Ad/events", None);
    assert_eq!(events.event().0, "snapshot");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sender = runtime.block_on(async {
        let (mut raw, welcome) = rollcall_tests::Raw::hello(&server.ws_url()).await;
        raw.send(r#"{"type":"broadcast","room":"sse:d","data":{"emoji":"👋"},"ref":1}"#)
            .await;
        assert_eq!(raw.until("ack").await["ref"], 1);
        welcome["clientId"].as_u64().unwrap()
    });
    let (name, message) = events.event();
    assert_eq!(name, "broadcast");
    assert_eq!(message["clientId"], sender);
    assert_eq!(message["data"], json!({"emoji": "👋"}));
}
