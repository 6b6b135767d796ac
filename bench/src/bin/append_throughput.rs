//! `append_throughput`: appends per second into the SQLite store, with 32 concurrent senders,
//! for a 1-member and a 100-member room. The store alone, without a node, sockets or rooms'
//! actors: what group commit sustains on this machine's disk. A program rather than a test,
//! so `cargo test` does not spend its time measuring; it prints figures and fails only when an
//! append fails.
//!
//! `cargo run --release -p bench --bin append_throughput`

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use protocol::{EntryKind, RoomKind};
use store::sqlite::{SqliteOptions, SqliteStore};
use store::{AppendRequest, Epoch, MembershipLimits, NewRoom, Store};

const LIMITS: MembershipLimits =
    MembershipLimits { max_room_members: 1_000, max_rooms_per_user: 1_000, fanout_max_members: 100_000 };

const SENDERS: usize = 32;

fn text(room: &str, epoch: Epoch, from: &str, id: &str) -> AppendRequest {
    AppendRequest {
        room: room.into(),
        epoch,
        kind: EntryKind::Text,
        from: from.into(),
        id: id.into(),
        user: None,
        body: format!("body of {id}"),
        ts: 1,
        limits: LIMITS,
        details: Default::default(),
        rules: store::MessageRules { edit_window_ms: 60_000, max_reactions_per_message: 20 },
    }
}

/// Users `names` and a room of them, claimed; returns the epoch.
async fn setup(store: &dyn Store, room: &str, names: &[String]) -> anyhow::Result<Epoch> {
    for name in names {
        store.create_user(name, "hash", 1).await?;
    }
    let new_room = NewRoom {
        id: room.into(),
        name: room.into(),
        kind: RoomKind::Group,
        private: false,
        creator: names[0].clone(),
        members: names.to_vec(),
        ts: 1,
    };
    store.create_room(new_room, LIMITS).await?;
    Ok(store.claim_room(room, "node-1").await?)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    for (members, appends) in [(1usize, 4_000usize), (100, 1_000)] {
        let dir = tempfile::tempdir()?;
        let store = Arc::new(SqliteStore::open(SqliteOptions::new(dir.path().join("palaver.db")))?);
        let names: Vec<String> = (0..members).map(|n| format!("user{n}")).collect();
        let epoch = setup(store.as_ref(), "r", &names).await.context("setting up the room")?;
        let before = store.stats();
        let started = Instant::now();
        let tasks: Vec<_> = (0..SENDERS)
            .map(|task| {
                let store = Arc::clone(&store);
                tokio::spawn(async move {
                    for n in 0..appends / SENDERS {
                        store.append(text("r", epoch, "user0", &format!("t{task}-{n}"))).await?;
                    }
                    Ok::<_, anyhow::Error>(())
                })
            })
            .collect();
        for task in tasks {
            task.await?.context("append")?;
        }
        let elapsed = started.elapsed();
        let after = store.stats();
        let done = (appends / SENDERS * SENDERS) as f64;
        let transactions = (after.write_transactions - before.write_transactions).max(1);
        println!(
            "sqlite append throughput: {members} member(s), {done} appends by {SENDERS} senders: {:.0} appends/s, \
             {:.0} pointers/s, mean batch {:.1} requests ({} build)",
            done / elapsed.as_secs_f64(),
            done * members as f64 / elapsed.as_secs_f64(),
            (after.write_requests - before.write_requests) as f64 / transactions as f64,
            if cfg!(debug_assertions) { "debug" } else { "release" },
        );
    }
    Ok(())
}
