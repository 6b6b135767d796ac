//! Messages that change (docs/PROTOCOL.md, "Edits, deletes, reactions, replies, mentions"),
//! against the real binary: every change is an entry of the room's log that members receive
//! live and on resume, history and threads show the current state, who may do what is enforced,
//! and a deleted body is gone from the database file.

use anyhow::{bail, ensure};
use tests::{Client, ClientFrame, Encoding, Entry, EntryKind, ErrorCode, Node, NodeOptions, ServerFrame, TestStore};

#[tokio::test]
async fn changes_reach_members_live_json() -> anyhow::Result<()> {
    changes_reach_members_live(Encoding::Json).await
}

#[tokio::test]
async fn changes_reach_members_live_messagepack() -> anyhow::Result<()> {
    changes_reach_members_live(Encoding::MessagePack).await
}

fn send(req: u64, room: &str, id: &str, body: &str, reply_to: Option<u64>, mentions: &[&str]) -> ClientFrame {
    ClientFrame::Send {
        req,
        room: room.into(),
        id: id.into(),
        body: body.into(),
        reply_to,
        mentions: mentions.iter().map(|m| (*m).to_owned()).collect(),
        attachments: Vec::new(),
    }
}

fn edit(req: u64, room: &str, id: &str, seq: u64, body: &str) -> ClientFrame {
    ClientFrame::Edit { req, room: room.into(), id: id.into(), seq, body: body.into() }
}

fn react(req: u64, room: &str, id: &str, seq: u64, reaction: &str, remove: bool) -> ClientFrame {
    ClientFrame::React { req, room: room.into(), id: id.into(), seq, reaction: reaction.into(), remove }
}

fn delete(req: u64, room: &str, id: &str, seq: u64) -> ClientFrame {
    ClientFrame::Delete { req, room: room.into(), id: id.into(), seq }
}

/// The ack's seq, or the reply as an error.
async fn acked(client: &mut Client, frame: ClientFrame) -> anyhow::Result<u64> {
    match client.request(frame).await? {
        ServerFrame::Ack { seq, .. } => Ok(seq),
        other => bail!("expected an ack, got {other:?}"),
    }
}

async fn refused(client: &mut Client, frame: ClientFrame) -> anyhow::Result<(ErrorCode, String)> {
    match client.request(frame).await? {
        ServerFrame::Error { code, message, .. } => Ok((code, message)),
        other => bail!("expected a refusal, got {other:?}"),
    }
}

/// The entry of `kind` naming `target` that `client` received (live or replayed).
async fn change_received(client: &mut Client, room: &str, kind: EntryKind, target: u64) -> anyhow::Result<Entry> {
    loop {
        let found =
            client.ledger.iter().map(|(_, e)| e).find(|e| e.room == room && e.kind == kind && e.target == Some(target));
        if let Some(entry) = found {
            return Ok(entry.clone());
        }
        client.recv().await?;
    }
}

async fn history(client: &mut Client, room: &str) -> anyhow::Result<Vec<Entry>> {
    let req = client.next_req();
    match client
        .request(ClientFrame::History { req, room: room.into(), before: None, after: None, limit: None })
        .await?
    {
        ServerFrame::History { entries, .. } => Ok(entries),
        other => bail!("history: {other:?}"),
    }
}

async fn room_mentions(client: &mut Client, room: &str) -> anyhow::Result<u32> {
    let req = client.next_req();
    let ServerFrame::Rooms { rooms, .. } = client.request(ClientFrame::ListRooms { req }).await? else {
        bail!("rooms")
    };
    Ok(rooms.iter().find(|r| r.id == room).map_or(0, |r| r.mentions))
}

