//! Conformance cases for uploaded media: records, quotas, attachments, and their collection.

use std::collections::BTreeSet;
use std::sync::Arc;

use protocol::{Attachment, EntryKind};

use super::{footprint, leave, refused, room_with, send, text, users, whole_history, whole_log, TS};
use crate::{AppendRequest, EntryDetails, Epoch, MediaRecord, MediaState, Store, StoreError};

/// A quota no case reaches unless it means to.
const QUOTA: u64 = 1 << 30;

/// An upload as reserved: declared size, no type or hash yet.
pub(crate) fn upload(id: &str, owner: &str, size: u64, created_ms: u64) -> MediaRecord {
    MediaRecord {
        id: id.into(),
        owner: owner.into(),
        name: format!("{id}.png"),
        content_type: String::new(),
        size,
        sha256: String::new(),
        width: None,
        height: None,
        thumbnail: None,
        created_ms,
        state: MediaState::Uploading,
    }
}

/// The same upload once stored and checked: what the node measured and sniffed.
fn finished(upload: &MediaRecord) -> MediaRecord {
    MediaRecord {
        content_type: "image/png".into(),
        sha256: "ab".repeat(32),
        width: Some(640),
        height: Some(480),
        thumbnail: Some((160, 120)),
        state: MediaState::Ready,
        ..upload.clone()
    }
}

async fn reserve(store: &dyn Store, media: &MediaRecord) {
    store.reserve_media(media.clone(), QUOTA).await.unwrap_or_else(|e| panic!("reserve {}: {e}", media.id));
}

/// A ready upload of `owner`, created at `created_ms`.
async fn ready_at(store: &dyn Store, id: &str, owner: &str, size: u64, created_ms: u64) -> MediaRecord {
    let reserved = upload(id, owner, size, created_ms);
    reserve(store, &reserved).await;
    let done = finished(&reserved);
    store.complete_media(done.clone()).await.unwrap_or_else(|e| panic!("complete {id}: {e}"));
    done
}

async fn ready(store: &dyn Store, id: &str, owner: &str, size: u64) -> MediaRecord {
    ready_at(store, id, owner, size, TS).await
}

/// A text by `from` attaching `media` (named by id, as a client names them).
fn posting(room: &str, epoch: Epoch, from: &str, id: &str, media: &[&str]) -> AppendRequest {
    let attachments = media.iter().map(|m| Attachment { media: (*m).to_owned(), ..Attachment::default() }).collect();
    AppendRequest {
        details: EntryDetails { attachments, ..EntryDetails::default() },
        ..text(room, epoch, from, id, "")
    }
}

async fn state_of(store: &dyn Store, id: &str) -> MediaState {
    store.media(id).await.expect("read media").unwrap_or_else(|| panic!("no record {id}")).state
}

fn attached(room: &str, seq: u64) -> MediaState {
    MediaState::Attached { room: room.into(), seq }
}

/// A reservation is kept as an upload in progress, completing it stores what was measured (owner
/// and creation time stay), and a taken id or an unknown owner is refused.
pub async fn media_records_are_reserved_completed_and_read_back(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a"]).await;
    assert_eq!(store.media("m1").await, Ok(None));
    assert_eq!(store.media_usage("a").await, Ok(0));
    // Whatever state the caller passes, a reservation is an upload in progress.
    let reserved = upload("m1", "a", 1_000, TS);
    store.reserve_media(MediaRecord { state: MediaState::Ready, ..reserved.clone() }, QUOTA).await.expect("reserve");
    assert_eq!(store.media("m1").await, Ok(Some(reserved.clone())));
    assert_eq!(store.media_usage("a").await, Ok(1_000), "an upload counts from its reservation");

    // The bytes came out shorter than declared; the caller's owner and time are not the record's.
    let measured = MediaRecord { size: 700, ..finished(&reserved) };
    store.complete_media(MediaRecord { created_ms: TS + 500, ..measured.clone() }).await.expect("complete");
    assert_eq!(store.media("m1").await, Ok(Some(measured.clone())));
    assert_eq!(store.media_usage("a").await, Ok(700), "usage follows the measured size");
    let attachment = measured.attachment();
    assert_eq!((attachment.media.as_str(), attachment.size), ("m1", 700));
    assert_eq!(attachment.thumbnail, Some(protocol::Thumbnail { width: 160, height: 120 }));

    // Ids are random: a taken one is a fault, and the record stays as it was.
    let err = store.reserve_media(upload("m1", "a", 5, TS + 1), QUOTA).await.expect_err("taken id");
    assert_eq!(err, StoreError::Backend("media id collision".into()));
    assert_eq!(store.media("m1").await, Ok(Some(measured)));
    assert_eq!(store.media_usage("a").await, Ok(700));
    let err = store.reserve_media(upload("m2", "ghost", 5, TS), QUOTA).await.expect_err("unknown owner");
    assert_eq!(err, StoreError::NoSuchUser("ghost".into()));
    assert_eq!(store.media("m2").await, Ok(None));
}

