use super::*;
use crate::frames::EntryKind;

fn both() -> [Encoding; 2] {
    [Encoding::Json, Encoding::MessagePack]
}

#[test]
fn client_frames_round_trip_in_both_encodings() {
    let frames = vec![
        ClientFrame::Hello { versions: vec![1], client: Some("test".into()), batch: false },
        ClientFrame::Send {
            req: 7,
            room: "r_a".into(),
            id: "m-1".into(),
            body: "hello".into(),
            reply_to: None,
            mentions: Vec::new(),
            attachments: vec!["md_0123456789abcdefghijkl".into()],
        },
        ClientFrame::MediaUrl { req: 8, media: "md_0123456789abcdefghijkl".into() },
        ClientFrame::History { req: 2, room: "r_a".into(), before: Some(10), after: None, limit: Some(5) },
        ClientFrame::Authenticate { req: 1, token: "t".into(), cursor: Some(42), rooms: Default::default() },
        ClientFrame::Authenticate {
            req: 1,
            token: "t".into(),
            cursor: Some(42),
            rooms: [("r_big".to_string(), 7)].into_iter().collect(),
        },
        ClientFrame::LogoutAll { req: 3 },
    ];
    for encoding in both() {
        for frame in &frames {
            let bytes = encode_client(encoding, frame);
            assert_eq!(&decode_client(encoding, &bytes).unwrap(), frame, "{encoding:?}");
        }
    }
}

#[test]
fn server_frames_round_trip_in_both_encodings() {
    let entry = Entry {
        room: "r_a".into(),
        seq: 3,
        id: "m-1".into(),
        from: "alice".into(),
        kind: EntryKind::Text,
        user: None,
        body: "hi".into(),
        ts: 1,
        ..Default::default()
    };
    let frames = vec![
        ServerFrame::Message { cursor: Some(9), entry: entry.clone() },
        ServerFrame::Message { cursor: None, entry: entry.clone() },
        ServerFrame::Message {
            cursor: Some(10),
            entry: Entry {
                attachments: vec![crate::frames::Attachment {
                    media: "md_0123456789abcdefghijkl".into(),
                    name: "cat.png".into(),
                    content_type: "image/png".into(),
                    size: 1234,
                    width: Some(640),
                    height: Some(480),
                    thumbnail: Some(crate::frames::Thumbnail { width: 320, height: 240 }),
                }],
                ..entry.clone()
            },
        },
        ServerFrame::MediaUrl {
            req: 8,
            media: "md_0123456789abcdefghijkl".into(),
            url: "/media/md_0123456789abcdefghijkl?e=1&s=x".into(),
            thumbnail_url: None,
            expires_at: 1000,
        },
        ServerFrame::Live { req: 2, cursor: 9, rooms: [("r_big".to_string(), 7)].into_iter().collect() },
        ServerFrame::History { req: 1, room: "r_a".into(), entries: vec![entry], more: false },
        ServerFrame::Error { req: None, code: ErrorCode::NotMember, message: "x".into(), retry_after_ms: None },
        ServerFrame::Ack { req: 4, room: "r_a".into(), id: "m".into(), seq: 1, ts: 2, duplicate: true },
    ];
    for encoding in both() {
        for frame in &frames {
            let bytes = encode_server(encoding, frame);
            assert_eq!(&decode_server(encoding, &bytes).unwrap(), frame, "{encoding:?}");
        }
    }
}

