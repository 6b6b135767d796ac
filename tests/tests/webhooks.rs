//! Webhooks (docs/WEBHOOKS.md) against the real binary and a receiver written from the docs
//! (`tests::webhooks`): every event arrives, signed, in order per room; failures (500s,
//! timeouts, `Retry-After`, a receiver down for a minute) are retried until everything is
//! through; an endpoint that keeps failing goes dead, keeps its events, and resumes when
//! enabled; and events waiting in a killed node's outbox are delivered by another node.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use protocol::{ClientFrame, ServerFrame};
use serde_json::{json, Value};
use tests::api::{call, Answer};
use tests::webhooks::Receiver;
use tests::{Client, Encoding, Node, NodeOptions, TestStore};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

const ALL_EVENTS: [&str; 8] = [
    "message.posted",
    "message.edited",
    "message.deleted",
    "member.joined",
    "member.left",
    "member.banned",
    "room.created",
    "user.deleted",
];

fn options() -> NodeOptions {
    NodeOptions::default().env("ADMIN__TOKEN", ADMIN_TOKEN).env("WEBHOOKS__POLL_MS", "50")
}

/// A key for every route these tests use.
async fn mint(node: &Node) -> anyhow::Result<String> {
    let body = json!({ "name": "webhooks test", "scopes": ["users", "rooms", "messages", "webhooks"] });
    let answer = call(node.admin, "POST", "/api/v1/keys", Some(ADMIN_TOKEN), Some(&body)).await?;
    ensure!(answer.status == 201, "mint: {answer:?}");
    Ok(answer.body["key"].as_str().unwrap_or_default().to_string())
}

