//! The shortest end-to-end path: two users chat through a real node.

use tests::{Client, Encoding, Node, NodeOptions, ServerFrame};

#[tokio::test]
async fn two_users_chat() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    for encoding in [Encoding::Json, Encoding::MessagePack] {
        let suffix = if encoding == Encoding::Json { "j" } else { "m" };
        let (mut alice, _) = Client::user(&node, encoding, &format!("alice{suffix}")).await?;
        let (mut bob, _) = Client::user(&node, encoding, &format!("bob{suffix}")).await?;
        let room = alice.create_room("general").await?;
        bob.join(&room).await?;
        let (seq, duplicate) = alice.say(&room, "m1", "hello bob").await?;
        assert_eq!((seq, duplicate), (3, false), "create and join took seq 1 and 2");
        let entry = bob.wait_for_message(&room, "m1").await?;
        assert_eq!(entry.body, "hello bob");
        assert_eq!(entry.from, format!("alice{suffix}"));
        let req = bob.next_req();
        let pong = bob.request(protocol::ClientFrame::Ping { req }).await?;
        assert_eq!(pong, ServerFrame::Pong { req });
    }
    Ok(())
}
