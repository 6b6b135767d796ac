//! Presence test helpers shared by the single-node and the cluster presence tests: requests
//! that must succeed (watch, set presence), waiting for the next change of a watched user (or
//! for none), and checks of what a presence says.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use protocol::{PresenceState, UserPresence};

use crate::{reply_req, Client, ClientFrame, ErrorCode, Node, ServerFrame};

/// How long to wait for something that must happen.
pub const DEADLINE: Duration = Duration::from_secs(15);

/// How long to pause between two looks while polling for something that must happen.
pub const POLL: Duration = Duration::from_millis(25);

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

pub async fn watch(client: &mut Client, users: &[&str]) -> anyhow::Result<(Vec<UserPresence>, Vec<String>)> {
    let req = client.next_req();
    let frame = ClientFrame::WatchPresence { req, users: users.iter().map(|u| u.to_string()).collect() };
    match client.request(frame).await? {
        ServerFrame::PresenceList { req: got, users, hidden } if got == req => Ok((users, hidden)),
        other => bail!("watch_presence {users:?}: expected presence_list, got {other:?}"),
    }
}

pub async fn set_presence(client: &mut Client, state: PresenceState, status: Option<&str>) -> anyhow::Result<()> {
    let req = client.next_req();
    let frame = ClientFrame::SetPresence { req, state, status: status.map(String::from) };
    match client.request(frame).await? {
        ServerFrame::Ok { req: got } if got == req => Ok(()),
        other => bail!("set_presence {state:?} {status:?}: expected ok, got {other:?}"),
    }
}

/// Ask (`watch_presence`, so this replaces the client's watch list) until every one of `users`
/// is visible to `client` and listed online, within [`DEADLINE`]. For tests whose subject is
/// something else, so that they do not rely on a fresh connection being listed at once (on the
/// node it is on, or elsewhere within a flush interval or so).
pub async fn wait_listed_online(client: &mut Client, users: &[&str]) -> anyhow::Result<()> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (list, hidden) = watch(client, users).await?;
        if hidden.is_empty() && list.len() == users.len() && list.iter().all(|p| p.state == PresenceState::Online) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{:?}: {users:?} not all listed online within {DEADLINE:?}: {list:?}, hidden {hidden:?}",
            client.user
        );
        tokio::time::sleep(POLL).await;
    }
}

/// The value of the counter or gauge `name` in `node`'s `/metrics` (admin port), if listed.
pub async fn metric(node: &Node, name: &str) -> anyhow::Result<Option<f64>> {
    let (status, body) = node.admin_get("/metrics").await?;
    ensure!(status == 200, "GET /metrics: status {status}: {body}");
    Ok(body
        .lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|value| value.trim().parse().ok()))
}

/// Send a request that must be refused with `code` (and its `req`), then check the connection
/// still answers a ping. Does not wait for a reply that never comes if the node accepts a
/// `typing` (which has no reply on success).
pub async fn refused(client: &mut Client, frame: ClientFrame, code: ErrorCode) -> anyhow::Result<()> {
    let req = frame.req();
    let what = format!("{frame:?}");
    client.send(&frame).await?;
    match client.recv_matching_within(DEADLINE, |f| reply_req(f) == Some(req)).await? {
        Some(ServerFrame::Error { req: Some(got), code: got_code, message, .. })
            if got == req && got_code == code && !message.is_empty() => {}
        Some(other) => bail!("{what}: expected error {code:?} with req {req}, got {other:?}"),
        None => bail!("{what}: expected error {code:?} with req {req}, got no reply within {DEADLINE:?}"),
    }
    client.ping().await.with_context(|| format!("the connection after {what}"))
}

/// A non-member of `room` can read neither its member list nor its read positions.
pub async fn cannot_read_room(client: &mut Client, room: &str) -> anyhow::Result<()> {
    let req = client.next_req();
    let list = ClientFrame::ListMembers { req, room: room.to_string(), after: None, limit: None };
    refused(client, list, ErrorCode::NotMember).await?;
    let req = client.next_req();
    refused(client, ClientFrame::Receipts { req, room: room.to_string() }, ErrorCode::NotMember).await
}

