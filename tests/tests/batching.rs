//! Batched frames (docs/PROTOCOL.md, "Connection"): a client that asks in `hello` gets the
//! frames the node has ready packed into one WebSocket message, never more than 64 KiB of them
//! unless a single frame is larger, and the delivery contract is unchanged. (The exact-resume
//! tests in large_rooms.rs run with and without batches; this file checks the size bound and
//! the user-log path.)

use anyhow::ensure;
use tests::{check_ledger, check_room_ledger, Client, Encoding, Node, NodeOptions};

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

/// Live entries of a large room reach a batching client the way the node commits them, many
/// to a message, and still within the bound: 16 sends in flight at a time make commits of
/// many 12 KB entries, whose frames together are larger than one batch may be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_runs_of_a_large_room_stay_within_the_bound_and_lose_nothing() -> anyhow::Result<()> {
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        let options =
            NodeOptions::default().env("LIMITS__FANOUT_MAX_MEMBERS", 2).env("LIMITS__FRAMES_PER_SECOND", 1_000_000);
        let node = Node::start(options).await?;
        let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
        let (mut walt, _) = Client::user(&node, Encoding::Json, "walt").await?;
        let room = alice.create_room("square").await?;
        walt.join(&room).await?;
        let mut bob = Client::connect_batched(&node, encoding).await?;
        let token = bob.register_and_login("bob", "password-of-bob").await?;
        bob.authenticate(&token, None).await?;
        // bob's join makes the room large: from here on its entries are the room log's.
        bob.join(&room).await?;
        while bob.room_ledger.is_empty() {
            bob.recv().await?;
        }
        let joined = bob.room_ledger[0].seq;
        let batched_before = bob.batched_messages;

        let big: Vec<_> =
            (0..48).map(|i| (room.clone(), format!("big-{i}"), format!("{i:04}{}", "x".repeat(12_000)))).collect();
        let small: Vec<_> = (0..64).map(|i| (room.clone(), format!("small-{i}"), format!("small {i}"))).collect();
        alice.say_many(&big, 16).await?;
        alice.say_many(&small, 16).await?;
        while bob.room_ledger.len() < 1 + big.len() + small.len() {
            bob.recv().await?;
        }

        check_room_ledger(&bob.room_ledger, &[(room.clone(), joined - 1)].into())?;
        let ids: Vec<&str> = bob.room_ledger[1..].iter().map(|entry| entry.id.as_str()).collect();
        let sent: Vec<&str> = big.iter().chain(&small).map(|(_, id, _)| id.as_str()).collect();
        ensure!(ids == sent, "{encoding:?}: bob got {} entries, not the {} sent in order", ids.len(), sent.len());
        ensure!(bob.batched_messages > batched_before, "{encoding:?}: live entries came one per message");
        ensure!(
            bob.largest_batch_bytes <= BATCH_MAX_BYTES,
            "{encoding:?}: a batch of {} bytes passes the {BATCH_MAX_BYTES}-byte bound",
            bob.largest_batch_bytes
        );
        println!(
            "{encoding:?}: {} live entries in order; {} batched messages, the largest {} bytes",
            ids.len(),
            bob.batched_messages - batched_before,
            bob.largest_batch_bytes
        );
    }
    Ok(())
}
