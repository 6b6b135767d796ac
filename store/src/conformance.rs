//! The store conformance suite: each guarantee of [`Store`] as a test that fails without it.
//!
//! Every backend runs the same cases. Each case is a `pub async fn` taking a fresh, empty store;
//! [`conformance_tests!`] expands to one `#[tokio::test]` per case, so each case passes or fails
//! on its own line. A backend invokes it with an async constructor returning a [`Fixture`]:
//!
//! ```text
//! async fn fresh_store() -> Fixture {
//!     let dir = tempfile::tempdir().unwrap();
//!     let store = SqliteStore::open(SqliteOptions::new(dir.path().join("palaver.db"))).unwrap();
//!     Fixture::with_guard(Arc::new(store), dir)
//! }
//! crate::conformance::conformance_tests!(fresh_store);
//! ```
//!
//! The cases run on a two-thread runtime and assert nothing about timing, so they hold on a
//! loaded two-core machine. They compare recipient lists as sets: the order of
//! [`Delivery::recipients`] is not part of the contract.

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use protocol::{Cursor, Entry, EntryKind, RoomKind};

use crate::sqlite::is_dense;
use crate::{
    AppendRequest, Appended, Delivery, EntryDetails, Epoch, HistoryPage, LogBounds, LogEntry, MembershipLimits,
    MessageRules, MyRoom, NewRoom, PresenceNote, Recipients, Store, StoreError,
};

mod api_keys;
mod changes;
mod devices;
mod erasure;
pub(crate) mod media;
mod moderation;
mod push;
mod webhooks;
pub use api_keys::*;
pub use changes::*;
pub use devices::*;
pub use erasure::*;
pub use media::*;
pub use moderation::*;
pub use push::*;
pub use webhooks::*;

/// A fresh, empty store for one case, and whatever must live as long as it (a temporary
/// directory, a FoundationDB subspace to clear).
pub struct Fixture {
    pub store: Arc<dyn Store>,
    _guard: Box<dyn Any + Send>,
}

impl Fixture {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Fixture { store, _guard: Box::new(()) }
    }

    pub fn with_guard(store: Arc<dyn Store>, guard: impl Any + Send) -> Self {
        Fixture { store, _guard: Box::new(guard) }
    }
}

/// Expand to one `#[tokio::test]` per conformance case. `$make` is an async function (or a
/// closure returning a future) that builds a [`Fixture`] with a fresh, empty store.
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance::conformance_tests!(@cases $make;
            accounts_create_and_read,
            create_user_twice_is_user_exists,
            revoke_tokens_bumps_the_epoch,
            presence_notes_keep_the_newest_setting,
            api_keys_are_kept_listed_and_revoked,
            devices_are_kept_per_user_bounded_and_erased_with_the_account,
            unknown_users_and_rooms_are_errors,
            create_room_writes_one_join_per_member,
            create_room_twice_returns_the_existing_room,
            create_room_checks_users_and_limits,
            concurrent_appends_get_dense_seqs,
            user_cursors_are_dense_across_rooms,
            fan_out_reaches_exactly_the_members_at_commit,
            duplicate_send_returns_the_original,
            same_client_id_elsewhere_is_a_new_message,
            membership_entry_ids_are_not_deduplicated,
            stale_epoch_is_fenced,
            claim_room_bumps_the_epoch_and_sets_the_owner,
            private_room_needs_an_invitation,
            joining_twice_is_already_member,
            room_full_and_too_many_rooms,
            leave_reaches_the_leaver_then_ends_membership,
            non_member_cannot_send,
            refused_appends_do_not_disturb_others,
            a_batch_is_its_appends_one_after_another,
            history_pages_both_ways,
            user_log_pages_by_cursor,
            trim_raises_the_floor,
            mark_read_is_monotonic_and_clamped,
            rooms_of_lists_memberships_with_read_positions,
            read_positions_list_members_by_name,
            large_rooms_keep_later_entries_in_the_room_log_only,
            a_room_created_large_writes_no_pointers,
            a_duplicate_in_a_large_room_returns_the_original,
            edit_changes_the_message_and_is_logged,
            only_the_author_edits_within_the_window,
            delete_erases_the_message_its_edits_reactions_and_mentions,
            the_room_creator_deletes_any_message_other_members_only_their_own,
            reactions_are_once_per_user_and_bounded,
            reactions_in_large_rooms_are_counted_not_logged,
            notification_settings_are_per_member_and_room,
            replies_form_threads,
            mentions_are_members_and_count_until_read,
            changes_are_deduplicated_by_client_id,
            the_owner_makes_admins_and_ranks_decide,
            a_kick_removes_a_member_who_may_come_back,
            a_ban_keeps_a_user_out_until_it_ends,
            a_mute_stops_posting_until_it_ends,
            admins_delete_any_message,
            direct_conversations_have_no_moderation,
            users_block_and_unblock,
            moderators_change_the_room_settings,
            settings_decide_who_posts_and_invites,
            deleting_an_account_erases_it_and_keeps_the_name,
            webhooks_are_kept_listed_and_deleted,
            committed_events_are_queued_per_endpoint_until_acknowledged,
            account_deletions_are_queued,
            leases_are_held_until_they_expire,
            messages_are_queued_for_push_until_done,
            push_members_carry_settings_and_read_positions,
            reads_after_a_push_owe_a_clear,
            media_records_are_reserved_completed_and_read_back,
            completing_needs_an_upload_in_progress,
            media_quota_is_checked_with_the_reservation,
            media_usage_leaves_out_doomed_records,
            attachments_are_posted_with_the_message,
            attaching_what_is_not_ones_own_ready_upload_appends_nothing,
            attaching_media_twice_is_media_in_use,
            a_retried_send_with_attachments_returns_the_original,
            deleting_a_message_dooms_its_attachments,
            deleting_an_account_dooms_its_media,
            the_collector_dooms_stale_uploads_and_lists_the_doomed,
        );
    };
    (@cases $make:expr; $($case:ident),+ $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let fixture: $crate::conformance::Fixture = ($make)().await;
                $crate::conformance::$case(::std::sync::Arc::clone(&fixture.store)).await;
            }
        )+
    };
}
pub(crate) use conformance_tests;

// Helpers.

pub(crate) const TS: u64 = 1_700_000_000_000;
pub(crate) const LIMITS: MembershipLimits =
    MembershipLimits { max_room_members: 1_000, max_rooms_per_user: 1_000, fanout_max_members: 1_000 };
/// A minute to edit; three different reactions per message.
pub const RULES: MessageRules = MessageRules { edit_window_ms: 60_000, max_reactions_per_message: 3 };

async fn users(store: &dyn Store, names: &[&str]) {
    for name in names {
        store.create_user(name, &format!("hash-of-{name}"), TS).await.expect("create user");
    }
}

pub(crate) fn new_room(id: &str, members: &[&str], private: bool) -> NewRoom {
    NewRoom {
        id: id.to_owned(),
        name: format!("room {id}"),
        kind: RoomKind::Group,
        private,
        creator: members[0].to_owned(),
        members: members.iter().map(|m| (*m).to_owned()).collect(),
        ts: TS,
    }
}

/// Create a room with these members (the first creates it) and claim it; returns the epoch.
async fn room_with(store: &dyn Store, id: &str, members: &[&str], private: bool) -> Epoch {
    let (_, deliveries) = store.create_room(new_room(id, members, private), LIMITS).await.expect("create room");
    assert!(deliveries.is_some(), "room {id} existed already");
    store.claim_room(id, "node-1").await.expect("claim room")
}

/// A room `id` with members a and b, for backends' own contention tests; its epoch.
pub async fn contention_room(store: &dyn Store, id: &str) -> Epoch {
    users(store, &["a", "b"]).await;
    room_with(store, id, &["a", "b"], false).await
}

