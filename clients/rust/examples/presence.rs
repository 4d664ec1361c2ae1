//! Two clients in one room: `cargo run -p rollcall-client --example presence`
//! (with `rollcall serve` running on 127.0.0.1:7700, or pass another URL).

use std::time::Duration;

use rollcall_client::Client;
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), rollcall_client::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:7700/ws".into());
    let alice = Client::connect(&url).await?;
    let bob = Client::connect(&url).await?;
    let alice_id = alice.client_id().unwrap_or_default();
    println!(
        "alice is client {alice_id}, bob is client {}",
        bob.client_id().unwrap_or_default()
    );

    let bob_room = bob.presence("pr:room-123");
    let alice_room = alice.presence("pr:room-123");
    alice_room.heartbeat(json!({"status": "online"}), Duration::from_secs(30));

    let entries = bob_room
        .wait_until(Duration::from_secs(5), |entries| {
            entries.contains_key(&alice_id)
        })
        .await?;
    println!("bob sees: {entries:?}");

    alice.close().await; // leaves pr:room-123
    bob_room
        .wait_until(Duration::from_secs(5), |entries| {
            !entries.contains_key(&alice_id)
        })
        .await?;
    println!("bob saw alice leave");
    bob.close().await;
    Ok(())
}
