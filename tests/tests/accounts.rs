//! Deleting an account against the real binary (docs/PROTOCOL.md, "Deleting an account"): the
//! password confirms it; the user leaves every room, direct conversations included, and every
//! member sees the leave; every connection of theirs closes; their name cannot log in, be
//! registered, invited or written to again; what they wrote stays in the rooms under the name.

use anyhow::{bail, ensure};
use protocol::PresenceState;
use tests::{Client, ClientFrame, Encoding, EntryKind, ErrorCode, Node, NodeOptions, ServerFrame, TestStore};

const PASSWORD: &str = "correct horse battery";

#[tokio::test]
async fn deleting_an_account() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let mut phone = Client::connect(&node, Encoding::Json).await?;
    let token = phone.register_and_login("alice", PASSWORD).await?;
    phone.authenticate(&token, None).await?;
    let mut laptop = Client::connect(&node, Encoding::MessagePack).await?;
    laptop.authenticate(&token, None).await?;
    let (mut bob, _) = Client::user(&node, Encoding::Json, "bob").await?;
    let room = phone.create_room("team").await?;
    bob.join(&room).await?;
    let req = phone.next_req();
    let ServerFrame::Room { room: direct, .. } =
        phone.request(ClientFrame::OpenDirect { req, user: "bob".into() }).await?
    else {
        bail!("open_direct")
    };
    phone.say(&room, "a1", "the plan is on the wiki").await?;
    phone.say(&direct.id, "a2", "see you at noon").await?;
    // A status text, written to the store: erased with the account, from the disk too.
    let status = "status-text-5e1d0c7a";
    let req = phone.next_req();
    let frame = ClientFrame::SetPresence { req, state: PresenceState::Online, status: Some(status.into()) };
    ensure!(matches!(phone.request(frame).await?, ServerFrame::Ok { .. }));
    let on_sqlite = TestStore::from_env() == TestStore::Sqlite;
    if on_sqlite {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while node.store_files_holding(status)?.is_empty() {
            ensure!(tokio::time::Instant::now() < deadline, "the status text never reached the store files");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    // A wrong password changes nothing.
    let req = laptop.next_req();
    let frame = ClientFrame::DeleteAccount { req, password: "not my password".into() };
    match laptop.request(frame).await? {
        ServerFrame::Error { code: ErrorCode::InvalidCredentials, .. } => {}
        other => bail!("a wrong password: {other:?}"),
    }
    phone.say(&room, "a3", "still here").await?;

    // The right one: ok, then every connection of the user closes.
    let req = laptop.next_req();
    match laptop.request(ClientFrame::DeleteAccount { req, password: PASSWORD.into() }).await? {
        ServerFrame::Ok { .. } => {}
        other => bail!("delete_account: {other:?}"),
    }
    for (which, client) in [("laptop", &mut laptop), ("phone", &mut phone)] {
        let closed = client.closed().await?;
        let told = client.backlog().any(|f| matches!(f, ServerFrame::Error { code: ErrorCode::TokenRevoked, .. }));
        ensure!(told && closed.code == Some(1008), "{which}: {closed:?}");
    }

    // Bob sees alice leave both rooms; her messages stay, under her name.
    for id in [&room, &direct.id] {
        loop {
            let left = bob
                .ledger
                .iter()
                .any(|(_, e)| e.room == *id && e.kind == EntryKind::Leave && e.user.as_deref() == Some("alice"));
            if left {
                break;
            }
            bob.recv().await?;
        }
        let req = bob.next_req();
        let history = ClientFrame::History { req, room: id.clone(), before: None, after: Some(0), limit: None };
        let ServerFrame::History { entries, .. } = bob.request(history).await? else { bail!("history") };
        ensure!(entries.iter().any(|e| e.from == "alice" && e.kind == EntryKind::Text), "{entries:?}");
    }
    let req = bob.next_req();
    let ServerFrame::Rooms { rooms, .. } = bob.request(ClientFrame::ListRooms { req }).await? else { bail!("rooms") };
    ensure!(rooms.iter().all(|r| r.members == 1), "alice is no member anywhere: {rooms:?}");

    // The status text leaves the database file and its write-ahead log within a checkpoint round.
    if on_sqlite {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !node.store_files_holding(status)?.is_empty() {
            let held = node.store_files_holding(status)?;
            ensure!(tokio::time::Instant::now() < deadline, "the status text is still in {held:?}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    } else {
        tests::say_skipped("deleting_an_account (on-disk check)", "reads SQLite's files; FoundationDB's are its own");
    }

    // The name is no user any more, and stays taken.
    let mut again = Client::connect(&node, Encoding::Json).await?;
    let req = again.next_req();
    let login = ClientFrame::Login { req, user: "alice".into(), password: PASSWORD.into() };
    ensure!(matches!(again.request(login).await?, ServerFrame::Error { code: ErrorCode::InvalidCredentials, .. }));
    let req = again.next_req();
    let register = ClientFrame::Register { req, user: "alice".into(), password: "a new password".into() };
    ensure!(matches!(again.request(register).await?, ServerFrame::Error { code: ErrorCode::UserExists, .. }));
    let req = again.next_req();
    let authenticate = ClientFrame::Authenticate { req, token: token.clone(), cursor: None, rooms: Default::default() };
    ensure!(matches!(again.request(authenticate).await?, ServerFrame::Error { .. }), "the old token is dead");
    let req = bob.next_req();
    let invite = ClientFrame::Invite { req, room: room.clone(), user: "alice".into() };
    ensure!(matches!(bob.request(invite).await?, ServerFrame::Error { code: ErrorCode::NoSuchUser, .. }));
    let req = bob.next_req();
    let open = ClientFrame::OpenDirect { req, user: "alice".into() };
    ensure!(matches!(bob.request(open).await?, ServerFrame::Error { code: ErrorCode::NoSuchUser, .. }));
    Ok(())
}