/// A text from a into a [`contention_room`].
pub fn contention_text(room: &str, epoch: Epoch, id: &str) -> AppendRequest {
    text(room, epoch, "a", id, "x")
}

fn text(room: &str, epoch: Epoch, from: &str, id: &str, body: &str) -> AppendRequest {
    AppendRequest {
        room: room.to_owned(),
        epoch,
        kind: EntryKind::Text,
        from: from.to_owned(),
        id: id.to_owned(),
        user: None,
        body: body.to_owned(),
        ts: TS + 1,
        limits: LIMITS,
        details: EntryDetails::default(),
        rules: RULES,
    }
}

/// `from` joins `user` (a self-join when they are the same).
pub(crate) fn join(room: &str, epoch: Epoch, from: &str, user: &str, id: &str) -> AppendRequest {
    AppendRequest {
        kind: EntryKind::Join,
        user: Some(user.to_owned()),
        body: String::new(),
        ..text(room, epoch, from, id, "")
    }
}

pub(crate) fn leave(room: &str, epoch: Epoch, user: &str, id: &str) -> AppendRequest {
    AppendRequest { kind: EntryKind::Leave, user: Some(user.to_owned()), ..text(room, epoch, user, id, "") }
}

async fn send(store: &dyn Store, request: AppendRequest) -> Appended {
    let what = format!("{:?} {} by {} in {}", request.kind, request.id, request.from, request.room);
    let appended = store.append(request).await.unwrap_or_else(|e| panic!("append {what}: {e}"));
    assert!(!appended.duplicate, "append {what} was taken for a duplicate");
    appended
}

async fn refused(store: &dyn Store, request: AppendRequest) -> StoreError {
    let what = format!("{:?} {} by {} in {}", request.kind, request.id, request.from, request.room);
    match store.append(request).await {
        Ok(appended) => panic!("append {what} succeeded but should fail: {appended:?}"),
        Err(e) => e,
    }
}

/// The whole readable log of a user, read in small pages to exercise paging.
async fn whole_log(store: &dyn Store, user: &str) -> Vec<LogEntry> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = store.user_log(user, after, 7).await.expect("user log");
        let Some(last) = page.last() else { break };
        after = last.cursor;
        all.extend(page);
    }
    all
}

async fn whole_history(store: &dyn Store, room: &str) -> Vec<Entry> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let (page, more) = store.history(room, HistoryPage::After(after), 7).await.expect("history");
        if let Some(last) = page.last() {
            after = last.seq;
        }
        all.extend(page);
        if !more {
            break;
        }
    }
    all
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries.iter().map(|e| e.seq).collect()
}

fn cursors(log: &[LogEntry]) -> Vec<Cursor> {
    log.iter().map(|e| e.cursor).collect()
}

fn recipient_names(delivery: &Delivery) -> BTreeSet<String> {
    delivery.recipients.users().map(str::to_owned).collect()
}

/// The recipients of an entry that reached user logs, with their cursors.
fn logs(delivery: &Delivery) -> &[(String, Cursor)] {
    match &delivery.recipients {
        Recipients::Logs(logs) => logs,
        other => panic!("a small room's entry is in every member's log, not {other:?}"),
    }
}

/// Where the entry landed in `user`'s log.
fn cursor_of(delivery: &Delivery, user: &str) -> Cursor {
    logs(delivery).iter().find(|(name, _)| name == user).unwrap_or_else(|| panic!("{user} is not a recipient")).1
}

async fn member_set(store: &dyn Store, room: &str) -> BTreeSet<String> {
    store.members(room).await.expect("members").into_iter().collect()
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|n| (*n).to_owned()).collect()
}

async fn last_seq(store: &dyn Store, room: &str) -> u64 {
    store.room(room).await.expect("room").expect("room exists").last_seq
}

async fn heads(store: &dyn Store, users: &[&str]) -> Vec<LogBounds> {
    let mut all = Vec::new();
    for user in users {
        all.push(store.user_log_bounds(user).await.expect("bounds"));
    }
    all
}

/// What a refused operation must leave untouched: the room's seq and every user's log.
async fn footprint(store: &dyn Store, room: &str, users: &[&str]) -> (u64, Vec<LogBounds>, Vec<String>) {
    (last_seq(store, room).await, heads(store, users).await, store.members(room).await.expect("members"))
}

/// Every recipient's log holds the delivered entry at the delivered cursor.
async fn assert_delivered(store: &dyn Store, delivery: &Delivery) {
    for (user, cursor) in logs(delivery) {
        let page = store.user_log(user, cursor - 1, 1).await.expect("user log");
        assert_eq!(page.len(), 1, "{user} has no entry at cursor {cursor}");
        assert_eq!(page[0].cursor, *cursor);
        assert_eq!(page[0].entry, delivery.entry, "{user}'s log at cursor {cursor}");
    }
}

// Accounts.

/// A created account reads back as stored.
pub async fn accounts_create_and_read(store: Arc<dyn Store>) {
    let store = store.as_ref();
    store.create_user("alice", "$argon2id$alice", TS).await.expect("create");
    let alice = store.user("alice").await.expect("read").expect("alice exists");
    assert_eq!(alice.name, "alice");
    assert_eq!(alice.password_hash, "$argon2id$alice");
    assert_eq!(alice.created_ms, TS);
    assert_eq!(store.user("bob").await.expect("read"), None);
    assert_eq!(store.user_log_bounds("alice").await.expect("bounds"), LogBounds { floor: 0, head: 0 });
    assert!(store.rooms_of("alice").await.expect("rooms").is_empty());
}

/// Registering a taken name fails and keeps the first account.
pub async fn create_user_twice_is_user_exists(store: Arc<dyn Store>) {
    let store = store.as_ref();
    store.create_user("alice", "first", TS).await.expect("create");
    let err = store.create_user("alice", "second", TS + 5).await.expect_err("second create");
    assert_eq!(err, StoreError::UserExists("alice".into()));
    let alice = store.user("alice").await.expect("read").expect("exists");
    assert_eq!((alice.password_hash.as_str(), alice.created_ms), ("first", TS));
}

/// "Log out everywhere": each revoke returns a higher token epoch, and the account shows it.
pub async fn revoke_tokens_bumps_the_epoch(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["alice", "bob"]).await;
    let before = store.user("alice").await.expect("read").expect("exists").token_epoch;
    let first = store.revoke_tokens("alice").await.expect("revoke");
    assert!(first > before, "revoke went from {before} to {first}");
    assert_eq!(store.user("alice").await.expect("read").expect("exists").token_epoch, first);
    let second = store.revoke_tokens("alice").await.expect("revoke");
    assert!(second > first, "revoke went from {first} to {second}");
    let bob = store.user("bob").await.expect("read").expect("exists");
    assert_eq!(bob.token_epoch, before, "revoking alice's tokens changed bob's");
    assert_eq!(store.revoke_tokens("ghost").await, Err(StoreError::NoSuchUser("ghost".into())));
}

