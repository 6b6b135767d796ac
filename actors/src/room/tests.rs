//! Room actor tests against the real SQLite store: who gets each entry of a large room, whose
//! recipients the room's owner names from the member list it keeps (the store names none).
//! Each case checks every connection's deliveries exactly, so a joiner missed, a leaver kept,
//! an entry of a batch given the wrong list or a stale fan-out cache all fail it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use protocol::{EntryKind, RoomKind};

use crate::auth::{AuthConfig, Authenticator};
use crate::hub::{Hub, Registration};
use crate::limits::Limits;
use crate::outbound::Outbound;
use crate::room::AppendCommand;
use crate::store::sqlite::{SqliteOptions, SqliteStore};
use crate::store::{Appended, NewRoom, Store};

const ROOM: &str = "r_large";

/// A hub on a fresh SQLite store with users a–e; room `ROOM` has a and b, and becomes large
/// with its third member.
async fn hub() -> (Arc<Hub>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path().join("test.db"))).unwrap());
    for user in ["a", "b", "c", "d", "e"] {
        store.create_user(user, "unused-hash", 0).await.unwrap();
    }
    let limits = Limits { fanout_max_members: 2, ..Limits::default() };
    let room = NewRoom {
        id: ROOM.into(),
        name: "large".into(),
        kind: RoomKind::Group,
        private: false,
        creator: "a".into(),
        members: vec!["a".into(), "b".into()],
        ts: 0,
    };
    store.create_room(room, limits.membership()).await.unwrap();
    let auth = Authenticator::new(AuthConfig::for_tests()).unwrap();
    (Hub::new("test-node".into(), limits, Default::default(), store, auth), dir)
}

fn command(kind: EntryKind, from: &str, id: &str) -> AppendCommand {
    let user = (kind != EntryKind::Text).then(|| from.to_string());
    AppendCommand { kind, from: from.into(), id: id.into(), user, body: id.into(), details: Default::default() }
}

/// Hand `commands` to the room one after another without waiting (so the committer finds them
/// waiting together and commits them as one batch when it can), then wait for every outcome.
async fn append_all(hub: &Arc<Hub>, commands: Vec<AppendCommand>) -> Vec<Appended> {
    let mut outcomes = Vec::new();
    for command in commands {
        outcomes.push(hub.append(ROOM, command).await.expect("queued"));
    }
    let mut appended = Vec::new();
    for outcome in outcomes {
        appended.push(outcome.await.expect("replied").expect("appended"));
    }
    appended
}

/// The seqs of the room's entries queued for each connection so far (deliveries are queued
/// before the append is acknowledged).
fn drain(connections: &mut BTreeMap<&'static str, Registration>, got: &mut BTreeMap<&'static str, Vec<u64>>) {
    for (name, registration) in connections.iter_mut() {
        while let Some(outbound) = registration.inbox.try_recv() {
            let entries = match &outbound {
                Outbound::RoomRun(run) => run.entries().iter().map(|shared| shared.entry().clone()).collect(),
                Outbound::Deliver { entry, .. } => vec![(**entry).clone()],
                Outbound::Frame(_) => continue,
            };
            for entry in entries {
                assert_eq!(entry.room, ROOM);
                got.entry(name).or_default().push(entry.seq);
            }
        }
    }
}

