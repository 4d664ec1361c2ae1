//! A client's close frame is answered with the same code (RFC 6455, 5.5.1), before and
//! after `hello`, so the client sees a clean close rather than 1006.

use futures_util::SinkExt;
use rollcall_tests::{Raw, RawEvent, Server};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

async fn close_with(raw: &mut Raw, code: u16) {
    raw.socket
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: "bye".into(),
        })))
        .await
        .expect("send the close frame");
}

#[tokio::test]
async fn a_clients_close_frame_is_answered_with_its_code() {
    let server = Server::start();
    for code in [1000, 1001, 4100] {
        let (mut raw, _) = Raw::hello(&server.ws_url()).await;
        raw.send(r#"{"type":"subscribe","room":"pr:close","ref":1}"#)
            .await;
        raw.send(r#"{"type":"heartbeat","room":"pr:close","data":1,"ttlMs":30000,"ref":2}"#)
            .await;
        raw.until("ack").await;
        close_with(&mut raw, code).await;
        // Whatever was in flight may arrive first; then the answer.
        let answer = loop {
            match raw.next().await {
                RawEvent::Json(_) => {}
                other => break other,
            }
        };
        assert_eq!(answer, RawEvent::Closed(code), "close({code})");
    }
}

#[tokio::test]
async fn a_close_before_hello_is_answered_too() {
    let server = Server::start();
    let mut raw = Raw::connect(&server.ws_url()).await;
    close_with(&mut raw, 1000).await;
    assert_eq!(raw.next().await, RawEvent::Closed(1000));
}
