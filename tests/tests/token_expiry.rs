//! A connection lives no longer than the token it authenticated with: when the token expires
//! the node says `token_expired` and closes (1008); the same token is refused from then on, and
//! a fresh login resumes from the client's cursor without a gap.

use std::time::{Duration, Instant};

use anyhow::{bail, ensure};
use tests::{check_ledger, Client, ClientFrame, Encoding, ErrorCode, Node, NodeOptions, ServerFrame};

const TTL_SECS: u64 = 3;

#[tokio::test]
async fn an_expired_token_ends_the_connection_and_a_new_login_resumes() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default().env("AUTH__TOKEN_TTL_SECS", TTL_SECS)).await?;
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        let name = format!("brief-{}", if encoding == Encoding::Json { "json" } else { "msgpack" });
        let started = Instant::now();
        let (mut brief, token) = Client::user(&node, encoding, &name).await?;
        let room = brief.create_room("short lived").await?;
        brief.say(&room, "before", "before the expiry").await?;
        brief.wait_ledger_len(2).await?;

        let closed = brief.closed().await?;
        ensure!(closed.code == Some(1008), "{encoding:?}: closed with {closed:?}, expected 1008");
        ensure!(
            started.elapsed() >= Duration::from_secs(TTL_SECS) - Duration::from_millis(500),
            "{encoding:?}: closed after {:?}, before the token's {TTL_SECS} s were up",
            started.elapsed()
        );
        let told = brief.backlog().any(|frame| {
            matches!(frame, ServerFrame::Error { req: None, code: ErrorCode::TokenExpired, message, .. }
                if message.contains("log in again"))
        });
        ensure!(
            told,
            "{encoding:?}: no token_expired error before the close: {:?}",
            brief.backlog().collect::<Vec<_>>()
        );

        // Someone else writes while the client is away.
        let (mut other, _) = Client::user(&node, Encoding::Json, &format!("{name}-friend")).await?;
        let req = other.next_req();
        match other.request(ClientFrame::Join { req, room: room.clone() }).await? {
            ServerFrame::Room { .. } => {}
            frame => bail!("join: {frame:?}"),
        }
        other.say(&room, "while-away", "missed it?").await?;

        // The old token is refused; a fresh login resumes from the cursor.
        let mut again = Client::connect(&node, encoding).await?;
        let req = again.next_req();
        match again
            .request(ClientFrame::Authenticate { req, token, cursor: Some(brief.cursor), rooms: Default::default() })
            .await?
        {
            ServerFrame::Error { code: ErrorCode::TokenExpired, .. } => {}
            frame => bail!("{encoding:?}: the expired token was accepted: {frame:?}"),
        }
        let fresh = again.login(&name, &format!("password-of-{name}")).await?;
        again.authenticate(&fresh, Some(brief.cursor)).await?;
        again.until_live().await?;
        let whole: Vec<_> = brief.ledger.iter().cloned().chain(again.ledger.iter().cloned()).collect();
        check_ledger(&whole, 0)?;
        ensure!(
            whole.iter().any(|(_, entry)| entry.id == "while-away"),
            "{encoding:?}: the message sent while away was not replayed"
        );
    }
    Ok(())
}
