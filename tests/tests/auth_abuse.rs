//! Abuse of `login` and `register` against the real binary: pipelined password guesses are
//! counted as they arrive, a guesser at one address does not lock the owner out of another,
//! malformed user names never become limiter keys, password hashes beyond the node's hash queue
//! are refused at once, and registrations are limited per client address.
//!
//! A second client address is 127.0.0.2 (all of 127.0.0.0/8 is loopback on Linux).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use tests::{Client, ClientFrame, Encoding, ErrorCode, Node, NodeOptions, ServerFrame};

const PASSWORD: &str = "the owner's password";

/// Register `user` and return a connection from 127.0.0.1.
async fn registered(node: &Node, user: &str) -> anyhow::Result<Client> {
    let mut client = Client::connect(node, Encoding::Json).await?;
    let req = client.next_req();
    match client.request(ClientFrame::Register { req, user: user.into(), password: PASSWORD.into() }).await? {
        ServerFrame::Registered { .. } => Ok(client),
        other => bail!("register {user}: {other:?}"),
    }
}

/// Send `frames` without waiting, then collect each reply in order.
async fn pipelined(client: &mut Client, frames: Vec<ClientFrame>) -> anyhow::Result<Vec<ServerFrame>> {
    let reqs: Vec<u64> = frames.iter().map(ClientFrame::req).collect();
    for frame in &frames {
        client.send(frame).await?;
    }
    let mut replies = Vec::new();
    for req in reqs {
        replies.push(client.reply_to(req).await?);
    }
    Ok(replies)
}

fn wrong_logins(client: &mut Client, user: &str, n: usize) -> Vec<ClientFrame> {
    (0..n)
        .map(|i| ClientFrame::Login { req: client.next_req(), user: user.into(), password: format!("guess-{i}") })
        .collect()
}

/// How many replies are `invalid_credentials` and how many `rate_limited` (with a retry time);
/// anything else is an error.
fn tally(replies: &[ServerFrame]) -> anyhow::Result<(usize, usize)> {
    let (mut invalid, mut limited) = (0, 0);
    for reply in replies {
        match reply {
            ServerFrame::Error { code: ErrorCode::InvalidCredentials, .. } => invalid += 1,
            ServerFrame::Error { code: ErrorCode::RateLimited, retry_after_ms: Some(ms), .. } if *ms > 0 => {
                limited += 1
            }
            other => bail!("unexpected reply to a wrong login: {other:?}"),
        }
    }
    Ok((invalid, limited))
}

/// Log in from another client address over a fresh connection.
async fn login_from(node: &Node, source: Ipv4Addr, user: &str, password: &str) -> anyhow::Result<ServerFrame> {
    let mut client =
        Client::connect_from(node, source, Encoding::Json).await.context("connecting from a second address")?;
    client.request(ClientFrame::Login { req: 2, user: user.into(), password: password.into() }).await
}

/// 40 wrong passwords pipelined on one connection: only `login_max_failures` of them are
/// checked, the rest are refused with `rate_limited` before any hash.
#[tokio::test]
async fn pipelined_wrong_logins_are_limited_as_they_arrive() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default().env("AUTH__LOGIN_MAX_FAILURES", 5)).await?;
    let mut client = registered(&node, "alice").await?;
    let frames = wrong_logins(&mut client, "alice", 40);
    let replies = pipelined(&mut client, frames).await?;
    let (invalid, limited) = tally(&replies)?;
    ensure!(invalid == 5 && limited == 35, "{invalid} checked, {limited} refused; expected 5 and 35");
    // Also across user names from this address, and from a new connection.
    let mut other = Client::connect(&node, Encoding::MessagePack).await?;
    let frames = wrong_logins(&mut other, "bob", 3);
    let (invalid, limited) = tally(&pipelined(&mut other, frames).await?)?;
    ensure!(invalid == 0 && limited == 3, "the address has used its allowance: {invalid} checked");
    other.ping().await?;
    Ok(())
}

/// While a guesser at 127.0.0.1 is throttled for alice, alice logs in from 127.0.0.2.
#[tokio::test]
async fn the_owner_logs_in_from_another_address_while_a_guesser_is_throttled() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default().env("AUTH__LOGIN_MAX_FAILURES", 3)).await?;
    let mut guesser = registered(&node, "alice").await?;
    let frames = wrong_logins(&mut guesser, "alice", 10);
    let (invalid, limited) = tally(&pipelined(&mut guesser, frames).await?)?;
    ensure!(invalid == 3 && limited == 7, "{invalid} checked, {limited} refused");
    match login_from(&node, Ipv4Addr::new(127, 0, 0, 2), "alice", PASSWORD).await? {
        ServerFrame::LoggedIn { user, .. } if user == "alice" => {}
        other => bail!("the owner at another address: {other:?}"),
    }
    // The guesser is still throttled, even with the right password.
    let req = guesser.next_req();
    match guesser.request(ClientFrame::Login { req, user: "alice".into(), password: PASSWORD.into() }).await? {
        ServerFrame::Error { code: ErrorCode::RateLimited, .. } => {}
        other => bail!("the guesser's address: {other:?}"),
    }
    Ok(())
}

