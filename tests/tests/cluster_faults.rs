//! Faults short of a clean exit: a hung node (SIGSTOP), a partition, a wrong cookie, two nodes
//! with one name.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tests::cluster::{check_everyone, setup_chatters, Chatter, Cluster, Traffic, TEST_COOKIE};
use tests::{Client, ClientFrame, Encoding, ErrorCode, ServerFrame};

fn names(cluster: &Cluster, nodes: &[usize]) -> Vec<String> {
    let mut names: Vec<String> = nodes.iter().map(|&i| cluster.member(i).name.clone()).collect();
    names.sort();
    names
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_node_is_declared_dead_and_its_stale_rooms_cannot_write() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let urls = Arc::new(Mutex::new(cluster.urls()));
    let result = async {
        let (chatters, rooms) = setup_chatters(&cluster, &urls, 3).await?;
        let victim_name = cluster.owner(0, &rooms[0]).await?;
        let victim = cluster.index_of(&victim_name).unwrap();
        let others: Vec<usize> = cluster.running().into_iter().filter(|&i| i != victim).collect();
        let traffic = Traffic::start(chatters, &rooms, 60, Duration::from_millis(20));
        traffic.wait_acked(20).await?;
        cluster.pause(victim)?;
        let paused_at = Instant::now();
        *urls.lock().unwrap() = cluster.urls();
        // Its TCP links stay open; only the heartbeat timeout can tell.
        cluster.wait_for_views(&others, &names(&cluster, &others), true).await?;
        let detected = paused_at.elapsed();
        let mut probe = Chatter::new(urls.clone(), "probe", 0).await?;
        probe.join(&rooms[0]).await?;
        probe.say(&rooms[0], "probe-1", "while the owner hangs").await?;
        let rehomed = paused_at.elapsed();
        assert_ne!(cluster.owner(others[0], &rooms[0]).await?, victim_name);
        // Wake it: its room actors still hold the old epoch; whatever they try is fenced, and
        // the cluster takes it back in.
        cluster.resume(victim)?;
        cluster.wait_converged().await?;
        *urls.lock().unwrap() = cluster.urls();
        let mut chatters = traffic.finish().await?;
        let count = check_everyone(&mut chatters).await?;
        assert_eq!(count, 3 * 60);
        probe.check()?;
        let (_, metrics) = cluster.node(victim).admin_get("/metrics").await?;
        println!(
            "SIGSTOP of {victim_name}: declared dead by the others after {detected:?}, room re-homed after {rehomed:?} \
             (timeout {} ms); fenced appends on it after SIGCONT: {}",
            cluster.options.heartbeat_timeout_ms,
            metric(&metrics, "palaver_fenced_appends_total")
        );
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minority_side_of_a_partition_does_not_write() -> anyhow::Result<()> {
    let cluster = Cluster::start(3).await?;
    let urls = Arc::new(Mutex::new(cluster.urls()));
    let result = async {
        let (mut chatters, rooms) = setup_chatters(&cluster, &urls, 3).await?;
        for (i, chatter) in chatters.iter_mut().enumerate() {
            chatter.say(&rooms[i], &format!("before-{i}"), "before the partition").await?;
        }
        let minority_name = cluster.owner(0, &rooms[0]).await?;
        let minority = cluster.index_of(&minority_name).unwrap();
        let majority: Vec<usize> = cluster.running().into_iter().filter(|&i| i != minority).collect();
        cluster.partition(&[minority]);
        cluster.wait_for_views(&majority, &names(&cluster, &majority), true).await?;
        cluster.wait_for_views(&[minority], std::slice::from_ref(&minority_name), false).await?;
        let (_, before) = cluster.node(minority).admin_get("/metrics").await?;
        // A client of the minority node is refused: the node may still reach the shared
        // store, but without a quorum it serves no room.
        let (mut lonely, _) = Client::user(cluster.node(minority), Encoding::Json, "lonely").await?;
        let req = lonely.next_req();
        let frame = ClientFrame::send(req, rooms[0].clone(), "minority-1", "lost?");
        match lonely.request(frame).await? {
            ServerFrame::Error { code: ErrorCode::Unavailable, message, .. } => {
                assert!(message.contains("quorum"), "{message}")
            }
            // `lonely` is no member: a refusal for that reason would mean the node looked.
            other => panic!("the minority answered a send with {other:?}"),
        }
        // Nor does it create rooms (their first entries are writes too).
        for frame in [
            ClientFrame::CreateRoom { req: lonely.next_req(), name: "minority room".into(), private: false },
            ClientFrame::OpenDirect { req: lonely.next_req(), user: chatters[majority[0]].user.clone() },
        ] {
            match lonely.request(frame).await? {
                ServerFrame::Error { code: ErrorCode::Unavailable, message, .. } => {
                    assert!(message.contains("quorum"), "{message}")
                }
                other => panic!("the minority created a room: {other:?}"),
            }
        }
        // The majority goes on, in every room (the minority's rooms were re-homed).
        for i in &majority {
            for (r, room) in rooms.iter().enumerate() {
                chatters[*i].say(room, &format!("during-{i}-{r}"), "during the partition").await?;
            }
        }
        let (_, after) = cluster.node(minority).admin_get("/metrics").await?;
        assert_eq!(
            metric(&before, "palaver_entries_appended_total"),
            metric(&after, "palaver_entries_appended_total"),
            "the minority appended during the partition"
        );
        cluster.heal();
        cluster.wait_converged().await?;
        // The minority's own client catches up on what it missed.
        let count = check_everyone(&mut chatters).await?;
        assert_eq!(count, 3 + 2 * 3);
        let history = {
            let (mut reader, _) = Client::user(cluster.node(majority[0]), Encoding::Json, "u0").await?;
            let req = reader.next_req();
            reader
                .request(ClientFrame::History {
                    req,
                    room: rooms[0].clone(),
                    before: None,
                    after: None,
                    limit: Some(100),
                })
                .await?
        };
        let ServerFrame::History { entries, .. } = history else { panic!("history: {history:?}") };
        assert!(entries.iter().all(|e| e.id != "minority-1"), "the minority's send was written");
        Ok::<_, anyhow::Error>(())
    }
    .await;
    result.map_err(|err| anyhow::anyhow!("{err:#}\n{}", cluster.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_cookie_is_refused_with_a_clear_log_line() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1).await?;
    assert_ne!(TEST_COOKIE, "the-wrong-cookie-0123456789");
    let intruder = cluster.spawn_node(vec![("CLUSTER__COOKIE".into(), "the-wrong-cookie-0123456789".into())]).await?;
    let deadline = Instant::now() + tests::WAIT;
    let needle = "the cluster cookie differs";
    while !cluster.node(0).log().contains(needle) || !cluster.node(intruder).log().contains(needle) {
        assert!(Instant::now() < deadline, "no cookie error logged:\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // n1 carries on alone; the intruder never joins, so it serves nothing.
    assert_eq!(cluster.view(0).await?, (vec!["n1".to_string()], true));
    assert_eq!(cluster.view(intruder).await?, (vec!["n2".to_string()], false));
    let (mut alice, _) = Client::user(cluster.node(0), Encoding::Json, "alice").await?;
    let room = alice.create_room("still works").await?;
    alice.say(&room, "m1", "hello").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_with_one_name_are_refused_with_a_clear_log_line() -> anyhow::Result<()> {
    let mut cluster = Cluster::start(1).await?;
    let twin = cluster.spawn_node(vec![("NODE__NAME".into(), "n1".into())]).await?;
    let deadline = Instant::now() + tests::WAIT;
    let needle = "node names must be unique in a cluster";
    while !cluster.node(0).log().contains(needle) || !cluster.node(twin).log().contains(needle) {
        assert!(Instant::now() < deadline, "no duplicate-name error logged:\n{}", cluster.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!cluster.node(0).log().contains("cookie differs"), "misreported as a cookie mismatch");
    // The first n1 carries on; the twin never joins, so it serves nothing.
    assert_eq!(cluster.view(0).await?, (vec!["n1".to_string()], true));
    assert!(!cluster.view(twin).await?.1, "the twin serves");
    let (mut alice, _) = Client::user(cluster.node(0), Encoding::Json, "alice").await?;
    let room = alice.create_room("still works").await?;
    alice.say(&room, "m1", "hello").await?;
    Ok(())
}
