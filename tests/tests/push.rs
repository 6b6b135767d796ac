//! Push notifications (docs/PUSH.md) against the real binary and a push gateway of the
//! `webhook` platform that verifies every request's signature (`tests::push_receivers`): who
//! is pushed (offline members whose settings allow it, never a user online), collapse into one
//! notification per room, the clear after a read, retries while the provider fails, a dead
//! token removing its device, and a push surviving the sending node's kill -9.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use protocol::{NewDevice, Platform};
use serde_json::{json, Value};
use tests::cluster::{Cluster, ClusterOptions};
use tests::push_receivers::webhook::Webhook;
use tests::push_receivers::Receiver;
use tests::{Client, ClientFrame, Encoding, Node, NodeOptions, ServerFrame, TestStore};

const SECRET: &str = "push-gateway-secret-for-tests-0123";
/// `push.delay_ms` in these tests: long enough to tell "before" from "after", short enough
/// to keep them quick.
const DELAY_MS: u64 = 1_000;

/// A node whose webhook platform posts to `gateway` only.
fn options(gateway: &Receiver<Webhook>) -> NodeOptions {
    NodeOptions::default()
        .env("PUSH__WEBHOOK__URL_PREFIXES", format!("[\"{}/\"]", gateway.base_url()))
        .env("PUSH__DELAY_MS", DELAY_MS)
        .env("PUSH__POLL_MS", 50)
        .env("PUSH__RETRY_BASE_MS", 200)
        .env("PUSH__RETRY_MAX_MS", 1_000)
        .env("PUSH__PREVIEWS", "true")
        .env("PUSH__WEBHOOK__SECRET", SECRET)
        .env("PRESENCE__GRACE_MS", 200)
}

/// Register a gateway device named `name` for `client`; its id.
async fn register(
    client: &mut Client,
    gateway: &Receiver<Webhook>,
    name: &str,
    preview: bool,
) -> anyhow::Result<String> {
    let device = NewDevice {
        platform: Platform::Webhook,
        token: Some(gateway.device_url(name)),
        subscription: None,
        app: String::new(),
        locale: String::new(),
        preview,
    };
    let req = client.next_req();
    match client.request(ClientFrame::RegisterDevice { req, device }).await? {
        ServerFrame::Device { device, .. } => Ok(device.id),
        other => bail!("register_device: {other:?}"),
    }
}

/// The notifications device `name` got, in arrival order.
fn notifications(gateway: &Receiver<Webhook>, name: &str) -> Vec<Value> {
    let url = gateway.device_url(name);
    gateway
        .received()
        .into_iter()
        .filter(|push| push.url == url)
        .map(|push| push.body["notification"].clone())
        .collect()
}