/// Completing needs an upload still in progress, of the same owner: not an unknown one, not one
/// completed already, not one the collector doomed.
pub async fn completing_needs_an_upload_in_progress(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let no_media = |id: &str| Err(StoreError::NoSuchMedia(id.into()));
    assert_eq!(store.complete_media(finished(&upload("m0", "a", 1, TS))).await, no_media("m0"));
    assert_eq!(store.media("m0").await, Ok(None), "nothing was created");

    let done = ready(store, "m1", "a", 10).await;
    let again = MediaRecord { size: 5, ..done.clone() };
    assert_eq!(store.complete_media(again).await, no_media("m1"), "completed twice");
    assert_eq!(store.media("m1").await, Ok(Some(done)), "the first completion stays");

    let reserved = upload("m2", "a", 10, TS);
    reserve(store, &reserved).await;
    let by_b = MediaRecord { owner: "b".into(), ..finished(&reserved) };
    assert_eq!(store.complete_media(by_b).await, no_media("m2"), "another user's upload");
    assert_eq!(state_of(store, "m2").await, MediaState::Uploading);

    // The collector took it meanwhile.
    let doomed = store.media_garbage(TS + 1, 10).await.expect("garbage");
    assert_eq!(doomed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["m1", "m2"]);
    assert_eq!(store.complete_media(finished(&reserved)).await, no_media("m2"), "doomed meanwhile");
    assert_eq!(state_of(store, "m2").await, MediaState::Doomed);
}

/// The quota is checked with the reservation: one that would pass it writes nothing, one that
/// reaches it exactly is taken, other users are not counted, and of two parallel reservations
/// that fit only one at a time exactly one is taken.
pub async fn media_quota_is_checked_with_the_reservation(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    store.reserve_media(upload("a1", "a", 60, TS), 100).await.expect("first");
    let over = store.reserve_media(upload("a2", "a", 41, TS), 100).await;
    assert_eq!(over, Err(StoreError::QuotaExceeded { user: "a".into(), quota: 100 }));
    assert_eq!(store.media("a2").await, Ok(None), "a refused reservation writes nothing");
    assert_eq!(store.media_usage("a").await, Ok(60));
    store.reserve_media(upload("a3", "a", 40, TS), 100).await.expect("exactly at the quota");
    assert_eq!(store.media_usage("a").await, Ok(100));
    store.reserve_media(upload("b1", "b", 100, TS), 100).await.expect("another user's own quota");
    assert_eq!(store.media_usage("a").await, Ok(100), "b's upload is not a's");

    let (first, second) = tokio::join!(
        store.reserve_media(upload("c1", "c", 60, TS), 100),
        store.reserve_media(upload("c2", "c", 60, TS), 100)
    );
    let taken = [&first, &second].iter().filter(|outcome| outcome.is_ok()).count();
    assert_eq!(taken, 1, "both parallel reservations passed the quota: {first:?} {second:?}");
    let refused = if first.is_err() { first } else { second };
    assert_eq!(refused, Err(StoreError::QuotaExceeded { user: "c".into(), quota: 100 }));
    assert_eq!(store.media_usage("c").await, Ok(60));
    let kept = [store.media("c1").await.expect("c1"), store.media("c2").await.expect("c2")];
    assert_eq!(kept.iter().flatten().count(), 1, "the refused one wrote nothing");
}

/// Usage counts uploads in progress, ready and attached, and leaves out doomed ones (a dropped
/// upload, never written, frees its bytes too).
pub async fn media_usage_leaves_out_doomed_records(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a"]).await;
    let epoch = room_with(store, "r", &["a"], false).await;
    reserve(store, &upload("m1", "a", 1, TS)).await;
    ready(store, "m2", "a", 20).await;
    ready_at(store, "m3", "a", 300, TS + 10).await;
    send(store, posting("r", epoch, "a", "t1", &["m3"])).await;
    reserve(store, &upload("m4", "a", 4_000, TS + 10)).await;
    assert_eq!(store.media_usage("a").await, Ok(4_321));
    // m1 and m2 go stale; m3 is attached and m4 is fresh.
    store.media_garbage(TS + 5, 10).await.expect("garbage");
    assert_eq!(store.media_usage("a").await, Ok(4_300));
    // An upload that failed is forgotten at once.
    store.drop_media(&["m4".into()]).await.expect("drop");
    assert_eq!(store.media_usage("a").await, Ok(300));
    assert_eq!(store.media("m4").await, Ok(None));
    // Dropping doomed records changes nothing more.
    store.drop_media(&["m1".into(), "m2".into()]).await.expect("drop");
    assert_eq!(store.media_usage("a").await, Ok(300));
}

