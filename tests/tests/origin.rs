//! `Origin` on the WebSocket upgrade (`client.allowed_origins`): a page of another site is
//! refused with 403 before the upgrade; the node's own page (Origin equal to Host), a listed
//! origin, and programs that send no Origin are let in.

use anyhow::ensure;
use tests::{Client, Encoding, Node, NodeOptions};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

/// Open a WebSocket with `origin` (none when `None`) and greet; the HTTP status of a refusal.
async fn upgrade(node: &Node, origin: Option<&str>) -> anyhow::Result<Result<(), u16>> {
    let mut request = node.ws_url().into_client_request()?;
    if let Some(origin) = origin {
        request.headers_mut().insert("Origin", origin.parse()?);
    }
    let stream = Box::new(TcpStream::connect(node.addr).await?);
    match Client::connect_over(request, stream, Encoding::Json).await {
        // A real session: it greets like any client.
        Ok(mut client) => client.greet().await.map(Ok),
        Err(err) => match err.downcast_ref::<tungstenite::Error>() {
            Some(tungstenite::Error::Http(response)) => Ok(Err(response.status().as_u16())),
            _ => Err(err.context(format!("upgrade with Origin {origin:?}"))),
        },
    }
}

#[tokio::test]
async fn only_the_nodes_own_page_and_programs_may_open_a_websocket_by_default() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let own = format!("http://{}", node.addr);
    ensure!(upgrade(&node, Some(&own)).await? == Ok(()), "the page's own origin {own}");
    ensure!(upgrade(&node, None).await? == Ok(()), "no Origin (a program)");
    for foreign in ["http://evil.example", "https://evil.example", "null", &format!("http://{}", node.admin)] {
        ensure!(upgrade(&node, Some(foreign)).await? == Err(403), "Origin {foreign} must be refused with 403");
    }
    Ok(())
}

#[tokio::test]
async fn listed_origins_are_let_in() -> anyhow::Result<()> {
    let node =
        Node::start(NodeOptions::default().env("CLIENT__ALLOWED_ORIGINS", r#"["https://chat.example.com"]"#)).await?;
    ensure!(upgrade(&node, Some("https://chat.example.com")).await? == Ok(()), "the listed origin");
    ensure!(upgrade(&node, Some(&format!("http://{}", node.addr))).await? == Ok(()), "still the page's own");
    ensure!(upgrade(&node, Some("http://chat.example.com")).await? == Err(403), "another scheme is another origin");
    ensure!(upgrade(&node, Some("https://evil.example")).await? == Err(403), "an unlisted origin");
    Ok(())
}
