//! Session tests driven through channels instead of a socket, against the real SQLite store:
//! the seam between replay and live delivery, overflow of the delivery inbox, greeting rules
//! and shutdown.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use protocol::{decode_server, encode_client, ClientFrame, Encoding, EntryKind, ErrorCode, RoomKind, ServerFrame};

use super::*;
use crate::auth::{AuthConfig, Authenticator};
use crate::limits::Limits;
use crate::room::AppendCommand;
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{HistoryPage, NewRoom, Store, StoreError};

const WAIT: Duration = Duration::from_secs(30);

struct Fixture {
    hub: Arc<Hub>,
    room: String,
    _dir: tempfile::TempDir,
}

/// A hub on a fresh SQLite store with users `alice` and `bob` in one room.
async fn fixture(limits: Limits) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(SqliteOptions::new(dir.path().join("test.db"))).unwrap();
    let store: Arc<dyn Store> = Arc::new(store);
    let auth = Authenticator::new(AuthConfig::for_tests()).unwrap();
    for user in ["alice", "bob"] {
        store.create_user(user, "unused-hash", 0).await.unwrap();
    }
    let room = NewRoom {
        id: "r_test".into(),
        name: "test".into(),
        kind: RoomKind::Group,
        private: false,
        creator: "alice".into(),
        members: vec!["alice".into(), "bob".into()],
        ts: 0,
    };
    store.create_room(room, limits.membership()).await.unwrap();
    let hub = Hub::new("test-node".into(), limits, Default::default(), store, auth);
    Fixture { hub, room: "r_test".into(), _dir: dir }
}

/// A session on channels: frames go in as `Wire`, frames come out decoded.
struct Conn {
    to_session: mpsc::Sender<Result<Wire, WireError>>,
    from_session: mpsc::Receiver<Wire>,
    task: tokio::task::JoinHandle<()>,
}

impl Conn {
    fn open(hub: &Arc<Hub>) -> Conn {
        Conn::open_with_socket_buffer(hub, 64)
    }

    /// `socket_buffer` frames fit between the session and the test before the session's
    /// writes block, like a socket whose reader stopped reading.
    fn open_with_socket_buffer(hub: &Arc<Hub>, socket_buffer: usize) -> Conn {
        let (to_session, session_rx) = mpsc::channel(64);
        let (session_tx, from_session) = mpsc::channel(socket_buffer);
        let task = tokio::spawn(run_session(hub.clone(), Peer { addr: "test".into() }, session_tx, session_rx));
        Conn { to_session, from_session, task }
    }

    async fn send(&mut self, frame: ClientFrame) {
        let text = String::from_utf8(encode_client(Encoding::Json, &frame)).unwrap();
        self.to_session.send(Ok(Wire::Text(text))).await.unwrap();
    }

    async fn recv_wire(&mut self) -> Wire {
        tokio::time::timeout(WAIT, self.from_session.next()).await.expect("a frame in time").expect("session open")
    }

    async fn recv(&mut self) -> ServerFrame {
        match self.recv_wire().await {
            Wire::Text(text) => decode_server(Encoding::Json, text.as_bytes()).unwrap(),
            Wire::SharedText(text) => decode_server(Encoding::Json, text.as_bytes()).unwrap(),
            Wire::Binary(bytes) => decode_server(Encoding::MessagePack, &bytes).unwrap(),
            Wire::Close { code, reason } => panic!("closed: {code} {reason}"),
        }
    }

    /// hello + authenticate as `user`, resuming from `cursor` if given.
    async fn login(&mut self, hub: &Hub, user: &str, cursor: Option<u64>) -> u64 {
        self.send(ClientFrame::Hello { versions: vec![1], client: None, batch: false }).await;
        assert!(matches!(self.recv().await, ServerFrame::Welcome { .. }));
        let (token, _) = hub.auth().issue_token(user, 0, crate::names::now_ms());
        self.send(ClientFrame::Authenticate { req: 1, token, cursor, rooms: Default::default() }).await;
        match self.recv().await {
            ServerFrame::Authenticated { cursor, .. } => cursor,
            other => panic!("expected authenticated, got {other:?}"),
        }
    }
}