/// An append attaches the sender's ready uploads: the entry carries them as their records say
/// (history, replay, threads), each record becomes attached to the entry's seq, and the usage
/// stays.
pub async fn attachments_are_posted_with_the_message(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let photo = ready(store, "m1", "a", 1_000).await;
    let other = ready(store, "m2", "a", 2_000).await;
    let sent = send(store, posting("r", epoch, "a", "t1", &["m2", "m1"])).await.delivery;
    let expected = vec![other.attachment(), photo.attachment()];
    assert_eq!(sent.entry.attachments, expected, "in the order given, each as its record says");
    let seq = sent.entry.seq;
    assert_eq!(state_of(store, "m1").await, attached("r", seq));
    assert_eq!(state_of(store, "m2").await, attached("r", seq));
    assert_eq!(store.media_usage("a").await, Ok(3_000), "attached media still counts");

    let history = whole_history(store, "r").await;
    assert_eq!(history.iter().find(|e| e.seq == seq).expect("in history").attachments, expected);
    for user in ["a", "b"] {
        let log = whole_log(store, user).await;
        let replayed = log.iter().find(|e| e.entry.room == "r" && e.entry.seq == seq).expect("in the log");
        assert_eq!(replayed.entry, sent.entry, "{user}'s replay");
    }
    // A reply carries nothing of the message it replies to; the thread shows both as they are.
    let mut reply = text("r", epoch, "b", "t2", "nice");
    reply.details.reply_to = Some(seq);
    let reply = send(store, reply).await.delivery.entry;
    assert!(reply.attachments.is_empty());
    let (root, replies, _) = store.thread("r", seq, 0, 10).await.expect("thread");
    assert_eq!((root.attachments, replies), (expected.clone(), vec![reply]));
    // An edit changes the body, not the files.
    let edit = AppendRequest {
        kind: EntryKind::Edit,
        details: EntryDetails { target: Some(seq), ..EntryDetails::default() },
        ..text("r", epoch, "a", "e1", "with a caption")
    };
    send(store, edit).await;
    let history = whole_history(store, "r").await;
    let message = history.iter().find(|e| e.seq == seq).expect("in history");
    assert_eq!((message.body.as_str(), &message.attachments), ("with a caption", &expected));
}

/// Only the sender's own ready uploads can be attached: an unknown id, another user's upload, one
/// still uploading or one doomed is `NoSuchMedia`, and the append writes nothing (no entry, no
/// record attached, not even the request's other, valid attachments).
pub async fn attaching_what_is_not_ones_own_ready_upload_appends_nothing(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    ready(store, "mine", "a", 10).await;
    ready(store, "bs", "b", 10).await;
    reserve(store, &upload("unfinished", "a", 10, TS + 100)).await;
    ready_at(store, "collected", "a", 10, TS - 100).await;
    store.media_garbage(TS - 50, 10).await.expect("garbage");
    assert_eq!(state_of(store, "collected").await, MediaState::Doomed);

    let before = footprint(store, "r", &["a", "b"]).await;
    for (n, bad) in ["nowhere", "bs", "unfinished", "collected"].into_iter().enumerate() {
        let err = refused(store, posting("r", epoch, "a", &format!("t{n}"), &["mine", bad])).await;
        assert_eq!(err, StoreError::NoSuchMedia(bad.into()), "attaching {bad}");
        assert_eq!(footprint(store, "r", &["a", "b"]).await, before, "attaching {bad} wrote an entry");
    }
    assert_eq!(state_of(store, "mine").await, MediaState::Ready, "the valid attachment stayed unattached");
    assert_eq!(state_of(store, "bs").await, MediaState::Ready);
    assert_eq!(state_of(store, "unfinished").await, MediaState::Uploading);
    // The refused client ids are free: the same request without the bad one goes through.
    let sent = send(store, posting("r", epoch, "a", "t0", &["mine"])).await.delivery.entry;
    assert_eq!(state_of(store, "mine").await, attached("r", sent.seq));
}