#[tokio::test]
async fn a_large_rooms_entries_reach_exactly_the_members_at_each_commit() {
    let (hub, _dir) = hub().await;
    // `a2` is a's second device; `e2` connects later, after the fan-out cache was built.
    let mut connections: BTreeMap<&'static str, Registration> = BTreeMap::new();
    for (name, user) in [("a", "a"), ("a2", "a"), ("b", "b"), ("c", "c"), ("d", "d"), ("e", "e")] {
        connections.insert(name, hub.register(user));
    }
    let mut got = BTreeMap::new();

    // seq 3: c's join takes the room past two members (large from here); 4: a message;
    // 5: c leaves; 6: a message c must not get.
    let first = append_all(
        &hub,
        vec![
            command(EntryKind::Join, "c", "j-c"),
            command(EntryKind::Text, "b", "m1"),
            command(EntryKind::Leave, "c", "l-c"),
            command(EntryKind::Text, "a", "m2"),
        ],
    )
    .await;
    assert_eq!(first.iter().map(|a| a.delivery.entry.seq).collect::<Vec<_>>(), [3, 4, 5, 6]);
    assert_eq!(hub.store().room(ROOM).await.unwrap().unwrap().large_since, Some(3));

    // 7–11 handed over together: two joins, a message, a leave and a message, each of which
    // must see the membership its predecessors left.
    append_all(
        &hub,
        vec![
            command(EntryKind::Join, "d", "j-d"),
            command(EntryKind::Join, "e", "j-e"),
            command(EntryKind::Text, "a", "m3"),
            command(EntryKind::Leave, "d", "l-d"),
            command(EntryKind::Text, "b", "m4"),
        ],
    )
    .await;

    // A connection that registers now is reached by the next entry.
    connections.insert("e2", hub.register("e"));
    append_all(&hub, vec![command(EntryKind::Text, "e", "m5")]).await;
    drain(&mut connections, &mut got);

    // A new owner (the actor stopped: idle, or the room moved and came back) continues from
    // the membership in the store: 13: c joins again; 14: a message.
    assert_eq!(hub.stop_rooms_where(|room| room == ROOM), 1);
    for _ in 0..200 {
        if hub.active_rooms().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hub.active_rooms().is_empty(), "the room actor stopped");
    let last = append_all(&hub, vec![command(EntryKind::Join, "c", "j-c2"), command(EntryKind::Text, "b", "m7")]).await;
    assert_eq!(last.iter().map(|a| a.delivery.entry.seq).collect::<Vec<_>>(), [13, 14]);
    drain(&mut connections, &mut got);

    let everything: Vec<u64> = (3..=14).collect();
    let expected: BTreeMap<&str, Vec<u64>> = BTreeMap::from([
        ("a", everything.clone()),
        ("a2", everything.clone()),
        ("b", everything),
        ("c", vec![3, 4, 5, 13, 14]),
        ("d", vec![7, 8, 9, 10]),
        ("e", vec![8, 9, 10, 11, 12, 13, 14]),
        ("e2", vec![12, 13, 14]),
    ]);
    assert_eq!(got, expected);
    assert_eq!(hub.store().members(ROOM).await.unwrap(), ["a", "b", "e", "c"], "the store agrees");
}

/// A room's actor and its committer live and die together: with the committer gone, the room
/// is restarted on the next command (a new claim), not left answering "restarting" forever.
#[tokio::test]
async fn a_room_whose_committer_died_restarts_on_the_next_command() {
    let (hub, _dir) = hub().await;
    let before = append_all(&hub, vec![command(EntryKind::Text, "a", "before")]).await;
    let actor = hub.running_room(ROOM).expect("the room runs after an append");
    let (_, epoch_before) = hub.store().room_owner(ROOM).await.unwrap().expect("claimed");
    actor.send_message(crate::room::RoomMessage::KillCommitter).unwrap();
    // Appends may race the stop and be refused as unavailable (clients retry); within a
    // second one must commit, in a new actor with a new epoch.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let appended = loop {
        let outcome = hub.append(ROOM, command(EntryKind::Text, "a", "after")).await;
        if let Ok(receiver) = outcome {
            if let Ok(Ok(appended)) = receiver.await {
                break appended;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "the room never came back after its committer died");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(appended.delivery.entry.seq, before[0].delivery.entry.seq + 1);
    let (_, epoch_after) = hub.store().room_owner(ROOM).await.unwrap().expect("claimed");
    assert!(epoch_after > epoch_before, "a new actor claims the room again");
}
