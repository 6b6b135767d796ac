//! Large rooms (ARCHITECTURE.md, "Large rooms"): a room past `limits.fanout_max_members` keeps
//! its entries in the room log only, and members get them live without a cursor and on resume
//! by room seq. The delivery contract must hold exactly as for small rooms: every acked message
//! reaches every member once, in order, across the seam between replay and live, across the
//! room's switch from small to large, and after leaving nothing more arrives.
//!
//! The nodes here run with `fanout_max_members = 2`, so a third member makes a room large.

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{bail, ensure};
use tests::{
    check_ledger, check_room_ledger, Client, ClientFrame, Encoding, EntryKind, Node, NodeOptions, ServerFrame, Writers,
};

fn options() -> NodeOptions {
    NodeOptions::default().env("LIMITS__FANOUT_MAX_MEMBERS", 2).env("LIMITS__FRAMES_PER_SECOND", 1_000_000)
}

/// Receive until the client holds `len` large-room entries (other frames are dropped).
async fn wait_room_entries(client: &mut Client, len: usize) -> anyhow::Result<()> {
    while client.room_ledger.len() < len {
        client.recv().await?;
    }
    Ok(())
}

/// Receive until a large-room entry matching `wanted` is in the ledger (other frames are dropped).
async fn wait_room_entry(client: &mut Client, wanted: impl Fn(&protocol::Entry) -> bool) -> anyhow::Result<()> {
    while !client.room_ledger.iter().any(&wanted) {
        client.recv().await?;
    }
    Ok(())
}

async fn list_rooms(client: &mut Client) -> anyhow::Result<Vec<protocol::RoomInfo>> {
    let req = client.next_req();
    match client.request(ClientFrame::ListRooms { req }).await? {
        ServerFrame::Rooms { rooms, .. } => Ok(rooms),
        other => bail!("list_rooms: {other:?}"),
    }
}

/// wendy, walt and rita in one room, which rita's join makes large; returns the room.
async fn large_room(wendy: &mut Client, walt: &mut Client, rita: &mut Client) -> anyhow::Result<String> {
    let room = wendy.create_room("town square").await?;
    walt.join(&room).await?;
    rita.join(&room).await?;
    // rita's join (seq 3) is the room's first entry kept in the room log only.
    wait_room_entries(rita, 1).await?;
    ensure!(rita.rooms.get(&room) == Some(&3), "rita follows the room from her join: {:?}", rita.rooms);
    let info = list_rooms(rita).await?;
    ensure!(info.iter().any(|r| r.id == room && r.large), "the room is reported large: {info:?}");
    Ok(room)
}