async fn changes_reach_members_live(encoding: Encoding) -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let (mut alice, _) = Client::user(&node, encoding, "alice").await?;
    let (mut bob, _) = Client::user(&node, encoding, "bob").await?;
    let (mut dave, _) = Client::user(&node, encoding, "dave").await?;
    let room = alice.create_room("changes").await?;
    bob.join(&room).await?;

    // A mention counts for bob until he reads past it.
    let req = alice.next_req();
    let question = acked(&mut alice, send(req, &room, "q", "bob, lunch?", None, &["bob"])).await?;
    ensure!(room_mentions(&mut bob, &room).await? == 1, "bob has one unread mention");
    let received = bob.wait_for_message(&room, "q").await?;
    ensure!(received.mentions == vec!["bob".to_string()], "the message names its mentions: {received:?}");

    // A reply, a reaction and an edit, each delivered live to the other member.
    let req = bob.next_req();
    let answer = acked(&mut bob, send(req, &room, "a", "yes!", Some(question), &[])).await?;
    let reply = alice.wait_for_message(&room, "a").await?;
    ensure!(reply.reply_to == Some(question), "reply_to arrives: {reply:?}");
    let req = bob.next_req();
    acked(&mut bob, react(req, &room, "r1", question, "👍", false)).await?;
    let reaction = change_received(&mut alice, &room, EntryKind::React, question).await?;
    ensure!(reaction.body == "👍" && reaction.from == "bob", "{reaction:?}");
    let req = alice.next_req();
    acked(&mut alice, edit(req, &room, "e1", question, "bob, lunch at noon?")).await?;
    let edited = change_received(&mut bob, &room, EntryKind::Edit, question).await?;
    ensure!(edited.body == "bob, lunch at noon?", "{edited:?}");

    // History shows the current state, with reactions as the caller sees them.
    let entries = history(&mut bob, &room).await?;
    let shown = entries.iter().find(|e| e.seq == question).expect("in history");
    ensure!(shown.body == "bob, lunch at noon?" && shown.edited_at.is_some(), "{shown:?}");
    ensure!(shown.reactions.len() == 1 && shown.reactions[0].count == 1 && shown.reactions[0].me, "{shown:?}");
    let entries = history(&mut alice, &room).await?;
    let shown = entries.iter().find(|e| e.seq == question).expect("in history");
    ensure!(!shown.reactions[0].me, "alice did not react: {shown:?}");

    // The thread: the question and its answer.
    let req = alice.next_req();
    let thread =
        alice.request(ClientFrame::Thread { req, room: room.clone(), root: question, after: None, limit: None });
    let ServerFrame::Thread { root, replies, more, .. } = thread.await? else { bail!("thread") };
    ensure!(root.seq == question && replies.iter().map(|e| e.seq).collect::<Vec<_>>() == [answer] && !more);

    // Who may do what, with precise errors.
    let req = bob.next_req();
    let (code, _) = refused(&mut bob, edit(req, &room, "e2", question, "not mine")).await?;
    ensure!(code == ErrorCode::Forbidden, "editing another's message: {code:?}");
    let req = bob.next_req();
    let (code, _) = refused(&mut bob, delete(req, &room, "d0", question)).await?;
    ensure!(code == ErrorCode::Forbidden, "deleting another's message as a member: {code:?}");
    let req = bob.next_req();
    let (code, _) = refused(&mut bob, react(req, &room, "r2", question, "👍", false)).await?;
    ensure!(code == ErrorCode::Unchanged, "reacting twice: {code:?}");
    let req = bob.next_req();
    let (code, _) = refused(&mut bob, react(req, &room, "r3", question, &"x".repeat(10_000), false)).await?;
    ensure!(code == ErrorCode::InvalidField, "a 10 KB reaction: {code:?}");
    let req = bob.next_req();
    let (code, _) = refused(&mut bob, send(req, &room, "a2", "to nothing", Some(9_999), &[])).await?;
    ensure!(code == ErrorCode::NoSuchMessage, "replying to a seq that does not exist: {code:?}");
    let req = bob.next_req();
    let (code, _) = refused(&mut bob, send(req, &room, "a3", "hi dave", None, &["dave"])).await?;
    ensure!(code == ErrorCode::InvalidField, "mentioning a non-member: {code:?}");
    let req = bob.next_req();
    let (code, _) = refused(&mut bob, edit(req, &room, "e3", 1, "a join")).await?;
    ensure!(code == ErrorCode::NoSuchMessage, "editing a join entry: {code:?}");
    let req = dave.next_req();
    let (code, _) = refused(&mut dave, react(req, &room, "r4", question, "👀", false)).await?;
    ensure!(code == ErrorCode::NotMember, "an outsider reacting: {code:?}");

    // The room's creator deletes bob's answer; the author deletes her own question.
    let req = alice.next_req();
    acked(&mut alice, delete(req, &room, "d1", answer)).await?;
    let req = alice.next_req();
    acked(&mut alice, delete(req, &room, "d2", question)).await?;
    let deleted = change_received(&mut bob, &room, EntryKind::Delete, question).await?;
    ensure!(deleted.body.is_empty() && deleted.from == "alice", "{deleted:?}");
    let entries = history(&mut bob, &room).await?;
    for seq in [question, answer] {
        let shown = entries.iter().find(|e| e.seq == seq).expect("tombstone in history");
        ensure!(shown.deleted && shown.body.is_empty() && shown.reactions.is_empty(), "{shown:?}");
    }
    ensure!(entries.iter().all(|e| !e.body.contains("lunch")), "history still shows the text");
    ensure!(room_mentions(&mut bob, &room).await? == 0, "a deleted message is no unread mention");
    let req = bob.next_req();
    let (code, _) = refused(&mut bob, react(req, &room, "r5", question, "😢", false)).await?;
    ensure!(code == ErrorCode::MessageDeleted, "reacting to a deleted message: {code:?}");
    Ok(())
}

