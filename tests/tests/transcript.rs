//! The whole client protocol, frame by frame, in both encodings: the transcript that
//! docs/PROTOCOL.md shows.
//!
//! Every frame is written and checked as a document (`serde_json::Value`), not through the Rust
//! types, so this test pins the wire format itself: field names, tags, which optional fields are
//! left out. The same documents go out as JSON text frames on one node and as MessagePack
//! binary frames on another, and the answers must match the same patterns. Run with
//! `--nocapture` to see the transcript.
//!
//! Patterns: `"$name"` binds a value the first time and must equal it afterwards (room ids,
//! tokens); `"<int>"` and `"<str>"` match any unsigned integer or string (times, messages for
//! people). Objects must have exactly the expected keys. In a frame to send, `"$name"` is
//! replaced by its bound value.

use std::collections::{HashMap, VecDeque};

use anyhow::{anyhow, bail, ensure, Context};
use serde_json::{json, Value};
use tests::{Client, Encoding, Node, NodeOptions};

#[tokio::test]
async fn protocol_transcript_json() -> anyhow::Result<()> {
    run_transcript(Encoding::Json).await
}

#[tokio::test]
async fn protocol_transcript_messagepack() -> anyhow::Result<()> {
    run_transcript(Encoding::MessagePack).await
}

struct Transcript {
    url: String,
    encoding: Encoding,
    conns: HashMap<&'static str, Client>,
    vars: HashMap<String, Value>,
    lines: Vec<String>,
}

impl Transcript {
    fn new(node: &Node, encoding: Encoding) -> Self {
        Transcript { url: node.ws_url(), encoding, conns: HashMap::new(), vars: HashMap::new(), lines: Vec::new() }
    }

    fn note(&mut self, text: &str) {
        self.lines.push(format!("# {text}"));
    }

    async fn connect(&mut self, name: &'static str) -> anyhow::Result<()> {
        let client = Client::connect_raw(&self.url, self.encoding).await?;
        self.conns.insert(name, client);
        self.lines.push(format!("# {name} opens a WebSocket to /ws"));
        Ok(())
    }

    async fn close(&mut self, name: &'static str) -> anyhow::Result<()> {
        let client = self.conns.remove(name).ok_or_else(|| anyhow!("no connection {name}"))?;
        client.close().await?;
        self.lines.push(format!("# {name} closes its connection"));
        Ok(())
    }

