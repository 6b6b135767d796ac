//! Media (docs/MEDIA.md): uploads over HTTP, attachments in messages, downloads through signed
//! links by members only, thumbnails, the refusals that must leave nothing behind, collection of
//! deleted and orphaned media, a node killed mid-upload, a cluster, and all of it on a real
//! S3-compatible server (moto) as well as on the filesystem.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context};
use sha2::{Digest, Sha256};
use tests::cluster::Cluster;
use tests::media::{self, files_under, get, upload, S3Server};
use tests::{Client, ClientFrame, Encoding, EntryKind, ErrorCode, Node, NodeOptions, ServerFrame};

/// Ask for `media`'s links: (url, thumbnail url) or the error code.
async fn media_url(
    client: &mut Client,
    media: &str,
) -> anyhow::Result<Result<(String, Option<String>, u64), ErrorCode>> {
    let req = client.next_req();
    match client.request(ClientFrame::MediaUrl { req, media: media.into() }).await? {
        ServerFrame::MediaUrl { url, thumbnail_url, expires_at, .. } => Ok(Ok((url, thumbnail_url, expires_at))),
        ServerFrame::Error { code, .. } => Ok(Err(code)),
        other => bail!("media_url: {other:?}"),
    }
}

/// Send `body` with `attachments`; the ack's (seq, duplicate) or the error code.
async fn send(
    client: &mut Client,
    room: &str,
    id: &str,
    body: &str,
    attachments: &[&str],
) -> anyhow::Result<Result<(u64, bool), ErrorCode>> {
    let req = client.next_req();
    let mut frame = ClientFrame::send(req, room, id, body);
    if let ClientFrame::Send { attachments: list, .. } = &mut frame {
        *list = attachments.iter().map(|a| a.to_string()).collect();
    }
    match client.request(frame).await? {
        ServerFrame::Ack { seq, duplicate, .. } => Ok(Ok((seq, duplicate))),
        ServerFrame::Error { code, .. } => Ok(Err(code)),
        other => bail!("send: {other:?}"),
    }
}

