//! palaver-client against the real node binary: every message once and in order across a
//! dropped connection (the resume replays exactly what was missed), the outbox sends what was
//! written while offline and a repeat of an acknowledged id stays one message, and a node
//! restart is ridden out.

use std::time::Duration;

use anyhow::{bail, ensure};
use palaver_client::{Client, Config, Event, State};
use protocol::{ClientFrame, EntryKind, ServerFrame};
use tokio::sync::mpsc::UnboundedReceiver;

async fn token(node: &tests::Node, user: &str) -> anyhow::Result<String> {
    let (client, token) = tests::Client::user(node, protocol::Encoding::Json, user).await?;
    client.close().await?;
    Ok(token)
}

fn config(node: &tests::Node, token: String) -> Config {
    Config {
        min_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(300),
        ..Config::new(node.ws_url(), token)
    }
}

/// The next event that `wanted` keeps, within 10 s.
async fn next(events: &mut UnboundedReceiver<Event>, wanted: impl Fn(&Event) -> bool) -> anyhow::Result<Event> {
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = events.recv().await {
            if wanted(&event) {
                return Ok(event);
            }
        }
        bail!("the client stopped")
    })
    .await?
}

fn text_of(event: &Event) -> Option<String> {
    match event {
        Event::Message { entry, .. } if entry.kind == EntryKind::Text => Some(entry.body.clone()),
        _ => None,
    }
}

async fn texts(events: &mut UnboundedReceiver<Event>, n: usize) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    while out.len() < n {
        let event = next(events, |e| text_of(e).is_some()).await?;
        out.extend(text_of(&event));
    }
    Ok(out)
}

async fn room_of(client: &Client, name: &str) -> anyhow::Result<String> {
    match client.request(ClientFrame::CreateRoom { req: 0, name: name.into(), private: false }).await? {
        ServerFrame::Room { room, .. } => Ok(room.id),
        other => bail!("create_room: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_outbox_and_restart() -> anyhow::Result<()> {
    // A fixed port, so the restarted node is where the client reconnects.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut node = tests::Node::start(tests::NodeOptions { port, ..tests::NodeOptions::default() }).await?;
    let (ann_token, bob_token) = (token(&node, "ann").await?, token(&node, "bob").await?);
    let (mut ann, mut ann_events) = Client::start(config(&node, ann_token.clone()), State::default());
    let (mut bob, mut bob_events) = Client::start(config(&node, bob_token), State::default());
    ann.wait_live().await?;
    bob.wait_live().await?;
    let room = room_of(&ann, "rust").await?;
    bob.request(ClientFrame::Join { req: 0, room: room.clone() }).await?;
    for i in 0..3 {
        bob.send(&room, format!("live {i}"));
    }
    ensure!(texts(&mut ann_events, 3).await? == ["live 0", "live 1", "live 2"], "live, in order");

    // ann's process goes away with its state; bob writes on; a new client resumes from it.
    let saved = ann.state();
    ann.close();
    for i in 0..3 {
        let id = bob.send(&room, format!("missed {i}"));
        next(&mut bob_events, |e| matches!(e, Event::Acked { id: acked, .. } if *acked == id)).await?;
    }
    let (mut ann, mut ann_events) = Client::start(config(&node, ann_token.clone()), saved);
    ann.wait_live().await?;
    ensure!(texts(&mut ann_events, 3).await? == ["missed 0", "missed 1", "missed 2"], "exactly what was missed");

    // A message written while the node is down waits in the outbox and is sent once it is back,
    // by the same client, which reconnects by itself; a repeat of its id stays one message.
    node.kill9().await?;
    let id = ann.send(&room, "written while the node was down");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while ann.state().outbox.len() != 1 {
        ensure!(tokio::time::Instant::now() < deadline, "not kept in the outbox: {:?}", ann.state());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    node.restart().await?;
    let acked = next(&mut ann_events, |e| matches!(e, Event::Acked { .. })).await?;
    let Event::Acked { id: acked_id, seq, duplicate: false, .. } = acked else { bail!("{acked:?}") };
    ensure!(acked_id == id && ann.state().outbox.is_empty(), "acked and out of the outbox");
    ann.send_with_id(id.clone(), &room, "written while the node was down");
    let again = next(&mut ann_events, |e| matches!(e, Event::Acked { .. })).await?;
    ensure!(matches!(again, Event::Acked { seq: s, duplicate: true, .. } if s == seq), "{again:?}");
    let history = ann
        .request(ClientFrame::History { req: 0, room: room.clone(), before: None, after: Some(0), limit: None })
        .await?;
    let ServerFrame::History { entries, .. } = history else { bail!("history: {history:?}") };
    let copies = entries.iter().filter(|e| e.body == "written while the node was down").count();
    ensure!(copies == 1, "one message, not {copies}");
    ann.close();
    bob.close();
    Ok(())
}