    /// `from` sends `frame`; its reply must match `reply` (`Value::Null` for none), and each
    /// connection named in `events` must then receive exactly those frames, in that order. On
    /// the sender's own connection the events may come before or after the reply (a sender
    /// receives its own message through its log, independently of the ack).
    async fn step(
        &mut self,
        from: &'static str,
        frame: Value,
        reply: Value,
        events: &[(&'static str, Value)],
    ) -> anyhow::Result<()> {
        let frame = fill(&frame, &self.vars)?;
        self.lines.push(format!("{from} > {}", show(&frame)));
        self.conn(from)?.send_value(&frame).await?;
        let mut own: VecDeque<&Value> = events.iter().filter(|(name, _)| *name == from).map(|(_, e)| e).collect();
        let mut reply_due = !reply.is_null();
        while reply_due || !own.is_empty() {
            let actual = self.next(from).await?;
            let as_reply = reply_due && self.try_match(&reply, &actual);
            if as_reply {
                reply_due = false;
            } else if own.front().is_some_and(|event| self.try_match(event, &actual)) {
                own.pop_front();
            } else {
                bail!(
                    "{from} got {actual}\n  expected the reply {}or the event {}",
                    if reply_due { format!("{reply} ") } else { String::new() },
                    own.front().map_or("(none)".to_string(), |e| e.to_string())
                );
            }
            self.lines.push(format!("{from} < {}", show(&actual)));
        }
        for (name, event) in events.iter().filter(|(name, _)| *name != from) {
            self.expect(name, event).await?;
        }
        Ok(())
    }

    /// The next frame on `name` must match `pattern`.
    async fn expect(&mut self, name: &'static str, pattern: &Value) -> anyhow::Result<()> {
        let actual = self.next(name).await?;
        let mut vars = self.vars.clone();
        matches(pattern, &actual, &mut vars, "")
            .with_context(|| format!("{name} got {actual}\n  expected {pattern}"))?;
        self.vars = vars;
        self.lines.push(format!("{name} < {}", show(&actual)));
        Ok(())
    }

    /// Match and keep the bindings on success only.
    fn try_match(&mut self, pattern: &Value, actual: &Value) -> bool {
        let mut vars = self.vars.clone();
        if matches(pattern, actual, &mut vars, "").is_ok() {
            self.vars = vars;
            true
        } else {
            false
        }
    }

    /// The next frame on `name`, leaving out delivered receipts: they are pushed to a sender
    /// when a message reaches a member's connection, so where they fall among the other frames
    /// depends on timing (tests/tests/presence.rs checks them).
    async fn next(&mut self, name: &'static str) -> anyhow::Result<Value> {
        loop {
            let frame = self.conn(name)?.recv_value().await.with_context(|| format!("reading from {name}"))?;
            if frame.get("type").and_then(Value::as_str) != Some("receipt") {
                return Ok(frame);
            }
        }
    }

    fn conn(&mut self, name: &'static str) -> anyhow::Result<&mut Client> {
        self.conns.get_mut(name).ok_or_else(|| anyhow!("no connection {name}"))
    }

    fn var(&self, name: &str) -> anyhow::Result<&Value> {
        self.vars.get(name).ok_or_else(|| anyhow!("${name} is not bound"))
    }
}

/// A frame as one line of JSON with `type` first, as people write them.
fn show(frame: &Value) -> String {
    match frame.as_object() {
        Some(map) if map.contains_key("type") => {
            let fields = std::iter::once(("type", &map["type"]))
                .chain(map.iter().filter(|(key, _)| *key != "type").map(|(key, value)| (key.as_str(), value)))
                .map(|(key, value)| format!("{}:{value}", Value::from(key)));
            format!("{{{}}}", fields.collect::<Vec<_>>().join(","))
        }
        _ => frame.to_string(),
    }
}

/// Replace `"$name"` strings by their bound values.
fn fill(template: &Value, vars: &HashMap<String, Value>) -> anyhow::Result<Value> {
    Ok(match template {
        Value::String(s) if s.starts_with('$') => {
            vars.get(&s[1..]).cloned().ok_or_else(|| anyhow!("{s} is not bound"))?
        }
        Value::Array(items) => Value::Array(items.iter().map(|item| fill(item, vars)).collect::<anyhow::Result<_>>()?),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| Ok((k.clone(), fill(v, vars)?))).collect::<anyhow::Result<_>>()?)
        }
        other => other.clone(),
    })
}

/// Whether `actual` matches `pattern` (see the module comment), binding variables in `vars`.
fn matches(pattern: &Value, actual: &Value, vars: &mut HashMap<String, Value>, path: &str) -> anyhow::Result<()> {
    match pattern {
        Value::String(p) if p == "<int>" => {
            ensure!(actual.is_u64(), "{path}: expected an unsigned integer, got {actual}")
        }
        Value::String(p) if p == "<str>" => ensure!(actual.is_string(), "{path}: expected a string, got {actual}"),
        Value::String(p) if p.starts_with('$') => match vars.get(&p[1..]) {
            Some(bound) => ensure!(bound == actual, "{path}: expected {p} = {bound}, got {actual}"),
            None => {
                vars.insert(p[1..].to_string(), actual.clone());
            }
        },
        Value::Object(expected) => {
            let actual = actual.as_object().ok_or_else(|| anyhow!("{path}: expected an object, got {actual}"))?;
            for key in actual.keys() {
                ensure!(expected.contains_key(key), "{path}: unexpected field `{key}`");
            }
            for (key, value) in expected {
                let inner = actual.get(key).ok_or_else(|| anyhow!("{path}: missing field `{key}`"))?;
                matches(value, inner, vars, &format!("{path}.{key}"))?;
            }
        }
        Value::Array(expected) => {
            let actual = actual.as_array().ok_or_else(|| anyhow!("{path}: expected an array, got {actual}"))?;
            ensure!(actual.len() == expected.len(), "{path}: expected {} items, got {}", expected.len(), actual.len());
            for (index, (value, inner)) in expected.iter().zip(actual).enumerate() {
                matches(value, inner, vars, &format!("{path}[{index}]"))?;
            }
        }
        _ => ensure!(pattern == actual, "{path}: expected {pattern}, got {actual}"),
    }
    Ok(())
}