/// Upload and expect 201; the attachment JSON the node answered.
async fn uploaded(
    addr: SocketAddr,
    token: &str,
    name: &str,
    claimed: Option<&str>,
    bytes: &[u8],
) -> anyhow::Result<serde_json::Value> {
    let response = upload(addr, token, name, claimed, bytes).await?;
    ensure!(
        response.status == 201,
        "upload of {name}: {} {:?}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
    response.json()
}

fn id_of(attachment: &serde_json::Value) -> String {
    attachment["media"].as_str().unwrap_or_default().to_owned()
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// Alice uploads an image and a PDF and posts them; Bob, a member, sees the attachments live
/// and in history and downloads both through signed links (ranges, revalidation, thumbnail);
/// Carol, who is not in the room, is told the media does not exist, and altered links are
/// refused. Where the bytes live is the node's business: this runs on both backends.
async fn upload_attach_download(node: &Node, encoding: Encoding) -> anyhow::Result<()> {
    let (mut alice, alice_token) = Client::user(node, encoding, "alice").await?;
    let (mut bob, _) = Client::user(node, encoding, "bob").await?;
    let (mut carol, _) = Client::user(node, encoding, "carol").await?;
    let room = alice.create_room("pictures").await?;
    bob.join(&room).await?;

    let image = media::png(640, 480);
    let photo = uploaded(node.addr, &alice_token, "cat photo.png", Some("image/png"), &image).await?;
    ensure!(photo["type"] == "image/png" && photo["size"] == image.len() as u64, "{photo}");
    ensure!(photo["width"] == 640 && photo["height"] == 480 && photo["name"] == "cat photo.png", "{photo}");
    ensure!(photo["thumbnail"]["width"] == 320 && photo["thumbnail"]["height"] == 240, "{photo}");
    let report_bytes = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n".to_vec();
    let report = uploaded(node.addr, &alice_token, "report.pdf", Some("application/pdf"), &report_bytes).await?;
    ensure!(report["type"] == "application/pdf" && report.get("thumbnail").is_none(), "{report}");
    let (photo_id, report_id) = (id_of(&photo), id_of(&report));

    // Files alone need no text.
    let sent = send(&mut alice, &room, "m-1", "", &[&photo_id, &report_id]).await?;
    ensure!(matches!(sent, Ok((_, false))), "{sent:?}");
    let live = bob.wait_for_message(&room, "m-1").await?;
    ensure!(live.attachments.len() == 2, "{live:?}");
    ensure!(serde_json::to_value(&live.attachments[0])? == photo, "{:?} != {photo}", live.attachments[0]);
    ensure!(serde_json::to_value(&live.attachments[1])? == report, "{:?} != {report}", live.attachments[1]);
    let req = bob.next_req();
    match bob
        .request(ClientFrame::History { req, room: room.clone(), before: None, after: None, limit: Some(10) })
        .await?
    {
        ServerFrame::History { entries, .. } => {
            let posted = entries.iter().find(|e| e.id == "m-1").context("the message in history")?;
            ensure!(posted.attachments == live.attachments, "{posted:?}");
        }
        other => bail!("history: {other:?}"),
    }

    // A member downloads the image: immutable, validated by its hash, ranged.
    let (url, thumbnail_url, _) = media_url(&mut bob, &photo_id).await?.map_err(|code| anyhow::anyhow!("{code:?}"))?;
    let whole = get(node.addr, "GET", &url, &[]).await?;
    ensure!(whole.status == 200 && whole.body == image, "GET {url}: {}", whole.status);
    let etag = format!("\"{}\"", sha256_hex(&image));
    ensure!(whole.header("etag") == Some(etag.as_str()), "{:?}", whole.headers);
    ensure!(whole.header("content-type") == Some("image/png"), "{:?}", whole.headers);
    ensure!(whole.header("cache-control").is_some_and(|v| v.contains("immutable")), "{:?}", whole.headers);
    ensure!(whole.header("x-content-type-options") == Some("nosniff"), "{:?}", whole.headers);
    ensure!(whole.header("content-disposition").is_some_and(|v| v.starts_with("inline")), "{:?}", whole.headers);
    let part = get(node.addr, "GET", &url, &["Range: bytes=10-19"]).await?;
    ensure!(part.status == 206 && part.body == image[10..20], "range: {}", part.status);
    let range = format!("bytes 10-19/{}", image.len());
    ensure!(part.header("content-range") == Some(range.as_str()), "{:?}", part.headers);
    let beyond = get(node.addr, "GET", &url, &[&format!("Range: bytes={}-", image.len() + 5)]).await?;
    ensure!(beyond.status == 416, "unsatisfiable range: {}", beyond.status);
    let again = get(node.addr, "GET", &url, &[&format!("If-None-Match: {etag}")]).await?;
    ensure!(again.status == 304 && again.body.is_empty(), "revalidation: {}", again.status);
    let head = get(node.addr, "HEAD", &url, &[]).await?;
    let length = image.len().to_string();
    ensure!(head.status == 200 && head.body.is_empty(), "HEAD: {}", head.status);
    ensure!(head.header("content-length") == Some(length.as_str()), "{:?}", head.headers);

    let thumbnail_url = thumbnail_url.context("an image has a thumbnail link")?;
    let thumbnail = get(node.addr, "GET", &thumbnail_url, &[]).await?;
    ensure!(thumbnail.status == 200, "thumbnail: {}", thumbnail.status);
    let decoded = image::load_from_memory(&thumbnail.body).context("the thumbnail is an image")?;
    ensure!((decoded.width(), decoded.height()) == (320, 240), "{}x{}", decoded.width(), decoded.height());

    // Not an image: served as a download, never rendered.
    let (report_url, report_thumbnail, _) =
        media_url(&mut bob, &report_id).await?.map_err(|code| anyhow::anyhow!("{code:?}"))?;
    ensure!(report_thumbnail.is_none());
    let pdf = get(node.addr, "GET", &report_url, &[]).await?;
    ensure!(pdf.status == 200 && pdf.body == report_bytes, "pdf: {}", pdf.status);
    ensure!(pdf.header("content-disposition") == Some("attachment; filename*=UTF-8''report.pdf"), "{:?}", pdf.headers);
    ensure!(pdf.header("content-security-policy").is_some_and(|v| v.contains("sandbox")), "{:?}", pdf.headers);

    // Outsiders learn nothing; altered links are refused.
    ensure!(media_url(&mut carol, &photo_id).await? == Err(ErrorCode::NoSuchMedia));
    let (path, query) = url.split_once('?').context("a query")?;
    let forged_id = format!("{}?{query}", path.replace(&photo_id, &report_id));
    let mut tampered = url.clone();
    let last = tampered.pop().context("a signature")?;
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let later = {
        let (e, rest) = query.split_once('&').context("e and s")?;
        let e: u64 = e.trim_start_matches("e=").parse()?;
        format!("{path}?e={}&{rest}", e + 600)
    };
    for altered in [forged_id, tampered, later, path.to_owned()] {
        let refused = get(node.addr, "GET", &altered, &[]).await?;
        ensure!(refused.status == 403, "{altered}: {}", refused.status);
    }
    Ok(())
}

#[tokio::test]
async fn an_image_and_a_file_are_uploaded_posted_and_downloaded_by_members_only() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    upload_attach_download(&node, Encoding::Json).await?;
    // The filesystem backend keeps the bytes under the data directory: the image, its
    // thumbnail and the PDF.
    ensure!(
        files_under(&media::media_dir(&node.data_dir)).len() == 3,
        "{:?}",
        files_under(&media::media_dir(&node.data_dir))
    );
    Ok(())
}

#[tokio::test]
async fn the_same_on_an_s3_compatible_server() -> anyhow::Result<()> {
    let Some(s3) = S3Server::start("the_same_on_an_s3_compatible_server").await? else { return Ok(()) };
    let node = Node::start(s3.node_options()).await?;
    upload_attach_download(&node, Encoding::MessagePack).await?;
    let keys = s3.keys().await?;
    ensure!(keys.len() == 3, "the bucket holds the image, its thumbnail and the PDF: {keys:?}");
    ensure!(!media::media_dir(&node.data_dir).exists(), "nothing went to the local disk");

    // A refused upload leaves nothing in the bucket either.
    let (_, token) = Client::user(&node, Encoding::Json, "dave").await?;
    let refused = upload(node.addr, &token, "x.png", Some("image/png"), &media::corrupt_png()).await?;
    ensure!(refused.status == 422, "corrupt image: {}", refused.status);
    ensure!(s3.keys().await? == keys, "{:?}", s3.keys().await?);
    Ok(())
}

/// Every refusal is precise and leaves no bytes and no quota behind.
#[tokio::test]
async fn refused_uploads_say_why_and_leave_nothing_behind() -> anyhow::Result<()> {
    let node = Node::start(
        NodeOptions::default()
            .env("MEDIA__MAX_BYTES", 200_000)
            .env("MEDIA__QUOTA_BYTES", 300_000)
            .env("MEDIA__MAX_IMAGE_PIXELS", 4_000_000),
    )
    .await?;
    let dir = media::media_dir(&node.data_dir);
    let (_, token) = Client::user(&node, Encoding::Json, "alice").await?;
    let addr = node.addr;

    let anonymous = media::http(addr, "POST /media?name=a HTTP/1.1\r\nHost: t\r\nContent-Length: 3", b"abc").await?;
    ensure!(anonymous.status == 401, "no token: {}", anonymous.status);
    let forged = upload(addr, "not-a-token", "a", None, b"abc").await?;
    ensure!(forged.status == 401 && forged.error_code() == "token_invalid", "{forged:?}");
    let chunked = media::http(
        addr,
        &format!(
            "POST /media?name=a HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked"
        ),
        b"3\r\nabc\r\n0\r\n\r\n",
    )
    .await?;
    ensure!(chunked.status == 411, "chunked: {}", chunked.status);
    let head =
        format!("POST /media?name=a HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Length: 200001");
    let too_large = media::http(addr, &head, &[0; 1000]).await?;
    ensure!(too_large.status == 413 && too_large.error_code() == "too_large", "{too_large:?}");

    // Lying about the type, either way round.
    let image = media::png(100, 100);
    let claims_pdf = upload(addr, &token, "a.pdf", Some("application/pdf"), &image).await?;
    ensure!(claims_pdf.status == 415 && claims_pdf.error_code() == "type_mismatch", "{claims_pdf:?}");
    let claims_png = upload(addr, &token, "b.png", Some("image/png"), b"%PDF-1.4\n%%EOF\n").await?;
    ensure!(claims_png.status == 415 && claims_png.error_code() == "type_mismatch", "{claims_png:?}");
    let corrupt = upload(addr, &token, "c.png", Some("image/png"), &media::corrupt_png()).await?;
    ensure!(corrupt.status == 422 && corrupt.error_code() == "invalid_image", "{corrupt:?}");
    let bomb = upload(addr, &token, "bomb.png", Some("image/png"), &media::bomb_png(100_000, 100_000)).await?;
    ensure!(bomb.status == 422 && bomb.error_code() == "image_too_large", "{bomb:?}");
    // Past the node's pixel limit but not absurd: refused the same way.
    let big = upload(addr, &token, "big.png", None, &media::bomb_png(4_000, 1_001)).await?;
    ensure!(big.status == 422 && big.error_code() == "image_too_large", "{big:?}");
    ensure!(files_under(&dir).is_empty(), "refusals left files: {:?}", files_under(&dir));

    // The quota counts what is kept, and nothing of what was refused.
    uploaded(addr, &token, "one.bin", None, &vec![1; 150_000]).await?;
    let over = upload(addr, &token, "two.bin", None, &vec![2; 150_001]).await?;
    ensure!(over.status == 413 && over.error_code() == "quota_exceeded", "{over:?}");
    uploaded(addr, &token, "three.bin", None, &vec![3; 150_000]).await?;
    ensure!(files_under(&dir).len() == 2, "{:?}", files_under(&dir));
    Ok(())
}

/// Only one's own ready upload may be attached, once; a retried send is acked as the first.
#[tokio::test]
async fn only_ones_own_upload_is_attached_and_only_once() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let (mut alice, alice_token) = Client::user(&node, Encoding::Json, "alice").await?;
    let (mut bob, _) = Client::user(&node, Encoding::Json, "bob").await?;
    let room = alice.create_room("files").await?;
    bob.join(&room).await?;
    let file = id_of(&uploaded(node.addr, &alice_token, "notes.txt", Some("text/plain"), b"hello notes\n").await?);

    ensure!(send(&mut bob, &room, "b-1", "mine now", &[&file]).await? == Err(ErrorCode::NoSuchMedia));
    ensure!(send(&mut alice, &room, "a-0", "x", &["md_unknownunknownunknown0"]).await? == Err(ErrorCode::NoSuchMedia));
    let first = send(&mut alice, &room, "a-1", "notes", &[&file]).await?;
    let Ok((seq, false)) = first else { bail!("{first:?}") };
    ensure!(send(&mut alice, &room, "a-1", "notes", &[&file]).await? == Ok((seq, true)), "a retry is a duplicate");
    ensure!(send(&mut alice, &room, "a-2", "again", &[&file]).await? == Err(ErrorCode::MediaInUse));
    ensure!(send(&mut alice, &room, "a-3", "twice", &[&file, &file]).await? == Err(ErrorCode::InvalidField));
    // Bob's refused send wrote nothing: the room has the join entries and one message.
    let text: Vec<_> = bob.backlog().collect();
    ensure!(!text.iter().any(|f| matches!(f, ServerFrame::Message { entry, .. } if entry.id == "b-1")));
    Ok(())
}