/// A presence note is kept per user; of two settings the later one stays, whichever order they
/// are written in (nodes write them without coordinating); a cleared status is kept as cleared.
pub async fn presence_notes_keep_the_newest_setting(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["alice", "bob"]).await;
    let note = |status: Option<&str>, set_ms: u64| PresenceNote { status: status.map(String::from), set_ms };
    assert_eq!(store.presence_note("alice").await, Ok(None));
    store.set_presence_note("alice", note(Some("on a train"), TS + 10)).await.expect("set");
    assert_eq!(store.presence_note("alice").await, Ok(Some(note(Some("on a train"), TS + 10))));
    // An older setting that arrives late, and one as old, change nothing.
    store.set_presence_note("alice", note(Some("stale"), TS + 5)).await.expect("set older");
    store.set_presence_note("alice", note(Some("same time"), TS + 10)).await.expect("set as old");
    assert_eq!(store.presence_note("alice").await, Ok(Some(note(Some("on a train"), TS + 10))));
    // A newer one replaces it, a cleared status included.
    store.set_presence_note("alice", note(None, TS + 20)).await.expect("clear");
    assert_eq!(store.presence_note("alice").await, Ok(Some(note(None, TS + 20))));
    assert_eq!(store.presence_note("bob").await, Ok(None), "alice's note is not bob's");
    let ghost = Err(StoreError::NoSuchUser("ghost".into()));
    assert_eq!(store.presence_note("ghost").await, ghost);
    assert_eq!(store.set_presence_note("ghost", note(Some("boo"), TS)).await, ghost.map(|_: Option<PresenceNote>| ()));
}

/// Unknown rooms and users give the documented errors (or `None`), never empty successes.
pub async fn unknown_users_and_rooms_are_errors(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["alice"]).await;
    let epoch = room_with(store, "r", &["alice"], false).await;
    let no_room = || StoreError::NoSuchRoom("nowhere".into());
    let no_user = || StoreError::NoSuchUser("ghost".into());

    assert_eq!(store.user("ghost").await, Ok(None));
    assert_eq!(store.room("nowhere").await, Ok(None));
    assert_eq!(store.room_owner("nowhere").await, Ok(None));
    assert_eq!(store.members("nowhere").await, Err(no_room()));
    assert_eq!(store.is_member("nowhere", "alice").await, Err(no_room()));
    assert_eq!(store.history("nowhere", HistoryPage::After(0), 10).await, Err(no_room()));
    assert_eq!(store.append(text("nowhere", epoch, "alice", "m1", "hi")).await, Err(no_room()));
    assert_eq!(store.claim_room("nowhere", "node-1").await, Err(no_room()));
    assert_eq!(store.mark_read("alice", "nowhere", 1).await, Err(no_room()));

    assert_eq!(store.user_log("ghost", 0, 10).await, Err(no_user()));
    assert_eq!(store.user_log_bounds("ghost").await, Err(no_user()));
    assert_eq!(store.trim_user_log("ghost", 1).await, Err(no_user()));
    assert_eq!(store.rooms_of("ghost").await, Err(no_user()));
    assert_eq!(store.revoke_tokens("ghost").await, Err(no_user()));
    assert_eq!(store.mark_read("ghost", "r", 1).await, Err(no_user()));

    // Inviting someone who does not exist writes nothing.
    let before = footprint(store, "r", &["alice"]).await;
    assert_eq!(refused(store, join("r", epoch, "alice", "ghost", "j1")).await, no_user());
    assert_eq!(footprint(store, "r", &["alice"]).await, before);
}

// Rooms.

/// Creation writes the room and one join entry per initial member, in order, and every initial
/// member's log gets every one of them.
pub async fn create_room_writes_one_join_per_member(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let (record, deliveries) = store.create_room(new_room("r", &["a", "b", "c"], true), LIMITS).await.expect("create");
    assert_eq!(
        (record.id.as_str(), record.name.as_str(), record.kind, record.private, record.created_by.as_str()),
        ("r", "room r", RoomKind::Group, true, "a")
    );
    assert_eq!((record.last_seq, record.members), (3, 3));
    assert_eq!(store.room("r").await.expect("room"), Some(record.clone()));
    assert_eq!(store.members("r").await.expect("members"), vec!["a", "b", "c"]);

    let deliveries = deliveries.expect("a new room has deliveries");
    assert_eq!(deliveries.len(), 3);
    for (index, (delivery, member)) in deliveries.iter().zip(["a", "b", "c"]).enumerate() {
        let entry = &delivery.entry;
        assert_eq!(entry.seq, index as u64 + 1);
        assert_eq!((entry.kind, entry.user.as_deref(), entry.from.as_str()), (EntryKind::Join, Some(member), "a"));
        assert_eq!((entry.room.as_str(), entry.ts), ("r", TS));
        assert_eq!(recipient_names(delivery), names(&["a", "b", "c"]));
        assert_delivered(store, delivery).await;
    }
    let ids: BTreeSet<&str> = deliveries.iter().map(|d| d.entry.id.as_str()).collect();
    assert_eq!(ids.len(), 3, "join entries need distinct ids");

    let history = whole_history(store, "r").await;
    assert_eq!(history, deliveries.iter().map(|d| d.entry.clone()).collect::<Vec<_>>());
    for member in ["a", "b", "c"] {
        let log = whole_log(store, member).await;
        assert_eq!(cursors(&log), vec![1, 2, 3], "{member}'s log");
        assert_eq!(log.iter().map(|e| e.entry.clone()).collect::<Vec<_>>(), history, "{member}'s log");
    }
}

/// Creating an existing id writes nothing and returns the existing room, so a direct
/// conversation is created once whoever opens it first.
pub async fn create_room_twice_returns_the_existing_room(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let (first, _) = store.create_room(new_room("dm", &["a", "b"], true), LIMITS).await.expect("create");
    let before = footprint(store, "dm", &["a", "b", "c"]).await;
    let mut again = new_room("dm", &["c", "a", "b"], false);
    again.name = "another name".into();
    again.kind = RoomKind::Direct;
    let (existing, deliveries) = store.create_room(again, LIMITS).await.expect("create again");
    assert_eq!(existing, first);
    assert_eq!(deliveries, None);
    assert_eq!(footprint(store, "dm", &["a", "b", "c"]).await, before);
    assert_eq!(whole_history(store, "dm").await.len(), 2);
}

/// Creation checks that members exist and the limits hold, and writes nothing when they don't.
pub async fn create_room_checks_users_and_limits(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;

    let err = store.create_room(new_room("r1", &["a", "ghost"], false), LIMITS).await.expect_err("ghost member");
    assert_eq!(err, StoreError::NoSuchUser("ghost".into()));
    assert_eq!(store.room("r1").await.expect("room"), None);

    let small = MembershipLimits { max_room_members: 2, max_rooms_per_user: 1_000, fanout_max_members: 1_000 };
    let err = store.create_room(new_room("r2", &["a", "b", "c"], false), small).await.expect_err("too many");
    assert_eq!(err, StoreError::RoomFull { room: "r2".into(), limit: 2 });
    assert_eq!(store.room("r2").await.expect("room"), None);

    store.create_room(new_room("r3", &["a"], false), LIMITS).await.expect("create");
    let one_room = MembershipLimits { max_room_members: 1_000, max_rooms_per_user: 1, fanout_max_members: 1_000 };
    let err = store.create_room(new_room("r4", &["b", "a"], false), one_room).await.expect_err("a is full");
    assert_eq!(err, StoreError::TooManyRooms { user: "a".into(), limit: 1 });
    assert_eq!(store.room("r4").await.expect("room"), None);
    assert_eq!(heads(store, &["a", "b", "c"]).await.iter().map(|b| b.head).collect::<Vec<_>>(), vec![1, 0, 0]);
}

// Appends: order, density, fan-out.

