//! Messages that change, across nodes: edits, reactions, replies with mentions and deletes sent
//! through a node that does not own the room reach its owner (the inter-node append carries
//! their target, reply and mentions), are applied there in the room's one order, and reach the
//! members on every node; the owner's refusals come back as the same errors. The server API's
//! posts travel the same way.

use anyhow::{bail, ensure};
use tests::cluster::{Cluster, ClusterOptions};
use tests::{Client, ClientFrame, Encoding, EntryKind, ErrorCode, ServerFrame};

async fn acked(client: &mut Client, frame: ClientFrame) -> anyhow::Result<u64> {
    match client.request(frame).await? {
        ServerFrame::Ack { seq, .. } => Ok(seq),
        other => bail!("expected an ack, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_through_a_node_that_does_not_own_the_room() -> anyhow::Result<()> {
    let cluster = Cluster::start(2).await?;
    let result = async {
        let (mut on_first, _) = Client::user(cluster.node(0), Encoding::Json, "ann").await?;
        let (mut on_second, _) = Client::user(cluster.node(1), Encoding::MessagePack, "ben").await?;
        // Rooms until one is owned by the first node, so the second node's user goes through it.
        let room = cluster.room_owned_by(&mut on_first, 0).await?;
        on_second.join(&room).await?;

        let req = on_first.next_req();
        let send = ClientFrame::Send {
            req,
            room: room.clone(),
            id: "q".into(),
            body: "ben?".into(),
            reply_to: None,
            mentions: vec!["ben".into()],
            attachments: Vec::new(),
        };
        let question = acked(&mut on_first, send).await?;
        // From the non-owner: a reply mentioning ann, a reaction, and refused changes.
        let req = on_second.next_req();
        let reply = ClientFrame::Send {
            req,
            room: room.clone(),
            id: "a".into(),
            body: "here".into(),
            reply_to: Some(question),
            mentions: vec!["ann".into()],
            attachments: Vec::new(),
        };
        acked(&mut on_second, reply).await?;
        let req = on_second.next_req();
        let react = ClientFrame::React {
            req,
            room: room.clone(),
            id: "r".into(),
            seq: question,
            reaction: "👋".into(),
            remove: false,
        };
        acked(&mut on_second, react).await?;
        let req = on_second.next_req();
        let edit =
            ClientFrame::Edit { req, room: room.clone(), id: "e".into(), seq: question, body: "mine now".into() };
        match on_second.request(edit).await? {
            ServerFrame::Error { code: ErrorCode::Forbidden, .. } => {}
            other => bail!("editing ann's message from the other node: {other:?}"),
        }
        let req = on_second.next_req();
        let edit = ClientFrame::Edit { req, room: room.clone(), id: "e2".into(), seq: 9_999, body: "nothing".into() };
        match on_second.request(edit).await? {
            ServerFrame::Error { code: ErrorCode::NoSuchMessage, .. } => {}
            other => bail!("editing a seq that does not exist from the other node: {other:?}"),
        }

        // The first node's member sees what the second node's member did, with its references.
        let answer = on_first.wait_for_message(&room, "a").await?;
        ensure!(answer.reply_to == Some(question) && answer.mentions == vec!["ann".to_string()], "{answer:?}");
        let reaction = on_first.wait_for_message(&room, "r").await?;
        ensure!(reaction.kind == EntryKind::React && reaction.target == Some(question), "{reaction:?}");
        let req = on_first.next_req();
        let ServerFrame::Rooms { rooms, .. } = on_first.request(ClientFrame::ListRooms { req }).await? else {
            bail!("rooms")
        };
        let mentions = rooms.iter().find(|r| r.id == room).map(|r| r.mentions);
        ensure!(mentions == Some(1), "ann's unread mentions: {mentions:?}");

        // Moderation through the non-owner node: the owner (on the first node) makes ben an
        // admin; ben bans cat (both on the second node), whose join is then refused by the owner
        // node with `banned`, carried back over the wire.
        let (mut cat, _) = Client::user(cluster.node(1), Encoding::Json, "cat").await?;
        cat.join(&room).await?;
        let req = on_first.next_req();
        let set_role = ClientFrame::SetRole { req, room: room.clone(), user: "ben".into(), role: tests::Role::Admin };
        ensure!(on_first.request(set_role).await? == ServerFrame::Ok { req }, "set_role");
        let req = on_second.next_req();
        let ban =
            ClientFrame::Ban { req, room: room.clone(), user: "cat".into(), reason: Some("spam".into()), until: None };
        ensure!(on_second.request(ban).await? == ServerFrame::Ok { req }, "ban through the non-owner node");
        // The owner's node delivered the audit entry to its own member too.
        while !on_first.ledger.iter().any(|(_, e)| e.kind == EntryKind::Ban && e.user.as_deref() == Some("cat")) {
            on_first.recv().await?;
        }
        let req = cat.next_req();
        match cat.request(ClientFrame::Join { req, room: room.clone() }).await? {
            ServerFrame::Error { code: ErrorCode::Banned, .. } => {}
            other => bail!("a banned user's join through the non-owner node: {other:?}"),
        }

        // Room settings through the non-owner node: ben (an admin now) makes it an
        // announcement room; the change crosses the wire and reaches the owner node's member.
        let req = on_second.next_req();
        let set_room = ClientFrame::SetRoom {
            req,
            room: room.clone(),
            name: None,
            topic: Some("announcements only".into()),
            private: None,
            who_may_post: Some(tests::Audience::Moderators),
            who_may_invite: None,
        };
        ensure!(on_second.request(set_room).await? == ServerFrame::Ok { req }, "set_room through the non-owner node");
        let settings = loop {
            let found = on_first.ledger.iter().map(|(_, e)| e).find(|e| e.kind == EntryKind::Settings).cloned();
            if let Some(entry) = found {
                break entry;
            }
            on_first.recv().await?;
        };
        let carried = settings.settings.as_deref().map(|s| (s.topic.as_str(), s.who_may_post));
        ensure!(carried == Some(("announcements only", tests::Audience::Moderators)), "{settings:?}");

        // And a delete by the author reaches the other node's member.
        let req = on_first.next_req();
        acked(&mut on_first, ClientFrame::Delete { req, room: room.clone(), id: "d".into(), seq: question }).await?;
        let deleted = on_second.wait_for_message(&room, "d").await?;
        ensure!(deleted.kind == EntryKind::Delete && deleted.target == Some(question), "{deleted:?}");
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("{}", cluster.logs());
    }
    result
}

/// The server API is location-transparent too: a key minted on one node opens every node, and a
/// post through a node that does not own the room is applied by the owner, acked once
/// committed, deduplicated by its id, and delivered to members on both nodes. A key revoked on
/// one node is refused on the other at the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_api_posts_through_a_node_that_does_not_own_the_room() -> anyhow::Result<()> {
    use serde_json::json;
    use tests::api::call;
    const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";
    let options =
        ClusterOptions { env: vec![("ADMIN__TOKEN".into(), ADMIN_TOKEN.into())], ..ClusterOptions::default() };
    let cluster = Cluster::start_with(2, options).await?;
    let result = async {
        let (first, second) = (cluster.node(0).admin, cluster.node(1).admin);
        let scopes = json!({ "name": "backend", "scopes": ["users", "rooms", "messages"] });
        let minted = call(first, "POST", "/api/v1/keys", Some(ADMIN_TOKEN), Some(&scopes)).await?;
        ensure!(minted.status == 201, "{minted:?}");
        let key = minted.body["key"].as_str().unwrap_or_default().to_string();
        let (mut ann, _) = Client::user(cluster.node(0), Encoding::Json, "ann").await?;
        let (mut ben, _) = Client::user(cluster.node(1), Encoding::MessagePack, "ben").await?;
        let answer = call(second, "POST", "/api/v1/users", Some(&key), Some(&json!({"name": "bot"}))).await?;
        ensure!(answer.status == 201, "{answer:?}");
        // A room the first node owns, with both users and the bot in it.
        let room = cluster.room_owned_by(&mut ann, 0).await?;
        ben.join(&room).await?;
        let add = format!("/api/v1/rooms/{room}/members/bot?as=ann");
        let answer = call(second, "PUT", &add, Some(&key), None).await?;
        ensure!(answer.status == 200, "{answer:?}");

        let post = json!({ "id": "notice-1", "body": "maintenance at noon" });
        let path = format!("/api/v1/rooms/{room}/messages?as=bot");
        let first_post = call(second, "POST", &path, Some(&key), Some(&post)).await?;
        ensure!(first_post.status == 201, "{first_post:?}");
        let again = call(second, "POST", &path, Some(&key), Some(&post)).await?;
        ensure!(again.status == 200 && again.body["seq"] == first_post.body["seq"], "{again:?}");
        for client in [&mut ann, &mut ben] {
            let entry = client.wait_for_message(&room, "notice-1").await?;
            ensure!(entry.from == "bot" && entry.body == "maintenance at noon", "{entry:?}");
        }

        let id = key.trim_start_matches("pvk_").split('_').next().unwrap_or_default().to_string();
        let revoked = call(first, "DELETE", &format!("/api/v1/keys/{id}"), Some(ADMIN_TOKEN), None).await?;
        ensure!(revoked.status == 200, "{revoked:?}");
        let refused = call(second, "POST", &path, Some(&key), Some(&json!({"id": "notice-2", "body": "x"}))).await?;
        ensure!(refused.status == 401, "a key revoked on one node still works on another: {refused:?}");
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("{}", cluster.logs());
    }
    result
}

/// Reactions in a large room whose owner is another node: counted there (acked with seq 0),
/// and the coalesced counts reach the members connected to both nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaction_counts_of_a_large_room_reach_members_on_every_node() -> anyhow::Result<()> {
    let options = ClusterOptions {
        env: vec![
            ("LIMITS__FANOUT_MAX_MEMBERS".into(), "2".into()),
            ("LIMITS__REACTION_FLUSH_MS".into(), "200".into()),
        ],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start_with(2, options).await?;
    let result = async {
        let (mut ann, _) = Client::user(cluster.node(0), Encoding::Json, "ann").await?;
        let (mut ben, _) = Client::user(cluster.node(1), Encoding::MessagePack, "ben").await?;
        let (mut cat, _) = Client::user(cluster.node(1), Encoding::Json, "cat").await?;
        let room = cluster.room_owned_by(&mut ann, 0).await?;
        ben.join(&room).await?;
        cat.join(&room).await?; // the third member: large from here on
        let (seq, _) = ann.say(&room, "m", "hello all").await?;
        for (i, client) in [&mut ben, &mut cat].into_iter().enumerate() {
            let req = client.next_req();
            let react = ClientFrame::React {
                req,
                room: room.clone(),
                id: format!("r{i}"),
                seq,
                reaction: "👍".into(),
                remove: false,
            };
            let ack = client.request(react).await?;
            ensure!(matches!(ack, ServerFrame::Ack { seq: 0, .. }), "counted through the owner: {ack:?}");
        }
        for client in [&mut ann, &mut ben, &mut cat] {
            loop {
                let frame = client.recv_matching(|f| matches!(f, ServerFrame::Reactions { .. })).await?;
                let ServerFrame::Reactions { messages, .. } = frame else { continue };
                let count = messages.iter().find(|m| m.seq == seq).and_then(|m| m.reactions.first()).map(|r| r.count);
                if count == Some(2) {
                    break;
                }
            }
        }
        Ok(())
    }
    .await;
    if result.is_err() {
        eprintln!("{}", cluster.logs());
    }
    result
}
