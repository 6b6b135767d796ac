//! Cross-node chat: users connected to different nodes of one cluster talk in rooms owned by
//! any node; order holds and nothing is lost or doubled (the ledger says so). Also the
//! operator view and the single-node default (no cluster port unless configured). The chat test
//! also runs with large rooms (every room past two members), where entries travel without a
//! user-log cursor and clients resume from their position in each room, and members on a node
//! other than the owner come and go while a large room runs. Deliveries go only to nodes with
//! a member connected, and a member moving between nodes under traffic misses nothing.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tests::cluster::{check_everyone, Chatter, Cluster, ClusterOptions, Traffic};
use tests::{Client, Encoding, Node, NodeOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_nodes_chat_in_order() -> anyhow::Result<()> {
    chat_in_order(ClusterOptions::default(), false).await
}

/// The same in large rooms: with `fanout_max_members = 2` each room becomes large at its third
/// member's join. Half-way through, every user loses their connection and resumes on another
/// node, presenting their position in each room; the replay must continue each room exactly
/// where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_nodes_chat_in_order_in_large_rooms() -> anyhow::Result<()> {
    chat_in_order(ClusterOptions::large_rooms(), true).await
}

async fn chat_in_order(options: ClusterOptions, large: bool) -> anyhow::Result<()> {
    let cluster = Cluster::start_with(3, options).await?;
    let result = async {
        // One user per node; rooms created on each node, so owners differ from creators.
        let urls = Arc::new(Mutex::new(cluster.urls()));
        let mut chatters = Vec::new();
        for (i, name) in ["ann", "ben", "cat"].iter().enumerate() {
            chatters.push(Chatter::new(urls.clone(), name, i).await?);
        }
        // At least six rooms, spread over nodes: at least two distinct owners. Rendezvous
        // hashing puts six random ids on one node one time in 243, so more rooms are made then.
        let mut rooms = Vec::new();
        let mut owners = HashSet::new();
        for i in 0..30 {
            if rooms.len() >= 6 && owners.len() >= 2 {
                break;
            }
            let creator = i % 3;
            let room = chatters[creator].create_room(&format!("room {i}")).await?;
            for (j, chatter) in chatters.iter_mut().enumerate() {
                if j != creator {
                    chatter.join(&room).await?;
                }
            }
            let owner = cluster.owner(0, &room).await?;
            // Every node agrees on the owner.
            for i in 1..3 {
                assert_eq!(cluster.owner(i, &room).await?, owner, "nodes disagree on the owner of {room}");
            }
            owners.insert(owner);
            rooms.push(room);
        }
        assert!(owners.len() >= 2, "{} rooms all on {owners:?}", rooms.len());
        // Everyone sends to every room, interleaved.
        for round in 0..10 {
            if large && round == 4 {
                // Everyone drops off; each reconnects (to the next node) at their next send,
                // the later ones with messages to catch up on.
                chatters.iter_mut().for_each(Chatter::disconnect);
            }
            for (c, chatter) in chatters.iter_mut().enumerate() {
                for room in &rooms {
                    chatter.say(room, &format!("{c}-{round}"), &format!("round {round} from {c}")).await?;
                }
            }
        }
        let count = check_everyone(&mut chatters).await?;
        assert_eq!(count, 3 * 10 * rooms.len());
        for chatter in &chatters {
            let expected = usize::from(large);
            assert_eq!(chatter.reconnects, expected, "{} reconnected unexpectedly in a stable cluster", chatter.user);
            assert!(chatter.acked.iter().all(|(_, _, _, duplicate)| !duplicate));
            if large {
                // Every room is large for everyone, and the resume was a seam inside them.
                for room in &rooms {
                    assert!(
                        chatter.room_ledger.iter().any(|e| &e.room == room),
                        "{}: nothing of {room} arrived as a large room",
                        chatter.user
                    );
                }
                let resumes = chatter.large_room_resumes();
                assert!(
                    resumes.iter().any(|r| r.rooms.len() == rooms.len()),
                    "{} never resumed presenting its position in every room: {:?}",
                    chatter.user,
                    chatter.resumes
                );
            } else {
                assert!(chatter.room_ledger.is_empty(), "{}: small rooms arrived as large", chatter.user);
            }
        }
        // Cross-node traffic really happened.
        let (_, metrics) = cluster.node(0).admin_get("/metrics").await?;
        assert!(
            metrics.lines().any(|l| l.starts_with("palaver_cluster_deliveries_received_total ") && !l.ends_with(" 0")),
            "{metrics}"
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_view_shows_nodes_rooms_and_owners() -> anyhow::Result<()> {
    let cluster = Cluster::start(2).await?;
    let (mut alice, _) = Client::user(cluster.node(0), Encoding::Json, "alice").await?;
    let room = alice.create_room("ops").await?;
    alice.say(&room, "m1", "hello").await?;
    let status = cluster.status(1, &format!("?room={room}")).await?;
    assert_eq!(status["node"], "n2");
    assert_eq!(status["cluster"]["live"], serde_json::json!(["n1", "n2"]));
    assert_eq!(status["cluster"]["serving"], true);
    let owner = status["room"]["owner"].as_str().unwrap().to_string();
    assert_eq!(status["room"]["claimed"]["node"], owner.as_str(), "{status}");
    let owner_index = cluster.index_of(&owner).unwrap();
    let owner_status = cluster.status(owner_index, "").await?;
    assert!(owner_status["rooms"].as_array().unwrap().iter().any(|r| r == room.as_str()), "{owner_status}");
    let n1 = cluster.status(0, "").await?;
    assert_eq!(n1["connections"], 1);
    Ok(())
}

#[tokio::test]
async fn a_single_node_has_no_cluster() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let (code, body) = node.admin_get("/cluster?room=x").await?;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body)?;
    assert!(status["cluster"].is_null(), "{status}");
    assert_eq!(status["room"]["owner"], "palaver-1");
    assert!(!node.log().contains("cluster started"));
    Ok(())
}

/// When the fan-out of deliveries from another node falls behind, the node does not queue them
/// without bound (`cluster.delivery_queue_len`): it marks the recipients lagged and their
/// connections catch up, from the node's recent entries of the room (every arriving entry is
/// kept there before any is shed) and from the store for what those do not hold. Here the
/// queue holds one delivery and a burst of 400 messages goes to 12 receivers on a node that
/// does not own the room: some deliveries are shed, and every receiver still gets every
/// message exactly once, in order. Then the same without recent entries: all from the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_shed_under_load_are_caught_up_from_recent_entries_or_the_store() -> anyhow::Result<()> {
    let from_memory = shed_burst(None).await?;
    anyhow::ensure!(from_memory > 0, "the receivers caught up from the store only");
    let from_memory = shed_burst(Some(0)).await?;
    anyhow::ensure!(from_memory == 0, "{from_memory} entries replayed from memory with none kept");
    Ok(())
}