/// Concurrent appends to one room get a dense seq: no gap, no duplicate, each sender's own
/// messages in the order it sent them.
pub async fn concurrent_appends_get_dense_seqs(store: Arc<dyn Store>) {
    const TASKS: usize = 8;
    const EACH: usize = 50;
    users(store.as_ref(), &["a", "b"]).await;
    let epoch = room_with(store.as_ref(), "r", &["a", "b"], false).await;
    let start = last_seq(store.as_ref(), "r").await;

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let from = if task % 2 == 0 { "a" } else { "b" };
            let mut mine = Vec::new();
            for n in 0..EACH {
                let request = text("r", epoch, from, &format!("t{task}-{n}"), "x");
                mine.push(send(store.as_ref(), request).await.delivery.entry.seq);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        let mine = task.await.expect("task");
        assert!(mine.windows(2).all(|w| w[0] < w[1]), "one sender's seqs went backwards: {mine:?}");
        all.extend(mine);
    }
    all.sort_unstable();
    let total = (TASKS * EACH) as u64;
    assert_eq!(all, (start + 1..=start + total).collect::<Vec<_>>());
    let history = whole_history(store.as_ref(), "r").await;
    assert_eq!(seqs(&history), (1..=start + total).collect::<Vec<_>>());
    assert_eq!(last_seq(store.as_ref(), "r").await, start + total);
    for member in ["a", "b"] {
        let log = whole_log(store.as_ref(), member).await;
        assert_eq!(cursors(&log), (1..=start + total).collect::<Vec<_>>(), "{member}'s cursors");
        assert_eq!(log.iter().map(|e| e.entry.seq).collect::<Vec<_>>(), seqs(&history), "{member}'s order");
    }
}

/// A user in several busy rooms gets a dense cursor covering every entry of every room once,
/// each room's entries in seq order, at the cursors the appends reported.
pub async fn user_cursors_are_dense_across_rooms(store: Arc<dyn Store>) {
    const EACH: usize = 30;
    users(store.as_ref(), &["u", "x", "y", "z"]).await;
    let mut tasks = Vec::new();
    for (room, other) in [("r1", "x"), ("r2", "y"), ("r3", "z")] {
        let epoch = room_with(store.as_ref(), room, &["u", other], false).await;
        for from in ["u", other] {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let mut deliveries = Vec::new();
                for n in 0..EACH {
                    let request = text(room, epoch, from, &format!("{from}-{n}"), "hello");
                    deliveries.push(send(store.as_ref(), request).await.delivery);
                }
                deliveries
            }));
        }
    }
    let mut reported: BTreeMap<Cursor, Entry> = BTreeMap::new();
    for task in tasks {
        for delivery in task.await.expect("task") {
            let cursor = cursor_of(&delivery, "u");
            assert!(reported.insert(cursor, delivery.entry).is_none(), "cursor {cursor} given twice");
        }
    }
    let log = whole_log(store.as_ref(), "u").await;
    let head = store.user_log_bounds("u").await.expect("bounds").head;
    assert_eq!(cursors(&log), (1..=head).collect::<Vec<_>>());
    assert_eq!(head as usize, 3 * 2 + 3 * 2 * EACH, "two joins and every message in each room");
    for (cursor, entry) in &reported {
        assert_eq!(&log[*cursor as usize - 1].entry, entry, "u's log at cursor {cursor}");
    }
    for room in ["r1", "r2", "r3"] {
        let in_log: Vec<u64> = log.iter().filter(|e| e.entry.room == room).map(|e| e.entry.seq).collect();
        assert_eq!(in_log, seqs(&whole_history(store.as_ref(), room).await), "{room} in u's log");
    }
}

/// Each entry reaches exactly the members at its commit: not someone who left before, not
/// someone who joined after.
pub async fn fan_out_reaches_exactly_the_members_at_commit(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c", "d"]).await;
    let epoch = room_with(store, "r", &["a", "b", "c"], false).await;

    let m1 = send(store, text("r", epoch, "a", "m1", "one")).await.delivery;
    assert_eq!(recipient_names(&m1), names(&["a", "b", "c"]));
    assert_delivered(store, &m1).await;
    for (user, cursor) in logs(&m1) {
        assert_eq!(store.user_log_bounds(user).await.expect("bounds").head, *cursor, "{user}'s head");
    }
    assert!(whole_log(store, "d").await.is_empty(), "a non-member got a pointer");

    let left = send(store, leave("r", epoch, "c", "l1")).await.delivery;
    assert_eq!(recipient_names(&left), names(&["a", "b", "c"]));
    let c_head = store.user_log_bounds("c").await.expect("bounds").head;

    let m2 = send(store, text("r", epoch, "b", "m2", "two")).await.delivery;
    assert_eq!(recipient_names(&m2), names(&["a", "b"]));
    assert_delivered(store, &m2).await;
    assert_eq!(store.user_log_bounds("c").await.expect("bounds").head, c_head, "c got an entry after leaving");

    let joined = send(store, join("r", epoch, "d", "d", "j1")).await.delivery;
    assert_eq!(recipient_names(&joined), names(&["a", "b", "d"]));
    let m3 = send(store, text("r", epoch, "d", "m3", "three")).await.delivery;
    assert_eq!(recipient_names(&m3), names(&["a", "b", "d"]));
    assert_delivered(store, &m3).await;
    let d_log: Vec<Entry> = whole_log(store, "d").await.into_iter().map(|e| e.entry).collect();
    assert_eq!(d_log, vec![joined.entry, m3.entry], "d's log holds only what came after its join");
}

// Idempotent send.

/// A retried send gets the original entry back (seq, ts, body) and writes nothing.
pub async fn duplicate_send_returns_the_original(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let original = send(store, text("r", epoch, "a", "m1", "first body")).await.delivery.entry;
    send(store, text("r", epoch, "b", "m9", "in between")).await;
    let before = footprint(store, "r", &["a", "b"]).await;

    let mut retry = text("r", epoch, "a", "m1", "a different body");
    retry.ts = TS + 999;
    let again = store.append(retry).await.expect("retry");
    assert!(again.duplicate, "a retry must be reported as a duplicate");
    assert_eq!(again.delivery.entry, original, "a retry gets the original entry");
    assert_eq!(again.delivery.recipients, Recipients::none(), "a duplicate is delivered to nobody");
    assert_eq!(footprint(store, "r", &["a", "b"]).await, before, "a duplicate wrote something");
    let history = whole_history(store, "r").await;
    assert_eq!(history.iter().filter(|e| e.id == "m1").count(), 1);
    for user in ["a", "b"] {
        let log = whole_log(store, user).await;
        assert_eq!(log.iter().filter(|e| e.entry.id == "m1").count(), 1, "{user}'s log");
    }
}

/// The idempotence key is (room, sender, id): the same id from another sender or in another
/// room is another message.
pub async fn same_client_id_elsewhere_is_a_new_message(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let e1 = room_with(store, "r1", &["a", "b"], false).await;
    let e2 = room_with(store, "r2", &["a", "b"], false).await;
    let first = send(store, text("r1", e1, "a", "same", "from a")).await.delivery.entry;
    let other_sender = send(store, text("r1", e1, "b", "same", "from b")).await.delivery.entry;
    let other_room = send(store, text("r2", e2, "a", "same", "from a, elsewhere")).await.delivery.entry;
    assert_eq!(other_sender.seq, first.seq + 1);
    assert_eq!((other_sender.from.as_str(), other_sender.body.as_str()), ("b", "from b"));
    assert_eq!((other_room.room.as_str(), other_room.body.as_str()), ("r2", "from a, elsewhere"));
    let same = whole_history(store, "r1").await.into_iter().filter(|e| e.id == "same").count();
    assert_eq!(same, 2);
}

/// Join and leave ids are made by the node and are not deduplicated, and a text id never
/// collides with a membership entry's id.
pub async fn membership_entry_ids_are_not_deduplicated(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a"], false).await;
    let first = send(store, join("r", epoch, "b", "b", "x")).await.delivery.entry;
    let second = send(store, leave("r", epoch, "b", "x")).await.delivery.entry;
    let third = send(store, join("r", epoch, "b", "b", "x")).await.delivery.entry;
    let fourth = send(store, text("r", epoch, "b", "x", "hello")).await.delivery.entry;
    assert_eq!(seqs(&[first, second, third, fourth]), vec![2, 3, 4, 5]);
}