/// A `message` frame: a room entry at `cursor` of the receiver's log.
fn text(cursor: u64, room: &str, seq: u64, id: &str, from: &str, body: &str) -> Value {
    json!({"type": "message", "cursor": cursor, "room": room, "seq": seq, "id": id, "from": from,
           "kind": "text", "body": body, "ts": "<int>"})
}

fn membership(cursor: u64, room: &str, seq: u64, kind: &str, from: &str, user: &str) -> Value {
    json!({"type": "message", "cursor": cursor, "room": room, "seq": seq, "id": "<str>", "from": from,
           "kind": kind, "user": user, "body": "", "ts": "<int>"})
}

fn error(req: u64, code: &str) -> Value {
    json!({"type": "error", "req": req, "code": code, "message": "<str>"})
}

async fn run_transcript(encoding: Encoding) -> anyhow::Result<()> {
    let node = Node::start(NodeOptions::default()).await?;
    let mut t = Transcript::new(&node, encoding);
    let result = transcript(&mut t).await;
    println!("transcript ({encoding:?}):\n{}", t.lines.join("\n"));
    result
}

async fn transcript(t: &mut Transcript) -> anyhow::Result<()> {
    let welcome = json!({"type": "welcome", "version": 1, "node": "palaver-1", "max_frame_bytes": 65536, "max_body_bytes": 16384});
    let hello = json!({"type": "hello", "versions": [1], "client": "transcript"});

    t.note("alice greets, registers, logs in and authenticates");
    t.connect("alice").await?;
    t.step("alice", hello.clone(), welcome.clone(), &[]).await?;
    t.step(
        "alice",
        json!({"type": "register", "req": 1, "user": "alice", "password": "correct horse"}),
        json!({"type": "registered", "req": 1, "user": "alice"}),
        &[],
    )
    .await?;
    t.step(
        "alice",
        json!({"type": "login", "req": 2, "user": "alice", "password": "correct horse"}),
        json!({"type": "logged_in", "req": 2, "user": "alice", "token": "$alice_token", "expires_at": "<int>"}),
        &[],
    )
    .await?;
    t.step(
        "alice",
        json!({"type": "authenticate", "req": 3, "token": "$alice_token"}),
        json!({"type": "authenticated", "req": 3, "user": "alice", "cursor": 0}),
        &[],
    )
    .await?;

    t.note("bob does the same on his phone, then logs in from his laptop too");
    t.connect("bob").await?;
    t.step("bob", hello.clone(), welcome.clone(), &[]).await?;
    t.step(
        "bob",
        json!({"type": "register", "req": 1, "user": "bob", "password": "battery staple"}),
        json!({"type": "registered", "req": 1, "user": "bob"}),
        &[],
    )
    .await?;
    t.step(
        "bob",
        json!({"type": "login", "req": 2, "user": "bob", "password": "battery staple"}),
        json!({"type": "logged_in", "req": 2, "user": "bob", "token": "$bob_token", "expires_at": "<int>"}),
        &[],
    )
    .await?;
    t.step(
        "bob",
        json!({"type": "authenticate", "req": 3, "token": "$bob_token"}),
        json!({"type": "authenticated", "req": 3, "user": "bob", "cursor": 0}),
        &[],
    )
    .await?;
    t.connect("laptop").await?;
    t.step("laptop", hello.clone(), welcome.clone(), &[]).await?;
    t.step(
        "laptop",
        json!({"type": "authenticate", "req": 1, "token": "$bob_token"}),
        json!({"type": "authenticated", "req": 1, "user": "bob", "cursor": 0}),
        &[],
    )
    .await?;

    t.note("alice creates a room; bob joins it");
    t.step(
        "alice",
        json!({"type": "create_room", "req": 4, "name": "general"}),
        json!({"type": "room", "req": 4, "room": {"id": "$general", "name": "general", "kind": "group", "private": false,
               "last_seq": 1, "read_seq": 0, "members": 1, "role": "owner"}}),
        &[("alice", membership(1, "$general", 1, "join", "alice", "alice"))],
    )
    .await?;
    let general = t.var("general")?.as_str().ok_or_else(|| anyhow!("room id is a string"))?.to_string();
    anyhow::ensure!(general.starts_with("r_"), "group room ids start with r_: {general}");
    t.step(
        "bob",
        json!({"type": "join", "req": 4, "room": "$general"}),
        json!({"type": "room", "req": 4, "room": {"id": "$general", "name": "general", "kind": "group", "private": false,
               "last_seq": 2, "read_seq": 0, "members": 2, "role": "member"}}),
        &[
            ("bob", membership(1, "$general", 2, "join", "bob", "bob")),
            ("laptop", membership(1, "$general", 2, "join", "bob", "bob")),
            ("alice", membership(2, "$general", 2, "join", "bob", "bob")),
        ],
    )
    .await?;

    t.note("a private room is entered by invitation only; to anyone else it answers as a room that does not exist");
    t.step(
        "alice",
        json!({"type": "create_room", "req": 5, "name": "plans", "private": true}),
        json!({"type": "room", "req": 5, "room": {"id": "$plans", "name": "plans", "kind": "group", "private": true,
               "last_seq": 1, "read_seq": 0, "members": 1, "role": "owner"}}),
        &[("alice", membership(3, "$plans", 1, "join", "alice", "alice"))],
    )
    .await?;
    t.step("bob", json!({"type": "join", "req": 5, "room": "$plans"}), error(5, "no_such_room"), &[]).await?;
    t.step(
        "alice",
        json!({"type": "invite", "req": 6, "room": "$plans", "user": "bob"}),
        json!({"type": "ok", "req": 6}),
        &[
            ("alice", membership(4, "$plans", 2, "join", "alice", "bob")),
            ("bob", membership(2, "$plans", 2, "join", "alice", "bob")),
            ("laptop", membership(2, "$plans", 2, "join", "alice", "bob")),
        ],
    )
    .await?;

    t.note("listing rooms and members");
    t.step(
        "bob",
        json!({"type": "list_rooms", "req": 6}),
        json!({"type": "rooms", "req": 6, "rooms": [
            {"id": "$general", "name": "general", "kind": "group", "private": false, "last_seq": 2, "read_seq": 0, "members": 2,
             "role": "member"},
            {"id": "$plans", "name": "plans", "kind": "group", "private": true, "last_seq": 2, "read_seq": 0, "members": 2,
             "role": "member"},
        ]}),
        &[],
    )
    .await?;
    t.step(
        "alice",
        json!({"type": "list_members", "req": 7, "room": "$general"}),
        json!({"type": "members", "req": 7, "room": "$general", "members": ["alice", "bob"],
               "presence": [{"user": "alice", "state": "online"}, {"user": "bob", "state": "online"}],
               "roles": ["owner", "member"], "total": 2, "online": 2, "more": false}),
        &[],
    )
    .await?;

    t.note(
        "sending: the ack carries the room's sequence number; every connection of every member receives the message",
    );
    t.step(
        "alice",
        json!({"type": "send", "req": 8, "room": "$general", "id": "a-1", "body": "hi bob"}),
        json!({"type": "ack", "req": 8, "room": "$general", "id": "a-1", "seq": 3, "ts": "$a1_ts", "duplicate": false}),
        &[
            ("alice", text(5, "$general", 3, "a-1", "alice", "hi bob")),
            ("bob", text(3, "$general", 3, "a-1", "alice", "hi bob")),
            ("laptop", text(3, "$general", 3, "a-1", "alice", "hi bob")),
        ],
    )
    .await?;
    t.step(
        "bob",
        json!({"type": "send", "req": 7, "room": "$general", "id": "b-1", "body": "hi alice"}),
        json!({"type": "ack", "req": 7, "room": "$general", "id": "b-1", "seq": 4, "ts": "<int>", "duplicate": false}),
        &[
            ("bob", text(4, "$general", 4, "b-1", "bob", "hi alice")),
            ("laptop", text(4, "$general", 4, "b-1", "bob", "hi alice")),
            ("alice", text(6, "$general", 4, "b-1", "bob", "hi alice")),
        ],
    )
    .await?;

    t.note("a retry with the same id gets the original ack back and stores nothing");
    t.step(
        "alice",
        json!({"type": "send", "req": 9, "room": "$general", "id": "a-1", "body": "hi bob"}),
        json!({"type": "ack", "req": 9, "room": "$general", "id": "a-1", "seq": 3, "ts": "$a1_ts", "duplicate": true}),
        &[],
    )
    .await?;

    t.note("bob reads on his phone; his laptop learns the read position");
    t.step(
        "bob",
        json!({"type": "mark_read", "req": 8, "room": "$general", "seq": 4}),
        json!({"type": "ok", "req": 8}),
        &[("laptop", json!({"type": "read", "room": "$general", "seq": 4}))],
    )
    .await?;

    t.note("bob goes offline (he has processed his log up to cursor 4); alice writes on");
    t.close("bob").await?;
    t.close("laptop").await?;
    t.step(
        "alice",
        json!({"type": "send", "req": 10, "room": "$general", "id": "a-2", "body": "are you there?"}),
        json!({"type": "ack", "req": 10, "room": "$general", "id": "a-2", "seq": 5, "ts": "<int>", "duplicate": false}),
        &[("alice", text(7, "$general", 5, "a-2", "alice", "are you there?"))],
    )
    .await?;
    t.step(
        "alice",
        json!({"type": "send", "req": 11, "room": "$general", "id": "a-3", "body": "see you in plans"}),
        json!({"type": "ack", "req": 11, "room": "$general", "id": "a-3", "seq": 6, "ts": "<int>", "duplicate": false}),
        &[("alice", text(8, "$general", 6, "a-3", "alice", "see you in plans"))],
    )
    .await?;
    t.step(
        "alice",
        json!({"type": "send", "req": 12, "room": "$plans", "id": "a-4", "body": "the plan"}),
        json!({"type": "ack", "req": 12, "room": "$plans", "id": "a-4", "seq": 3, "ts": "<int>", "duplicate": false}),
        &[("alice", text(9, "$plans", 3, "a-4", "alice", "the plan"))],
    )
    .await?;

    t.note("bob reconnects and resumes from cursor 4: the replay, then `live`");
    t.connect("bob").await?;
    t.step("bob", hello.clone(), welcome.clone(), &[]).await?;
    t.step(
        "bob",
        json!({"type": "authenticate", "req": 1, "token": "$bob_token", "cursor": 4}),
        json!({"type": "authenticated", "req": 1, "user": "bob", "cursor": 7}),
        &[
            ("bob", text(5, "$general", 5, "a-2", "alice", "are you there?")),
            ("bob", text(6, "$general", 6, "a-3", "alice", "see you in plans")),
            ("bob", text(7, "$plans", 3, "a-4", "alice", "the plan")),
            ("bob", json!({"type": "live", "req": 1, "cursor": 7})),
        ],
    )
    .await?;

    t.note("history pages: before a sequence number (the newest page below it), after one, and the latest");
    let entry = |seq: u64, id: &str, from: &str, body: &str| json!({"room": "$general", "seq": seq, "id": id, "from": from, "kind": "text", "body": body, "ts": "<int>"});
    t.step(
        "bob",
        json!({"type": "history", "req": 2, "room": "$general", "before": 5, "limit": 2}),
        json!({"type": "history", "req": 2, "room": "$general", "more": true, "entries": [
            entry(3, "a-1", "alice", "hi bob"), entry(4, "b-1", "bob", "hi alice"),
        ]}),
        &[],
    )
    .await?;
    t.step(
        "bob",
        json!({"type": "history", "req": 3, "room": "$general", "after": 4, "limit": 10}),
        json!({"type": "history", "req": 3, "room": "$general", "more": false, "entries": [
            entry(5, "a-2", "alice", "are you there?"), entry(6, "a-3", "alice", "see you in plans"),
        ]}),
        &[],
    )
    .await?;
    t.step(
        "bob",
        json!({"type": "history", "req": 4, "room": "$general", "limit": 1}),
        json!({"type": "history", "req": 4, "room": "$general", "more": true, "entries": [
            entry(6, "a-3", "alice", "see you in plans"),
        ]}),
        &[],
    )
    .await?;
    t.step(
        "bob",
        json!({"type": "history", "req": 5, "room": "$general", "after": 0, "limit": 1}),
        json!({"type": "history", "req": 5, "room": "$general", "more": true, "entries": [
            {"room": "$general", "seq": 1, "id": "<str>", "from": "alice", "kind": "join", "user": "alice", "body": "", "ts": "<int>"},
        ]}),
        &[],
    )
    .await?;

    t.note("a direct conversation has a stable id, the same from either side");
    let direct = json!({"id": "dm:alice:bob", "name": "alice & bob", "kind": "direct", "private": true,
                        "last_seq": 2, "read_seq": 0, "members": 2, "role": "member"});
    t.step(
        "alice",
        json!({"type": "open_direct", "req": 13, "user": "bob"}),
        json!({"type": "room", "req": 13, "room": direct.clone()}),
        &[
            ("alice", membership(10, "dm:alice:bob", 1, "join", "alice", "alice")),
            ("alice", membership(11, "dm:alice:bob", 2, "join", "alice", "bob")),
            ("bob", membership(8, "dm:alice:bob", 1, "join", "alice", "alice")),
            ("bob", membership(9, "dm:alice:bob", 2, "join", "alice", "bob")),
        ],
    )
    .await?;
    t.step(
        "bob",
        json!({"type": "open_direct", "req": 6, "user": "alice"}),
        json!({"type": "room", "req": 6, "room": direct}),
        &[],
    )
    .await?;
    t.step(
        "bob",
        json!({"type": "send", "req": 7, "room": "dm:alice:bob", "id": "b-2", "body": "psst"}),
        json!({"type": "ack", "req": 7, "room": "dm:alice:bob", "id": "b-2", "seq": 3, "ts": "<int>", "duplicate": false}),
        &[("bob", text(10, "dm:alice:bob", 3, "b-2", "bob", "psst")), ("alice", text(12, "dm:alice:bob", 3, "b-2", "bob", "psst"))],
    )
    .await?;

    t.note("bob leaves the room; the leave reaches his own log too");
    t.step(
        "bob",
        json!({"type": "leave", "req": 8, "room": "$general"}),
        json!({"type": "ok", "req": 8}),
        &[
            ("bob", membership(11, "$general", 7, "leave", "bob", "bob")),
            ("alice", membership(13, "$general", 7, "leave", "bob", "bob")),
        ],
    )
    .await?;

    t.note("errors carry the request number, a stable code and a message for people; the connection stays usable");
    t.step(
        "bob",
        json!({"type": "send", "req": 9, "room": "$general", "id": "b-3", "body": "still here?"}),
        error(9, "not_member"),
        &[],
    )
    .await?;
    t.step(
        "bob",
        json!({"type": "send", "req": 10, "room": "r_nosuchroom", "id": "b-4", "body": "anyone?"}),
        error(10, "no_such_room"),
        &[],
    )
    .await?;
    t.step("bob", json!({"type": "leave", "req": 11, "room": "dm:alice:bob"}), error(11, "forbidden"), &[]).await?;
    t.step("bob", json!({"type": "shout", "req": 12}), error(12, "unknown_type"), &[]).await?;
    t.step("bob", json!({"type": "send", "req": 13, "room": "$plans", "id": "b-5"}), error(13, "invalid_field"), &[])
        .await?;
    t.step(
        "bob",
        json!({"type": "send", "req": 14, "room": "$plans", "id": "b-6", "body": " "}),
        error(14, "empty_body"),
        &[],
    )
    .await?;
    t.step("bob", json!({"type": "ping", "req": 15}), json!({"type": "pong", "req": 15}), &[]).await?;
    t.step("alice", json!({"type": "ping", "req": 14}), json!({"type": "pong", "req": 14}), &[]).await?;

    // The pings above were answered next, so nothing unexpected was pending on either connection.
    Ok(())
}
