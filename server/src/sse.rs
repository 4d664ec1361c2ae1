//! `GET /v1/rooms/{room}/events`: a room's presence as Server-Sent Events, for
//! backends and `curl`. The stream is a WebSocket subscription without the
//! WebSocket: a `snapshot` event, then `changes` events, with the same JSON as the
//! protocol's messages, from the same feed and outbox machinery (`fanout`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use rollcall_engine::UnixMs;
use tokio::sync::mpsc;

use crate::fanout::{Drained, Outbox};
use crate::hub::Hub;
use crate::shutdown::Shutdown;

/// Encoded events waiting for the client: a stream that cannot send for the slow
/// consumer timeout is ended; the outbox conflates meanwhile.
const QUEUE: usize = 16;

/// How a stream is served.
#[derive(Clone, Copy, Debug)]
pub struct StreamConfig {
    /// A comment line goes out after this long without an event.
    pub keep_alive: Duration,
    /// A client that takes nothing for this long is dropped.
    pub slow_consumer_timeout: Duration,
    /// Changes are read at most once per this interval (zero: at once).
    pub fanout_interval: Duration,
    /// When the client's token expires (auth on): the stream ends then.
    pub expires_at: Option<UnixMs>,
}

/// The response: the events of `room` until the client goes, the server shuts down,
/// the token expires or the client stops reading.
pub fn stream(
    hub: Arc<Hub>,
    room: Arc<str>,
    shutdown: Shutdown,
    config: StreamConfig,
    tasks: &tokio_util::task::TaskTracker,
) -> Response {
    let (tx, rx) = mpsc::channel::<Bytes>(QUEUE);
    tasks.spawn(feed(hub, room, shutdown, config, tx));
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), rx))
    });
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            // Proxies that buffer (nginx) pass events through at once.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// Why a stream ended.
enum End {
    Client,
    Shutdown,
    Expired,
    Slow,
}

async fn feed(
    hub: Arc<Hub>,
    room: Arc<str>,
    mut shutdown: Shutdown,
    config: StreamConfig,
    tx: mpsc::Sender<Bytes>,
) {
    let outbox = Arc::new(Outbox::new());
    let subscription = hub.subscribe(&room, &outbox, None, None, config.fanout_interval);
    hub.metrics().sse_streams.increment(1.0);
    let end = pump(&hub, &outbox, &mut shutdown, config, &tx).await;
    hub.unsubscribe(&outbox, &subscription);
    hub.metrics().sse_streams.decrement(1.0);
    match end {
        End::Shutdown => {
            let _ = tx.try_send(Bytes::from_static(
                b"event: close\ndata: {\"reason\":\"server shutting down\"}\n\n",
            ));
        }
        End::Expired => {
            let _ = tx.try_send(Bytes::from_static(
                b"event: close\ndata: {\"reason\":\"token expired\"}\n\n",
            ));
        }
        End::Client | End::Slow => {}
    }
}

async fn pump(
    hub: &Hub,
    outbox: &Outbox,
    shutdown: &mut Shutdown,
    config: StreamConfig,
    tx: &mpsc::Sender<Bytes>,
) -> End {
    let expiry = config.expires_at.map(|at| {
        let left = at.0.saturating_sub(UnixMs::now().0);
        tokio::time::Instant::now() + Duration::from_millis(left)
    });
    let expired = async {
        match expiry {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(expired);
    let mut drained = Drained::default();
    let mut paced_until: Option<tokio::time::Instant> = None;
    loop {
        let keep_alive = tokio::time::sleep(config.keep_alive);
        tokio::select! {
            () = shutdown.recv() => return End::Shutdown,
            () = &mut expired => return End::Expired,
            () = tx.closed() => return End::Client,
            () = outbox.ready() => {}
            () = sleep_until_opt(paced_until), if paced_until.is_some() => {}
            () = keep_alive => {
                if !send(tx, Bytes::from_static(b": keep-alive\n\n"), config).await {
                    return End::Slow;
                }
                continue;
            }
        }
        paced_until = None;
        let durable = *hub.durable().borrow();
        outbox.drain(durable, UnixMs::now(), Instant::now(), &mut drained);
        for subscription in drained.resync.drain(..) {
            // Fell behind the room's window: the current state replaces what was missed.
            hub.resync(&subscription);
        }
        if let Some(due) = outbox.next_due() {
            paced_until = Some(due.into());
        }
        drained.changes = 0;
        for frame in drained.frames.drain(..) {
            if !send(tx, encode(frame.as_str()), config).await {
                return if tx.is_closed() {
                    End::Client
                } else {
                    End::Slow
                };
            }
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

/// Queues an event; false when the client is gone or has taken nothing for the slow
/// consumer timeout.
async fn send(tx: &mpsc::Sender<Bytes>, event: Bytes, config: StreamConfig) -> bool {
    matches!(
        tokio::time::timeout(config.slow_consumer_timeout, tx.send(event)).await,
        Ok(Ok(()))
    )
}

/// `event: <type>` and the message as its `data` line (the JSON has no newline).
fn encode(message: &str) -> Bytes {
    let kind = if message.starts_with("{\"type\":\"snapshot\"") {
        "snapshot"
    } else if message.starts_with("{\"type\":\"changes\"") {
        "changes"
    } else if message.starts_with("{\"type\":\"broadcast\"") {
        "broadcast"
    } else {
        "message"
    };
    let mut out = String::with_capacity(message.len() + 32);
    out.push_str("event: ");
    out.push_str(kind);
    out.push_str("\ndata: ");
    out.push_str(message);
    out.push_str("\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn events_are_named_after_the_message_type() {
        let event = super::encode(r#"{"type":"changes","room":"r","changes":[]}"#);
        assert_eq!(
            &event[..],
            b"event: changes\ndata: {\"type\":\"changes\",\"room\":\"r\",\"changes\":[]}\n\n"
        );
        assert!(super::encode(r#"{"type":"snapshot"}"#).starts_with(b"event: snapshot\n"));
    }
}