pub fn presence_of<'a>(user: &'a str) -> impl Fn(&ServerFrame) -> bool + 'a {
    move |frame| matches!(frame, ServerFrame::Presence { presence } if presence.user == user)
}

/// The next presence push for `user` that differs from `known`. Pushes that repeat `known`
/// are skipped: a watcher that subscribed between a change and its flush may be told again
/// what its presence list already said.
pub async fn next_change(client: &mut Client, user: &str, known: &UserPresence) -> anyhow::Result<UserPresence> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_matching_within(left, presence_of(user)).await? {
            Some(ServerFrame::Presence { presence }) if presence == *known => continue,
            Some(ServerFrame::Presence { presence }) => return Ok(presence),
            Some(other) => bail!("not a presence frame: {other:?}"),
            None => bail!("{:?}: no presence push for {user} (other than {known:?}) within {DEADLINE:?}", client.user),
        }
    }
}

/// No presence push for `user` that differs from `known` within `within`.
pub async fn no_change(client: &mut Client, user: &str, known: &UserPresence, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match client.recv_matching_within(left, presence_of(user)).await? {
            Some(ServerFrame::Presence { presence }) if presence == *known => continue,
            Some(frame) => bail!("{:?}: unexpected push while {user} should stay {known:?}: {frame:?}", client.user),
            None => return Ok(()),
        }
    }
}

/// No presence push for `user` at all within `within`, not even one that repeats what the
/// watcher was told: a node pushes a watcher only what differs from what it last told it.
pub async fn no_push(client: &mut Client, user: &str, within: Duration) -> anyhow::Result<()> {
    if let Some(frame) = client.recv_matching_within(within, presence_of(user)).await? {
        bail!("{:?}: a presence push for {user} where nothing changed: {frame:?}", client.user);
    }
    Ok(())
}

pub fn check_presence(p: &UserPresence, user: &str, state: PresenceState, status: Option<&str>) -> anyhow::Result<()> {
    ensure!(
        p.user == user && p.state == state && p.status.as_deref() == status,
        "expected {user} {state:?} with status {status:?}, got {p:?}"
    );
    Ok(())
}

/// Offline, with a last_seen between `from - 1 s` and now + 1 s (same clock: one machine).
pub fn check_offline(p: &UserPresence, user: &str, from_ms: u64) -> anyhow::Result<()> {
    ensure!(p.user == user && p.state == PresenceState::Offline, "expected {user} offline, got {p:?}");
    let seen = p.last_seen.with_context(|| format!("{user} offline without last_seen: {p:?}"))?;
    let now = now_ms();
    ensure!(
        seen + 1_000 >= from_ms && seen <= now + 1_000,
        "{user}'s last_seen {seen} is not between {from_ms} (the disconnect) and {now} (now): {p:?}"
    );
    Ok(())
}

pub fn typing_in<'a>(room: &'a str) -> impl Fn(&ServerFrame) -> bool + 'a {
    move |frame| matches!(frame, ServerFrame::Typing { room: r, .. } if r == room)
}

/// `typing` has no reply on success.
pub async fn send_typing(client: &mut Client, room: &str, active: bool) -> anyhow::Result<()> {
    let req = client.next_req();
    client.send(&ClientFrame::Typing { req, room: room.into(), active }).await
}

/// Nothing matching `unwanted` reaches `client`: what is already there is seen after a ping
/// round trip, and nothing more comes for `within`.
pub async fn none_arrives(
    client: &mut Client,
    within: Duration,
    what: &str,
    unwanted: impl Fn(&ServerFrame) -> bool,
) -> anyhow::Result<()> {
    client.ping().await?;
    if let Some(frame) = client.recv_matching_within(within, unwanted).await? {
        bail!("{:?} got {what}: {frame:?}", client.user);
    }
    Ok(())
}

pub fn receipt_in<'a>(room: &'a str) -> impl Fn(&ServerFrame) -> bool + 'a {
    move |frame| matches!(frame, ServerFrame::Receipt { room: r, .. } if r == room)
}