async fn post(hub: &Arc<Hub>, room: &str, from: &str, id: &str) -> u64 {
    let command = AppendCommand {
        kind: EntryKind::Text,
        from: from.into(),
        id: id.into(),
        user: None,
        body: id.into(),
        details: Default::default(),
    };
    let outcome = hub.append(room, command).await.unwrap();
    outcome.await.unwrap().unwrap().delivery.entry.seq
}

/// Receive `message` frames until cursor `until`, checking each arrives exactly once, in order.
async fn collect_until(conn: &mut Conn, mut last: u64, until: u64) -> BTreeMap<u64, String> {
    let mut seen = BTreeMap::new();
    while last < until {
        if let ServerFrame::Message { cursor: Some(cursor), entry } = conn.recv().await {
            assert_eq!(cursor, last + 1, "cursors arrive dense and once (got {cursor} after {last})");
            last = cursor;
            seen.insert(cursor, entry.id);
        }
    }
    seen
}

#[tokio::test]
async fn resume_while_writing_has_no_gap_and_no_duplicate_at_the_seam() {
    let f = fixture(Limits { replay_page_len: 7, ..Limits::default() }).await;
    for i in 0..40 {
        post(&f.hub, &f.room, "alice", &format!("before-{i}")).await;
    }
    // bob's log: 2 joins + 40 messages. He resumes from cursor 5 while alice keeps writing.
    let writer = {
        let hub = f.hub.clone();
        let room = f.room.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                post(&hub, &room, "alice", &format!("during-{i}")).await;
            }
        })
    };
    let mut bob = Conn::open(&f.hub);
    bob.login(&f.hub, "bob", Some(5)).await;
    writer.await.unwrap();
    let seen = collect_until(&mut bob, 5, 102).await;
    assert_eq!(seen.len(), 97);
    let ids: Vec<&String> = seen.values().collect();
    assert_eq!(ids.first().map(|s| s.as_str()), Some("before-3"), "cursor 6 is alice's 4th message");
    assert_eq!(ids.last().map(|s| s.as_str()), Some("during-59"));
}

#[tokio::test]
async fn a_full_inbox_falls_back_to_the_store_and_loses_nothing() {
    // A queue of one and a socket that takes two frames: while bob does not read, his session
    // blocks on the socket and nearly every live delivery overflows.
    let f = fixture(Limits { outbound_queue_len: 1, ..Limits::default() }).await;
    let mut bob = Conn::open_with_socket_buffer(&f.hub, 1);
    let head = bob.login(&f.hub, "bob", None).await;
    for i in 0..50 {
        post(&f.hub, &f.room, "alice", &format!("m{i}")).await;
    }
    assert!(f.hub.metrics().deliveries_lagged_total.load(std::sync::atomic::Ordering::Relaxed) > 0);
    let seen = collect_until(&mut bob, head, head + 50).await;
    assert_eq!(seen.len(), 50);
}

#[tokio::test]
async fn the_first_frame_must_be_hello_and_picks_the_encoding() {
    let f = fixture(Limits::default()).await;
    let mut conn = Conn::open(&f.hub);
    conn.send(ClientFrame::Ping { req: 4 }).await;
    assert!(matches!(conn.recv().await, ServerFrame::Error { code: ErrorCode::HelloRequired, req: Some(4), .. }));
    let hello = protocol::encode_client(
        Encoding::MessagePack,
        &ClientFrame::Hello { versions: vec![1], client: None, batch: false },
    );
    conn.to_session.send(Ok(Wire::Binary(hello.into()))).await.unwrap();
    assert!(matches!(conn.recv_wire().await, Wire::Binary(_)), "a binary hello gets MessagePack answers");
    conn.send(ClientFrame::Ping { req: 5 }).await;
    assert!(matches!(conn.recv_wire().await, Wire::Binary(_)), "the encoding holds for the connection");
}

