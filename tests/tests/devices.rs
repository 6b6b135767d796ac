//! Devices for push notifications (docs/PROTOCOL.md, "Devices"): registered per platform with
//! its token checked, listed without the token, updated in place when the same token comes
//! again, bounded per user, removed, kept across a restart, and the same on every node.

use anyhow::{bail, ensure};
use serde_json::json;
use tests::cluster::Cluster;
use tests::{Client, ClientFrame, Encoding, ErrorCode, Node, NodeOptions, ServerFrame};

fn fcm(token: &str) -> serde_json::Value {
    json!({ "platform": "fcm", "token": token, "app": "my-chat-app", "locale": "en" })
}

fn web_push() -> serde_json::Value {
    // An uncompressed P-256 point (65 bytes, 0x04 first) and a 16-byte auth secret, base64url.
    let p256dh = format!("BA{}", "A".repeat(85));
    // As `PushSubscription.toJSON()` gives it, `expirationTime` included.
    json!({ "platform": "webpush", "subscription": {
        "endpoint": "https://push.example.net/wpush/v2/abc123",
        "expirationTime": null,
        "keys": { "p256dh": p256dh, "auth": "AAAAAAAAAAAAAAAAAAAAAA" } } })
}

/// Send `register_device` with `device` as JSON (so bad shapes can be sent too); the reply.
async fn register(client: &mut Client, device: serde_json::Value) -> anyhow::Result<serde_json::Value> {
    let req = client.next_req();
    client.send_value(&json!({ "type": "register_device", "req": req, "device": device })).await?;
    loop {
        let value = client.recv_value().await?;
        if value["req"] == req {
            return Ok(value);
        }
    }
}

async fn devices(client: &mut Client) -> anyhow::Result<Vec<protocol::DeviceInfo>> {
    let req = client.next_req();
    match client.request(ClientFrame::ListDevices { req }).await? {
        ServerFrame::Devices { devices, .. } => Ok(devices),
        other => bail!("list_devices: {other:?}"),
    }
}