// Fencing.

/// After another node claims the room, the old owner's appends fail with `Fenced` and write
/// nothing, even a retry of a message it appended before; the new owner's go on densely.
pub async fn stale_epoch_is_fenced(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    store.create_room(new_room("r", &["a", "b"], false), LIMITS).await.expect("create");
    let old = store.claim_room("r", "node-1").await.expect("claim");
    let m1 = send(store, text("r", old, "a", "m1", "before")).await.delivery.entry;
    let new = store.claim_room("r", "node-2").await.expect("claim");
    assert!(new > old, "claim went from epoch {old} to {new}");

    let before = footprint(store, "r", &["a", "b", "c"]).await;
    let fenced = StoreError::Fenced { room: "r".into(), epoch: old, current: new };
    assert_eq!(refused(store, text("r", old, "a", "m2", "stale")).await, fenced);
    assert_eq!(refused(store, text("r", old, "a", "m1", "before")).await, fenced);
    assert_eq!(refused(store, join("r", old, "c", "c", "j")).await, fenced);
    assert_eq!(refused(store, leave("r", old, "b", "l")).await, fenced);
    let future = StoreError::Fenced { room: "r".into(), epoch: new + 1, current: new };
    assert_eq!(refused(store, text("r", new + 1, "a", "m2", "future")).await, future);
    assert_eq!(footprint(store, "r", &["a", "b", "c"]).await, before, "a fenced append wrote something");
    assert!(whole_history(store, "r").await.iter().all(|e| e.id != "m2"));

    let m2 = send(store, text("r", new, "a", "m2", "current")).await.delivery.entry;
    assert_eq!(m2.seq, m1.seq + 1);
    assert_eq!(store.room_owner("r").await.expect("owner"), Some(("node-2".into(), new)));
}

/// Each claim returns a higher epoch and records the claiming node.
pub async fn claim_room_bumps_the_epoch_and_sets_the_owner(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a"]).await;
    store.create_room(new_room("r", &["a"], false), LIMITS).await.expect("create");
    assert_eq!(store.room_owner("r").await.expect("owner"), None, "never claimed yet");
    let mut last = None;
    for node in ["node-1", "node-2", "node-1"] {
        let epoch = store.claim_room("r", node).await.expect("claim");
        if let Some(previous) = last {
            assert!(epoch > previous, "claim went from epoch {previous} to {epoch}");
        }
        assert_eq!(store.room_owner("r").await.expect("owner"), Some((node.to_owned(), epoch)));
        last = Some(epoch);
    }
}

// Membership rules.

/// A private room refuses self-joins; a member can invite; a non-member cannot.
pub async fn private_room_needs_an_invitation(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let epoch = room_with(store, "r", &["a"], true).await;
    let before = footprint(store, "r", &["a", "b", "c"]).await;
    assert_eq!(refused(store, join("r", epoch, "c", "c", "j1")).await, StoreError::Forbidden("r".into()));
    let not_member = StoreError::NotMember { room: "r".into(), user: "b".into() };
    assert_eq!(refused(store, join("r", epoch, "b", "c", "j2")).await, not_member);
    assert_eq!(footprint(store, "r", &["a", "b", "c"]).await, before, "a refused join wrote something");

    let invited = send(store, join("r", epoch, "a", "c", "j3")).await.delivery;
    assert_eq!((invited.entry.from.as_str(), invited.entry.user.as_deref()), ("a", Some("c")));
    assert_eq!(recipient_names(&invited), names(&["a", "c"]));
    assert!(store.is_member("r", "c").await.expect("is member"));
    assert_eq!(whole_log(store, "c").await.last().map(|e| e.entry.clone()), Some(invited.entry));

    // A public room takes self-joins.
    let public = room_with(store, "p", &["a"], false).await;
    send(store, join("p", public, "b", "b", "j4")).await;
    assert!(store.is_member("p", "b").await.expect("is member"));
}

/// Joining, or being invited, while a member fails and writes nothing.
pub async fn joining_twice_is_already_member(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let before = footprint(store, "r", &["a", "b"]).await;
    let already = StoreError::AlreadyMember { room: "r".into(), user: "b".into() };
    assert_eq!(refused(store, join("r", epoch, "b", "b", "j1")).await, already);
    assert_eq!(refused(store, join("r", epoch, "a", "b", "j2")).await, already);
    assert_eq!(footprint(store, "r", &["a", "b"]).await, before);
}

/// The member limit of a room and the room limit of a user hold, and refusals write nothing.
pub async fn room_full_and_too_many_rooms(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c", "d"]).await;
    let epoch = room_with(store, "r", &["a"], false).await;
    let two = MembershipLimits { max_room_members: 2, max_rooms_per_user: 1_000, fanout_max_members: 1_000 };
    send(store, AppendRequest { limits: two, ..join("r", epoch, "b", "b", "j1") }).await;
    let before = footprint(store, "r", &["a", "b", "c"]).await;
    let full = StoreError::RoomFull { room: "r".into(), limit: 2 };
    assert_eq!(refused(store, AppendRequest { limits: two, ..join("r", epoch, "c", "c", "j2") }).await, full);
    assert_eq!(refused(store, AppendRequest { limits: two, ..join("r", epoch, "a", "c", "j3") }).await, full);
    assert_eq!(footprint(store, "r", &["a", "b", "c"]).await, before);

    let other = room_with(store, "o", &["d"], false).await;
    let one = MembershipLimits { max_room_members: 1_000, max_rooms_per_user: 1, fanout_max_members: 1_000 };
    let before = footprint(store, "o", &["a", "d"]).await;
    let too_many = StoreError::TooManyRooms { user: "a".into(), limit: 1 };
    assert_eq!(refused(store, AppendRequest { limits: one, ..join("o", other, "a", "a", "j4") }).await, too_many);
    assert_eq!(refused(store, AppendRequest { limits: one, ..join("o", other, "d", "a", "j5") }).await, too_many);
    assert_eq!(footprint(store, "o", &["a", "d"]).await, before);
}

/// A leave reaches the leaver's log too (their other devices learn of it); after it the leaver
/// is no member, cannot send or leave again, and gets nothing more.
pub async fn leave_reaches_the_leaver_then_ends_membership(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let left = send(store, leave("r", epoch, "b", "l1")).await.delivery;
    assert_eq!((left.entry.kind, left.entry.user.as_deref()), (EntryKind::Leave, Some("b")));
    assert_eq!(recipient_names(&left), names(&["a", "b"]));
    assert_delivered(store, &left).await;
    assert_eq!(whole_log(store, "b").await.last().map(|e| e.entry.clone()), Some(left.entry.clone()));

    assert!(!store.is_member("r", "b").await.expect("is member"));
    assert_eq!(store.members("r").await.expect("members"), vec!["a"]);
    assert_eq!(store.room("r").await.expect("room").expect("exists").members, 1);
    assert!(store.rooms_of("b").await.expect("rooms").is_empty());

    let not_member = StoreError::NotMember { room: "r".into(), user: "b".into() };
    assert_eq!(refused(store, text("r", epoch, "b", "m1", "still here?")).await, not_member);
    assert_eq!(refused(store, leave("r", epoch, "b", "l2")).await, not_member);
    let b_head = store.user_log_bounds("b").await.expect("bounds").head;
    send(store, text("r", epoch, "a", "m2", "after b left")).await;
    assert_eq!(store.user_log_bounds("b").await.expect("bounds").head, b_head);
}

/// Only members send.
pub async fn non_member_cannot_send(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "c"]).await;
    let epoch = room_with(store, "r", &["a"], false).await;
    let before = footprint(store, "r", &["a", "c"]).await;
    let err = refused(store, text("r", epoch, "c", "m1", "let me in")).await;
    assert_eq!(err, StoreError::NotMember { room: "r".into(), user: "c".into() });
    assert_eq!(footprint(store, "r", &["a", "c"]).await, before);
}