/// A burst that the receivers' node sheds (with `tail_bytes` of recent entries if given);
/// returns how many entries that node replayed from memory.
async fn shed_burst(tail_bytes: Option<usize>) -> anyhow::Result<u64> {
    let mut options = ClusterOptions::large_rooms();
    options.env.extend([
        ("CLUSTER__DELIVERY_QUEUE_LEN".to_string(), "1".to_string()),
        ("LIMITS__FRAMES_PER_SECOND".to_string(), "1000000".to_string()),
    ]);
    if let Some(bytes) = tail_bytes {
        options.env.push(("LIMITS__LARGE_ROOM_TAIL_BYTES".to_string(), bytes.to_string()));
    }
    let cluster = Cluster::start_with(2, options).await?;
    let result = async {
        let away = burst_to_the_other_node(&cluster, 12, 400).await?;
        let shed = metric(&cluster, away, "palaver_cluster_deliveries_shed_total").await?;
        anyhow::ensure!(shed > 0, "no delivery was shed, so this test proved nothing");
        let from_memory = metric(&cluster, away, "palaver_replayed_from_memory_total").await?;
        let replayed = metric(&cluster, away, "palaver_replayed_total").await?;
        println!(
            "{shed} of 400 deliveries shed on the receivers' node; every receiver got all 400; \
             {replayed} entries replayed, {from_memory} of them from recent entries"
        );
        Ok::<_, anyhow::Error>(from_memory)
    }
    .await;
    result.map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs()))
}

