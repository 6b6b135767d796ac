//! The server API (docs/SERVER_API.md) against the real binary: keys minted with the admin
//! token, each route authorised and refused as documented, a backend that provisions users,
//! builds a room and posts with the durable ack a client gets, bad requests answered by name,
//! and an account erased through the API.

use anyhow::ensure;
use serde_json::{json, Value};
use tests::api::{call, raw, Answer};
use tests::{Client, Encoding, Node, NodeOptions};

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789";

async fn node_with_admin_token() -> anyhow::Result<Node> {
    Node::start(NodeOptions::default().env("ADMIN__TOKEN", ADMIN_TOKEN)).await
}

/// Mint a key with `scopes`; returns the key.
async fn mint(node: &Node, scopes: &[&str]) -> anyhow::Result<String> {
    let body = json!({ "name": format!("test key {scopes:?}"), "scopes": scopes });
    let answer = call(node.admin, "POST", "/api/v1/keys", Some(ADMIN_TOKEN), Some(&body)).await?;
    ensure!(answer.status == 201, "mint: {answer:?}");
    Ok(answer.body["key"].as_str().unwrap_or_default().to_string())
}

async fn api(node: &Node, key: &str, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Answer> {
    call(node.admin, method, path, Some(key), body.as_ref()).await
}

#[tokio::test]
async fn keys_are_minted_with_the_admin_token_scoped_and_revoked() -> anyhow::Result<()> {
    // Without an admin token there is no way to mint a key.
    let open = Node::start(NodeOptions::default()).await?;
    let body = json!({ "name": "k", "scopes": ["users"] });
    let answer = call(open.admin, "POST", "/api/v1/keys", None, Some(&body)).await?;
    ensure!(answer.status == 403 && answer.error() == "admin_token_required", "{answer:?}");
    drop(open);

    let node = node_with_admin_token().await?;
    for bearer in [None, Some("wrong-admin-token-0123456789abc")] {
        let answer = call(node.admin, "POST", "/api/v1/keys", bearer, Some(&body)).await?;
        ensure!(answer.status == 401 && answer.header("www-authenticate").is_some(), "{bearer:?}: {answer:?}");
    }
    let answer = call(
        node.admin,
        "POST",
        "/api/v1/keys",
        Some(ADMIN_TOKEN),
        Some(&json!({"name": "k", "scopes": ["everything"]})),
    )
    .await?;
    ensure!(
        answer.status == 400 && answer.body["message"].as_str().unwrap_or("").contains("`everything`"),
        "{answer:?}"
    );

    let users_key = mint(&node, &["users"]).await?;
    let rooms_key = mint(&node, &["rooms"]).await?;
    ensure!(users_key.starts_with("pvk_"), "{users_key}");
    // The list shows ids, names and scopes, never a secret.
    let list = call(node.admin, "GET", "/api/v1/keys", Some(ADMIN_TOKEN), None).await?;
    ensure!(list.status == 200 && list.body["keys"].as_array().map(Vec::len) == Some(2), "{list:?}");
    let listed = list.body.to_string();
    for key in [&users_key, &rooms_key] {
        let secret = key.rsplit_once('_').map(|(_, secret)| secret).unwrap_or_default();
        ensure!(!listed.contains(secret), "the list shows a secret: {listed}");
    }
    // An API key is not the admin token, and the admin token is not an API key.
    let answer = call(node.admin, "GET", "/api/v1/keys", Some(&users_key), None).await?;
    ensure!(answer.status == 401, "{answer:?}");
    let answer = api(&node, ADMIN_TOKEN, "POST", "/api/v1/users", Some(json!({"name": "carol"}))).await?;
    ensure!(answer.status == 401, "{answer:?}");

    // A key opens the routes of its scopes only.
    let answer = api(&node, &users_key, "POST", "/api/v1/users", Some(json!({"name": "alice"}))).await?;
    ensure!(answer.status == 201 && answer.body["user"] == "alice", "{answer:?}");
    let answer = api(&node, &rooms_key, "POST", "/api/v1/users", Some(json!({"name": "bob"}))).await?;
    ensure!(answer.status == 403 && answer.error() == "insufficient_scope", "{answer:?}");
    // Missing, malformed, wrong secret: one answer.
    let wrong_secret = format!("{}x", &users_key[..users_key.len() - 1]);
    for bearer in [None, Some("pvk_nothing"), Some("pvk_0123456789abcdef_secret"), Some(wrong_secret.as_str())] {
        let answer = call(node.admin, "POST", "/api/v1/users", bearer, Some(&json!({"name": "bob"}))).await?;
        ensure!(answer.status == 401 && answer.error() == "unauthorized", "{bearer:?}: {answer:?}");
    }

    // Revoked: refused from the next request on, and listed as revoked.
    let id = users_key.trim_start_matches("pvk_").split('_').next().unwrap_or_default().to_string();
    let answer = call(node.admin, "DELETE", &format!("/api/v1/keys/{id}"), Some(ADMIN_TOKEN), None).await?;
    ensure!(answer.status == 200 && answer.body["revoked"] == true, "{answer:?}");
    let answer = api(&node, &users_key, "POST", "/api/v1/users", Some(json!({"name": "bob"}))).await?;
    ensure!(answer.status == 401, "a revoked key still works: {answer:?}");
    let list = call(node.admin, "GET", "/api/v1/keys", Some(ADMIN_TOKEN), None).await?;
    let revoked = list.body["keys"].as_array().into_iter().flatten().find(|key| key["id"] == id.as_str());
    ensure!(revoked.is_some_and(|key| key["revoked_at"].is_u64()), "{list:?}");
    let answer = call(node.admin, "DELETE", "/api/v1/keys/0000000000000000", Some(ADMIN_TOKEN), None).await?;
    ensure!(answer.status == 404 && answer.error() == "no_such_key", "{answer:?}");
    Ok(())
}

#[tokio::test]
async fn a_backend_provisions_users_builds_a_room_and_posts_with_the_durable_ack() -> anyhow::Result<()> {
    let mut node = node_with_admin_token().await?;
    let key = mint(&node, &["users", "rooms", "messages", "history"]).await?;
    // A bot without a password, and a person with one.
    let answer = api(&node, &key, "POST", "/api/v1/users", Some(json!({"name": "helpbot"}))).await?;
    ensure!(answer.status == 201, "{answer:?}");
    let answer =
        api(&node, &key, "POST", "/api/v1/users", Some(json!({"name": "bob", "password": "password-of-bob"}))).await?;
    ensure!(answer.status == 201, "{answer:?}");
    let answer = api(&node, &key, "POST", "/api/v1/users", Some(json!({"name": "bob"}))).await?;
    ensure!(answer.status == 409 && answer.error() == "user_exists", "{answer:?}");

    // The bot creates a room and brings bob in; bob connects with a token the API issued.
    let answer = api(&node, &key, "POST", "/api/v1/rooms?as=helpbot", Some(json!({"name": "support"}))).await?;
    ensure!(answer.status == 201 && answer.body["role"] == "owner", "{answer:?}");
    let room = answer.body["id"].as_str().unwrap_or_default().to_string();
    let answer = api(&node, &key, "PUT", &format!("/api/v1/rooms/{room}/members/bob?as=helpbot"), None).await?;
    ensure!(answer.status == 200 && answer.body["member"] == true, "{answer:?}");
    let answer = api(&node, &key, "POST", "/api/v1/users/bob/tokens", None).await?;
    ensure!(answer.status == 201 && answer.body["expires_at"].is_u64(), "{answer:?}");
    let token = answer.body["token"].as_str().unwrap_or_default().to_string();
    let mut bob = Client::connect(&node, Encoding::Json).await?;
    bob.authenticate(&token, None).await?;

    // Posted as the bot: acked once committed, delivered live, and idempotent by id.
    let post = json!({ "id": "welcome-1", "body": "How can I help?" });
    let path = format!("/api/v1/rooms/{room}/messages?as=helpbot");
    let first = api(&node, &key, "POST", &path, Some(post.clone())).await?;
    ensure!(first.status == 201 && first.body["duplicate"] == false, "{first:?}");
    let seq = first.body["seq"].as_u64().unwrap_or(0);
    let again = api(&node, &key, "POST", &path, Some(post)).await?;
    ensure!(again.status == 200 && again.body["duplicate"] == true && again.body["seq"] == seq, "{again:?}");
    let live = bob.wait_for_message(&room, "welcome-1").await?;
    ensure!(live.from == "helpbot" && live.body == "How can I help?" && live.seq == seq, "{live:?}");
    // Posting as bob, replying to the bot and mentioning it, is checked like bob's own send.
    let reply = json!({ "id": "q-1", "body": "my order", "reply_to": seq, "mentions": ["helpbot"] });
    let answer = api(&node, &key, "POST", &format!("/api/v1/rooms/{room}/messages?as=bob"), Some(reply)).await?;
    ensure!(answer.status == 201, "{answer:?}");

    // The ack is durable: kill -9 right after it, and history still holds both messages.
    node.kill9().await?;
    node.restart().await?;
    let history = api(&node, &key, "GET", &format!("/api/v1/rooms/{room}/messages?as=bob&limit=10"), None).await?;
    ensure!(history.status == 200, "{history:?}");
    let texts: Vec<(&str, &str)> = history.body["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["kind"] == "text")
        .map(|entry| (entry["id"].as_str().unwrap_or(""), entry["from"].as_str().unwrap_or("")))
        .collect();
    ensure!(texts.contains(&("welcome-1", "helpbot")) && texts.contains(&("q-1", "bob")), "{history:?}");

    // The bot has no password: nobody logs in as it. Bob's password works.
    let mut client = Client::connect(&node, Encoding::Json).await?;
    ensure!(client.login("helpbot", "").await.is_err(), "a password-less account logged in");
    client.login("bob", "password-of-bob").await?;

    // The room's rules hold for the API as for a client: bob is no moderator, so he cannot
    // remove the bot; the bot (owner) removes bob; bob leaving is his own doing.
    let answer = api(&node, &key, "DELETE", &format!("/api/v1/rooms/{room}/members/helpbot?as=bob"), None).await?;
    ensure!(answer.status == 403, "{answer:?}");
    let answer =
        api(&node, &key, "DELETE", &format!("/api/v1/rooms/{room}/members/bob?as=helpbot&reason=done"), None).await?;
    ensure!(answer.status == 200 && answer.body["member"] == false, "{answer:?}");
    let answer = api(&node, &key, "GET", &format!("/api/v1/rooms/{room}/messages?as=bob"), None).await?;
    ensure!(answer.status == 403 && answer.error() == "not_member", "a removed member reads on: {answer:?}");
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_answered_by_name() -> anyhow::Result<()> {
    let node = node_with_admin_token().await?;
    let key = mint(&node, &["users", "rooms", "messages", "history"]).await?;
    api(&node, &key, "POST", "/api/v1/users", Some(json!({"name": "alice"}))).await?;
    let answer = api(&node, &key, "POST", "/api/v1/rooms?as=alice", Some(json!({"name": "r"}))).await?;
    let room = answer.body["id"].as_str().unwrap_or_default().to_string();
    let messages = format!("/api/v1/rooms/{room}/messages");

    let cases: Vec<(Answer, u16, &str, &str)> = vec![
        (
            api(&node, &key, "POST", "/api/v1/users", Some(json!({"name": "bob", "colour": "red"}))).await?,
            400,
            "malformed_body",
            "unknown field `colour`",
        ),
        (
            api(&node, &key, "POST", "/api/v1/users", Some(json!({"nom": "bob"}))).await?,
            400,
            "malformed_body",
            "`name`",
        ),
        (api(&node, &key, "POST", "/api/v1/users", Some(json!({"name": "b b"}))).await?, 400, "invalid_name", ""),
        (
            api(&node, &key, "POST", "/api/v1/users?x=1", Some(json!({"name": "bob"}))).await?,
            400,
            "malformed_query",
            "`x`",
        ),
        (
            api(&node, &key, "POST", &messages, Some(json!({"id": "m", "body": "hi"}))).await?,
            400,
            "malformed_query",
            "`as`",
        ),
        (
            api(&node, &key, "POST", &format!("{messages}?as=ghost"), Some(json!({"id": "m", "body": "hi"}))).await?,
            404,
            "no_such_user",
            "ghost",
        ),
        (
            api(&node, &key, "POST", &format!("{messages}?as=alice"), Some(json!({"id": "m", "body": ""}))).await?,
            400,
            "empty_body",
            "",
        ),
        (
            api(&node, &key, "GET", &format!("{messages}?as=alice&limit=x"), None).await?,
            400,
            "malformed_query",
            "`limit`",
        ),
        (
            api(&node, &key, "GET", &format!("{messages}?as=alice&limit=0"), None).await?,
            400,
            "invalid_field",
            "`limit`",
        ),
        (api(&node, &key, "GET", "/api/v1/rooms/r-nope/messages?as=alice", None).await?, 404, "no_such_room", ""),
        (api(&node, &key, "GET", "/api/v1/nothing", None).await?, 404, "no_such_route", ""),
        (api(&node, &key, "PATCH", &messages, None).await?, 405, "method_not_allowed", "GET, POST"),
    ];
    for (answer, status, code, mentions) in &cases {
        let message = answer.body["message"].as_str().unwrap_or("");
        ensure!(
            answer.status == *status && answer.error() == *code && message.contains(mentions),
            "expected {status} {code} naming {mentions:?}: {answer:?}"
        );
    }
    let allow = cases.last().and_then(|(answer, ..)| answer.header("allow"));
    ensure!(allow == Some("GET, POST"), "405 without Allow: {allow:?}");

    // Broken JSON, another media type, no length, too long.
    let bearer = format!("Authorization: Bearer {key}\r\n");
    let send = |head: String, body: &str| format!("POST /api/v1/users HTTP/1.1\r\nHost: t\r\n{bearer}{head}\r\n{body}");
    let broken = send("Content-Type: application/json\r\nContent-Length: 9\r\n".into(), "{\"name\": ");
    let answer = raw(node.admin, broken.as_bytes()).await?;
    ensure!(answer.status == 400 && answer.error() == "malformed_body", "{answer:?}");
    let form = send("Content-Type: text/plain\r\nContent-Length: 2\r\n".into(), "{}");
    let answer = raw(node.admin, form.as_bytes()).await?;
    ensure!(answer.status == 415, "{answer:?}");
    let chunked =
        send("Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n".into(), "2\r\n{}\r\n0\r\n\r\n");
    let answer = raw(node.admin, chunked.as_bytes()).await?;
    ensure!(answer.status == 411, "{answer:?}");
    let huge = send("Content-Type: application/json\r\nContent-Length: 10000000\r\n".into(), "");
    let answer = raw(node.admin, huge.as_bytes()).await?;
    ensure!(answer.status == 413 && answer.error() == "body_too_large", "{answer:?}");
    // Nothing of all that was written.
    let answer = api(&node, &key, "GET", &format!("{messages}?as=alice"), None).await?;
    let texts = answer.body["entries"].as_array().into_iter().flatten().filter(|e| e["kind"] == "text").count();
    ensure!(answer.status == 200 && texts == 0, "{answer:?}");
    Ok(())
}

#[tokio::test]
async fn erasing_a_user_through_the_api_closes_their_connections_and_keeps_the_name() -> anyhow::Result<()> {
    let node = node_with_admin_token().await?;
    let key = mint(&node, &["users", "rooms", "messages", "history"]).await?;
    let (mut dave, _) = Client::user(&node, Encoding::Json, "dave").await?;
    let room = dave.create_room("dave's").await?;
    dave.say(&room, "m-1", "hello").await?;

    let answer = api(&node, &key, "DELETE", "/api/v1/users/dave", None).await?;
    ensure!(answer.status == 200 && answer.body["deleted"] == true, "{answer:?}");
    dave.closed().await?;
    let mut again = Client::connect(&node, Encoding::Json).await?;
    ensure!(again.login("dave", "password-of-dave").await.is_err(), "an erased account logged in");
    let answer = api(&node, &key, "POST", "/api/v1/users", Some(json!({"name": "dave"}))).await?;
    ensure!(answer.status == 409, "the name of an erased account was given again: {answer:?}");
    let answer = api(&node, &key, "DELETE", "/api/v1/users/dave", None).await?;
    ensure!(answer.status == 404 && answer.error() == "no_such_user", "{answer:?}");
    let answer = api(&node, &key, "POST", "/api/v1/users/dave/tokens", None).await?;
    ensure!(answer.status == 404, "a token for an erased account: {answer:?}");
    Ok(())
}
