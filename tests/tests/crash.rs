//! Durable ack (docs/DESIGN.md §1.1): a message is acknowledged only after the store
//! committed it, so kill -9 right after the acks loses nothing. After a restart on the same data
//! directory every acked message is in its room's history with its acked sequence number and in
//! every member's log (resume from cursor 0), retries still answer `duplicate`, and sequence
//! numbers continue densely.

use std::collections::HashMap;

use anyhow::{bail, ensure};
use tests::{check_ledger, Client, ClientFrame, Encoding, EntryKind, Node, NodeOptions, ServerFrame};

#[tokio::test]
async fn kill9_after_acks_loses_nothing_json() -> anyhow::Result<()> {
    kill9_after_acks(Encoding::Json).await
}

#[tokio::test]
async fn kill9_after_acks_loses_nothing_messagepack() -> anyhow::Result<()> {
    kill9_after_acks(Encoding::MessagePack).await
}

/// A whole room's history, paged forwards.
async fn history(client: &mut Client, room: &str) -> anyhow::Result<Vec<tests::Entry>> {
    let mut all = Vec::new();
    loop {
        let req = client.next_req();
        let after = all.last().map_or(0, |e: &tests::Entry| e.seq);
        let frame = ClientFrame::History { req, room: room.into(), before: None, after: Some(after), limit: Some(100) };
        let ServerFrame::History { entries, more, .. } = client.request(frame).await? else {
            bail!("history of {room}")
        };
        all.extend(entries);
        if !more {
            return Ok(all);
        }
    }
}

async fn kill9_after_acks(encoding: Encoding) -> anyhow::Result<()> {
    let mut node = Node::start(NodeOptions::default().env("LIMITS__FRAMES_PER_SECOND", 1_000_000)).await?;
    let (mut alice, alice_token) = Client::user(&node, encoding, "alice").await?;
    let (mut bob, bob_token) = Client::user(&node, encoding, "bob").await?;
    let rooms = [alice.create_room("one").await?, alice.create_room("two").await?];
    for room in &rooms {
        bob.join(room).await?;
    }
    let messages: Vec<_> = (0..300).map(|i| (rooms[i % 2].clone(), format!("m-{i}"), format!("durable {i}"))).collect();
    // Pipelined: many appends are in flight when the last acks come back.
    let acks = alice.say_many(&messages, 64).await?;
    let mut acked: HashMap<(String, String), u64> = HashMap::new();
    for ((room, id, _), (seq, _)) in messages.iter().zip(&acks) {
        acked.insert((room.clone(), id.clone()), *seq);
    }
    // Also direct conversations.
    let req = alice.next_req();
    let ServerFrame::Room { room: direct, .. } =
        alice.request(ClientFrame::OpenDirect { req, user: "bob".into() }).await?
    else {
        bail!("open_direct")
    };
    let (seq, _) = alice.say(&direct.id, "dm-1", "just between us").await?;
    acked.insert((direct.id.clone(), "dm-1".into()), seq);

    node.kill9().await?;
    ensure!(!node.is_running(), "the node is gone");
    node.restart().await?;

    // Tokens survive (same signing key); resume from 0 replays each user's whole log.
    for (name, token) in [("alice", &alice_token), ("bob", &bob_token)] {
        let mut client = Client::connect(&node, encoding).await?;
        client.authenticate(token, Some(0)).await?;
        client.until_live().await?;
        check_ledger(&client.ledger, 0)?;
        for ((room, id), seq) in &acked {
            let found =
                client.ledger.iter().filter(|(_, e)| &e.room == room && &e.id == id && e.kind == EntryKind::Text);
            let seqs: Vec<u64> = found.map(|(_, e)| e.seq).collect();
            ensure!(seqs == [*seq], "{name}'s log holds {room}/{id} as {seqs:?}, acked as seq {seq}");
        }
    }

    // Every acked message is in its room's history, with its acked seq; seqs are dense.
    let mut alice = Client::connect(&node, encoding).await?;
    alice.authenticate(&alice_token, None).await?;
    for room in rooms.iter().chain([&direct.id]) {
        let entries = history(&mut alice, room).await?;
        ensure!(entries.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1), "{room}: dense seqs");
        for ((acked_room, id), seq) in acked.iter().filter(|((r, _), _)| r == room) {
            let entry = entries.iter().find(|e| &e.id == id && e.kind == EntryKind::Text);
            ensure!(entry.map(|e| e.seq) == Some(*seq), "{acked_room}/{id} (seq {seq}) after the crash: {entry:?}");
        }
    }

    // A retry of an acked message after the crash is still a duplicate with the original seq,
    // and new messages continue the room's sequence.
    let (room, id, _) = &messages[299];
    let (seq, duplicate) = alice.say(room, id, "retry after the crash").await?;
    ensure!(
        duplicate && Some(&seq) == acked.get(&(room.clone(), id.clone())),
        "retry: seq {seq}, duplicate {duplicate}"
    );
    let last = history(&mut alice, room).await?.last().map_or(0, |e| e.seq);
    let (next, duplicate) = alice.say(room, "after-crash", "new").await?;
    ensure!(!duplicate && next == last + 1, "the room continues at {}: got {next}", last + 1);
    Ok(())
}