/// A 60 KB user name is refused with `invalid_name` and counts against nothing: it never
/// becomes a limiter key.
#[tokio::test]
async fn a_long_user_name_is_refused_before_it_becomes_a_limiter_key() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default().env("AUTH__LOGIN_MAX_FAILURES", 3)).await?;
    let mut client = registered(&node, "alice").await?;
    let long = "a".repeat(60_000);
    let frames: Vec<_> = (0..10)
        .map(|_| ClientFrame::Login { req: client.next_req(), user: long.clone(), password: "whatever1".into() })
        .collect();
    for reply in pipelined(&mut client, frames).await? {
        ensure!(
            matches!(reply, ServerFrame::Error { code: ErrorCode::InvalidName, ref message, .. } if message.len() < 200),
            "{reply:?}"
        );
    }
    // None of them used this address's allowance.
    let frames = wrong_logins(&mut client, "alice", 3);
    let (invalid, limited) = tally(&pipelined(&mut client, frames).await?)?;
    ensure!(invalid == 3 && limited == 0, "{invalid} checked, {limited} refused");
    Ok(())
}

/// With one hash at a time and two waiting, twelve simultaneous registrations from twelve
/// connections: at most three are hashed, the others get `rate_limited` at once, before the
/// first hash is done.
#[tokio::test]
async fn registrations_beyond_the_hash_queue_are_refused_promptly() -> anyhow::Result<()> {
    let node = Node::start(
        NodeOptions::default()
            .env("AUTH__MAX_CONCURRENT_HASHES", 1)
            .env("AUTH__HASH_QUEUE_LEN", 2)
            // Expensive enough that the queue is still full when the refusals come back.
            .env("AUTH__ARGON2_MEMORY_KIB", 8192)
            .env("AUTH__ARGON2_ITERATIONS", 8),
    )
    .await?;
    let mut clients = Vec::new();
    for _ in 0..12 {
        clients.push(Client::connect(&node, Encoding::Json).await?);
    }
    let started = Instant::now();
    for (i, client) in clients.iter_mut().enumerate() {
        let req = client.next_req();
        client.send(&ClientFrame::Register { req, user: format!("user{i}"), password: PASSWORD.into() }).await?;
    }
    let replies = futures_util::future::try_join_all(clients.iter_mut().map(|client| async move {
        let frame = client.recv().await?;
        Ok::<_, anyhow::Error>((frame, started.elapsed()))
    }))
    .await?;
    let first_registered = replies
        .iter()
        .filter(|(frame, _)| matches!(frame, ServerFrame::Registered { .. }))
        .map(|(_, at)| *at)
        .min()
        .context("at least one registration is hashed")?;
    let mut registered = 0;
    let mut refused = 0;
    for (frame, at) in &replies {
        match frame {
            ServerFrame::Registered { .. } => registered += 1,
            ServerFrame::Error { code: ErrorCode::RateLimited, retry_after_ms: Some(ms), .. } if *ms > 0 => {
                refused += 1;
                ensure!(*at <= first_registered, "refused after {at:?}, the first hash took {first_registered:?}");
            }
            other => bail!("register: {other:?}"),
        }
    }
    ensure!(registered <= 3 && registered + refused == 12, "{registered} registered, {refused} refused");
    ensure!(refused >= 9, "{refused} refused");
    // Once the queue drains, a refused name can register.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = Client::connect(&node, Encoding::Json).await?;
    for attempt in 0.. {
        let req = again.next_req();
        match again.request(ClientFrame::Register { req, user: "user11b".into(), password: PASSWORD.into() }).await? {
            ServerFrame::Registered { .. } => break,
            ServerFrame::Error { code: ErrorCode::RateLimited, retry_after_ms: Some(ms), .. } if attempt < 20 => {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            other => bail!("register after the queue drained: {other:?}"),
        }
    }
    Ok(())
}

/// `auth.register_max_per_address` registrations, then `rate_limited`; another address is not
/// affected.
#[tokio::test]
async fn registrations_are_limited_per_address() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default().env("AUTH__REGISTER_MAX_PER_ADDRESS", 3)).await?;
    let mut client = Client::connect(&node, Encoding::Json).await?;
    let frames: Vec<_> = (0..6)
        .map(|i| ClientFrame::Register { req: client.next_req(), user: format!("user{i}"), password: PASSWORD.into() })
        .collect();
    let replies = pipelined(&mut client, frames).await?;
    let registered = replies.iter().filter(|reply| matches!(reply, ServerFrame::Registered { .. })).count();
    let limited = replies
        .iter()
        .filter(|reply| {
            matches!(reply, ServerFrame::Error { code: ErrorCode::RateLimited, retry_after_ms: Some(ms), .. }
                if *ms > 0 && *ms <= 600_000)
        })
        .count();
    ensure!(registered == 3 && limited == 3, "{registered} registered, {limited} refused: {replies:?}");
    let mut elsewhere = Client::connect_from(&node, Ipv4Addr::new(127, 0, 0, 2), Encoding::Json).await?;
    let register = ClientFrame::Register { req: 2, user: "elsewhere".into(), password: PASSWORD.into() };
    match elsewhere.request(register).await? {
        ServerFrame::Registered { .. } => {}
        other => bail!("registering from another address: {other:?}"),
    }
    Ok(())
}