#[tokio::test]
async fn shutdown_sends_reconnect_with_the_cursor_then_closes() {
    let f = fixture(Limits::default()).await;
    let mut bob = Conn::open(&f.hub);
    let head = bob.login(&f.hub, "bob", None).await;
    post(&f.hub, &f.room, "alice", "last").await;
    collect_until(&mut bob, head, head + 1).await;
    f.hub.begin_shutdown();
    match bob.recv().await {
        ServerFrame::Reconnect { cursor, .. } => assert_eq!(cursor, Some(head + 1)),
        other => panic!("expected reconnect, got {other:?}"),
    }
    assert!(matches!(bob.recv_wire().await, Wire::Close { code: close_code::GOING_AWAY, .. }));
    tokio::time::timeout(WAIT, bob.task).await.unwrap().unwrap();
    assert_eq!(f.hub.connection_counts(), (0, 0), "the session unregistered");
}

#[tokio::test]
async fn sends_of_one_connection_keep_their_order_when_pipelined() {
    let f = fixture(Limits::default()).await;
    let mut alice = Conn::open(&f.hub);
    alice.login(&f.hub, "alice", None).await;
    for i in 0..20u64 {
        alice.send(ClientFrame::send(100 + i, f.room.clone(), format!("p{i}"), "x")).await;
    }
    let mut acks = Vec::new();
    while acks.len() < 20 {
        if let ServerFrame::Ack { req, seq, .. } = alice.recv().await {
            acks.push((req, seq));
        }
    }
    let reqs: Vec<u64> = acks.iter().map(|(req, _)| *req).collect();
    assert_eq!(reqs, (100..120).collect::<Vec<_>>(), "replies come in request order");
    assert!(acks.windows(2).all(|pair| pair[1].1 == pair[0].1 + 1), "room order is send order: {acks:?}");
}

/// Another node claims the room while this node's room actor runs (a pause, a partition): the
/// actor's next append is fenced and writes nothing, the sender is told `unavailable`, and the
/// retry — with the same message id — goes to a fresh actor that claims a newer epoch.
#[tokio::test]
async fn a_room_claimed_elsewhere_fences_the_stale_actor_and_a_retry_succeeds() {
    let fx = fixture(Limits::default()).await;
    let hub = &fx.hub;
    let first = post(hub, &fx.room, "alice", "m1").await;
    let (_, stale_epoch) = hub.store().room_owner(&fx.room).await.unwrap().expect("claimed by the running actor");
    let newer = hub.store().claim_room(&fx.room, "other-node").await.unwrap();
    assert!(newer > stale_epoch);

    let command = |id: &str| AppendCommand {
        kind: EntryKind::Text,
        from: "alice".into(),
        id: id.into(),
        user: None,
        body: id.into(),
        details: Default::default(),
    };
    let refused = hub.append(&fx.room, command("m2")).await.unwrap().await.unwrap();
    assert!(matches!(refused, Err(StoreError::Unavailable(_))), "the stale actor's append: {refused:?}");
    assert_eq!(hub.metrics().fenced_appends_total.load(std::sync::atomic::Ordering::Relaxed), 1);
    let (entries, _) = hub.store().history(&fx.room, HistoryPage::After(first), 10).await.unwrap();
    assert!(entries.is_empty(), "the fenced append wrote {entries:?}");

    // The retry spawns a new actor (the fenced one stopped), which claims the room again. A
    // retry that reaches the fenced actor while it stops (on the rooms' thread) is dropped with
    // it, which a session answers as `unavailable` too.
    let mut retried = None;
    for _ in 0..50 {
        match hub.append(&fx.room, command("m2")).await.unwrap().await {
            Ok(Ok(appended)) => {
                retried = Some(appended);
                break;
            }
            Ok(Err(StoreError::Unavailable(_))) | Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(Err(err)) => panic!("retry: {err}"),
        }
    }
    let appended = retried.expect("the retry succeeds on a fresh actor");
    assert_eq!((appended.delivery.entry.seq, appended.duplicate), (first + 1, false));
    let (_, epoch) = hub.store().room_owner(&fx.room).await.unwrap().unwrap();
    assert!(epoch > newer, "the fresh actor claimed a newer epoch ({epoch} after {newer})");
}