/// A device that was away gets every change on resume, and sees the messages as they are now.
#[tokio::test]
async fn a_device_that_was_away_gets_the_changes_on_resume() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
    let (mut phone, token) = Client::user(&node, Encoding::MessagePack, "bob").await?;
    let room = alice.create_room("resume").await?;
    phone.join(&room).await?;
    let req = alice.next_req();
    let kept = acked(&mut alice, send(req, &room, "k", "typo teh", None, &[])).await?;
    let req = alice.next_req();
    let gone = acked(&mut alice, send(req, &room, "g", "regretted", None, &[])).await?;
    phone.wait_for_message(&room, "g").await?;
    let cursor = phone.cursor;
    phone.close().await?;

    let req = alice.next_req();
    acked(&mut alice, edit(req, &room, "e", kept, "typo the")).await?;
    let req = alice.next_req();
    acked(&mut alice, react(req, &room, "r", kept, "🎉", false)).await?;
    let req = alice.next_req();
    acked(&mut alice, edit(req, &room, "e2", gone, "regretted more")).await?;
    let req = alice.next_req();
    acked(&mut alice, delete(req, &room, "d", gone)).await?;

    let mut phone = Client::connect(&node, Encoding::MessagePack).await?;
    phone.cursor = cursor;
    phone.authenticate(&token, Some(cursor)).await?;
    phone.until_live().await?;
    let replayed: Vec<&Entry> = phone.ledger.iter().map(|(_, e)| e).collect();
    let kinds: Vec<EntryKind> = replayed.iter().map(|e| e.kind).collect();
    ensure!(
        kinds == [EntryKind::Edit, EntryKind::React, EntryKind::Edit, EntryKind::Delete],
        "replayed after the cursor: {replayed:?}"
    );
    ensure!(replayed[0].body == "typo the", "the edit replays with its body: {:?}", replayed[0]);
    ensure!(
        replayed[2].deleted && replayed[2].body.is_empty(),
        "an edit of a deleted message replays without its text"
    );
    ensure!(replayed.iter().all(|e| !e.body.contains("regretted")), "the deleted text came back: {replayed:?}");
    Ok(())
}