async fn api(node: &Node, key: &str, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Answer> {
    call(node.admin, method, path, Some(key), body.as_ref()).await
}

/// Create an endpoint for `receiver` taking `events`, and give the receiver its secret.
async fn subscribe(node: &Node, key: &str, receiver: &Receiver, events: &[&str]) -> anyhow::Result<String> {
    let answer =
        api(node, key, "POST", "/api/v1/webhooks", Some(json!({"url": receiver.url(), "events": events}))).await?;
    ensure!(answer.status == 201, "create webhook: {answer:?}");
    let secret = answer.body["secret"].as_str().context("the secret is shown on creation")?;
    ensure!(secret.starts_with("whsec_") && answer.body["state"] == "active", "{answer:?}");
    receiver.set_secret(secret).await;
    Ok(answer.body["id"].as_str().unwrap_or_default().to_string())
}

async fn provision(node: &Node, key: &str, user: &str) -> anyhow::Result<()> {
    let answer = api(node, key, "POST", "/api/v1/users", Some(json!({ "name": user }))).await?;
    ensure!(answer.status == 201, "provision {user}: {answer:?}");
    Ok(())
}

async fn new_room(node: &Node, key: &str, owner: &str, name: &str) -> anyhow::Result<String> {
    let answer = api(node, key, "POST", &format!("/api/v1/rooms?as={owner}"), Some(json!({ "name": name }))).await?;
    ensure!(answer.status == 201, "create room: {answer:?}");
    Ok(answer.body["id"].as_str().unwrap_or_default().to_string())
}

async fn post(node: &Node, key: &str, room: &str, user: &str, id: &str) -> anyhow::Result<u64> {
    let path = format!("/api/v1/rooms/{room}/messages?as={user}");
    let answer = api(node, key, "POST", &path, Some(json!({ "id": id, "body": format!("text {id}") }))).await?;
    ensure!(answer.status == 201, "post {id}: {answer:?}");
    answer.body["seq"].as_u64().context("the ack's seq")
}

async fn webhook_state(node: &Node, key: &str, id: &str) -> anyhow::Result<Value> {
    let answer = api(node, key, "GET", "/api/v1/webhooks", None).await?;
    ensure!(answer.status == 200, "list webhooks: {answer:?}");
    let hooks = answer.body["webhooks"].as_array().cloned().unwrap_or_default();
    hooks.into_iter().find(|hook| hook["id"] == id).context("the endpoint is listed")
}

/// Wait until the metric `name` of `node` satisfies `wanted` (metrics follow the store's state
/// by a poll or so).
async fn metric_becomes(node: &Node, name: &str, wanted: impl Fn(i64) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let value = metric(node, name).await?;
        if wanted(value) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{name} stayed at {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(node: &Node, name: &str) -> anyhow::Result<i64> {
    let (status, body) = node.admin_get("/metrics").await?;
    ensure!(status == 200, "metrics: {status}");
    body.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .context(format!("metric {name}"))?
        .trim()
        .parse()
        .context("a metric's value")
}

/// Events of `room` in arrival order, each id once (a repeat of an event already delivered is
/// allowed: delivery is at least once).
fn room_events(events: &[Value], room: &str) -> Vec<Value> {
    let mut seen = HashSet::new();
    events.iter().filter(|e| e["room"] == room && seen.insert(e["id"].to_string())).cloned().collect()
}

/// Each room's events arrived in seq order (first occurrences), and every id is unique per
/// room and seq.
fn check_order(events: &[Value]) -> anyhow::Result<()> {
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    let mut seen = HashSet::new();
    for event in events {
        let id = event["id"].as_str().context("every event has an id")?.to_string();
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(room) = event["room"].as_str() else { continue };
        let seq = event["seq"].as_u64().context("a room event has a seq")?;
        ensure!(id == format!("{room}/{seq}"), "event id {id} names its room and seq");
        let previous = last.insert(room.to_string(), seq).unwrap_or(0);
        ensure!(seq > previous, "room {room}: seq {seq} arrived after {previous}");
    }
    Ok(())
}

fn types(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["type"].as_str().unwrap_or("?").to_string()).collect()
}

#[tokio::test]
async fn events_arrive_signed_in_order_per_room() -> anyhow::Result<()> {
    let node = Node::start(options()).await?;
    let key = mint(&node).await?;
    let receiver = Receiver::start().await?;

    // Bad requests are refused by name and create nothing.
    let cases = [
        (json!({"url": "ftp://example.com/", "events": ["message.posted"]}), "http or https"),
        (json!({"url": receiver.url(), "events": ["message.sent"]}), "`message.sent`"),
        (json!({"url": receiver.url(), "events": []}), "at least one"),
        (json!({"url": receiver.url(), "events": ["room.created"], "secret": "mine"}), "unknown field"),
    ];
    for (body, says) in cases {
        let answer = api(&node, &key, "POST", "/api/v1/webhooks", Some(body.clone())).await?;
        let message = answer.body["message"].as_str().unwrap_or("");
        ensure!(answer.status == 400 && message.contains(says), "{body}: {answer:?}");
    }
    let hook = subscribe(&node, &key, &receiver, &ALL_EVENTS).await?;
    let list = api(&node, &key, "GET", "/api/v1/webhooks", None).await?;
    ensure!(list.body["webhooks"].as_array().map(Vec::len) == Some(1), "{list:?}");
    ensure!(!list.body.to_string().contains("whsec_"), "the list shows no secret: {list:?}");

    // Two rooms, busy at the same time; a client edits, deletes and bans; a member is kicked,
    // one leaves, an account is erased.
    let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
    for user in ["bob", "carol", "dave"] {
        provision(&node, &key, user).await?;
    }
    let one = alice.create_room("one").await?;
    let two = new_room(&node, &key, "bob", "two").await?;
    for (room, owner, member) in [(&one, "alice", "bob"), (&one, "alice", "dave"), (&two, "bob", "carol")] {
        let answer =
            api(&node, &key, "PUT", &format!("/api/v1/rooms/{room}/members/{member}?as={owner}"), None).await?;
        ensure!(answer.status == 200, "add {member}: {answer:?}");
    }
    let posts_one = async {
        for i in 0..20 {
            post(&node, &key, &one, if i % 2 == 0 { "bob" } else { "dave" }, &format!("one-{i}")).await?;
        }
        anyhow::Ok(())
    };
    let posts_two = async {
        for i in 0..20 {
            post(&node, &key, &two, if i % 2 == 0 { "bob" } else { "carol" }, &format!("two-{i}")).await?;
        }
        anyhow::Ok(())
    };
    let (a, b) = tokio::join!(posts_one, posts_two);
    a?;
    b?;
    let (mine, _) = alice.say(&one, "a-1", "typo").await?;
    let req = alice.next_req();
    let edited = alice
        .request(ClientFrame::Edit { req, room: one.clone(), id: "a-2".into(), seq: mine, body: "fixed".into() })
        .await?;
    ensure!(matches!(edited, ServerFrame::Ack { .. }), "edit: {edited:?}");
    let req = alice.next_req();
    let deleted = alice.request(ClientFrame::Delete { req, room: one.clone(), id: "a-3".into(), seq: mine }).await?;
    ensure!(matches!(deleted, ServerFrame::Ack { .. }), "delete: {deleted:?}");
    let kicked =
        api(&node, &key, "DELETE", &format!("/api/v1/rooms/{one}/members/bob?as=alice&reason=bye"), None).await?;
    ensure!(kicked.status == 200, "kick: {kicked:?}");
    let req = alice.next_req();
    let ban =
        ClientFrame::Ban { req, room: one.clone(), user: "dave".into(), reason: Some("spam".into()), until: None };
    let banned = alice.request(ban).await?;
    ensure!(matches!(banned, ServerFrame::Ok { .. }), "ban: {banned:?}");
    let left = api(&node, &key, "DELETE", &format!("/api/v1/rooms/{two}/members/carol?as=carol"), None).await?;
    ensure!(left.status == 200, "leave: {left:?}");
    let erased = api(&node, &key, "DELETE", "/api/v1/users/carol", None).await?;
    ensure!(erased.status == 200, "erase carol: {erased:?}");

    // room one: created, 2 joins, 20 posts, alice's post, its edit and delete, kick, ban;
    // room two: created, 1 join, 20 posts, leave; and carol's deletion.
    let expected = (1 + 2 + 20 + 3 + 2) + (1 + 1 + 20 + 1) + 1;
    receiver.wait_until(Duration::from_secs(20), |seen| seen.events.len() >= expected).await?;
    let events = receiver.events().await;
    let seen = receiver.seen.lock().await;
    ensure!(seen.bad_signatures == 0, "{} requests failed their signature check", seen.bad_signatures);
    ensure!(seen.endpoint == hook, "requests name their endpoint: {} vs {hook}", seen.endpoint);
    drop(seen);
    check_order(&events)?;
    let one_events = room_events(&events, &one);
    let mut want = vec!["room.created", "member.joined", "member.joined"];
    want.extend(["message.posted"; 21]);
    want.extend(["message.edited", "message.deleted", "member.left", "member.banned"]);
    ensure!(types(&one_events) == want, "room one: {:?}", types(&one_events));
    ensure!(one_events[0]["name"] == "one" && one_events[0]["created_by"] == "alice", "{}", one_events[0]);
    let bodies: Vec<&str> = one_events[3..23].iter().map(|e| e["body"].as_str().unwrap_or("")).collect();
    let sent: Vec<String> = (0..20).map(|i| format!("text one-{i}")).collect();
    ensure!(bodies == sent, "room one's posts in the order they were acked: {bodies:?}");
    let alices = &one_events[23];
    // Read when sent: as posted, as edited, or (deleted by then) a tombstone without its text.
    let as_read = alices["body"] == "typo" || alices["body"] == "fixed" || alices["deleted"] == true;
    ensure!(as_read && (alices["deleted"] != true || alices.get("body").is_none()), "{alices}");
    ensure!(one_events[24]["target"] == mine && one_events[25]["by"] == "alice", "{:?}", &one_events[24..26]);
    let kick = &one_events[26];
    ensure!(kick["user"] == "bob" && kick["reason"] == "kicked" && kick["note"] == "bye", "{kick}");
    ensure!(one_events[27]["user"] == "dave" && one_events[27]["note"] == "spam", "{}", one_events[27]);
    let two_events = room_events(&events, &two);
    ensure!(two_events.len() == 23 && two_events[22]["reason"] == "left", "room two: {:?}", types(&two_events));
    let deletion: Vec<&Value> = events.iter().filter(|e| e["type"] == "user.deleted").collect();
    ensure!(deletion.len() == 1 && deletion[0]["user"] == "carol", "{deletion:?}");
    metric_becomes(&node, "palaver_webhook_events_delivered_total", |n| n >= expected as i64).await?;
    metric_becomes(&node, "palaver_webhook_delivering", |n| n == 1).await?;

    // Deleted: nothing more is sent, and it is gone from the API.
    let answer = api(&node, &key, "DELETE", &format!("/api/v1/webhooks/{hook}"), None).await?;
    ensure!(answer.status == 200, "{answer:?}");
    let answer = api(&node, &key, "DELETE", &format!("/api/v1/webhooks/{hook}"), None).await?;
    ensure!(answer.status == 404 && answer.error() == "no_such_webhook", "{answer:?}");
    let requests = receiver.seen.lock().await.requests;
    post(&node, &key, &two, "bob", "after-delete").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(receiver.seen.lock().await.requests == requests, "a deleted endpoint gets nothing");
    Ok(())
}

#[tokio::test]
async fn failures_are_retried_and_a_dead_endpoint_resumes_when_enabled() -> anyhow::Result<()> {
    let node = Node::start(
        options()
            .env("WEBHOOKS__RETRY_BASE_MS", "100")
            .env("WEBHOOKS__RETRY_MAX_MS", "400")
            .env("WEBHOOKS__MAX_ATTEMPTS", "4")
            .env("WEBHOOKS__TIMEOUT_MS", "500"),
    )
    .await?;
    let key = mint(&node).await?;
    let receiver = Receiver::start().await?;
    let hook = subscribe(&node, &key, &receiver, &["message.posted", "room.created"]).await?;
    provision(&node, &key, "alice").await?;
    let room = new_room(&node, &key, "alice", "busy").await?;

    // Two 500s, then a request left unanswered past the timeout: everything still arrives.
    receiver.fail_next(2, None).await;
    receiver.hang_next(1).await;
    for i in 0..10 {
        post(&node, &key, &room, "alice", &format!("m{i}")).await?;
    }
    receiver.wait_until(Duration::from_secs(15), |seen| room_events(&seen.events, &room).len() == 11).await?;
    check_order(&receiver.events().await)?;
    ensure!(receiver.seen.lock().await.requests >= 4, "three failed attempts and a success at least");

    // A 503 with Retry-After: 1 holds the next attempt back for a second, not the 100 ms backoff.
    receiver.fail_next(1, Some(1)).await;
    let started = Instant::now();
    post(&node, &key, &room, "alice", "patient").await?;
    receiver.wait_until(Duration::from_secs(10), |seen| room_events(&seen.events, &room).len() == 12).await?;
    ensure!(started.elapsed() >= Duration::from_millis(900), "Retry-After was not honoured: {:?}", started.elapsed());

    // Failing for good: dead after four attempts, visible in the API and the metrics.
    receiver.fail_next(usize::MAX, None).await;
    post(&node, &key, &room, "alice", "d0").await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let state = loop {
        let state = webhook_state(&node, &key, &hook).await?;
        if state["state"] == "dead" || Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ensure!(state["state"] == "dead" && state["failures"] == 4 && state["last_error"] == "HTTP 500", "{state}");
    metric_becomes(&node, "palaver_webhook_endpoints_dead", |n| n == 1).await?;
    // While dead its events keep being queued, and nothing is sent.
    for i in 1..4 {
        post(&node, &key, &room, "alice", &format!("d{i}")).await?;
    }
    let requests = receiver.seen.lock().await.requests;
    tokio::time::sleep(Duration::from_millis(800)).await;
    ensure!(receiver.seen.lock().await.requests == requests, "a dead endpoint is left alone");

    // Enabled again: it resumes where it stopped, in order.
    receiver.fail_next(0, None).await;
    let answer = api(&node, &key, "POST", &format!("/api/v1/webhooks/{hook}/enable"), None).await?;
    ensure!(answer.status == 200 && answer.body["state"] == "active" && answer.body["failures"] == 0, "{answer:?}");
    receiver.wait_until(Duration::from_secs(10), |seen| room_events(&seen.events, &room).len() == 16).await?;
    let events = receiver.events().await;
    check_order(&events)?;
    let tail: Vec<Value> = room_events(&events, &room)[12..].iter().map(|e| e["message_id"].clone()).collect();
    ensure!(tail == ["d0", "d1", "d2", "d3"], "the events of the dead spell, in order: {tail:?}");
    let answer = api(&node, &key, "POST", "/api/v1/webhooks/wh_nothing/enable", None).await?;
    ensure!(answer.status == 404, "{answer:?}");
    Ok(())
}

#[tokio::test]
async fn a_receiver_down_for_a_minute_gets_everything_when_it_returns() -> anyhow::Result<()> {
    let node = Node::start(
        options()
            .env("WEBHOOKS__RETRY_BASE_MS", "500")
            .env("WEBHOOKS__RETRY_MAX_MS", "2000")
            .env("WEBHOOKS__MAX_ATTEMPTS", "1000"),
    )
    .await?;
    let key = mint(&node).await?;
    let mut receiver = Receiver::start().await?;
    let hook = subscribe(&node, &key, &receiver, &["message.posted"]).await?;
    provision(&node, &key, "alice").await?;
    let rooms = [new_room(&node, &key, "alice", "a").await?, new_room(&node, &key, "alice", "b").await?];

    receiver.go_down();
    let down_since = Instant::now();
    for round in 0..6 {
        for room in &rooms {
            for i in 0..5 {
                post(&node, &key, room, "alice", &format!("r{round}-{i}")).await?;
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let state = webhook_state(&node, &key, &hook).await?;
    ensure!(state["state"] == "active" && state["failures"].as_u64() > Some(5), "{state}");
    ensure!(state["last_error"] == "could not connect", "{state}");
    ensure!(down_since.elapsed() >= Duration::from_secs(60), "down for a minute");
    receiver.come_back().await?;
    receiver
        .wait_until(Duration::from_secs(15), |seen| rooms.iter().all(|r| room_events(&seen.events, r).len() == 30))
        .await?;
    check_order(&receiver.events().await)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while webhook_state(&node, &key, &hook).await?["failures"] != 0 {
        ensure!(Instant::now() < deadline, "the endpoint's failures are forgotten after a success");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn events_in_a_killed_nodes_outbox_are_delivered_by_another_node() -> anyhow::Result<()> {
    let shared = tempfile::tempdir()?;
    let store = TestStore::from_env();
    let node_options = |name: &str| {
        let mut options = NodeOptions { name: name.into(), ..options() }
            .env("WEBHOOKS__LEASE_MS", "2000")
            .env("WEBHOOKS__TIMEOUT_MS", "60000");
        for (key, value) in store.env_for(shared.path()) {
            options = options.env(&key, value);
        }
        options
    };
    let mut first = Node::start(node_options("palaver-1")).await?;
    let key = mint(&first).await?;
    let receiver = Receiver::start().await?;
    // The first node's requests are never answered: its events stay in its outbox.
    receiver.hang_next(usize::MAX).await;
    subscribe(&first, &key, &receiver, &["message.posted", "room.created"]).await?;
    provision(&first, &key, "alice").await?;
    let room = new_room(&first, &key, "alice", "r").await?;
    for i in 0..30 {
        post(&first, &key, &room, "alice", &format!("m{i}")).await?;
    }
    receiver.wait_until(Duration::from_secs(10), |seen| seen.requests >= 1).await?;
    ensure!(metric(&first, "palaver_webhook_delivering").await? == 1, "the first node holds the lease");
    let second = Node::start(node_options("palaver-2")).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(metric(&second, "palaver_webhook_delivering").await? == 0, "one node delivers at a time");

    first.kill9().await?;
    receiver.hang_next(0).await;
    receiver.wait_until(Duration::from_secs(20), |seen| room_events(&seen.events, &room).len() == 31).await?;
    check_order(&receiver.events().await)?;
    metric_becomes(&second, "palaver_webhook_delivering", |n| n == 1).await?;
    Ok(())
}

/// Events are read from the room log when they are sent: a message deleted while its event
/// waited goes out as a tombstone, never with the text that was taken back.
#[tokio::test]
async fn a_message_deleted_before_its_event_is_sent_goes_out_without_its_text() -> anyhow::Result<()> {
    let node =
        Node::start(options().env("WEBHOOKS__RETRY_BASE_MS", "100").env("WEBHOOKS__RETRY_MAX_MS", "200")).await?;
    let key = mint(&node).await?;
    let mut receiver = Receiver::start().await?;
    subscribe(&node, &key, &receiver, &["message.posted", "message.deleted"]).await?;
    let (mut alice, _) = Client::user(&node, Encoding::Json, "alice").await?;
    let room = alice.create_room("oops").await?;
    receiver.go_down();
    let (seq, _) = alice.say(&room, "secret-1", "the wifi password is hunter2").await?;
    let req = alice.next_req();
    let deleted = alice.request(ClientFrame::Delete { req, room: room.clone(), id: "del-1".into(), seq }).await?;
    ensure!(matches!(deleted, ServerFrame::Ack { .. }), "delete: {deleted:?}");
    receiver.come_back().await?;
    receiver.wait_until(Duration::from_secs(10), |seen| room_events(&seen.events, &room).len() == 2).await?;
    let events = room_events(&receiver.events().await, &room);
    ensure!(types(&events) == ["message.posted", "message.deleted"], "{events:?}");
    ensure!(events[0]["deleted"] == true && events[0].get("body").is_none(), "{}", events[0]);
    ensure!(!serde_json::to_string(&events)?.contains("hunter2"), "the deleted text went out: {events:?}");
    ensure!(events[1]["target"] == seq, "{}", events[1]);
    Ok(())
}