/// Replay pages of 50 and connection queues of 8: the seams between replay, catch-up and live
/// are crossed many times.
const SMALL_QUEUES: &[(&str, &str)] = &[("LIMITS__REPLAY_PAGE_LEN", "50"), ("LIMITS__OUTBOUND_QUEUE_LEN", "8")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_in_a_large_room_is_exact_json() -> anyhow::Result<()> {
    resume_in_a_large_room(Encoding::Json, false, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_in_a_large_room_is_exact_messagepack_small_queues() -> anyhow::Result<()> {
    resume_in_a_large_room(Encoding::MessagePack, false, SMALL_QUEUES).await
}

/// The same with rita asking for batched frames (several per WebSocket message): replay pages
/// and live deliveries arrive packed, and the contract is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_in_a_large_room_is_exact_batched_json() -> anyhow::Result<()> {
    resume_in_a_large_room(Encoding::Json, true, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_in_a_large_room_is_exact_batched_messagepack_small_queues() -> anyhow::Result<()> {
    resume_in_a_large_room(Encoding::MessagePack, true, SMALL_QUEUES).await
}

/// rita goes offline; 600 messages are written to a large room and a small one; she resumes
/// with her cursor and her position in the large room while two writers keep sending. She must
/// get every acked message once, dense per room, live after the replay with no seam. With
/// `batch`, her resumed connection asks for batched frames and must get some (a replay page is
/// many frames at once); without, it must get none.
async fn resume_in_a_large_room(encoding: Encoding, batch: bool, limits: &[(&str, &str)]) -> anyhow::Result<()> {
    let mut options = options();
    for (key, value) in limits {
        options = options.env(key, value);
    }
    let node = Node::start(options).await?;
    let (mut wendy, _) = Client::user(&node, Encoding::Json, "wendy").await?;
    let (mut walt, _) = Client::user(&node, Encoding::MessagePack, "walt").await?;
    let (mut rita, rita_token) = Client::user(&node, encoding, "rita").await?;
    let big = large_room(&mut wendy, &mut walt, &mut rita).await?;
    // A small room too, so the user log and the room log are replayed side by side.
    let small = wendy.create_room("corner").await?;
    rita.join(&small).await?;
    rita.wait_ledger_len(1).await?;
    let (stored_cursor, stored_rooms) = (rita.cursor, rita.rooms.clone());
    rita.close().await?;

    let backlog: Vec<(String, String, String)> = (0..600)
        .map(|i| {
            let room = if i % 3 == 0 { &small } else { &big };
            (room.clone(), format!("backlog-{i}"), format!("backlog message {i}"))
        })
        .collect();
    let mut acked: HashMap<(String, String), u64> = HashMap::new();
    for ((room, id, _), (seq, duplicate)) in backlog.iter().zip(wendy.say_many(&backlog, 32).await?) {
        ensure!(!duplicate, "{id} is new");
        acked.insert((room.clone(), id.clone()), seq);
    }

    // Writers that keep sending during the resume and after it: walt is only in the large
    // room, wendy writes to both.
    let writers = Writers::spawn(vec![(walt, vec![big.clone()]), (wendy, vec![big.clone(), small.clone()])]);
    writers.started().await;

    let mut rita =
        if batch { Client::connect_batched(&node, encoding).await? } else { Client::connect(&node, encoding).await? };
    rita.rooms = stored_rooms.clone();
    rita.authenticate(&rita_token, Some(stored_cursor)).await?;
    let live = rita.until_live().await?;
    let ServerFrame::Live { cursor, rooms, .. } = &live else { bail!("expected live, got {live:?}") };
    ensure!(*cursor == rita.cursor, "live at cursor {cursor}, replayed through {}", rita.cursor);
    ensure!(rooms.get(&big) == rita.rooms.get(&big), "live says {rooms:?}, replayed through {:?}", rita.rooms);
    let replayed = rita.ledger.len() + rita.room_ledger.len();
    ensure!(replayed >= backlog.len(), "the replay holds at least the backlog: {replayed}");
    let target = rita.room_ledger.len() + 30;
    wait_room_entries(&mut rita, target).await?;
    acked.extend(writers.stop().await?);
    let expected_small = acked.keys().filter(|(room, _)| room == &small).count();
    let expected_big = acked.len() - expected_small;
    rita.wait_ledger_len(expected_small).await?;
    wait_room_entries(&mut rita, expected_big).await?;
    rita.ping().await?;
    ensure!(
        (rita.ledger.len(), rita.room_ledger.len()) == (expected_small, expected_big),
        "rita got {} small-room and {} large-room entries for {expected_small} and {expected_big} acked",
        rita.ledger.len(),
        rita.room_ledger.len()
    );
    check_ledger(&rita.ledger, stored_cursor)?;
    check_room_ledger(&rita.room_ledger, &stored_rooms)?;
    let mut seen = HashSet::new();
    for entry in rita.ledger.iter().map(|(_, e)| e).chain(&rita.room_ledger) {
        ensure!(entry.kind == EntryKind::Text, "unexpected {:?} entry", entry.kind);
        let key = (entry.room.clone(), entry.id.clone());
        ensure!(acked.get(&key) == Some(&entry.seq), "{key:?} seq {} acked as {:?}", entry.seq, acked.get(&key));
        ensure!(seen.insert(key.clone()), "{key:?} twice");
    }
    // Without batches the client decodes one frame per message, so a batch would have failed.
    ensure!(
        (rita.batched_messages > 0) == batch,
        "batch {batch}: {} WebSocket messages held several frames",
        rita.batched_messages
    );
    println!(
        "{encoding:?} batch {batch} {limits:?}: replayed {replayed}; {} small-room and {} large-room entries in all; {} batched messages",
        expected_small, expected_big, rita.batched_messages
    );
    Ok(())
}

/// Members connected while a room becomes large see every entry once: those before the switch
/// through their user log (with cursors), those after by room seq, with nothing lost at the
/// switch itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_becoming_large_while_members_are_live_loses_nothing() -> anyhow::Result<()> {
    let node = Node::start(options()).await?;
    let (mut wendy, _) = Client::user(&node, Encoding::Json, "wendy").await?;
    let (mut walt, _) = Client::user(&node, Encoding::MessagePack, "walt").await?;
    let (mut rita, _) = Client::user(&node, Encoding::Json, "rita").await?;
    let room = wendy.create_room("growing").await?;
    walt.join(&room).await?;
    let before: Vec<_> = (0..20).map(|i| (room.clone(), format!("small-{i}"), "x".to_string())).collect();
    wendy.say_many(&before, 8).await?;
    rita.join(&room).await?; // the switch: seq 23
    let after: Vec<_> = (0..40).map(|i| (room.clone(), format!("large-{i}"), "y".to_string())).collect();
    let acks = wendy.say_many(&after, 8).await?;
    let last = acks.last().map(|(seq, _)| *seq).unwrap_or_default();
    ensure!(last == 63, "wendy's last message is seq 63, got {last}");
    for member in [&mut wendy, &mut walt] {
        member.wait_for_message(&room, "large-39").await?;
        member.ping().await?;
        let mut seqs: Vec<u64> = member.ledger.iter().filter(|(_, e)| e.room == room).map(|(_, e)| e.seq).collect();
        let user_log_part = seqs.len();
        seqs.extend(member.room_ledger.iter().map(|e| e.seq));
        let first = seqs[0];
        ensure!(
            seqs == (first..=63).collect::<Vec<_>>(),
            "{:?}: every seq once, in order, from their join: {seqs:?}",
            member.user
        );
        ensure!(
            member.ledger.iter().all(|(_, e)| e.seq < 23) && member.room_ledger.iter().all(|e| e.seq >= 23),
            "user log before the switch ({user_log_part} entries), room log from it"
        );
    }
    Ok(())
}

/// A resume that does not present a large room replays it from the user's read position, at
/// most `limits.large_room_replay_max` entries; a fresh login starts live; history pages the
/// room log as for any room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_without_positions_starts_at_the_read_position() -> anyhow::Result<()> {
    let node = Node::start(options().env("LIMITS__LARGE_ROOM_REPLAY_MAX", 25)).await?;
    let (mut wendy, _) = Client::user(&node, Encoding::Json, "wendy").await?;
    let (mut walt, _) = Client::user(&node, Encoding::Json, "walt").await?;
    let (mut rita, token) = Client::user(&node, Encoding::Json, "rita").await?;
    let room = large_room(&mut wendy, &mut walt, &mut rita).await?;
    let first: Vec<_> = (0..10).map(|i| (room.clone(), format!("a-{i}"), "x".to_string())).collect();
    wendy.say_many(&first, 8).await?;
    rita.wait_for_message(&room, "a-9").await?;
    let req = rita.next_req();
    rita.request(ClientFrame::MarkRead { req, room: room.clone(), seq: 8 }).await?;
    let cursor = rita.cursor;
    rita.close().await?;

    // An old client: cursor only. Unread from seq 9: a-5 … a-9 (seqs 9–13) and what follows.
    let more: Vec<_> = (0..10).map(|i| (room.clone(), format!("b-{i}"), "x".to_string())).collect();
    wendy.say_many(&more, 8).await?;
    let mut old = Client::connect(&node, Encoding::Json).await?;
    old.authenticate(&token, Some(cursor)).await?;
    old.until_live().await?;
    let seqs: Vec<u64> = old.room_ledger.iter().map(|e| e.seq).collect();
    ensure!(seqs == (9..=23).collect::<Vec<_>>(), "from the read position: {seqs:?}");
    old.close().await?;

    // A long absence: at most the newest 25.
    let many: Vec<_> = (0..60).map(|i| (room.clone(), format!("c-{i}"), "x".to_string())).collect();
    wendy.say_many(&many, 16).await?;
    let mut old = Client::connect(&node, Encoding::MessagePack).await?;
    old.authenticate(&token, Some(cursor)).await?;
    let live = old.until_live().await?;
    let seqs: Vec<u64> = old.room_ledger.iter().map(|e| e.seq).collect();
    ensure!(seqs == (59..=83).collect::<Vec<_>>(), "the newest 25 only: {seqs:?}");
    let ServerFrame::Live { rooms, .. } = live else { bail!("expected live") };
    ensure!(rooms == BTreeMap::from([(room.clone(), 83)]), "live names the position: {rooms:?}");

    // A fresh login starts live; history still pages the room's log.
    let mut fresh = Client::connect(&node, Encoding::Json).await?;
    fresh.authenticate(&token, None).await?;
    wendy.say(&room, "d-0", "live").await?;
    let entry = fresh.wait_for_message(&room, "d-0").await?;
    ensure!(entry.seq == 84 && fresh.room_ledger.len() == 1, "only the live entry: {:?}", fresh.room_ledger);
    let req = fresh.next_req();
    let page =
        fresh.request(ClientFrame::History { req, room: room.clone(), before: None, after: Some(80), limit: Some(10) });
    let ServerFrame::History { entries, .. } = page.await? else { bail!("history") };
    ensure!(entries.iter().map(|e| e.seq).collect::<Vec<_>>() == vec![81, 82, 83, 84]);
    Ok(())
}

/// After leaving a large room, nothing more of it arrives, live or on resume, even with the
/// old position presented; every device of the user sees the leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_a_large_room_ends_delivery_on_every_device() -> anyhow::Result<()> {
    let node = Node::start(options()).await?;
    let (mut wendy, _) = Client::user(&node, Encoding::Json, "wendy").await?;
    let (mut walt, _) = Client::user(&node, Encoding::Json, "walt").await?;
    let (mut rita, token) = Client::user(&node, Encoding::Json, "rita").await?;
    let room = large_room(&mut wendy, &mut walt, &mut rita).await?;
    let mut phone = Client::connect(&node, Encoding::MessagePack).await?;
    phone.authenticate(&token, None).await?;
    wendy.say(&room, "m-1", "before").await?;
    rita.wait_for_message(&room, "m-1").await?;
    phone.wait_for_message(&room, "m-1").await?;
    let (cursor, positions) = (rita.cursor, rita.rooms.clone());
    let req = rita.next_req();
    let reply = rita.request(ClientFrame::Leave { req, room: room.clone() }).await?;
    ensure!(!matches!(reply, ServerFrame::Error { .. }), "leave: {reply:?}");
    let left = |e: &protocol::Entry| e.kind == EntryKind::Leave && e.user.as_deref() == Some("rita");
    wait_room_entry(&mut rita, left).await?;
    wait_room_entry(&mut phone, left).await?;
    wendy.say(&room, "m-2", "after").await?;
    walt.wait_for_message(&room, "m-2").await?;
    for device in [&mut rita, &mut phone] {
        device.ping().await?;
        ensure!(device.room_ledger.iter().all(|e| e.id != "m-2"), "{:?} got a message after leaving", device.user);
    }
    // Resuming with the position from before the leave replays nothing of the room (the
    // position of a room one is not in is ignored: it cannot open another room's log), and
    // the room is gone from the list.
    let mut again = Client::connect(&node, Encoding::Json).await?;
    again.rooms = positions;
    again.authenticate(&token, Some(cursor)).await?;
    let ServerFrame::Live { rooms, .. } = again.until_live().await? else { bail!("expected live") };
    ensure!(again.room_ledger.is_empty(), "nothing replayed from a room rita left: {:?}", again.room_ledger);
    ensure!(!rooms.contains_key(&room), "no position in a room rita left: {rooms:?}");
    ensure!(list_rooms(&mut again).await?.iter().all(|r| r.id != room), "the room is not listed");
    Ok(())
}

/// Positions for more rooms than a user may be in are refused with `invalid_field` naming the
/// field; the connection stays usable and authenticates normally afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_positions_are_refused_clearly() -> anyhow::Result<()> {
    let node = Node::start(options().env("LIMITS__MAX_ROOMS_PER_USER", 3)).await?;
    let (_, token) = Client::user(&node, Encoding::Json, "rita").await?;
    let mut client = Client::connect(&node, Encoding::MessagePack).await?;
    let rooms: BTreeMap<String, u64> = (0..4).map(|i| (format!("r_{i}"), 1)).collect();
    let req = client.next_req();
    let reply = client.request(ClientFrame::Authenticate { req, token: token.clone(), cursor: Some(0), rooms }).await?;
    let ServerFrame::Error { code, message, .. } = &reply else { bail!("expected an error, got {reply:?}") };
    ensure!(*code == protocol::ErrorCode::InvalidField && message.contains("`rooms`"), "{reply:?}");
    client.ping().await?;
    client.authenticate(&token, Some(0)).await?;
    ensure!(matches!(client.until_live().await?, ServerFrame::Live { .. }), "a normal resume works after it");
    Ok(())
}

