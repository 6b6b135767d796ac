//! Idempotent send (docs/DESIGN.md §1.3): a client reuses its message id on every retry; the
//! retry gets the original ack back (`duplicate: true`) and never creates a second message —
//! on the same connection, back to back in one pipeline, and from a fresh connection after a
//! reconnect.

use anyhow::ensure;
use tests::{Client, ClientFrame, Encoding, Node, NodeOptions, ServerFrame};

#[tokio::test]
async fn duplicate_sends_json() -> anyhow::Result<()> {
    duplicate_sends(Encoding::Json).await
}

#[tokio::test]
async fn duplicate_sends_messagepack() -> anyhow::Result<()> {
    duplicate_sends(Encoding::MessagePack).await
}

/// Send and return the whole ack frame.
async fn send(client: &mut Client, room: &str, id: &str, body: &str) -> anyhow::Result<ServerFrame> {
    let req = client.next_req();
    let ack = client.request(ClientFrame::send(req, room, id, body)).await?;
    ensure!(matches!(ack, ServerFrame::Ack { .. }), "send {id}: {ack:?}");
    Ok(ack)
}

/// The ack without its request number, for comparing a retry's ack with the original.
fn ack_fields(ack: &ServerFrame) -> Option<(String, String, u64, u64, bool)> {
    match ack {
        ServerFrame::Ack { room, id, seq, ts, duplicate, .. } => {
            Some((room.clone(), id.clone(), *seq, *ts, *duplicate))
        }
        _ => None,
    }
}

async fn duplicate_sends(encoding: Encoding) -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let (mut alice, alice_token) = Client::user(&node, encoding, "alice").await?;
    let (mut bob, _) = Client::user(&node, encoding, "bob").await?;
    let room = alice.create_room("dups").await?;
    bob.join(&room).await?;

    // Same connection: the retry's ack is the original one, marked duplicate.
    let first = send(&mut alice, &room, "m-1", "once only").await?;
    let retry = send(&mut alice, &room, "m-1", "once only").await?;
    let (r, id, seq, ts, duplicate) = ack_fields(&first).expect("ack");
    ensure!(!duplicate, "the first send is not a duplicate");
    ensure!(
        ack_fields(&retry) == Some((r.clone(), id.clone(), seq, ts, true)),
        "retry ack {retry:?} vs original {first:?}"
    );

    // Back to back without waiting (a client that retries before the ack arrives).
    let messages: Vec<_> = (0..3).map(|_| (room.clone(), "m-2".to_string(), "pipelined".to_string())).collect();
    let acks = alice.say_many(&messages, 3).await?;
    ensure!(acks.iter().all(|(s, _)| *s == acks[0].0), "one seq for one id: {acks:?}");
    ensure!(acks.iter().filter(|(_, duplicate)| !duplicate).count() == 1, "exactly one original: {acks:?}");

    // A fresh connection after a reconnect, with a different body even: still the original.
    alice.close().await?;
    let mut alice = Client::connect(&node, encoding).await?;
    alice.authenticate(&alice_token, None).await?;
    let again = send(&mut alice, &room, "m-1", "a changed body").await?;
    ensure!(
        ack_fields(&again) == Some((r, id, seq, ts, true)),
        "retry after reconnect {again:?} vs original {first:?}"
    );

    // The same id from another user is another message (ids are per sender).
    let (bob_seq, bob_duplicate) = bob.say(&room, "m-1", "bob's own m-1").await?;
    ensure!(!bob_duplicate && bob_seq > acks[0].0, "bob's m-1 is new: seq {bob_seq}");

    // Bob received each message once: wait for a sentinel sent after everything, then count.
    alice.say(&room, "sentinel", "the end").await?;
    bob.wait_for_message(&room, "sentinel").await?;
    let from_alice = |id: &str| bob.ledger.iter().filter(|(_, e)| e.from == "alice" && e.id == id).count();
    ensure!(from_alice("m-1") == 1, "bob got alice's m-1 {} times", from_alice("m-1"));
    ensure!(from_alice("m-2") == 1, "bob got alice's m-2 {} times", from_alice("m-2"));
    let body = bob.ledger.iter().find(|(_, e)| e.id == "m-1" && e.from == "alice").map(|(_, e)| e.body.clone());
    ensure!(body.as_deref() == Some("once only"), "the stored body is the original: {body:?}");

    // History holds one entry per (sender, id), with dense sequence numbers.
    let req = bob.next_req();
    let ServerFrame::History { entries, more, .. } = bob
        .request(ClientFrame::History { req, room: room.clone(), before: None, after: Some(0), limit: Some(100) })
        .await?
    else {
        anyhow::bail!("history")
    };
    ensure!(!more, "one page holds the room");
    let count = |from: &str, id: &str| entries.iter().filter(|e| e.from == from && e.id == id).count();
    ensure!(count("alice", "m-1") == 1 && count("alice", "m-2") == 1 && count("bob", "m-1") == 1, "{entries:?}");
    ensure!(entries.iter().enumerate().all(|(i, e)| e.seq == i as u64 + 1), "dense seqs: {entries:?}");
    // 2 joins, alice's m-1 and m-2, bob's m-1, the sentinel.
    ensure!(entries.len() == 6, "{} entries: {entries:?}", entries.len());
    Ok(())
}
