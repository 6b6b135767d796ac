//! Closing a connection from the client side: the node answers the client's close frame (RFC 6455
//! §5.5.1), so clients — browsers especially — see a clean close with their own code instead of
//! an abnormal one (1006).

use anyhow::ensure;
use tests::{Client, Encoding, Node, NodeOptions};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn client_close_is_answered() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        for (code, authenticated) in [(CloseCode::Normal, false), (CloseCode::Away, true)] {
            let mut client = if authenticated {
                Client::user(&node, encoding, &format!("closer-{}", u16::from(code))).await?.0
            } else {
                Client::connect(&node, encoding).await?
            };
            client.ping().await?;
            client.send_raw(Message::Close(Some(CloseFrame { code, reason: "bye".into() }))).await?;
            let closed = client.closed().await?;
            ensure!(closed.code == Some(u16::from(code)), "{encoding:?}: the close {code} is echoed, got {closed:?}");
        }
    }
    // And the node still serves.
    Client::connect(&node, Encoding::Json).await?.ping().await?;
    Ok(())
}