/// Refused appends running alongside successful ones (in one group commit, for backends that
/// batch) fail alone: the others commit with a dense seq, and no refused one leaves a trace.
pub async fn refused_appends_do_not_disturb_others(store: Arc<dyn Store>) {
    const EACH: usize = 25;
    users(store.as_ref(), &["a", "b", "outsider"]).await;
    let epoch = room_with(store.as_ref(), "r", &["a", "b"], false).await;
    let start = last_seq(store.as_ref(), "r").await;
    send(store.as_ref(), text("r", epoch, "a", "retried", "once")).await;

    let mut tasks = Vec::new();
    for task in 0..6usize {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for n in 0..EACH {
                let request = match task {
                    0 | 1 => text("r", epoch, if task == 0 { "a" } else { "b" }, &format!("ok{task}-{n}"), "x"),
                    2 => text("r", epoch, "outsider", &format!("no{n}"), "x"),
                    3 => join("r", epoch, "a", "b", &format!("again{n}")),
                    4 => text("r", epoch, "a", "retried", "once"),
                    _ => text("r", epoch, "ghost", &format!("ghost{n}"), "x"),
                };
                outcomes.push(store.append(request).await);
            }
            (task, outcomes)
        }));
    }
    let mut committed = Vec::new();
    for handle in tasks {
        let (task, outcomes) = handle.await.expect("task");
        for outcome in outcomes {
            match (task, outcome) {
                (0 | 1, Ok(appended)) if !appended.duplicate => committed.push(appended.delivery.entry.seq),
                (2, Err(StoreError::NotMember { .. })) => {}
                (3, Err(StoreError::AlreadyMember { .. })) => {}
                (4, Ok(appended)) if appended.duplicate && appended.delivery.entry.seq == start + 1 => {}
                (5, Err(StoreError::NotMember { .. } | StoreError::NoSuchUser(_))) => {}
                (task, outcome) => panic!("task {task}: unexpected outcome {outcome:?}"),
            }
        }
    }
    committed.sort_unstable();
    let total = 2 * EACH as u64;
    assert_eq!(committed, (start + 2..=start + 1 + total).collect::<Vec<_>>());
    let history = whole_history(store.as_ref(), "r").await;
    assert_eq!(seqs(&history), (1..=start + 1 + total).collect::<Vec<_>>());
    assert!(history.iter().all(|e| e.from != "outsider" && e.from != "ghost"));
    assert_eq!(history.iter().filter(|e| e.id == "retried").count(), 1);
    assert!(whole_log(store.as_ref(), "outsider").await.is_empty());
    assert_eq!(store.members("r").await.expect("members"), vec!["a", "b"]);
}

/// `append_batch` has the effect of its appends one after another: seqs follow on, each
/// refusal is that append's alone, a duplicate in the batch (of an earlier send or of one in
/// the same batch) returns the original, a join's member is a recipient of what follows it
/// and a leaver is not, and every recipient's log holds each entry once.
pub async fn a_batch_is_its_appends_one_after_another(store: Arc<dyn Store>) {
    users(store.as_ref(), &["a", "b", "c", "outsider"]).await;
    let epoch = room_with(store.as_ref(), "r", &["a", "b"], false).await;
    let start = last_seq(store.as_ref(), "r").await;
    let first = send(store.as_ref(), text("r", epoch, "a", "earlier", "before the batch")).await;
    let batch = vec![
        text("r", epoch, "a", "m1", "one"),
        text("r", epoch, "outsider", "x1", "refused"),
        text("r", epoch, "a", "earlier", "before the batch"),
        join("r", epoch, "a", "c", "join-c"),
        text("r", epoch, "c", "m2", "from the joiner"),
        text("r", epoch, "a", "m1", "one"),
        leave("r", epoch, "b", "leave-b"),
        text("r", epoch, "a", "m3", "after b left"),
        text("r", epoch - 1, "a", "stale", "fenced"),
    ];
    let outcomes = store.append_batch(batch).await;
    assert_eq!(outcomes.len(), 9);
    let seq_of = |i: usize| match &outcomes[i] {
        Ok(appended) if !appended.duplicate => appended.delivery.entry.seq,
        other => panic!("append {i} is not a new entry: {other:?}"),
    };
    assert_eq!(seq_of(0), start + 2);
    assert!(matches!(outcomes[1], Err(StoreError::NotMember { .. })), "{:?}", outcomes[1]);
    let retried = outcomes[2].as_ref().expect("a retry of an earlier send");
    assert!(retried.duplicate && retried.delivery.entry.seq == first.delivery.entry.seq);
    assert_eq!(seq_of(3), start + 3);
    assert_eq!(seq_of(4), start + 4);
    let again = outcomes[5].as_ref().expect("a retry within the batch");
    assert!(again.duplicate && again.delivery.entry.seq == start + 2);
    assert_eq!(seq_of(6), start + 5);
    assert_eq!(seq_of(7), start + 6);
    assert!(matches!(outcomes[8], Err(StoreError::Fenced { .. })), "{:?}", outcomes[8]);
    for (i, outcome) in outcomes.iter().enumerate() {
        if let Ok(appended) = outcome {
            if !appended.duplicate {
                assert_delivered(store.as_ref(), &appended.delivery).await;
                let recipients: BTreeSet<&str> = appended.delivery.recipients.users().collect();
                let expected: BTreeSet<&str> = match i {
                    0 => ["a", "b"].into(),
                    3 | 4 | 6 => ["a", "b", "c"].into(),
                    _ => ["a", "c"].into(),
                };
                assert_eq!(recipients, expected, "recipients of append {i}");
            }
        }
    }
    let history = whole_history(store.as_ref(), "r").await;
    assert_eq!(seqs(&history), (1..=start + 6).collect::<Vec<_>>());
    assert_eq!(history.iter().filter(|e| e.id == "m1").count(), 1);
    assert_eq!(member_set(store.as_ref(), "r").await, BTreeSet::from(["a".to_string(), "c".to_string()]));
    for user in ["a", "b", "c"] {
        let log = whole_log(store.as_ref(), user).await;
        let cursors: Vec<u64> = log.iter().map(|entry| entry.cursor).collect();
        assert_eq!(cursors, (1..=cursors.len() as u64).collect::<Vec<_>>(), "{user}'s log is dense");
    }
}

// Reading logs.

/// Room history pages both ways, oldest first within a page, with `more` telling whether
/// entries lie beyond the page in its direction.
pub async fn history_pages_both_ways(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a"]).await;
    let epoch = room_with(store, "r", &["a"], false).await;
    for n in 2..=25 {
        let entry = send(store, text("r", epoch, "a", &format!("m{n}"), &format!("body {n}"))).await.delivery.entry;
        assert_eq!(entry.seq, n);
    }
    let page = |page: HistoryPage, limit: u32| async move {
        let (entries, more) = store.history("r", page, limit).await.expect("history");
        (seqs(&entries), more)
    };
    let range = |from: u64, to: u64| (from..=to).collect::<Vec<u64>>();
    use HistoryPage::{After, Before};

    assert_eq!(page(After(0), 10).await, (range(1, 10), true));
    assert_eq!(page(After(10), 10).await, (range(11, 20), true));
    assert_eq!(page(After(15), 10).await, (range(16, 25), false), "exactly a page left");
    assert_eq!(page(After(20), 10).await, (range(21, 25), false));
    assert_eq!(page(After(25), 10).await, (vec![], false));
    assert_eq!(page(After(u64::MAX), 10).await, (vec![], false));

    assert_eq!(page(Before(26), 10).await, (range(16, 25), true));
    assert_eq!(page(Before(16), 10).await, (range(6, 15), true));
    assert_eq!(page(Before(11), 10).await, (range(1, 10), false), "exactly a page left");
    assert_eq!(page(Before(6), 10).await, (range(1, 5), false));
    assert_eq!(page(Before(1), 10).await, (vec![], false));
    assert_eq!(page(Before(u64::MAX), 3).await, (range(23, 25), true));

    assert_eq!(page(After(0), 0).await, (vec![], true));
    assert_eq!(page(Before(1), 0).await, (vec![], false));

    let (entries, _) = store.history("r", After(4), 1).await.expect("history");
    assert_eq!((entries[0].id.as_str(), entries[0].body.as_str(), entries[0].from.as_str()), ("m5", "body 5", "a"));
    assert_eq!((entries[0].kind, entries[0].ts, entries[0].room.as_str()), (EntryKind::Text, TS + 1, "r"));
}

