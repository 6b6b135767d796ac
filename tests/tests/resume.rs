//! Resume after a disconnect (docs/DESIGN.md §1.4): a reader goes offline, another user writes
//! a backlog of 1,000 messages across four rooms, and the reader comes back with its stored
//! cursor while two writers keep sending. The reader must get every message exactly once,
//! with dense cursors and each room in order, and live traffic must continue across the seam
//! between replay and live with no gap and no duplicate.
//!
//! Two variants: default limits (replay pages of 256, live entries queue in the connection's
//! inbox during the replay), and tiny limits (replay pages of 50, an inbox of 8) that force the
//! node through its "lagged: read the store again" path many times over.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::ensure;
use tests::{check_ledger, Client, Encoding, EntryKind, Node, NodeOptions, ServerFrame, Writers};

const ROOMS: usize = 4;
const BACKLOG: usize = 1_000;
/// Live messages the reader must see after its `live` frame before the writer stops.
const AFTER_LIVE: usize = 50;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_backlog_of_1000_across_rooms_json() -> anyhow::Result<()> {
    resume_backlog(Encoding::Json, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_backlog_of_1000_across_rooms_messagepack_small_queues() -> anyhow::Result<()> {
    resume_backlog(Encoding::MessagePack, &[("LIMITS__REPLAY_PAGE_LEN", "50"), ("LIMITS__OUTBOUND_QUEUE_LEN", "8")])
        .await
}

async fn resume_backlog(encoding: Encoding, limits: &[(&str, &str)]) -> anyhow::Result<()> {
    // Writers here send faster than the default per-connection frame rate allows; that limit is
    // tested elsewhere and is not the point here.
    let mut options = NodeOptions::default().env("LIMITS__FRAMES_PER_SECOND", 1_000_000);
    for (key, value) in limits {
        options = options.env(key, value);
    }
    let node = Node::start(options).await?;
    let other = if encoding == Encoding::Json { Encoding::MessagePack } else { Encoding::Json };

    let (mut wendy, _) = Client::user(&node, other, "wendy").await?;
    let (mut walt, _) = Client::user(&node, other, "walt").await?;
    let (mut rita, rita_token) = Client::user(&node, encoding, "rita").await?;
    let mut rooms = Vec::new();
    for index in 0..ROOMS {
        let room = wendy.create_room(&format!("room {index}")).await?;
        walt.join(&room).await?;
        rita.join(&room).await?;
        rooms.push(room);
    }
    // Rita's log holds her four joins; a real client stores the cursor of what it processed.
    rita.wait_ledger_len(ROOMS).await?;
    let stored_cursor = rita.cursor;
    ensure!(stored_cursor == ROOMS as u64, "rita's log holds her {ROOMS} joins, cursor {stored_cursor}");
    let first_ledger = rita.ledger.clone();
    rita.close().await?;

    // The backlog, written while rita is offline.
    let backlog: Vec<(String, String, String)> = (0..BACKLOG)
        .map(|i| (rooms[i % ROOMS].clone(), format!("backlog-{i}"), format!("backlog message {i}")))
        .collect();
    let acks = wendy.say_many(&backlog, 32).await?;
    let mut acked: HashMap<(String, String), u64> = HashMap::new();
    for ((room, id, _), (seq, duplicate)) in backlog.iter().zip(acks) {
        ensure!(!duplicate, "{id} is new");
        acked.insert((room.clone(), id.clone()), seq);
    }

    // Two writers that keep sending while rita resumes and after she is live, each to its own
    // rooms and several messages in flight, so rooms commit concurrently and their deliveries
    // can reach rita's connection out of cursor order.
    let writers = Writers::spawn(
        [walt, wendy]
            .into_iter()
            .enumerate()
            .map(|(index, writer)| (writer, rooms.iter().skip(index).step_by(2).cloned().collect()))
            .collect(),
    );
    writers.started().await;

    // Rita comes back with her stored cursor: replay, `live`, then live traffic.
    let mut rita = Client::connect(&node, encoding).await?;
    rita.authenticate(&rita_token, Some(stored_cursor)).await?;
    let live = rita.until_live().await?;
    let ServerFrame::Live { cursor: live_cursor, .. } = live else { anyhow::bail!("expected live, got {live:?}") };
    ensure!(live_cursor == rita.cursor, "`live` at cursor {live_cursor} after replaying up to {}", rita.cursor);
    let replayed = rita.ledger.len();
    let written_during_replay = rita.ledger.iter().filter(|(_, e)| e.id.starts_with("live-")).count();
    ensure!(replayed >= BACKLOG, "the replay holds at least the backlog: {replayed}");
    rita.wait_ledger_len(replayed + AFTER_LIVE).await?;
    let live_acked = writers.stop().await?;
    let (_, metrics) = node.admin_get("/metrics").await?;
    let lagged = metrics.lines().find(|line| line.starts_with("palaver_deliveries_lagged_total")).unwrap_or("-");
    println!(
        "{encoding:?} {limits:?}: replayed {replayed} entries ({written_during_replay} from the concurrent writer); \
         {} concurrent messages in all; {lagged}",
        live_acked.len()
    );
    acked.extend(live_acked);

    // Everything acked reaches rita: wait for the count, then a ping round trip shows nothing
    // else was on its way (every delivery of an acked message is queued before its ack).
    rita.wait_ledger_len(acked.len()).await?;
    rita.ping().await?;
    ensure!(
        rita.ledger.len() == acked.len(),
        "rita got {} entries for {} acked messages",
        rita.ledger.len(),
        acked.len()
    );

    // Cursors dense from the stored one, rooms in order, across both connections.
    check_ledger(&rita.ledger, stored_cursor)?;
    let whole: Vec<_> = first_ledger.iter().chain(rita.ledger.iter()).cloned().collect();
    check_ledger(&whole, 0)?;
    // Exactly the acked messages, each once, with the acked sequence number.
    let mut seen = HashSet::new();
    for (cursor, entry) in &rita.ledger {
        ensure!(entry.kind == EntryKind::Text, "cursor {cursor}: unexpected {:?} entry", entry.kind);
        let key = (entry.room.clone(), entry.id.clone());
        ensure!(seen.insert(key.clone()), "cursor {cursor}: {key:?} delivered twice");
        ensure!(
            acked.get(&key) == Some(&entry.seq),
            "cursor {cursor}: {key:?} seq {} was acked as {:?}",
            entry.seq,
            acked.get(&key)
        );
    }
    // Each room's entries are dense: rita was a member throughout, so she sees every one.
    for room in &rooms {
        let seqs: Vec<u64> = rita.ledger.iter().filter(|(_, e)| &e.room == room).map(|(_, e)| e.seq).collect();
        ensure!(seqs.windows(2).all(|pair| pair[1] == pair[0] + 1), "room {room} has a gap: {seqs:?}");
    }
    Ok(())
}

/// A cursor older than what retention kept gets an explicit `resync` (never a silent gap), and
/// the oldest kept cursor (`floor`) resumes normally.
#[tokio::test]
async fn resume_from_a_trimmed_cursor_answers_resync() -> anyhow::Result<()> {
    let options =
        NodeOptions::default().env("STORE__USER_LOG_MAX_ENTRIES", 10).env("LIMITS__FRAMES_PER_SECOND", 1_000_000);
    let node = Node::start(options).await?;
    let (mut wendy, _) = Client::user(&node, Encoding::Json, "wendy").await?;
    let (mut rita, rita_token) = Client::user(&node, Encoding::MessagePack, "rita").await?;
    let room = wendy.create_room("busy").await?;
    rita.join(&room).await?;
    rita.close().await?;
    let messages: Vec<_> = (0..300).map(|i| (room.clone(), format!("m-{i}"), format!("message {i}"))).collect();
    wendy.say_many(&messages, 32).await?;

    // Rita's log: her join and 300 messages, then one more live message per round.
    for (expected_head, encoding) in (301..).zip([Encoding::Json, Encoding::MessagePack]) {
        let mut client = Client::connect(&node, encoding).await?;
        let ServerFrame::Authenticated { cursor: head, .. } = client.authenticate(&rita_token, Some(0)).await? else {
            anyhow::bail!("authenticate")
        };
        ensure!(head == expected_head, "rita's log head {head}, expected {expected_head}");
        let resync = client.until_live().await?;
        let ServerFrame::Resync { floor, cursor, .. } = resync else {
            anyhow::bail!("expected resync, got {resync:?}")
        };
        ensure!(cursor == head && floor > 0 && floor < head, "resync floor {floor} cursor {cursor} head {head}");
        ensure!(client.ledger.is_empty(), "nothing is replayed from a trimmed cursor");
        // Live delivery continues from the head.
        let (seq, _) = wendy.say(&room, &format!("after-resync-{encoding:?}"), "live").await?;
        let entry = client.wait_for_message(&room, &format!("after-resync-{encoding:?}")).await?;
        ensure!(entry.seq == seq && client.ledger[0].0 == head + 1, "live after resync: {:?}", client.ledger);
        client.close().await?;

        // From the floor itself: everything kept, dense, then live.
        let mut client = Client::connect(&node, encoding).await?;
        client.authenticate(&rita_token, Some(floor)).await?;
        let live = client.until_live().await?;
        ensure!(matches!(live, ServerFrame::Live { .. }), "resume from the floor: {live:?}");
        check_ledger(&client.ledger, floor)?;
        ensure!(client.cursor == head + 1, "replayed through {}, head {}", client.cursor, head + 1);
        client.close().await?;
    }
    Ok(())
}

/// A client that stops reading is disconnected once a write waits longer than
/// `limits.slow_client_timeout_ms` (its queue never grows without bound), and it resumes from
/// the cursor it processed with no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_disconnected_and_resumes_without_gap() -> anyhow::Result<()> {
    let options =
        NodeOptions::default().env("LIMITS__SLOW_CLIENT_TIMEOUT_MS", 300).env("LIMITS__FRAMES_PER_SECOND", 1_000_000);
    let node = Node::start(options).await?;
    let (mut wendy, _) = Client::user(&node, Encoding::Json, "wendy").await?;
    let (mut sloth, token) = Client::user(&node, Encoding::MessagePack, "sloth").await?;
    let room = wendy.create_room("firehose").await?;
    sloth.join(&room).await?;
    sloth.wait_ledger_len(1).await?;

    // 10 MB for a reader that does not read: more than twice what the socket buffers hold here
    // (a receive buffer that is not read from stays small; the send buffer grows to 4 MB).
    let body = "x".repeat(10_000);
    let messages: Vec<_> = (0..1_000).map(|i| (room.clone(), format!("f-{i}"), body.clone())).collect();
    let acks = wendy.say_many(&messages, 32).await?;

    // Still not reading: the node gives up on the socket once a write has waited longer than
    // the slow-client timeout. (Reading right after the acks would race it: with fast commits
    // the acks can all be back before the node's writes have waited that long.)
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = node.admin_get("/metrics").await?;
        let closed_count = metrics
            .lines()
            .find_map(|l| l.strip_prefix("palaver_slow_clients_closed_total "))
            .and_then(|n| n.trim().parse::<u64>().ok());
        if closed_count.is_some_and(|n| n > 0) {
            break;
        }
        ensure!(Instant::now() < deadline, "the node never cut the slow reader off");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Now read: what the socket buffers held, then the end of the connection.
    let closed = sloth.closed().await?;
    ensure!(sloth.ledger.len() < 1 + acks.len(), "the slow reader was cut off ({closed:?}) before getting everything");
    check_ledger(&sloth.ledger, 0)?;
    let (_, metrics) = node.admin_get("/metrics").await?;
    let closed_count =
        metrics.lines().find_map(|l| l.strip_prefix("palaver_slow_clients_closed_total ")).map(str::trim);
    ensure!(closed_count.is_some_and(|n| n != "0"), "the node counts it: {closed_count:?}");

    // Resume from what it processed.
    let before = sloth.ledger.clone();
    let mut sloth = Client::connect(&node, Encoding::MessagePack).await?;
    let cursor = before.last().map_or(0, |(c, _)| *c);
    sloth.authenticate(&token, Some(cursor)).await?;
    sloth.until_live().await?;
    let whole: Vec<_> = before.into_iter().chain(sloth.ledger.iter().cloned()).collect();
    check_ledger(&whole, 0)?;
    ensure!(whole.len() == 1 + acks.len(), "{} entries for a join and {} messages", whole.len(), acks.len());
    Ok(())
}