/// In a large room reactions are counted, not entries: each one is acked with seq 0, members
/// get the counts in `reactions` frames, at most one per `limits.reaction_flush_ms` however
/// many reactions came in it, never a `react` entry; history shows the counts and whose they
/// are; the usual rules hold (one of each per user).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_in_a_large_room_arrive_as_coalesced_counts() -> anyhow::Result<()> {
    let node = Node::start(options().env("LIMITS__REACTION_FLUSH_MS", 400)).await?;
    let (mut wendy, _) = Client::user(&node, Encoding::Json, "wendy").await?;
    let (mut walt, _) = Client::user(&node, Encoding::MessagePack, "walt").await?;
    let (mut rita, _) = Client::user(&node, Encoding::Json, "rita").await?;
    let room = large_room(&mut wendy, &mut walt, &mut rita).await?;
    let (seq, _) = wendy.say(&room, "w-1", "react to me").await?;
    wait_room_entry(&mut rita, |e| e.seq == seq).await?;
    rita.discard(|_| true);

    // Twelve reactions from three members, pipelined: about a flush interval's worth.
    let started = std::time::Instant::now();
    let mut reqs = Vec::new();
    for (i, reaction) in ["👍", "🎉", "👀", "🔥"].into_iter().enumerate() {
        for client in [&mut wendy, &mut walt, &mut rita] {
            let req = client.next_req();
            let id = format!("r-{i}-{req}");
            client
                .send(&ClientFrame::React {
                    req,
                    room: room.clone(),
                    id,
                    seq,
                    reaction: reaction.into(),
                    remove: false,
                })
                .await?;
            reqs.push(req);
        }
    }
    for client in [&mut wendy, &mut walt, &mut rita] {
        for _ in 0..4 {
            let ack =
                client.recv_matching(|f| matches!(f, ServerFrame::Ack { .. } | ServerFrame::Error { .. })).await?;
            ensure!(
                matches!(ack, ServerFrame::Ack { seq: 0, duplicate: false, .. }),
                "a counted reaction's ack: {ack:?}"
            );
        }
    }
    // rita hears the counts, in few frames; the last shows them all.
    let mut frames = 0;
    let mut last = Vec::new();
    while last.iter().map(|r: &protocol::ReactionTotal| r.count).sum::<u32>() < 12 {
        match rita.recv_matching(|f| matches!(f, ServerFrame::Reactions { .. })).await? {
            ServerFrame::Reactions { room: r, messages } if r == room => {
                frames += 1;
                ensure!(messages.len() == 1 && messages[0].seq == seq, "{messages:?}");
                last = messages[0].reactions.clone();
            }
            other => bail!("unexpected {other:?}"),
        }
    }
    let window = started.elapsed().as_millis() as usize / 400 + 2;
    ensure!(frames <= window, "{frames} reactions frames for 12 reactions within {window} flush intervals");
    ensure!(last.iter().all(|r| r.count == 3) && last.len() == 4, "{last:?}");
    ensure!(!rita.room_ledger.iter().any(|e| e.kind == EntryKind::React), "no reaction reached a member as an entry");

    // The rules hold, and history has the counts with whose they are.
    let req = walt.next_req();
    let again = walt
        .request(ClientFrame::React {
            req,
            room: room.clone(),
            id: "again".into(),
            seq,
            reaction: "👍".into(),
            remove: false,
        })
        .await?;
    ensure!(matches!(&again, ServerFrame::Error { code: protocol::ErrorCode::Unchanged, .. }), "{again:?}");
    let req = walt.next_req();
    let taken = walt
        .request(ClientFrame::React {
            req,
            room: room.clone(),
            id: "back".into(),
            seq,
            reaction: "👍".into(),
            remove: true,
        })
        .await?;
    ensure!(matches!(taken, ServerFrame::Ack { seq: 0, .. }), "{taken:?}");
    let req = walt.next_req();
    let history = walt
        .request(ClientFrame::History { req, room: room.clone(), before: None, after: Some(seq - 1), limit: Some(1) })
        .await?;
    let ServerFrame::History { entries, .. } = history else { bail!("history: {history:?}") };
    let thumbs = entries[0].reactions.iter().find(|r| r.reaction == "👍").cloned();
    ensure!(thumbs.as_ref().is_some_and(|r| r.count == 2 && !r.me), "{thumbs:?}");
    ensure!(
        entries[0].reactions.iter().filter(|r| r.me).count() == 3,
        "walt's other three: {:?}",
        entries[0].reactions
    );
    Ok(())
}
