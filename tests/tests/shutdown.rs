//! SIGTERM drains the node: every open connection gets a `reconnect` frame carrying the cursor
//! of the last entry it delivered, then a close with code 1001 (going away); the process exits
//! with status 0; after a restart the client resumes from that cursor and misses nothing.

use anyhow::{bail, ensure};
use tests::{check_ledger, Client, Encoding, Node, NodeOptions, ServerFrame};

/// Take every frame up to the close; return the `reconnect` frame's cursor and the close code.
async fn drained(client: &mut Client) -> anyhow::Result<(Option<u64>, Option<u16>)> {
    let closed = client.closed().await?;
    let reconnect = client.recv_matching(|f| matches!(f, ServerFrame::Reconnect { .. })).await?;
    let ServerFrame::Reconnect { cursor, reason, .. } = reconnect else { bail!("expected reconnect") };
    ensure!(!reason.is_empty(), "the reconnect frame says why");
    Ok((cursor, closed.code))
}

#[tokio::test]
async fn sigterm_sends_reconnect_with_cursor_then_resume_works() -> anyhow::Result<()> {
    let mut node = Node::start(NodeOptions::default()).await?;
    let (mut alice, alice_token) = Client::user(&node, Encoding::Json, "alice").await?;
    let (mut bob, bob_token) = Client::user(&node, Encoding::MessagePack, "bob").await?;
    let room = alice.create_room("drain").await?;
    bob.join(&room).await?;
    for i in 0..10 {
        alice.say(&room, &format!("before-{i}"), "before the signal").await?;
    }
    bob.wait_for_message(&room, "before-9").await?;
    alice.wait_for_message(&room, "before-9").await?;
    // Connections that are not authenticated are told too, without a cursor.
    let mut greeted_json = Client::connect(&node, Encoding::Json).await?;
    let mut greeted_msgpack = Client::connect(&node, Encoding::MessagePack).await?;
    // And one that has not even said hello (the node's session is running once a ping before
    // hello has been answered).
    let mut silent = Client::connect_raw(&node.ws_url(), Encoding::Json).await?;
    let req = silent.next_req();
    let reply = silent.request(tests::ClientFrame::Ping { req }).await?;
    ensure!(matches!(reply, ServerFrame::Error { code: tests::ErrorCode::HelloRequired, .. }), "{reply:?}");

    let status = node.terminate().await?;
    ensure!(status.success(), "the node exits with status 0 on SIGTERM: {status:?}");

    for (name, client) in [("alice", &mut alice), ("bob", &mut bob)] {
        let (cursor, code) = drained(client).await?;
        ensure!(code == Some(1001), "{name}: closed with {code:?}, not 1001");
        // The cursor is the last entry the connection delivered, which is all the client saw.
        ensure!(
            cursor == Some(client.cursor),
            "{name}: reconnect cursor {cursor:?}, client saw up to {}",
            client.cursor
        );
    }
    for (name, client) in [("json", &mut greeted_json), ("msgpack", &mut greeted_msgpack), ("silent", &mut silent)] {
        let (cursor, code) = drained(client).await?;
        ensure!(code == Some(1001) && cursor.is_none(), "{name}: cursor {cursor:?}, close {code:?}");
    }

    // While bob is away, alice writes more after the restart; bob resumes from his cursor.
    let bob_cursor = bob.cursor;
    let bob_before = bob.ledger.clone();
    node.restart().await?;
    let mut alice = Client::connect(&node, Encoding::Json).await?;
    alice.authenticate(&alice_token, None).await?;
    for i in 0..5 {
        alice.say(&room, &format!("after-{i}"), "after the restart").await?;
    }
    let mut bob = Client::connect(&node, Encoding::MessagePack).await?;
    bob.authenticate(&bob_token, Some(bob_cursor)).await?;
    bob.until_live().await?;
    let ids: Vec<&str> = bob.ledger.iter().map(|(_, e)| e.id.as_str()).collect();
    ensure!(ids == ["after-0", "after-1", "after-2", "after-3", "after-4"], "bob's replay after the restart: {ids:?}");
    check_ledger(&bob.ledger, bob_cursor)?;
    let whole: Vec<_> = bob_before.into_iter().chain(bob.ledger.iter().cloned()).collect();
    check_ledger(&whole, 0)?;
    Ok(())
}