/// A user's log pages by cursor, oldest first, and the pages join up without gap or overlap.
pub async fn user_log_pages_by_cursor(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    for n in 3..=25 {
        send(store, text("r", epoch, if n % 2 == 0 { "a" } else { "b" }, &format!("m{n}"), "x")).await;
    }
    let page =
        |after: Cursor, limit: u32| async move { cursors(&store.user_log("a", after, limit).await.expect("log")) };
    assert_eq!(page(0, 10).await, (1..=10).collect::<Vec<_>>());
    assert_eq!(page(10, 10).await, (11..=20).collect::<Vec<_>>());
    assert_eq!(page(20, 10).await, (21..=25).collect::<Vec<_>>());
    assert_eq!(page(25, 10).await, Vec::<u64>::new());
    assert_eq!(page(1_000, 10).await, Vec::<u64>::new());
    assert_eq!(page(0, 0).await, Vec::<u64>::new());

    let log = whole_log(store, "a").await;
    assert!(is_dense(cursors(&log)));
    let entries: Vec<Entry> = log.into_iter().map(|e| e.entry).collect();
    assert_eq!(entries, whole_history(store, "r").await);
    assert_eq!(store.user_log_bounds("a").await.expect("bounds"), LogBounds { floor: 0, head: 25 });
}

/// Trimming drops a prefix of the log and raises the floor; it never lowers the floor, never
/// goes past the head, and new entries continue the cursor.
pub async fn trim_raises_the_floor(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    for n in 3..=25 {
        send(store, text("r", epoch, "a", &format!("m{n}"), "x")).await;
    }
    assert_eq!(store.trim_user_log("a", 10).await, Ok(10));
    assert_eq!(store.user_log_bounds("a").await.expect("bounds"), LogBounds { floor: 10, head: 25 });
    assert_eq!(cursors(&store.user_log("a", 0, 100).await.expect("log")), (11..=25).collect::<Vec<_>>());
    assert_eq!(cursors(&store.user_log("a", 12, 2).await.expect("log")), vec![13, 14]);

    assert_eq!(store.trim_user_log("a", 5).await, Ok(0), "the floor never goes down");
    assert_eq!(store.user_log_bounds("a").await.expect("bounds").floor, 10);
    assert_eq!(store.trim_user_log("a", 1_000).await, Ok(15), "trimming stops at the head");
    assert_eq!(store.user_log_bounds("a").await.expect("bounds"), LogBounds { floor: 25, head: 25 });
    assert!(store.user_log("a", 0, 100).await.expect("log").is_empty());

    let next = send(store, text("r", epoch, "b", "after-trim", "x")).await.delivery;
    assert_eq!(cursor_of(&next, "a"), 26, "cursor continues after a trim: {next:?}");
    assert_eq!(store.user_log_bounds("a").await.expect("bounds"), LogBounds { floor: 25, head: 26 });
    assert_eq!(cursors(&store.user_log("a", 0, 100).await.expect("log")), vec![26]);

    assert_eq!(store.user_log_bounds("b").await.expect("bounds"), LogBounds { floor: 0, head: 26 }, "b untouched");
    assert_eq!(whole_history(store, "r").await.len(), 26, "trimming a user log keeps the room log");
}

// Read positions.

/// Read positions only rise, never past the room's newest entry, per user and room.
pub async fn mark_read_is_monotonic_and_clamped(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    for n in 0..5 {
        send(store, text("r", epoch, "b", &format!("m{n}"), "x")).await;
    }
    let last = last_seq(store, "r").await;
    assert_eq!(store.mark_read("a", "r", 3).await, Ok(3));
    assert_eq!(store.mark_read("a", "r", 2).await, Ok(3), "read positions never go down");
    assert_eq!(store.mark_read("a", "r", last + 100).await, Ok(last), "clamped to the last seq");
    assert_eq!(store.mark_read("a", "r", 0).await, Ok(last));
    let read_of = |user: &'static str| async move {
        store.rooms_of(user).await.expect("rooms").into_iter().find(|r| r.room.id == "r").map(|r| r.read_seq)
    };
    assert_eq!(read_of("a").await, Some(last));
    assert_eq!(read_of("b").await, Some(0), "read positions are per user");

    send(store, text("r", epoch, "b", "m-last", "x")).await;
    assert_eq!(store.mark_read("a", "r", u64::MAX).await, Ok(last + 1));
    let not_member = StoreError::NotMember { room: "r".into(), user: "c".into() };
    assert_eq!(store.mark_read("c", "r", 1).await, Err(not_member));
}

/// `rooms_of` lists the user's rooms as stored, with the user's read position in each.
pub async fn rooms_of_lists_memberships_with_read_positions(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let e1 = room_with(store, "r1", &["a"], false).await;
    room_with(store, "r2", &["b", "a"], true).await;
    send(store, text("r1", e1, "a", "m1", "x")).await;
    store.mark_read("a", "r2", 1).await.expect("mark read");

    let mut mine = store.rooms_of("a").await.expect("rooms");
    mine.sort_by(|x, y| x.room.id.cmp(&y.room.id));
    assert_eq!(mine.len(), 2);
    assert_eq!(Some(mine[0].room.clone()), store.room("r1").await.expect("room"));
    assert_eq!(Some(mine[1].room.clone()), store.room("r2").await.expect("room"));
    assert_eq!((mine[0].read_seq, mine[1].read_seq), (0, 1));
    assert_eq!(store.rooms_of("b").await.expect("rooms").len(), 1);
    assert!(store.rooms_of("c").await.expect("rooms").is_empty());

    send(store, leave("r1", e1, "a", "l1")).await;
    let mine = store.rooms_of("a").await.expect("rooms");
    assert_eq!(mine.iter().map(|r| r.room.id.as_str()).collect::<Vec<_>>(), vec!["r2"]);
}