/// Receive `message` frames of large room `room` until seq `until`, checking each arrives once,
/// in order (they carry no cursor).
async fn collect_room_until(conn: &mut Conn, room: &str, mut last: u64, until: u64) {
    while last < until {
        if let ServerFrame::Message { cursor, entry } = conn.recv().await {
            assert_eq!((cursor, entry.room.as_str()), (None, room), "only the large room's entries here");
            assert_eq!(entry.seq, last + 1, "seqs arrive dense and once (got {} after {last})", entry.seq);
            last = entry.seq;
        }
    }
}

fn replayed_from_memory(hub: &Hub) -> u64 {
    hub.metrics().replayed_from_memory_total.load(std::sync::atomic::Ordering::Relaxed)
}

/// A large room (more members than `fanout_max_members`), a queue of one and a socket that
/// takes one frame: while bob does not read, nearly every live delivery overflows.
fn behind_in_a_large_room(tail_bytes: usize) -> Limits {
    Limits { fanout_max_members: 1, outbound_queue_len: 1, large_room_tail_bytes: tail_bytes, ..Limits::default() }
}

#[tokio::test]
async fn a_member_behind_in_a_large_room_catches_up_from_recent_entries() {
    let f = fixture(behind_in_a_large_room(Limits::default().large_room_tail_bytes)).await;
    let mut bob = Conn::open_with_socket_buffer(&f.hub, 1);
    bob.login(&f.hub, "bob", None).await;
    let mut first = 0;
    for i in 0..50 {
        let seq = post(&f.hub, &f.room, "alice", &format!("m{i}")).await;
        first = if i == 0 { seq } else { first };
    }
    assert!(f.hub.metrics().deliveries_lagged_total.load(std::sync::atomic::Ordering::Relaxed) > 0);
    collect_room_until(&mut bob, &f.room, first - 1, first + 49).await;
    assert!(replayed_from_memory(&f.hub) > 0, "the catch-up read the store only");

    // Without recent entries the same catch-up reads the store, and loses nothing either.
    let f = fixture(behind_in_a_large_room(0)).await;
    let mut bob = Conn::open_with_socket_buffer(&f.hub, 1);
    bob.login(&f.hub, "bob", None).await;
    for i in 0..50 {
        let seq = post(&f.hub, &f.room, "alice", &format!("m{i}")).await;
        first = if i == 0 { seq } else { first };
    }
    collect_room_until(&mut bob, &f.room, first - 1, first + 49).await;
    assert_eq!(replayed_from_memory(&f.hub), 0);
}

#[tokio::test]
async fn a_catch_up_reads_the_store_for_what_never_reached_the_recent_entries() {
    let f = fixture(behind_in_a_large_room(Limits::default().large_room_tail_bytes)).await;
    let mut bob = Conn::open(&f.hub);
    bob.login(&f.hub, "bob", None).await;
    let first = post(&f.hub, &f.room, "alice", "m0").await;
    let mut last = first;
    for i in 1..5 {
        last = post(&f.hub, &f.room, "alice", &format!("m{i}")).await;
    }
    collect_room_until(&mut bob, &f.room, first - 1, last).await;
    // Two entries committed by an owner elsewhere whose deliveries never arrived here (a node
    // that died after its commit): the recent entries end at `last`, the store does not.
    let epoch = f.hub.store().claim_room(&f.room, "other-node").await.unwrap();
    for id in ["lost-1", "lost-2"] {
        let request = crate::store::AppendRequest {
            room: f.room.clone(),
            epoch,
            kind: EntryKind::Text,
            from: "alice".into(),
            id: id.into(),
            user: None,
            body: id.into(),
            ts: 0,
            limits: f.hub.limits().membership(),
            details: Default::default(),
            rules: crate::store::MessageRules { edit_window_ms: 60_000, max_reactions_per_message: 20 },
        };
        f.hub.store().append(request).await.unwrap();
    }
    assert_eq!(f.hub.recent_room_entries(&f.room, last - 1, 10).map(|entries| entries.len()), Some(1));
    // The node learns that deliveries may be lost (a node left) and every connection catches
    // up: the recent entries hold bob's position but not what follows it in the store.
    f.hub.catch_up_all();
    collect_room_until(&mut bob, &f.room, last, last + 2).await;
}