#[tokio::test]
async fn links_expire() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default().env("MEDIA__URL_TTL_S", 1)).await?;
    let (mut alice, token) = Client::user(&node, Encoding::Json, "alice").await?;
    let file = id_of(&uploaded(node.addr, &token, "a.txt", Some("text/plain"), b"short-lived\n").await?);
    // The uploader may fetch an upload not yet posted (to preview it).
    let (url, _, expires_at) = media_url(&mut alice, &file).await?.map_err(|code| anyhow::anyhow!("{code:?}"))?;
    ensure!(get(node.addr, "GET", &url, &[]).await?.status == 200);
    let wait = expires_at.saturating_sub(tests::now_ms()) + 200;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let expired = get(node.addr, "GET", &url, &[]).await?;
    ensure!(expired.status == 403 && expired.error_code() == "link_expired", "{expired:?}");
    Ok(())
}

/// Wait until `dir` holds exactly `count` files (the collector runs every 200 ms here).
async fn files_become(dir: &std::path::Path, count: usize) -> anyhow::Result<()> {
    for _ in 0..100 {
        if files_under(dir).len() == count {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{} files, not {count}: {:?}", files_under(dir).len(), files_under(dir))
}

#[tokio::test]
async fn media_of_deleted_messages_and_accounts_is_deleted() -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default().env("MEDIA__COLLECT_POLL_MS", 200)).await?;
    let dir = media::media_dir(&node.data_dir);
    let (mut alice, alice_token) = Client::user(&node, Encoding::Json, "alice").await?;
    let (mut bob, bob_token) = Client::user(&node, Encoding::Json, "bob").await?;
    let room = alice.create_room("photos").await?;
    bob.join(&room).await?;
    let photo = id_of(&uploaded(node.addr, &alice_token, "a.png", None, &media::png(50, 40)).await?);
    let Ok((seq, _)) = send(&mut alice, &room, "m-1", "look", &[&photo]).await? else { bail!("send") };
    let theirs = id_of(&uploaded(node.addr, &bob_token, "b.txt", Some("text/plain"), b"bob's\n").await?);
    ensure!(send(&mut bob, &room, "b-1", "mine", &[&theirs]).await?.is_ok());
    files_become(&dir, 3).await?;

    let req = alice.next_req();
    match alice.request(ClientFrame::Delete { req, room: room.clone(), id: "d-1".into(), seq }).await? {
        ServerFrame::Ack { .. } => {}
        other => bail!("delete: {other:?}"),
    }
    // Gone for members at once, from the disk within a collector pass.
    ensure!(media_url(&mut bob, &photo).await? == Err(ErrorCode::NoSuchMedia));
    let deleted = bob.wait_for_message(&room, "d-1").await?;
    ensure!(deleted.kind == EntryKind::Delete);
    files_become(&dir, 1).await?;

    let req = bob.next_req();
    match bob.request(ClientFrame::Leave { req, room: room.clone() }).await? {
        ServerFrame::Ok { .. } => {}
        other => bail!("leave: {other:?}"),
    }
    let req = bob.next_req();
    bob.send(&ClientFrame::DeleteAccount { req, password: "password-of-bob".into() }).await?;
    files_become(&dir, 0).await?;
    ensure!(media_url(&mut alice, &theirs).await? == Err(ErrorCode::NoSuchMedia));
    Ok(())
}