/// `read_positions` lists the room's current members by name with the position each stored (0
/// for never marked, clamped as `mark_read` stored it); a member who left is gone from it.
pub async fn read_positions_list_members_by_name(store: Arc<dyn Store>) {
    let store = store.as_ref();
    // Created out of name order, with a name that prefixes another and one outside ASCII, so a
    // list in join or creation order, or sorted by anything but the name's bytes, fails.
    users(store, &["dave", "bob", "bobby", "ada", "\u{e9}lodie", "carl"]).await;
    let epoch = room_with(store, "r", &["dave", "bob", "\u{e9}lodie", "bobby"], false).await;
    send(store, join("r", epoch, "ada", "ada", "j1")).await;
    room_with(store, "other", &["carl"], false).await;
    for n in 0..3 {
        send(store, text("r", epoch, "dave", &format!("m{n}"), "x")).await;
    }
    let last = last_seq(store, "r").await;
    let list = |pairs: &[(&str, u64)]| pairs.iter().map(|(u, s)| ((*u).to_owned(), *s)).collect::<Vec<_>>();
    assert_eq!(
        store.read_positions("r").await,
        Ok(list(&[("ada", 0), ("bob", 0), ("bobby", 0), ("dave", 0), ("\u{e9}lodie", 0)])),
        "nobody has marked anything yet"
    );

    assert_eq!(store.mark_read("bob", "r", 2).await, Ok(2));
    assert_eq!(store.mark_read("ada", "r", last + 100).await, Ok(last), "clamped to the last seq");
    assert_eq!(store.mark_read("bob", "r", 1).await, Ok(2), "never lowered");
    assert_eq!(
        store.read_positions("r").await,
        Ok(list(&[("ada", last), ("bob", 2), ("bobby", 0), ("dave", 0), ("\u{e9}lodie", 0)])),
        "positions as mark_read stored them"
    );

    send(store, leave("r", epoch, "bob", "l1")).await;
    assert_eq!(
        store.read_positions("r").await,
        Ok(list(&[("ada", last), ("bobby", 0), ("dave", 0), ("\u{e9}lodie", 0)])),
        "a member who left is not listed"
    );
    assert_eq!(store.read_positions("other").await, Ok(list(&[("carl", 0)])), "only the room's own members");
    // The position ended with the membership: rejoining starts unread.
    send(store, join("r", epoch, "bob", "bob", "j2")).await;
    assert_eq!(store.read_positions("r").await.expect("read positions")[1], ("bob".to_owned(), 0));

    // Everyone leaves: the room still exists, with nobody to list.
    for user in ["ada", "bob", "bobby", "dave", "\u{e9}lodie"] {
        send(store, leave("r", epoch, user, &format!("l-{user}"))).await;
    }
    assert_eq!(store.read_positions("r").await, Ok(Vec::new()));
    assert_eq!(store.read_positions("nowhere").await, Err(StoreError::NoSuchRoom("nowhere".into())));
}

// Large rooms.

/// Limits under which a room of three or more members is large.
pub(crate) const SMALL_FANOUT: MembershipLimits = MembershipLimits { fanout_max_members: 2, ..LIMITS };

pub(crate) fn with_limits(request: AppendRequest, limits: MembershipLimits) -> AppendRequest {
    AppendRequest { limits, ..request }
}

/// The join that takes a room past `fanout_max_members` makes it large from that entry on:
/// later entries reach no user log and the store names no recipients (the room's owner tracks
/// the members, from `members` and its own joins and leaves; room.rs tests who gets what);
/// earlier ones stay where they were; the room stays large when members leave; `rooms_of`
/// tells each member where it stands.
pub async fn large_rooms_keep_later_entries_in_the_room_log_only(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c", "d"]).await;
    let epoch = room_with(store, "r", &["a", "b"], false).await;
    let small = send(store, with_limits(text("r", epoch, "a", "m1", "small"), SMALL_FANOUT)).await.delivery;
    assert_delivered(store, &small).await;
    assert_eq!(store.room("r").await.expect("room").expect("exists").large_since, None);
    let before = heads(store, &["a", "b", "c"]).await;

    let joined = send(store, with_limits(join("r", epoch, "c", "c", "j-c"), SMALL_FANOUT)).await.delivery;
    assert_eq!(joined.entry.seq, 4);
    assert_eq!(joined.recipients, Recipients::Unnamed, "no user log got it: {joined:?}");
    assert_eq!(member_set(store, "r").await, names(&["a", "b", "c"]), "the joiner and everyone before");
    let record = store.room("r").await.expect("room").expect("exists");
    assert_eq!(record.large_since, Some(4), "large from the join that passed the limit");

    let m2 = send(store, with_limits(text("r", epoch, "b", "m2", "large"), SMALL_FANOUT)).await.delivery;
    assert_eq!(m2.recipients, Recipients::Unnamed);
    assert_eq!(heads(store, &["a", "b", "c"]).await, before, "user logs untouched by a large room");
    assert!(whole_log(store, "c").await.is_empty(), "c's log never got the large room's entries");
    assert_eq!(seqs(&whole_history(store, "r").await), vec![1, 2, 3, 4, 5], "the room log has everything");

    // Where each member stands, for a resume: joined at, read up to, large since.
    store.mark_read("a", "r", 5).await.expect("mark read");
    let of = |rooms: Vec<MyRoom>| rooms.into_iter().find(|r| r.room.id == "r").expect("member of r");
    let a = of(store.rooms_of("a").await.expect("rooms"));
    assert_eq!((a.room.large_since, a.read_seq, a.joined_seq), (Some(4), 5, 1));
    let c = of(store.rooms_of("c").await.expect("rooms"));
    assert_eq!((c.room.large_since, c.read_seq, c.joined_seq), (Some(4), 0, 4));

    // Leaving: the leaver still gets the leave; the room stays large below the limit.
    let left = send(store, with_limits(leave("r", epoch, "c", "l-c"), SMALL_FANOUT)).await.delivery;
    assert_eq!(left.recipients, Recipients::Unnamed);
    assert_eq!(member_set(store, "r").await, names(&["a", "b"]));
    let after = send(store, with_limits(text("r", epoch, "a", "m3", "still"), SMALL_FANOUT)).await.delivery;
    assert_eq!(after.recipients, Recipients::Unnamed, "a large room stays large");
    assert_eq!(store.room("r").await.expect("room").expect("exists").large_since, Some(4));
    assert_eq!(heads(store, &["a", "b", "c"]).await, before);

    // Other rooms of the same users are not affected.
    let other = room_with(store, "s", &["a", "d"], false).await;
    let m = send(store, with_limits(text("s", other, "d", "s1", "x"), SMALL_FANOUT)).await.delivery;
    assert_delivered(store, &m).await;
}

/// A room created with more members than the limit is large from its first entry.
pub async fn a_room_created_large_writes_no_pointers(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    let (record, deliveries) =
        store.create_room(new_room("r", &["a", "b", "c"], false), SMALL_FANOUT).await.expect("create room");
    assert_eq!(record.large_since, Some(1));
    let deliveries = deliveries.expect("created");
    assert_eq!(deliveries.len(), 3);
    for delivery in &deliveries {
        // No owner yet: the creation names every initial member itself.
        assert!(matches!(delivery.recipients, Recipients::Members(_)), "in no user log: {delivery:?}");
        assert_eq!(recipient_names(delivery), names(&["a", "b", "c"]), "every join reaches all initial members");
    }
    assert_eq!(heads(store, &["a", "b", "c"]).await, vec![LogBounds::default(); 3]);
    assert_eq!(store.room("r").await.expect("room").expect("exists").large_since, Some(1));
    // Exactly at the limit is not large.
    let (record, _) = store.create_room(new_room("s", &["a", "b"], false), SMALL_FANOUT).await.expect("create");
    assert_eq!(record.large_since, None);
}

/// Idempotent sends hold in large rooms too: a retry gets the original and writes nothing.
pub async fn a_duplicate_in_a_large_room_returns_the_original(store: Arc<dyn Store>) {
    let store = store.as_ref();
    users(store, &["a", "b", "c"]).await;
    store.create_room(new_room("r", &["a", "b", "c"], false), SMALL_FANOUT).await.expect("create room");
    let epoch = store.claim_room("r", "node-1").await.expect("claim");
    let first = send(store, with_limits(text("r", epoch, "a", "m1", "once"), SMALL_FANOUT)).await;
    let again = store.append(with_limits(text("r", epoch, "a", "m1", "once"), SMALL_FANOUT)).await.expect("retry");
    assert!(again.duplicate);
    assert_eq!(again.delivery.entry, first.delivery.entry);
    assert_eq!(seqs(&whole_history(store, "r").await), vec![1, 2, 3, 4]);
}
