//! Paced subscriptions end to end: `intervalMs` in `subscribe` gives the latest state
//! per client, at most once per interval; a bad `intervalMs` is answered.

use rollcall_tests::{Raw, Server};
use serde_json::Value;

/// Heartbeats the writer sends, one after the other's ack.
const BURST: u64 = 40;

#[tokio::test]
async fn a_paced_subscription_gets_the_latest_state_in_few_frames() {
    let server = Server::in_process();
    let (mut reader, _) = Raw::hello(&server.ws_url()).await;
    let (mut writer, welcome) = Raw::hello(&server.ws_url()).await;
    let writer_id = welcome["clientId"].as_u64().expect("clientId");

    // A long interval: the heartbeats land within one or two of them, so they must
    // arrive conflated.
    reader
        .send(r#"{"type":"subscribe","room":"paced","intervalMs":2000,"ref":1}"#)
        .await;
    assert_eq!(
        reader.until("snapshot").await["entries"],
        Value::Array(vec![])
    );
    assert_eq!(reader.until("ack").await["ref"], 1);

    // One at a time: each is applied (acked) before the next is sent, so without
    // pacing each would reach the subscriber in a frame of its own.
    for n in 1..=BURST {
        writer
            .send(&format!(
                r#"{{"type":"heartbeat","room":"paced","data":{{"n":{n}}},"ttlMs":60000,"ref":{n}}}"#
            ))
            .await;
        assert_eq!(writer.until("ack").await["ref"], n);
    }
    // The state arrives as `changes` (conflated) or, when the burst overran the room's
    // feed window, as a fresh snapshot: either way the latest value, in few frames.
    let mut frames = 0;
    let mut deliveries = 0;
    loop {
        let frame = reader.json().await;
        let entries = match frame["type"].as_str() {
            Some("changes") => frame["changes"].as_array().expect("changes").clone(),
            Some("snapshot") => frame["entries"].as_array().expect("entries").clone(),
            _ => continue,
        };
        frames += 1;
        deliveries += entries.len();
        let latest = entries
            .iter()
            .filter(|e| e["clientId"] == writer_id)
            .filter_map(|e| e["data"]["n"].as_u64())
            .collect::<Vec<_>>();
        assert!(
            latest.len() <= 1,
            "one change per client per frame: {frame}"
        );
        if latest.first() == Some(&BURST) {
            break;
        }
    }
    println!(
        "figure: {BURST} heartbeats reached a 2 s paced subscriber in {frames} frames, \
         {deliveries} changes"
    );
    assert!(
        frames <= 3,
        "{frames} frames for a burst within one interval"
    );
    assert!(deliveries <= 3, "{deliveries} changes delivered");
}

#[tokio::test]
async fn a_bad_interval_is_answered() {
    let server = Server::in_process();
    let (mut raw, _) = Raw::hello(&server.ws_url()).await;
    for bad in ["-1", "2.5", "\"50\"", "60001"] {
        raw.send(&format!(
            r#"{{"type":"subscribe","room":"r","intervalMs":{bad},"ref":9}}"#
        ))
        .await;
        let error = raw.until("error").await;
        assert_eq!(error["code"], "bad_request", "{bad}: {error}");
        assert_eq!(error["ref"], 9);
    }
    // A valid one still works on the same connection.
    raw.send(r#"{"type":"subscribe","room":"r","intervalMs":100,"ref":10}"#)
        .await;
    assert_eq!(raw.until("snapshot").await["room"], "r");
    assert_eq!(raw.until("ack").await["ref"], 10);
}