/// An upload is attached once: attaching it again (in another message, twice in one, or in the
/// same batch) is `MediaInUse` and writes nothing; to another user it is no upload at all.
pub async fn attaching_media_twice_is_media_in_use(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    ready(store, "m1", "a", 10).await;
    ready(store, "m2", "a", 10).await;
    let first = send(store, posting("r", epoch, "a", "t1", &["m1"])).await.delivery.entry;

    let before = footprint(store, "r", &["a", "b"]).await;
    let err = refused(store, posting("r", epoch, "a", "t2", &["m2", "m1"])).await;
    assert_eq!(err, StoreError::MediaInUse("m1".into()));
    let err = refused(store, posting("r", epoch, "a", "t3", &["m2", "m2"])).await;
    assert_eq!(err, StoreError::MediaInUse("m2".into()), "named twice in one message");
    let err = refused(store, posting("r", epoch, "b", "t4", &["m1"])).await;
    assert_eq!(err, StoreError::NoSuchMedia("m1".into()), "another user learns nothing of it");
    assert_eq!(footprint(store, "r", &["a", "b"]).await, before, "a refused attachment wrote an entry");
    assert_eq!(state_of(store, "m1").await, attached("r", first.seq), "still the first message's");
    assert_eq!(state_of(store, "m2").await, MediaState::Ready);

    // Two appends of one batch: the first takes it.
    let outcomes = store
        .append_batch(vec![posting("r", epoch, "a", "t5", &["m2"]), posting("r", epoch, "a", "t6", &["m2"])])
        .await;
    let taken = outcomes[0].as_ref().expect("the first of the batch").delivery.entry.seq;
    assert_eq!(outcomes[1].as_ref().map(|_| ()), Err(&StoreError::MediaInUse("m2".into())));
    assert_eq!(state_of(store, "m2").await, attached("r", taken));
    assert_eq!(super::last_seq(store, "r").await, taken, "the refused one wrote nothing");
}

/// A retried send gets its original entry back, attachments and all, and touches no media: not
/// those it attached, nor those the retry names.
pub async fn a_retried_send_with_attachments_returns_the_original(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    ready(store, "m1", "a", 10).await;
    ready(store, "m2", "a", 10).await;
    let original = send(store, posting("r", epoch, "a", "t1", &["m1"])).await.delivery.entry;
    let before = footprint(store, "r", &["a", "b"]).await;
    for retry in [posting("r", epoch, "a", "t1", &["m1"]), posting("r", epoch, "a", "t1", &["m2"])] {
        let again = store.append(retry).await.expect("retry");
        assert!(again.duplicate, "a retry is a duplicate");
        assert_eq!(again.delivery.entry, original);
    }
    assert_eq!(footprint(store, "r", &["a", "b"]).await, before, "a duplicate wrote something");
    assert_eq!(state_of(store, "m1").await, attached("r", original.seq));
    assert_eq!(state_of(store, "m2").await, MediaState::Ready, "the retry's other media stays free");
}

/// Deleting a message erases its attachments from it (history and replay) and dooms their
/// records, which leave the owner's usage and reach the collector.
pub async fn deleting_a_message_dooms_its_attachments(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    ready(store, "m1", "a", 100).await;
    ready(store, "m2", "a", 20).await;
    ready(store, "kept", "a", 3).await;
    let seq = send(store, posting("r", epoch, "a", "t1", &["m1", "m2"])).await.delivery.entry.seq;
    let other = send(store, posting("r", epoch, "a", "t2", &["kept"])).await.delivery.entry.seq;
    let delete = AppendRequest {
        kind: EntryKind::Delete,
        details: EntryDetails { target: Some(seq), ..EntryDetails::default() },
        ..text("r", epoch, "a", "d1", "")
    };
    send(store, delete).await;

    let history = whole_history(store, "r").await;
    let tombstone = history.iter().find(|e| e.seq == seq).expect("in history");
    assert!(tombstone.deleted && tombstone.attachments.is_empty(), "{tombstone:?}");
    assert_eq!(history.iter().find(|e| e.seq == other).expect("in history").attachments.len(), 1);
    let log = whole_log(store, "b").await;
    let replayed = log.iter().find(|e| e.entry.room == "r" && e.entry.seq == seq).expect("in b's log");
    assert!(replayed.entry.attachments.is_empty(), "replay shows the files gone");
    assert_eq!(state_of(store, "m1").await, MediaState::Doomed);
    assert_eq!(state_of(store, "m2").await, MediaState::Doomed);
    assert_eq!(state_of(store, "kept").await, attached("r", other));
    assert_eq!(store.media_usage("a").await, Ok(3));
    // Nothing is stale: the collector finds exactly the two doomed ones.
    let doomed = store.media_garbage(0, 10).await.expect("garbage");
    assert_eq!(doomed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["m1", "m2"]);
    assert!(doomed.iter().all(|m| m.state == MediaState::Doomed && m.owner == "a"));
}