/// The owner commits a burst in batches, and hands each batch's entries of a large room to the
/// other nodes as runs (the member list once per run): each entry still reaches each member
/// once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_crosses_nodes_in_runs_each_entry_once_in_order() -> anyhow::Result<()> {
    let mut options = ClusterOptions::large_rooms();
    options.env.push(("LIMITS__FRAMES_PER_SECOND".to_string(), "1000000".to_string()));
    let cluster = Cluster::start_with(2, options).await?;
    let result = async {
        let away = burst_to_the_other_node(&cluster, 12, 400).await?;
        let runs = metric(&cluster, away, "palaver_cluster_delivery_runs_received_total").await?;
        let received = metric(&cluster, away, "palaver_cluster_deliveries_received_total").await?;
        anyhow::ensure!(
            runs > 0,
            "no run crossed the link ({received} single deliveries), so this test proved nothing"
        );
        println!("{received} deliveries reached the receivers' node, {runs} runs among them");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs()))
}

/// A sender on node 0 sends `count` messages (64 in flight) into a large room whose other
/// `receivers` members are all on the node that does not own it; each receiver must get every
/// entry from its join on, once, in order, up to the last message. Returns that node's index.
async fn burst_to_the_other_node(cluster: &Cluster, receivers: usize, count: usize) -> anyhow::Result<usize> {
    let (mut sender, _) = Client::user(cluster.node(0), Encoding::MessagePack, "sid").await?;
    let room = sender.create_room("burst").await?;
    let owner = cluster.owner(0, &room).await?;
    let away = (0..2).find(|&i| cluster.node(i).options.name != owner).expect("two nodes");
    let mut clients = Vec::new();
    for r in 0..receivers {
        let (mut receiver, _) = Client::user(cluster.node(away), Encoding::Json, &format!("rex{r}")).await?;
        receiver.join(&room).await?;
        clients.push(receiver);
    }
    let burst: Vec<_> = (0..count).map(|i| (room.clone(), format!("b-{i}"), format!("burst {i}"))).collect();
    let acks = sender.say_many(&burst, 64).await?;
    let last = acks.iter().map(|(seq, _)| *seq).max().unwrap_or_default();
    for receiver in &mut clients {
        receiver.wait_for_message(&room, &format!("b-{}", count - 1)).await?;
        receiver.ping().await?;
        // From the first entry after its join to the last message, once each, in order.
        let first = receiver.room_ledger.first().map_or(0, |e| e.seq);
        let from = [(room.clone(), first - 1)].into_iter().collect();
        tests::check_room_ledger(&receiver.room_ledger, &from)?;
        anyhow::ensure!(receiver.room_ledger.last().map(|e| e.seq) == Some(last), "{:?} stops early", receiver.user);
    }
    Ok(away)
}

/// An unlabelled counter of node `index`.
async fn metric(cluster: &Cluster, index: usize, name: &str) -> anyhow::Result<u64> {
    let (_, metrics) = cluster.node(index).admin_get("/metrics").await?;
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0))
}

