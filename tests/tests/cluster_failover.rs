//! Nodes leaving and joining under traffic: kill -9 of a room's owner, SIGTERM scale-down,
//! scale-up. In each, every acked message reaches every member exactly once, in room order.
//! The kill -9 test also runs with large rooms, whose clients resume by room position.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::cluster::{
    check_everyone, placement_owner, setup_chatters, Chatter, Cluster, ClusterOptions, Traffic, TEST_COOKIE,
};
use tests::{Client, Encoding};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_rooms_owner_under_traffic_loses_nothing() -> anyhow::Result<()> {
    kill_9_of_a_rooms_owner_under_traffic(ClusterOptions::default(), false).await
}

/// The same with large rooms (`fanout_max_members = 2`: the three chatters make every room
/// large): the victim's client resumes on a survivor from its cursor and its position in each
/// room, and still gets every acked message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_a_rooms_owner_under_traffic_loses_nothing_in_large_rooms() -> anyhow::Result<()> {
    kill_9_of_a_rooms_owner_under_traffic(ClusterOptions::large_rooms(), true).await
}

async fn kill_9_of_a_rooms_owner_under_traffic(options: ClusterOptions, large: bool) -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(3, options).await?;
    let urls = Arc::new(Mutex::new(cluster.urls()));
    let result = async {
        let (chatters, rooms) = setup_chatters(&cluster, &urls, 3).await?;
        let victim_name = cluster.owner(0, &rooms[0]).await?;
        let victim = cluster.index_of(&victim_name).unwrap();
        let traffic = Traffic::start(chatters, &rooms, 40, Duration::from_millis(20));
        traffic.wait_acked(20).await?;
        cluster.kill(victim).await?;
        let killed_at = Instant::now();
        *urls.lock().unwrap() = cluster.urls();
        // Time until the victim's room takes a message again, through a survivor.
        let survivor = cluster.running()[0];
        let mut probe = Chatter::new(urls.clone(), "probe", survivor).await?;
        probe.join(&rooms[0]).await?;
        probe.say(&rooms[0], "probe-1", "after the kill").await?;
        let rehomed = killed_at.elapsed();
        let mut chatters = traffic.finish().await?;
        let count = check_everyone(&mut chatters).await?;
        assert_eq!(count, 3 * 40);
        assert!(chatters[victim].reconnects >= 1, "the victim's client must have moved");
        for chatter in &chatters {
            let in_large_rooms = rooms.iter().all(|room| chatter.room_ledger.iter().any(|e| &e.room == room));
            assert_eq!(in_large_rooms, large, "{}: rooms large is not {large}", chatter.user);
        }
        if large {
            // The victim's client resumed inside the rooms' streams, presenting its positions
            // (check_everyone found its room ledger dense across the seam).
            let resumes = chatters[victim].large_room_resumes();
            assert!(!resumes.is_empty(), "no resume with large-room positions: {:?}", chatters[victim].resumes);
            println!("large rooms: the victim's client resumed with {:?}", resumes[0]);
        }
        let new_owner = cluster.owner(survivor, &rooms[0]).await?;
        assert_ne!(new_owner, victim_name);
        cluster.wait_converged().await?;
        println!(
            "kill -9 of {victim_name} → first ack in its re-homed room after {rehomed:?} (heartbeat timeout {} ms)",
            cluster.options.heartbeat_timeout_ms
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_scale_down_3_to_2_under_traffic_loses_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let urls = Arc::new(Mutex::new(cluster.urls()));
    let result = async {
        let (chatters, rooms) = setup_chatters(&cluster, &urls, 4).await?;
        // Leave with the node that owns the most rooms' traffic: the owner of the first room.
        let leaver = cluster.index_of(&cluster.owner(0, &rooms[0]).await?).unwrap();
        let traffic = Traffic::start(chatters, &rooms, 40, Duration::from_millis(20));
        traffic.wait_acked(20).await?;
        *urls.lock().unwrap() =
            cluster.running().into_iter().filter(|&i| i != leaver).map(|i| cluster.node(i).ws_url()).collect();
        cluster.terminate(leaver).await?;
        // The remaining two agree at once (the leaver said goodbye) and keep a quorum.
        cluster.wait_converged().await?;
        // It said goodbye: it no longer counts towards the quorum (one more failure would
        // otherwise stop the remaining two).
        for i in cluster.running() {
            let known = cluster.status(i, "").await?["cluster"]["known"].as_array().map_or(0, Vec::len);
            assert_eq!(known, 2, "{} still counts the leaver", cluster.member(i).name);
        }
        let mut chatters = traffic.finish().await?;
        let count = check_everyone(&mut chatters).await?;
        assert_eq!(count, 3 * 40);
        assert!(chatters[leaver].reconnects >= 1, "the leaver's client must have been sent elsewhere");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_up_2_to_3_under_traffic_moves_rooms_without_reconnects() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(2).await?;
    let urls = Arc::new(Mutex::new(cluster.urls()));
    let result = async {
        let (mut chatters, mut rooms) = setup_chatters(&cluster, &urls, 2).await?;
        // Make sure some rooms will move to the new node n3.
        while rooms.iter().filter(|room| placement_owner(room, &["n1", "n2", "n3"]) == "n3").count() < 2 {
            let room = chatters[0].create_room("more").await?;
            chatters[1].join(&room).await?;
            rooms.push(room);
        }
        let traffic = Traffic::start(chatters, &rooms, 120, Duration::from_millis(25));
        traffic.wait_acked(20).await?;
        let joined_at = Instant::now();
        let n3 = cluster.add_node().await?;
        let converged = joined_at.elapsed();
        let mut chatters = traffic.finish().await?;
        let count = check_everyone(&mut chatters).await?;
        assert_eq!(count, 2 * 120);
        for chatter in &chatters {
            assert_eq!(chatter.reconnects, 0, "{} reconnected; scale-up must not disturb clients", chatter.user);
        }
        let moved: Vec<&String> =
            rooms.iter().filter(|room| placement_owner(room, &["n1", "n2", "n3"]) == "n3").collect();
        let served = cluster.status(n3, "").await?;
        for room in &moved {
            assert_eq!(cluster.owner(0, room).await?, "n3", "placement differs between harness and node");
            assert!(
                served["rooms"].as_array().unwrap().iter().any(|r| r == room.as_str()),
                "n3 did not take {room}: {served}"
            );
        }
        println!("scale-up: n3 started, joined and was live on every node after {converged:?}");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs()))
}

/// POST /cluster/forget with the cookie, on the admin port of node `index` (which has no admin
/// token, so the cookie authorises it).
async fn forget(cluster: &Cluster, index: usize, node: &str, cookie: &str) -> anyhow::Result<(u16, String)> {
    let request = format!(
        "POST /cluster/forget?node={node} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {cookie}\r\nContent-Length: 0\r\n\r\n"
    );
    cluster.node(index).admin_raw(&request).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_nodes_count_for_the_quorum_until_an_operator_forgets_them() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let result = async {
        cluster.kill(2).await?;
        let two = vec!["n1".to_string(), "n2".to_string()];
        cluster.wait_for_views(&[0, 1], &two, true).await?;
        // Refused: a wrong cookie, this node itself, a live node, an unknown node.
        assert_eq!(forget(&cluster, 0, "n3", "not-the-cookie").await?.0, 401);
        assert_eq!(forget(&cluster, 0, "n1", TEST_COOKIE).await?.0, 409);
        assert_eq!(forget(&cluster, 0, "n2", TEST_COOKIE).await?.0, 409);
        assert_eq!(forget(&cluster, 0, "zed", TEST_COOKIE).await?.0, 409);
        let (status, body) = forget(&cluster, 0, "n3", TEST_COOKIE).await?;
        assert_eq!(status, 200, "{body}");
        // n2 learns it from n1's heartbeats.
        let deadline = Instant::now() + tests::WAIT;
        while cluster.status(1, "").await?["cluster"]["known"].as_array().map_or(0, Vec::len) != 2 {
            assert!(Instant::now() < deadline, "n2 did not learn that n3 was forgotten");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // n2 dies too: n1 alone is 1 of 2 known nodes, no quorum, until n2 is forgotten as well.
        cluster.kill(1).await?;
        cluster.wait_for_views(&[0], &["n1".to_string()], false).await?;
        assert_eq!(forget(&cluster, 0, "n2", TEST_COOKIE).await?.0, 200);
        cluster.wait_for_views(&[0], &["n1".to_string()], true).await?;
        let (mut alice, _) = Client::user(cluster.node(0), Encoding::Json, "alice").await?;
        let room = alice.create_room("after the losses").await?;
        alice.say(&room, "m1", "still here").await?;
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs()))
}