#[tokio::test]
async fn uploads_never_posted_are_collected() -> anyhow::Result<()> {
    let node =
        Node::start(NodeOptions::default().env("MEDIA__ORPHAN_TTL_S", 1).env("MEDIA__COLLECT_POLL_MS", 200)).await?;
    let dir = media::media_dir(&node.data_dir);
    let (mut alice, token) = Client::user(&node, Encoding::Json, "alice").await?;
    let orphan = id_of(&uploaded(node.addr, &token, "o.png", None, &media::png(40, 40)).await?);
    ensure!(!files_under(&dir).is_empty());
    files_become(&dir, 0).await?;
    ensure!(media_url(&mut alice, &orphan).await? == Err(ErrorCode::NoSuchMedia));
    let room = alice.create_room("late").await?;
    ensure!(send(&mut alice, &room, "m-1", "too late", &[&orphan]).await? == Err(ErrorCode::NoSuchMedia));
    Ok(())
}

/// kill -9 in the middle of an upload: no file is visible, before or after the restart (only
/// the object store's own staging file), the quota it reserved is given back by the collector,
/// uploads work again, and the staging file is swept.
#[tokio::test]
async fn a_node_killed_mid_upload_leaves_no_file_visible() -> anyhow::Result<()> {
    let mut node = Node::start(
        NodeOptions::default()
            .env("MEDIA__ORPHAN_TTL_S", 1)
            .env("MEDIA__COLLECT_POLL_MS", 200)
            .env("MEDIA__QUOTA_BYTES", 6_000_000),
    )
    .await?;
    let dir = media::media_dir(&node.data_dir);
    let (_, token) = Client::user(&node, Encoding::Json, "alice").await?;
    let stream = media::start_upload(node.addr, &token, 5_000_000, 1_000_000).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    node.kill9().await?;
    drop(stream);
    let visible = |dir: &std::path::Path| files_under(dir).into_iter().filter(|f| !f.contains('#')).collect::<Vec<_>>();
    ensure!(visible(&dir).is_empty(), "a half upload is visible: {:?}", visible(&dir));
    node.restart().await?;
    ensure!(visible(&dir).is_empty(), "after the restart: {:?}", visible(&dir));
    let mut alice = Client::connect(&node, Encoding::Json).await?;
    alice.authenticate(&token, None).await?;
    let room = alice.create_room("after").await?;
    // The reservation of the dead upload is collected, so its 5 MB count against nothing.
    let mut kept = None;
    for _ in 0..50 {
        let response = upload(node.addr, &token, "after.bin", None, &vec![7; 2_000_000]).await?;
        if response.status == 201 {
            kept = Some(response);
            break;
        }
        ensure!(response.error_code() == "quota_exceeded", "{response:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = kept.context("the dead upload's reservation was never collected")?;
    ensure!(visible(&dir).len() == 1, "{:?}", visible(&dir));
    // Posted at once, the new upload outlives the one-second orphan limit, so the one file left
    // once the half file's staging bytes are swept is this one (unposted, it could be collected
    // first and the count would pass from two to none).
    ensure!(send(&mut alice, &room, "m-1", "kept", &[&id_of(&kept.json()?)]).await?.is_ok());
    // And the half file's staging bytes are swept once they are older than an upload can be.
    files_become(&dir, 1).await?;
    ensure!(visible(&dir).len() == 1, "{:?}", visible(&dir));
    Ok(())
}

/// Upload to one node, download from another: the record is in the shared store and the bytes
/// in storage every node sees.
#[tokio::test]
async fn an_upload_to_one_node_is_downloaded_from_another() -> anyhow::Result<()> {
    let cluster = Cluster::start(2).await?;
    let (first, second) = (cluster.node(0), cluster.node(1));
    let (mut alice, token) = Client::user(first, Encoding::Json, "alice").await?;
    let (mut bob, _) = Client::user(second, Encoding::MessagePack, "bob").await?;
    let room = alice.create_room("across").await?;
    bob.join(&room).await?;
    let image = media::png(120, 90);
    let photo = id_of(&uploaded(first.addr, &token, "across.png", None, &image).await?);
    ensure!(send(&mut alice, &room, "m-1", "from node 1", &[&photo]).await?.is_ok());
    let entry = bob.wait_for_message(&room, "m-1").await?;
    ensure!(entry.attachments.first().is_some_and(|a| a.media == photo && a.width == Some(120)), "{entry:?}");
    let (url, thumbnail, _) = media_url(&mut bob, &photo).await?.map_err(|code| anyhow::anyhow!("{code:?}"))?;
    let fetched = get(second.addr, "GET", &url, &[]).await?;
    ensure!(fetched.status == 200 && fetched.body == image, "from node 2: {}", fetched.status);
    let thumbnail = get(second.addr, "GET", &thumbnail.context("a thumbnail")?, &[]).await?;
    ensure!(thumbnail.status == 200, "thumbnail from node 2: {}", thumbnail.status);
    // And the link node 2 signed works on node 1 too.
    ensure!(get(first.addr, "GET", &url, &[]).await?.status == 200);
    Ok(())
}

/// A bot posts a file through the server API: it uploads with a token the API issued, posts
/// with the upload's id, and the message carries the attachment in the API's history too.
#[tokio::test]
async fn a_bot_posts_a_file_through_the_server_api() -> anyhow::Result<()> {
    use serde_json::json;
    use tests::api::expect;
    const ADMIN: &str = "admin-token-for-the-media-tests";
    let node = Node::start(NodeOptions::default().env("ADMIN__TOKEN", ADMIN)).await?;
    let scopes = json!({ "name": "media bot", "scopes": ["users", "rooms", "messages", "history"] });
    let key = expect(node.admin, "POST", "/api/v1/keys", ADMIN, Some(scopes), 201).await?;
    let key = key["key"].as_str().context("a key")?.to_owned();
    expect(node.admin, "POST", "/api/v1/users", &key, Some(json!({ "name": "reportbot" })), 201).await?;
    let room =
        expect(node.admin, "POST", "/api/v1/rooms?as=reportbot", &key, Some(json!({ "name": "reports" })), 201).await?;
    let room = room["id"].as_str().context("a room id")?.to_owned();
    let token = expect(node.admin, "POST", "/api/v1/users/reportbot/tokens", &key, None, 201).await?;
    let token = token["token"].as_str().context("a token")?.to_owned();
    let report = id_of(&uploaded(node.addr, &token, "weekly.csv", Some("text/csv"), b"week,sent\n49,1200\n").await?);

    let path = format!("/api/v1/rooms/{room}/messages?as=reportbot");
    let post = json!({ "id": "report-49", "body": "", "attachments": [report] });
    expect(node.admin, "POST", &path, &key, Some(post.clone()), 201).await?;
    expect(node.admin, "POST", &path, &key, Some(post), 200).await?;
    let again = json!({ "id": "report-50", "body": "again", "attachments": [report] });
    let refused = expect(node.admin, "POST", &path, &key, Some(again), 409).await?;
    ensure!(refused["error"] == "media_in_use", "{refused}");
    let history = expect(node.admin, "GET", &format!("{path}&limit=10"), &key, None, 200).await?;
    let entries = history["entries"].as_array().context("entries")?;
    let posted = entries.iter().find(|e| e["id"] == "report-49").context("the post in history")?;
    ensure!(
        posted["attachments"][0]["name"] == "weekly.csv" && posted["attachments"][0]["type"] == "text/plain",
        "{posted}"
    );
    Ok(())
}
