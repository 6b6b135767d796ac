//! Batched frames (docs/PROTOCOL.md, "Connection"): a client that asks in `hello` gets the
//! frames the node has ready packed into one WebSocket message, never more than 64 KiB of them
//! unless a single frame is larger, and the delivery contract is unchanged. (The exact-resume
//! tests in large_rooms.rs run with and without batches; this file checks the size bound and
//! the user-log path.)

use anyhow::ensure;
use tests::{check_ledger, Client, Encoding, Node, NodeOptions};

/// What the node promises about a batched message's size (`BATCH_MAX_BYTES` in the session).
const BATCH_MAX_BYTES: usize = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_stay_within_their_bound_and_lose_nothing() -> anyhow::Result<()> {
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        let node = Node::start(NodeOptions::default().env("LIMITS__FRAMES_PER_SECOND", 1_000_000)).await?;
        let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
        let (mut bob, bob_token) = Client::user(&node, encoding, "bob").await?;
        let room = alice.create_room("long reads").await?;
        bob.join(&room).await?;
        bob.wait_ledger_len(1).await?;
        let from = bob.cursor;
        bob.close().await?;

        // 60 messages of 6 KB while bob is away (360 KB: a replay page of them cannot fit
        // in one message), then 60 small ones.
        let big: Vec<_> =
            (0..60).map(|i| (room.clone(), format!("big-{i}"), format!("{i:04}{}", "x".repeat(6_000)))).collect();
        let small: Vec<_> = (0..60).map(|i| (room.clone(), format!("small-{i}"), format!("small {i}"))).collect();
        alice.say_many(&big, 16).await?;
        alice.say_many(&small, 16).await?;

        let mut bob = Client::connect_batched(&node, encoding).await?;
        bob.authenticate(&bob_token, Some(from)).await?;
        bob.until_live().await?;
        bob.wait_ledger_len(120).await?;
        bob.ping().await?;
        check_ledger(&bob.ledger, from)?;
        let ids: Vec<&str> = bob.ledger.iter().map(|(_, entry)| entry.id.as_str()).collect();
        let sent: Vec<&str> = big.iter().chain(&small).map(|(_, id, _)| id.as_str()).collect();
        ensure!(ids == sent, "{encoding:?}: bob got {} entries, not the 120 sent in order", ids.len());
        ensure!(bob.batched_messages > 0, "{encoding:?}: a replay of 120 entries came one per message");
        ensure!(
            bob.largest_batch_bytes <= BATCH_MAX_BYTES,
            "{encoding:?}: a batch of {} bytes passes the {BATCH_MAX_BYTES}-byte bound",
            bob.largest_batch_bytes
        );
        println!(
            "{encoding:?}: 120 entries in order; {} batched messages, the largest {} bytes",
            bob.batched_messages, bob.largest_batch_bytes
        );
    }
    Ok(())
}