/// A client that knows only plain messages sees them exactly as before: none of the new fields
/// appear on a message that does not use them.
#[tokio::test]
async fn plain_messages_look_as_they_did() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
    let room = alice.create_room("plain").await?;
    let mut raw = Client::connect(&node, Encoding::Json).await?;
    let token = raw.register_and_login("bob", "password-of-bob").await?;
    raw.authenticate(&token, None).await?;
    // Invited, so that every frame this client gets from here on is read as raw JSON.
    let req = alice.next_req();
    let invited = alice.request(ClientFrame::Invite { req, room: room.clone(), user: "bob".into() }).await?;
    ensure!(invited == ServerFrame::Ok { req }, "invite: {invited:?}");
    alice.say(&room, "p1", "plain").await?;
    loop {
        let value = raw.recv_value().await?;
        if value["type"] == "message" && value["id"] == "p1" {
            let mut keys: Vec<&str> = value.as_object().expect("object").keys().map(String::as_str).collect();
            keys.sort_unstable();
            ensure!(keys == ["body", "cursor", "from", "id", "kind", "room", "seq", "ts", "type"], "{keys:?}");
            return Ok(());
        }
    }
}

/// A deleted message's text is gone from the database file, not merely hidden: the file and
/// its write-ahead log are read byte by byte, while the node runs (the text must be gone within
/// a few checkpoint rounds) and after a kill -9 right after a delete and a restart.
#[tokio::test]
async fn a_deleted_body_is_gone_from_the_database_file() -> anyhow::Result<()> {
    if TestStore::from_env() != TestStore::Sqlite {
        tests::say_skipped(
            "a_deleted_body_is_gone_from_the_database_file",
            "it reads the SQLite file; this run uses FoundationDB (docs/STORAGE.md says what erasure means there)",
        );
        return Ok(());
    }
    let mut node = Node::start(NodeOptions::default()).await?;
    let (mut alice, token) = Client::user(&node, Encoding::Json, "alice").await?;
    let room = alice.create_room("erase").await?;
    // Messages before it, so the erased row shares its page with rows that stay.
    for i in 0..20 {
        alice.say(&room, &format!("filler-{i}"), "filler text that stays").await?;
    }
    let first = "first-secret-4c1f9e7a";
    let req = alice.next_req();
    // Long bodies with the text first: a shorter row written where the long one was leaves the
    // start of the old one behind unless SQLite zeroes what it frees.
    let padding = "p".repeat(600);
    let seq = acked(&mut alice, send(req, &room, "s", &format!("{first} one {padding}"), None, &[])).await?;
    let req = alice.next_req();
    acked(&mut alice, edit(req, &room, "e", seq, &format!("{first} two {padding}"))).await?;
    ensure!(!node.store_files_holding(first)?.is_empty(), "the test looks in the wrong place");
    let req = alice.next_req();
    acked(&mut alice, delete(req, &room, "d", seq)).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while !node.store_files_holding(first)?.is_empty() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the deleted text is still in {:?}",
            node.store_files_holding(first)?
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // A node killed right after a delete clears the text when it starts again.
    let second = "second-secret-93ab0d2e";
    let req = alice.next_req();
    let seq = acked(&mut alice, send(req, &room, "s2", &format!("{second} {padding}"), None, &[])).await?;
    let req = alice.next_req();
    acked(&mut alice, delete(req, &room, "d2", seq)).await?;
    node.kill9().await?;
    node.restart().await?;
    ensure!(
        node.store_files_holding(second)?.is_empty(),
        "after a restart the text is still in {:?}",
        node.store_files_holding(second)?
    );
    let mut again = Client::connect(&node, Encoding::Json).await?;
    again.authenticate(&token, None).await?;
    let entries = history(&mut again, &room).await?;
    ensure!(entries.iter().any(|e| e.seq == seq && e.deleted), "the delete survived the kill");
    Ok(())
}