/// A large room's recipients are named by its owner from the member list it keeps; members on
/// another node get its entries through that node's fan-out, which reuses the owner's list while
/// it is unchanged. Here every member but the sender is on the node that does not own the room:
/// a joiner gets everything from its join on, live (the owner must add it to the list before
/// delivering its join: nothing else would make that connection read the room); a leaver gets
/// its own leave and nothing after (the owner must drop it — and the leaver's session would also
/// refuse an entry of a room it no longer follows); a member who joins again gets what follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_leaves_on_another_node_change_who_gets_a_large_rooms_entries() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(2, ClusterOptions::large_rooms()).await?;
    let result = async {
        let (mut sender, _) = Client::user(cluster.node(0), Encoding::MessagePack, "sal").await?;
        let room = sender.create_room("comings and goings").await?;
        let owner = cluster.owner(0, &room).await?;
        let owner_index = (0..2).find(|&i| cluster.node(i).options.name == owner).expect("two nodes");
        // The members connect to the node that does not own the room (the sender's node does
        // not matter).
        let away = 1 - owner_index;
        let mut members = Vec::new();
        for name in ["xia", "yan", "zed"] {
            let (member, _) = Client::user(cluster.node(away), Encoding::Json, name).await?;
            members.push(member);
        }
        let [xia, yan, zed] = &mut members[..] else { unreachable!() };
        xia.join(&room).await?;
        yan.join(&room).await?; // the third member: the room is large from here
        sender.say(&room, "m1", "to xia and yan").await?;
        for member in [&mut *xia, &mut *yan] {
            member.wait_for_message(&room, "m1").await?;
        }
        let req = xia.next_req();
        if let reply @ protocol::ServerFrame::Error { .. } =
            xia.request(protocol::ClientFrame::Leave { req, room: room.clone() }).await?
        {
            anyhow::bail!("leave: {reply:?}");
        }
        sender.say(&room, "m2", "to yan only").await?;
        zed.join(&room).await?;
        sender.say(&room, "m3", "to yan and zed").await?;
        xia.join(&room).await?;
        sender.say(&room, "m4", "to all three").await?;
        for member in [&mut *xia, &mut *yan, &mut *zed] {
            member.wait_for_message(&room, "m4").await?;
            member.ping().await?;
        }
        let texts = |client: &Client| -> Vec<String> {
            client
                .room_ledger
                .iter()
                .chain(client.ledger.iter().map(|(_, entry)| entry))
                .filter(|entry| entry.room == room && entry.kind == protocol::EntryKind::Text)
                .map(|entry| entry.id.clone())
                .collect()
        };
        anyhow::ensure!(texts(xia) == ["m1", "m4"], "xia (left, came back): {:?}", texts(xia));
        anyhow::ensure!(texts(yan) == ["m1", "m2", "m3", "m4"], "yan: {:?}", texts(yan));
        anyhow::ensure!(texts(zed) == ["m3", "m4"], "zed (joined late): {:?}", texts(zed));
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs()))
}

/// Targeted delivery: a room's entries go only to the nodes where a member is connected. A
/// member that keeps moving between the two nodes that do not own the room, while another
/// member sends, must still get every message once and in order: what the owner commits before
/// it has heard of the member's new connection reaches it through the store, read once every
/// peer has applied the presence batch that announced the connection. And the owner must have
/// spared the node the member was not on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_moving_between_nodes_misses_nothing_under_targeted_delivery() -> anyhow::Result<()> {
    let mut options = ClusterOptions::default();
    // A short grace: by the member's next visit to a node its record there has lapsed, so each
    // visit is a connection the owner has not heard of.
    options.env.push(("PRESENCE__GRACE_MS".into(), "100".into()));
    let cluster = Cluster::start_with(3, options).await?;
    let result = async {
        let (mut creator, _) = Client::user(cluster.node(0), Encoding::Json, "creator").await?;
        let room = cluster.room_owned_by(&mut creator, 0).await?;
        let urls = cluster.urls();
        let owner_side = Arc::new(Mutex::new(vec![urls[0].clone()]));
        let elsewhere = Arc::new(Mutex::new(vec![urls[1].clone(), urls[2].clone()]));
        let mut sender = Chatter::new(owner_side, "sender", 0).await?;
        let mut mover = Chatter::new(elsewhere, "mover", 0).await?;
        sender.join(&room).await?;
        mover.join(&room).await?;
        let traffic = Traffic::start(vec![sender], std::slice::from_ref(&room), 200, Duration::from_millis(15));
        // Visits of 300 ms, alternating between the two nodes: each new connection starts
        // while messages keep coming.
        while traffic.acked.load(std::sync::atomic::Ordering::Relaxed) < 190 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            mover.disconnect();
            // Any request reconnects (to the other node) and resumes; joining again is one.
            mover.join(&room).await?;
        }
        let mut chatters = traffic.finish().await?;
        chatters.push(mover);
        let checked = check_everyone(&mut chatters).await?;
        let moves = chatters[1].reconnects;
        let spared = metric(&cluster, 0, "palaver_cluster_deliveries_spared_total").await?;
        anyhow::ensure!(moves >= 4, "the member moved only {moves} times: the test proved little");
        anyhow::ensure!(spared > 0, "the owner sent every delivery to both other nodes: nothing was targeted");
        println!("{checked} messages, the member moved {moves} times, {spared} deliveries spared");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs()))
}