/// Deleting an account dooms every upload of the user, whatever its state, and no one else's.
pub async fn deleting_an_account_dooms_its_media(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    reserve(store, &upload("a-uploading", "a", 1, TS)).await;
    ready(store, "a-ready", "a", 10).await;
    ready(store, "a-posted", "a", 100).await;
    ready(store, "b-ready", "b", 1_000).await;
    send(store, posting("r", epoch, "a", "t1", &["a-posted"])).await;
    send(store, leave("r", epoch, "a", "l1")).await;
    store.delete_account("a", TS + 10).await.expect("delete account");

    for id in ["a-uploading", "a-ready", "a-posted"] {
        assert_eq!(state_of(store, id).await, MediaState::Doomed, "{id}");
    }
    assert_eq!(state_of(store, "b-ready").await, MediaState::Ready, "b's upload is b's");
    assert_eq!(store.media_usage("a").await, Ok(0));
    assert_eq!(store.media_usage("b").await, Ok(1_000));
    let doomed: BTreeSet<String> =
        store.media_garbage(0, 10).await.expect("garbage").into_iter().map(|m| m.id).collect();
    assert_eq!(doomed, ["a-posted", "a-ready", "a-uploading"].map(String::from).into());
    // The deleted user can reserve nothing any more.
    let err = store.reserve_media(upload("a-late", "a", 1, TS + 20), QUOTA).await.expect_err("deleted owner");
    assert_eq!(err, StoreError::NoSuchUser("a".into()));
}

/// The collector dooms the uploads left unfinished or unattached since before the bound (not
/// attached ones, not fresh ones), then lists doomed records by id, up to its limit; dropped
/// records are forgotten.
pub async fn the_collector_dooms_stale_uploads_and_lists_the_doomed(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    reserve(store, &upload("d-old-uploading", "a", 1, TS)).await;
    ready_at(store, "c-old-ready", "b", 1, TS).await;
    ready_at(store, "b-old-attached", "a", 1, TS).await;
    let seq = send(store, posting("r", epoch, "a", "t1", &["b-old-attached"])).await.delivery.entry.seq;
    reserve(store, &upload("a-fresh-uploading", "a", 1, TS + 100)).await;
    ready_at(store, "e-fresh-ready", "b", 1, TS + 100).await;
    // Created exactly at the bound: not before it, so not stale.
    ready_at(store, "f-at-the-bound", "a", 1, TS + 50).await;

    assert_eq!(store.media_garbage(TS + 50, 0).await, Ok(vec![]), "a limit of 0 lists nothing");
    // That pass doomed the stale ones all the same.
    let doomed = store.media_garbage(TS + 50, 10).await.expect("garbage");
    assert_eq!(doomed.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["c-old-ready", "d-old-uploading"]);
    assert!(doomed.iter().all(|m| m.state == MediaState::Doomed));
    assert_eq!(doomed[0].owner, "b", "the record comes back whole");
    assert_eq!(doomed[0].content_type, "image/png");
    assert_eq!(state_of(store, "b-old-attached").await, attached("r", seq));
    assert_eq!(state_of(store, "a-fresh-uploading").await, MediaState::Uploading);
    assert_eq!(state_of(store, "e-fresh-ready").await, MediaState::Ready);
    assert_eq!(state_of(store, "f-at-the-bound").await, MediaState::Ready);

    // Later, everything unattached is stale: listed in id order, a page at a time.
    let first = store.media_garbage(TS + 1_000, 2).await.expect("garbage");
    assert_eq!(first.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(), ["a-fresh-uploading", "c-old-ready"]);
    let ids: Vec<String> = first.into_iter().map(|m| m.id).collect();
    store.drop_media(&ids).await.expect("drop");
    assert_eq!(store.media("a-fresh-uploading").await, Ok(None));
    assert_eq!(store.media("c-old-ready").await, Ok(None));
    let rest = store.media_garbage(TS + 1_000, 10).await.expect("garbage");
    assert_eq!(
        rest.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["d-old-uploading", "e-fresh-ready", "f-at-the-bound"]
    );
    // Unknown ids are nothing to forget; the attached upload was never a candidate.
    store.drop_media(&["nowhere".into(), "d-old-uploading".into()]).await.expect("drop");
    assert_eq!(store.media_garbage(TS + 1_000, 10).await.expect("garbage").len(), 2);
    assert_eq!(state_of(store, "b-old-attached").await, attached("r", seq));
}