#[test]
fn json_shape_is_the_documented_one() {
    let bytes = encode_server(Encoding::Json, &ServerFrame::Pong { req: 5 });
    assert_eq!(std::str::from_utf8(&bytes).unwrap(), r#"{"type":"pong","req":5}"#);
    let frame = decode_client(Encoding::Json, br#"{"type":"ping"}"#).unwrap();
    assert_eq!(frame, ClientFrame::Ping { req: 0 }, "req defaults to zero");
}

#[test]
fn malformed_bytes_are_classified() {
    let err = decode_client(Encoding::Json, b"{not json").unwrap_err();
    assert_eq!(err.code, ErrorCode::MalformedFrame);
    let err = decode_client(Encoding::MessagePack, &[0xc1, 0xff, 0x00]).unwrap_err();
    assert_eq!(err.code, ErrorCode::MalformedFrame);
    let err = decode_client(Encoding::Json, b"[1,2]").unwrap_err();
    assert_eq!(err.code, ErrorCode::MalformedFrame);
}

#[test]
fn unknown_type_is_named_and_keeps_req() {
    let err = decode_client(Encoding::Json, br#"{"type":"teleport","req":9}"#).unwrap_err();
    assert_eq!(err.code, ErrorCode::UnknownType);
    assert_eq!(err.req, Some(9));
    assert!(err.message.contains("teleport"), "{}", err.message);
}

#[test]
fn missing_field_is_named() {
    let err = decode_client(Encoding::Json, br#"{"type":"send","req":3,"room":"r"}"#).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidField);
    assert_eq!(err.req, Some(3));
    assert!(err.message.contains("`id`"), "{}", err.message);
    let err = decode_client(Encoding::Json, br#"{"type":"mark_read","room":"r","seq":"x"}"#).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidField);
}

#[test]
fn msgpack_errors_are_classified_too() {
    #[derive(serde::Serialize)]
    struct Bad<'a> {
        r#type: &'a str,
        req: u64,
    }
    let bytes = rmp_serde::to_vec_named(&Bad { r#type: "send", req: 4 }).unwrap();
    let err = decode_client(Encoding::MessagePack, &bytes).unwrap_err();
    assert_eq!((err.code, err.req), (ErrorCode::InvalidField, Some(4)));
    let bytes = rmp_serde::to_vec_named(&Bad { r#type: "nope", req: 4 }).unwrap();
    assert_eq!(decode_client(Encoding::MessagePack, &bytes).unwrap_err().code, ErrorCode::UnknownType);
}

#[test]
fn every_type_name_decodes_to_its_variant() {
    // Guards TYPE_NAMES against drifting from the enum: each name must reach serde and fail only
    // on fields, never as an unknown variant.
    for name in ClientFrame::TYPE_NAMES {
        let doc = format!(r#"{{"type":"{name}"}}"#);
        match decode_client(Encoding::Json, doc.as_bytes()) {
            Ok(_) => {}
            Err(err) => {
                assert_eq!(err.code, ErrorCode::InvalidField, "{name}: {}", err.message);
                assert!(!err.message.contains("unknown variant"), "{name}: {}", err.message);
            }
        }
    }
}

#[test]
fn version_negotiation_picks_newest_common() {
    assert_eq!(crate::negotiate_version(&[1, 2, 99]), Some(1));
    assert_eq!(crate::negotiate_version(&[99]), None);
}

#[test]
fn a_message_encoded_from_a_borrowed_entry_is_the_message_frame() {
    for user in [None, Some("bob".to_string())] {
        let entry = Entry {
            room: "r_a".into(),
            seq: 9,
            id: "m-1".into(),
            from: "alice".into(),
            kind: if user.is_some() { EntryKind::Join } else { EntryKind::Text },
            user: user.clone(),
            body: "héllo \"quoted\"".into(),
            ts: 1_795_856_035_400,
            ..Default::default()
        };
        for encoding in both() {
            for cursor in [Some(42), None] {
                let frame = ServerFrame::Message { cursor, entry: entry.clone() };
                let expected = encode_server(encoding, &frame);
                assert_eq!(encode_message(encoding, cursor, &entry), expected, "{encoding:?} {user:?} {cursor:?}");
            }
        }
    }
}

fn text_entry(seq: u64, body: &str) -> Entry {
    Entry {
        room: "r_a".into(),
        seq,
        id: format!("m-{seq}"),
        from: "alice".into(),
        kind: EntryKind::Text,
        user: None,
        body: body.into(),
        ts: 1_700_000_000_000,
        ..Default::default()
    }
}

#[test]
fn a_batch_decodes_into_its_frames_in_order() {
    // Bodies with newlines, braces and multi-byte text: the separator must never be confused
    // with a frame's own bytes.
    let frames = vec![
        ServerFrame::Message { cursor: Some(1), entry: text_entry(1, "line one\nline two") },
        ServerFrame::Ack {
            req: 4,
            room: "r_a".into(),
            id: "m-2".into(),
            seq: 2,
            ts: 1_700_000_000_001,
            duplicate: false,
        },
        ServerFrame::Message { cursor: None, entry: text_entry(3, "} {\"type\":\"ack\"} ünïcødé 🚀") },
    ];
    for encoding in both() {
        let mut batch = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            if i > 0 {
                batch.extend_from_slice(batch_separator(encoding));
            }
            batch.extend_from_slice(&encode_server(encoding, frame));
        }
        assert_eq!(decode_server_batch(encoding, &batch).unwrap(), frames, "{encoding:?}");
        // One frame alone is a batch of one.
        let one = encode_server(encoding, &frames[0]);
        assert_eq!(decode_server_batch(encoding, &one).unwrap(), frames[..1], "{encoding:?}");
        // A truncated batch is an error, not a shorter list.
        assert!(decode_server_batch(encoding, &batch[..batch.len() - 3]).is_err(), "{encoding:?}");
    }
}

#[test]
fn batching_is_opt_in_on_both_sides() {
    // A `hello` without `batch` (every client before batching) asks for none.
    let hello = decode_client(Encoding::Json, br#"{"type":"hello","versions":[1]}"#).unwrap();
    assert_eq!(hello, ClientFrame::Hello { versions: vec![1], client: None, batch: false });
    // A `welcome` that grants none looks exactly as before; one that grants says so.
    let welcome = |batch| ServerFrame::Welcome {
        version: 1,
        node: "n1".into(),
        max_frame_bytes: 65_536,
        max_body_bytes: 4_096,
        batch,
    };
    let plain = String::from_utf8(encode_server(Encoding::Json, &welcome(false))).unwrap();
    assert!(!plain.contains("batch"), "{plain}");
    let granted = String::from_utf8(encode_server(Encoding::Json, &welcome(true))).unwrap();
    assert!(granted.contains(r#""batch":true"#), "{granted}");
}
