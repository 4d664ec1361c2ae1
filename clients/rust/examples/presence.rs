use std::time::Duration;

use rollcall_client::{Client, ErrorCode};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), rollcall_client::Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:7700/ws".into());
    two_clients(&url).await
}

/// Alice and Bob in one room.
pub async fn two_clients(url: &str) -> Result<(), rollcall_client::Error> {
    let alice = Client::connect(url).await?;
    let bob = Client::connect(url).await?;
    let alice_id = alice.client_id().unwrap_or_default();

    // Bob watches the room: its live entries, and what changes.
    let room = bob.presence("pr:room-123");
    room.synced().await?;
    let listener = room.on_change(|entries, diff| {
        println!(
            "{} here (joined {:?}, left {:?}, updated {:?})",
            entries.len(),
            diff.joined,
            diff.left,
            diff.updated
        );
    });

    // Alice is present: a heartbeat now, and again every 10 s until she leaves.
    let alice_room = alice.presence("pr:room-123");
    alice_room.track(json!({"status": "online"}), Duration::from_secs(30));
    let entries = room
        .wait_until(Duration::from_secs(5), |entries| {
            entries.contains_key(&alice_id)
        })
        .await?;
    println!("bob sees alice: {}", entries[&alice_id].data);

    // A refused request is a typed error.
    let refused = alice_room
        .heartbeat_acked(json!({"status": "away"}), Duration::from_secs(7_200))
        .await;
    assert!(matches!(&refused, Err(e) if e.code() == Some(ErrorCode::InvalidTtl)));

    alice.close().await; // leaves pr:room-123
    room.wait_until(Duration::from_secs(5), |entries| {
        !entries.contains_key(&alice_id)
    })
    .await?;
    println!("bob saw alice leave");
    drop(listener);
    bob.close().await;
    Ok(())
}