#[tokio::test]
async fn devices_are_registered_checked_listed_and_removed() -> anyhow::Result<()> {
    let mut node = Node::start(NodeOptions::default().env("LIMITS__MAX_DEVICES_PER_USER", 4)).await?;
    let (mut alice, token) = Client::user(&node, Encoding::Json, "alice").await?;

    let phone = register(&mut alice, fcm("fGx1a2b3c4d5e6f7:APA91bHPRgkF3JUi")).await?;
    ensure!(phone["type"] == "device" && phone["device"]["platform"] == "fcm", "{phone}");
    ensure!(phone["device"]["hint"] == "kF3JUi", "the hint is the token's last characters: {phone}");
    ensure!(!phone.to_string().contains("APA91bHPRgkF3JUi"), "the reply repeats the token: {phone}");
    let apns = json!({ "platform": "apns", "token": "ab".repeat(32), "app": "com.example.chat" });
    ensure!(register(&mut alice, apns).await?["type"] == "device");
    ensure!(register(&mut alice, web_push()).await?["type"] == "device");
    let gateway = json!({ "platform": "webhook", "token": "https://push-gateway.internal/notify" });
    ensure!(register(&mut alice, gateway).await?["type"] == "device");

    // The same token again (another locale): the same device, no new one.
    let again = register(&mut alice, json!({ "platform": "fcm", "token": "fGx1a2b3c4d5e6f7:APA91bHPRgkF3JUi", "app": "my-chat-app", "locale": "de" })).await?;
    ensure!(again["device"]["id"] == phone["device"]["id"] && again["device"]["locale"] == "de", "{again}");
    ensure!(devices(&mut alice).await?.len() == 4);
    // A fifth is over the limit.
    let fifth = register(&mut alice, fcm("another-registration-token-123")).await?;
    ensure!(
        fifth["type"] == "error"
            && fifth["code"] == "forbidden"
            && fifth["message"].as_str().unwrap_or("").contains("at most 4"),
        "{fifth}"
    );

    // Bad shapes are named, and store nothing.
    let bad = [
        (json!({ "platform": "sms", "token": "x" }), "sms"),
        (fcm("no"), "`fcm` token"),
        (json!({ "platform": "apns", "token": "not hex", "app": "com.example.chat" }), "hex"),
        (json!({ "platform": "webpush", "token": "https://push.example.net/x" }), "subscription"),
        (json!({ "platform": "webhook", "token": "javascript:alert(1)" }), "URL"),
        (
            json!({ "platform": "fcm", "token": "fGx1a2b3c4d5e6f7:APA91bH", "app": "my-chat-app", "locale": "en US" }),
            "locale",
        ),
    ];
    for (device, named) in bad {
        let reply = register(&mut alice, device.clone()).await?;
        ensure!(
            reply["type"] == "error" && reply["message"].as_str().unwrap_or("").contains(named),
            "{device} → {reply}"
        );
    }
    ensure!(devices(&mut alice).await?.len() == 4, "a refused device was stored");

    // Removed; removing again names the id.
    let id = phone["device"]["id"].as_str().unwrap_or_default().to_string();
    let req = alice.next_req();
    ensure!(alice.request(ClientFrame::RemoveDevice { req, id: id.clone() }).await? == ServerFrame::Ok { req });
    let req = alice.next_req();
    match alice.request(ClientFrame::RemoveDevice { req, id: id.clone() }).await? {
        ServerFrame::Error { code: ErrorCode::NoSuchDevice, .. } => {}
        other => bail!("removing twice: {other:?}"),
    }
    // Another user sees none of them.
    let (mut bob, _) = Client::user(&node, Encoding::MessagePack, "bob").await?;
    ensure!(devices(&mut bob).await?.is_empty());

    // Kept across a restart.
    node.restart().await?;
    let mut alice = Client::connect(&node, Encoding::MessagePack).await?;
    alice.authenticate(&token, None).await?;
    let kept = devices(&mut alice).await?;
    ensure!(kept.len() == 3 && kept.iter().all(|device| device.id != id), "{kept:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_registered_on_one_node_is_seen_on_another() -> anyhow::Result<()> {
    let cluster = Cluster::start(2).await?;
    let (mut on_first, token) = Client::user(cluster.node(0), Encoding::Json, "carol").await?;
    let registered = register(&mut on_first, web_push()).await?;
    ensure!(registered["type"] == "device", "{registered}");
    let mut on_second = Client::connect(cluster.node(1), Encoding::Json).await?;
    on_second.authenticate(&token, None).await?;
    let seen = devices(&mut on_second).await?;
    ensure!(seen.len() == 1 && seen[0].id == registered["device"]["id"].as_str().unwrap_or_default(), "{seen:?}");
    Ok(())
}

/// Notification settings (docs/PROTOCOL.md, "Notification settings"): each member's own per
/// room, in `list_rooms`, refused for a room one is not in, a bad level refused by name, kept
/// across a restart.
#[tokio::test]
async fn notification_settings_are_kept_per_member_and_room() -> anyhow::Result<()> {
    let mut node = Node::start(NodeOptions::default()).await?;
    let (mut ann, token) = Client::user(&node, Encoding::Json, "ann").await?;
    let (mut bob, _) = Client::user(&node, Encoding::MessagePack, "bob").await?;
    let room = ann.create_room("quiet please").await?;
    let other = bob.create_room("bob's own").await?;
    bob.join(&room).await?;

    let req = ann.next_req();
    let set = ClientFrame::SetNotifications {
        req,
        room: room.clone(),
        level: protocol::NotifyLevel::Mentions,
        muted_until: Some(4_102_444_800_000),
    };
    ensure!(matches!(ann.request(set).await?, ServerFrame::Ok { .. }), "set");
    let req = ann.next_req();
    let not_member =
        ClientFrame::SetNotifications { req, room: other, level: protocol::NotifyLevel::None, muted_until: None };
    match ann.request(not_member).await? {
        ServerFrame::Error { code: ErrorCode::NotMember, .. } => {}
        other => bail!("a room ann is not in: {other:?}"),
    }
    ann.discard(|_| true);
    let req = ann.next_req();
    ann.send_value(&json!({ "type": "set_notifications", "req": req, "room": room, "level": "some" })).await?;
    let refused = loop {
        let value = ann.recv_value().await?;
        if value["req"] == req {
            break value;
        }
    };
    ensure!(
        refused["code"] == "invalid_field" && refused["message"].as_str().unwrap_or("").contains("some"),
        "{refused}"
    );

    let listed =
        |rooms: &[protocol::RoomInfo]| rooms.iter().find(|r| r.id == room).map(|r| (r.notify, r.notify_muted_until));
    for (client, want) in [
        (&mut ann, (protocol::NotifyLevel::Mentions, Some(4_102_444_800_000))),
        (&mut bob, (protocol::NotifyLevel::All, None)),
    ] {
        let req = client.next_req();
        let ServerFrame::Rooms { rooms, .. } = client.request(ClientFrame::ListRooms { req }).await? else {
            bail!("list_rooms")
        };
        ensure!(listed(&rooms) == Some(want), "{rooms:?}");
    }

    node.kill9().await?;
    node.restart().await?;
    let mut again = Client::connect(&node, Encoding::Json).await?;
    again.authenticate(&token, None).await?;
    let req = again.next_req();
    let ServerFrame::Rooms { rooms, .. } = again.request(ClientFrame::ListRooms { req }).await? else {
        bail!("list_rooms")
    };
    ensure!(
        listed(&rooms) == Some((protocol::NotifyLevel::Mentions, Some(4_102_444_800_000))),
        "after a restart: {rooms:?}"
    );
    Ok(())
}