/// Wait until device `name` has `n` notifications (or fail after `within`).
async fn wait_for(gateway: &Receiver<Webhook>, name: &str, n: usize, within: Duration) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + within;
    loop {
        let got = notifications(gateway, name);
        if got.len() >= n {
            return Ok(got);
        }
        ensure!(Instant::now() < deadline, "device {name} got {} of {n} notifications: {got:?}", got.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Long enough after the delay for a push that was going to happen to have happened.
async fn past_the_delay() {
    tokio::time::sleep(Duration::from_millis(DELAY_MS * 2 + 500)).await;
}

/// Log `user`'s connection out and wait until the node counts them offline (past the grace).
async fn go_offline(client: Client) -> anyhow::Result<()> {
    client.close().await?;
    tokio::time::sleep(Duration::from_millis(600)).await;
    Ok(())
}

async fn request_ok(client: &mut Client, frame: ClientFrame) -> anyhow::Result<()> {
    match client.request(frame).await? {
        ServerFrame::Ok { .. } => Ok(()),
        other => bail!("expected ok: {other:?}"),
    }
}

#[tokio::test]
async fn offline_members_get_one_notification_per_room_and_online_ones_none() -> anyhow::Result<()> {
    let gateway = Receiver::<Webhook>::start(SECRET).await?;
    let node = Node::start(options(&gateway)).await?;
    let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
    let (mut bob, _) = Client::user(&node, Encoding::Json, "bob").await?;
    let (mut carol, _) = Client::user(&node, Encoding::Json, "carol").await?;
    let room = alice.create_room("general").await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    register(&mut alice, &gateway, "alice-phone", true).await?;
    register(&mut bob, &gateway, "bob-phone", true).await?;
    register(&mut bob, &gateway, "bob-laptop", false).await?;
    register(&mut carol, &gateway, "carol-phone", true).await?;
    // A URL outside push.webhook.url_prefixes: the node never posts there.
    let elsewhere = Receiver::<Webhook>::start(SECRET).await?;
    register(&mut bob, &elsewhere, "bob-elsewhere", true).await?;
    go_offline(bob).await?;

    for (i, body) in ["lunch?", "at noon", "the usual place"].iter().enumerate() {
        alice.say(&room, &format!("m{i}"), body).await?;
    }
    wait_for(&gateway, "bob-phone", 1, Duration::from_secs(10)).await?;
    past_the_delay().await;
    let phone = notifications(&gateway, "bob-phone");
    ensure!(phone.len() == 1, "three messages in a short time are one notification: {phone:?}");
    let note = &phone[0];
    ensure!(note["kind"] == "alert" && note["room"] == room && note["room_name"] == "general", "{note}");
    ensure!(note["count"] == 3 && note["sender"] == "alice", "{note}");
    ensure!(note["preview"] == "the usual place", "previews where the server and device allow: {note}");
    ensure!(note["badge"].as_u64().unwrap_or(0) >= 3, "the badge counts the unread: {note}");
    let laptop = notifications(&gateway, "bob-laptop");
    ensure!(laptop.len() == 1 && laptop[0]["count"] == 3, "every device of the user: {laptop:?}");
    ensure!(laptop[0].get("preview").is_none_or(Value::is_null), "no preview without the device's consent: {laptop:?}");
    ensure!(!laptop[0].to_string().contains("usual place"), "the text never leaves without consent: {laptop:?}");
    ensure!(notifications(&gateway, "carol-phone").is_empty(), "carol was online");
    ensure!(notifications(&gateway, "alice-phone").is_empty(), "nobody is told of their own messages");
    ensure!(gateway.rejections().is_empty(), "every request was signed: {:?}", gateway.rejections());
    ensure!(elsewhere.requests() == 0, "a device URL outside the gateways' prefixes got a request");
    Ok(())
}

#[tokio::test]
async fn settings_decide_and_a_read_after_the_push_clears_it() -> anyhow::Result<()> {
    let gateway = Receiver::<Webhook>::start(SECRET).await?;
    let node = Node::start(options(&gateway)).await?;
    let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
    let (mut bob, token) = Client::user(&node, Encoding::Json, "bob").await?;
    let mut rooms = Vec::new();
    for name in ["silent", "muted", "mentions"] {
        let room = alice.create_room(name).await?;
        bob.join(&room).await?;
        rooms.push(room);
    }
    let (silent, muted, mentions) = (rooms[0].clone(), rooms[1].clone(), rooms[2].clone());
    register(&mut bob, &gateway, "bob-phone", false).await?;
    let settings = |req, room: &str, level: &str, muted_until: Option<u64>| json!({ "type": "set_notifications", "req": req, "room": room, "level": level, "muted_until": muted_until });
    for (room, level, until) in
        [(&silent, "none", None), (&muted, "all", Some(tests::now_ms() + 3_600_000)), (&mentions, "mentions", None)]
    {
        let req = bob.next_req();
        let frame: ClientFrame = serde_json::from_value(settings(req, room, level, until))?;
        request_ok(&mut bob, frame).await?;
    }
    go_offline(bob).await?;

    alice.say(&silent, "s1", "nobody hears this").await?;
    alice.say(&muted, "u1", "nor this").await?;
    alice.say(&mentions, "n1", "nor this, no mention").await?;
    let req = alice.next_req();
    let mention = ClientFrame::Send {
        req,
        room: mentions.clone(),
        id: "n2".into(),
        body: "bob: look".into(),
        reply_to: None,
        mentions: vec!["bob".into()],
        attachments: Vec::new(),
    };
    let seq = match alice.request(mention).await? {
        ServerFrame::Ack { seq, .. } => seq,
        other => bail!("send: {other:?}"),
    };
    wait_for(&gateway, "bob-phone", 1, Duration::from_secs(10)).await?;
    past_the_delay().await;
    let got = notifications(&gateway, "bob-phone");
    ensure!(got.len() == 1, "only the mention, in the room set to mentions: {got:?}");
    ensure!(got[0]["room"] == mentions && got[0]["seq"] == seq && got[0]["count"] == 1, "{got:?}");

    // Bob reads the room on a device: the notification is cleared everywhere.
    let mut bob = Client::connect(&node, Encoding::Json).await?;
    bob.authenticate(&token, None).await?;
    let req = bob.next_req();
    request_ok(&mut bob, ClientFrame::MarkRead { req, room: mentions.clone(), seq }).await?;
    let got = wait_for(&gateway, "bob-phone", 2, Duration::from_secs(10)).await?;
    let clear = &got[1];
    ensure!(clear["kind"] == "clear" && clear["room"] == mentions && clear["seq"] == seq, "{clear}");
    ensure!(clear.get("sender").is_none_or(Value::is_null), "a clear says nothing of the messages: {clear}");
    ensure!(gateway.rejections().is_empty(), "{:?}", gateway.rejections());
    Ok(())
}

#[tokio::test]
async fn a_failing_provider_gets_the_push_when_it_recovers_and_a_dead_token_is_removed() -> anyhow::Result<()> {
    let mut gateway = Receiver::<Webhook>::start(SECRET).await?;
    let node = Node::start(options(&gateway)).await?;
    let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
    let (mut bob, token) = Client::user(&node, Encoding::Json, "bob").await?;
    let room = alice.create_room("r").await?;
    bob.join(&room).await?;
    register(&mut bob, &gateway, "bob-phone", false).await?;
    let gone = register(&mut bob, &gateway, "bob-old-tablet", false).await?;
    gateway.unregister(&gateway.device_url("bob-old-tablet"));
    go_offline(bob).await?;

    // Throttled twice (with Retry-After), then down for a while, then back.
    gateway.fail_next(2, 429, Some(1));
    alice.say(&room, "m1", "hello").await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.requests() < 2 {
        ensure!(Instant::now() < deadline, "the node did not try the provider");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    gateway.go_down();
    tokio::time::sleep(Duration::from_secs(3)).await;
    ensure!(notifications(&gateway, "bob-phone").is_empty());
    gateway.come_back().await?;
    let got = wait_for(&gateway, "bob-phone", 1, Duration::from_secs(15)).await?;
    ensure!(got[0]["count"] == 1 && got[0]["room"] == room, "{got:?}");

    // The device the gateway called gone is no longer the user's.
    let mut bob = Client::connect(&node, Encoding::Json).await?;
    bob.authenticate(&token, None).await?;
    let req = bob.next_req();
    let devices = match bob.request(ClientFrame::ListDevices { req }).await? {
        ServerFrame::Devices { devices, .. } => devices,
        other => bail!("list_devices: {other:?}"),
    };
    ensure!(devices.len() == 1 && devices[0].id != gone, "the unregistered device is removed: {devices:?}");
    Ok(())
}

#[tokio::test]
async fn a_push_queued_on_a_node_killed_before_sending_is_sent_by_another() -> anyhow::Result<()> {
    let shared = tempfile::tempdir()?;
    let store = TestStore::from_env();
    let gateway = Receiver::<Webhook>::start(SECRET).await?;
    let node_options = |name: &str| {
        let mut options = NodeOptions { name: name.into(), ..options(&gateway) }
            .env("PUSH__LEASE_MS", 2_000)
            .env("PUSH__TIMEOUT_MS", 60_000);
        for (key, value) in store.env_for(shared.path()) {
            options = options.env(&key, value);
        }
        options
    };
    let mut first = Node::start(node_options("palaver-1")).await?;
    let (mut alice, _) = Client::user(&first, Encoding::Json, "alice").await?;
    let (mut bob, _) = Client::user(&first, Encoding::Json, "bob").await?;
    let room = alice.create_room("r").await?;
    bob.join(&room).await?;
    register(&mut bob, &gateway, "bob-phone", false).await?;
    go_offline(bob).await?;

    // The first node's push is never answered: it stays queued when the node dies.
    gateway.hang_next(usize::MAX);
    for i in 0..5 {
        alice.say(&room, &format!("m{i}"), "x").await?;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while gateway.requests() < 1 {
        ensure!(Instant::now() < deadline, "the first node did not try to push");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(alice);
    let second = Node::start(node_options("palaver-2")).await?;
    first.kill9().await?;
    gateway.hang_next(0);
    let got = wait_for(&gateway, "bob-phone", 1, Duration::from_secs(20)).await?;
    past_the_delay().await;
    let got_all = notifications(&gateway, "bob-phone");
    ensure!(got_all.len() == 1, "pushed once by the node that took over: {got_all:?}");
    ensure!(got[0]["count"] == 5 && got[0]["room"] == room, "collapsed into one: {got:?}");
    drop(second);
    Ok(())
}

/// Whether node `node` holds the push lease (`palaver_push_sending` 1).
async fn sending(node: &Node) -> anyhow::Result<bool> {
    let (status, body) = node.admin_get("/metrics").await?;
    ensure!(status == 200, "metrics: {status}");
    Ok(body.lines().any(|line| line == "palaver_push_sending 1"))
}

/// A cluster: the recipient's devices registered on one node, the message sent on another, the
/// room owned by a third; a member online on any node is not pushed; and the node holding the
/// push lease killed -9 after the commit, before the push: another node takes the queue over
/// and the push arrives once.
#[tokio::test]
async fn in_a_cluster_the_push_survives_the_sending_node_and_presence_is_cluster_wide() -> anyhow::Result<()> {
    let gateway = Receiver::<Webhook>::start(SECRET).await?;
    let env = options(&gateway).env.into_iter().chain([
        ("PUSH__DELAY_MS".to_string(), "3000".to_string()),
        ("PUSH__LEASE_MS".to_string(), "2000".to_string()),
        ("ADMIN__TOKEN".to_string(), "admin-token-for-the-push-tests-0123".to_string()),
    ]);
    let options = ClusterOptions { env: env.collect(), ..ClusterOptions::default() };
    let mut cluster = Cluster::start_with(3, options).await?;
    let (mut alice, _) = Client::user(cluster.node(1), Encoding::Json, "alice").await?;
    let (mut bob, _) = Client::user(cluster.node(0), Encoding::Json, "bob").await?;
    let (mut carol, _) = Client::user(cluster.node(0), Encoding::Json, "carol").await?;
    let room = cluster.room_owned_by(&mut alice, 2).await?;
    bob.join(&room).await?;
    carol.join(&room).await?;
    register(&mut bob, &gateway, "bob-phone", false).await?;
    register(&mut carol, &gateway, "carol-phone", false).await?;
    go_offline(bob).await?;

    // Wait until one node holds the lease, then write and kill that node before the delay.
    let deadline = Instant::now() + Duration::from_secs(10);
    let holder = loop {
        let mut holder = None;
        for index in 0..3 {
            if sending(cluster.node(index)).await? {
                holder = Some(index);
            }
        }
        if let Some(index) = holder {
            break index;
        }
        ensure!(Instant::now() < deadline, "no node took the push lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The writer must survive the kill: alice is on node 1, so move her if that is the holder.
    if holder == 1 {
        alice = Client::user(cluster.node(2), Encoding::Json, "alice2").await?.0;
        alice.join(&room).await?;
    }
    let (_, duplicate) = alice.say(&room, "m1", "hello from another node").await?;
    ensure!(!duplicate, "a fresh message");
    cluster.kill(holder).await?;
    let got = wait_for(&gateway, "bob-phone", 1, Duration::from_secs(20)).await?;
    past_the_delay().await;
    let got_all = notifications(&gateway, "bob-phone");
    ensure!(got_all.len() == 1, "once, from the node that took over: {got_all:?}\n{}", cluster.logs());
    ensure!(got[0]["room"] == room && got[0]["count"] == 1, "{got:?}");
    ensure!(notifications(&gateway, "carol-phone").is_empty(), "carol is online on another node than the sender's");
    drop(carol);
    Ok(())
}

/// A node with no provider configured does no push work, and its queue does not grow: every
/// queued message is dropped unsent (SQLite: the queue's rows are read from the file).
#[tokio::test]
async fn without_a_provider_the_queue_is_emptied_unsent() -> anyhow::Result<()> {
    if !matches!(TestStore::from_env(), TestStore::Sqlite) {
        tests::say_skipped("without_a_provider_the_queue_is_emptied_unsent", "reads the SQLite file");
        return Ok(());
    }
    let node = Node::start(NodeOptions::default().env("PUSH__POLL_MS", 50)).await?;
    let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
    let (mut bob, _) = Client::user(&node, Encoding::Json, "bob").await?;
    let room = alice.create_room("r").await?;
    bob.join(&room).await?;
    drop(bob);
    for i in 0..3 {
        alice.say(&room, &format!("m{i}"), "x").await?;
    }
    let db = rusqlite::Connection::open(node.data_dir.join("palaver.db"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let queued: i64 =
            db.query_row("SELECT count(*) FROM webhook_outbox WHERE hook = 'push'", [], |row| row.get(0))?;
        if queued == 0 {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{queued} messages stay queued for push with no provider");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
