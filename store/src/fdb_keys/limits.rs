//! FoundationDB's limits as code: size accounting for writes, page and retention arithmetic,
//! and the sorting of FoundationDB errors into retryable and not.
//!
//! FoundationDB refuses keys over 10,000 bytes, values over 100,000 bytes and transactions over
//! 10 MB (docs/STORAGE.md §Limits). palaver stays well inside them: it budgets a transaction at
//! 1 MB, as FoundationDB's documentation advises for latency, and checks every write before
//! sending it, so an oversized request fails with a clear message naming the limit instead of a
//! `transaction_too_large` from the cluster after the work was done.

use super::layout::KeyRange;
use crate::{HistoryPage, StoreError};

/// FoundationDB's hard limit on a key.
pub const KEY_BYTES_MAX: usize = 10_000;
/// FoundationDB's hard limit on a value.
pub const VALUE_BYTES_MAX: usize = 100_000;
/// palaver's budget for one transaction's mutations and conflict ranges (FoundationDB's hard
/// limit is 10 MB; its documentation advises staying under 1 MB).
pub const TRANSACTION_BYTES_BUDGET: usize = 1_000_000;
/// Most rows one page read returns, whatever the caller asks, so one page (a range read plus
/// one point read per row) stays well inside the 5 s a transaction may live. Callers page on
/// from the last key they got, so a smaller page than asked costs a round trip, never a gap.
pub const PAGE_ROWS_MAX: usize = 1_000;
/// Automatic retention trims a user's log only when its head reaches a multiple of this (the
/// SQLite backend's rule too): one range clear per 64 appends, and between trims a log holds at
/// most `user_log_max_entries + TRIM_PERIOD - 1` entries.
pub const TRIM_PERIOD: u64 = 64;
/// How far back from a user's head the recovery after `commit_unknown_result` looks for the
/// pointer its own earlier attempt wrote (see `ops`). The retry runs milliseconds after the
/// commit, so the pointer is among the newest few unless the user receives hundreds of
/// entries in those milliseconds.
pub const RECOVERY_SCAN_ROWS: usize = 256;

/// One mutation of a [`WriteSet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    Set { key: Vec<u8>, value: Vec<u8> },
    Clear { key: Vec<u8> },
    ClearRange(KeyRange),
}

/// The writes of one transaction, collected before any is sent, with their size as FoundationDB
/// counts it: each mutation's key and value bytes plus its write conflict range (begin and end
/// key), plus the read conflict ranges of the reads that preceded them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteSet {
    mutations: Vec<Mutation>,
    bytes: usize,
    /// The first limit a mutation broke; reported by [`WriteSet::check`].
    violation: Option<String>,
}

impl WriteSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Count a point read's conflict range (`key` to `key\x00`).
    pub fn read(&mut self, key: &[u8]) {
        self.bytes += 2 * key.len() + 1;
    }

    /// Count a range read's conflict range.
    pub fn read_range(&mut self, range: &KeyRange) {
        self.bytes += range.begin.len() + range.end.len();
    }

    pub fn set(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.check_key(&key);
        if value.len() > VALUE_BYTES_MAX && self.violation.is_none() {
            self.violation = Some(format!(
                "a value of {} bytes exceeds FoundationDB's limit of {VALUE_BYTES_MAX} bytes",
                value.len()
            ));
        }
        // The mutation, then its write conflict range [key, key\x00).
        self.bytes += key.len() + value.len() + 2 * key.len() + 1;
        self.mutations.push(Mutation::Set { key, value });
    }

    pub fn clear(&mut self, key: Vec<u8>) {
        self.check_key(&key);
        self.bytes += key.len() + 2 * key.len() + 1;
        self.mutations.push(Mutation::Clear { key });
    }

    pub fn clear_range(&mut self, range: KeyRange) {
        self.check_key(&range.begin);
        self.check_key(&range.end);
        self.bytes += 2 * (range.begin.len() + range.end.len());
        self.mutations.push(Mutation::ClearRange(range));
    }

    fn check_key(&mut self, key: &[u8]) {
        if key.len() > KEY_BYTES_MAX && self.violation.is_none() {
            self.violation =
                Some(format!("a key of {} bytes exceeds FoundationDB's limit of {KEY_BYTES_MAX} bytes", key.len()));
        }
    }

    /// The transaction's size so far, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn mutations(&self) -> &[Mutation] {
        &self.mutations
    }

    pub fn into_mutations(self) -> Vec<Mutation> {
        self.mutations
    }

    /// Refuse a transaction that breaks a key or value limit or the transaction budget.
    /// `what` names the operation for the message.
    pub fn check(&self, what: &str) -> Result<(), StoreError> {
        if let Some(violation) = &self.violation {
            return Err(StoreError::Backend(format!("fdb: {what} refused: {violation}")));
        }
        if self.bytes > TRANSACTION_BYTES_BUDGET {
            return Err(StoreError::Backend(format!(
                "fdb: {what} refused: its transaction would write {} bytes, over the budget of \
                 {TRANSACTION_BYTES_BUDGET} bytes (a room this large must be a large room, merged \
                 at read time: lower limits.fanout_max_members; see docs/STORAGE.md)",
                self.bytes
            )));
        }
        Ok(())
    }
}

/// Rows to ask for when the caller asked for `limit`: never zero rows of work for a non-zero
/// ask, never more than [`PAGE_ROWS_MAX`].
pub fn page_rows(limit: u32) -> usize {
    (limit as usize).min(PAGE_ROWS_MAX)
}

/// Which room log entries a history page reads: seqs `first..end` (`end = None`: to the end),
/// read backwards for `Before`. `None` when the page is empty by construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryScan {
    pub first: u64,
    pub end: Option<u64>,
    pub reverse: bool,
}

pub fn history_scan(page: HistoryPage) -> Option<HistoryScan> {
    match page {
        // Seqs start at 1, so `Before(0)` and `Before(1)` hold nothing.
        HistoryPage::Before(n) if n <= 1 => None,
        HistoryPage::Before(n) => Some(HistoryScan { first: 1, end: Some(n), reverse: true }),
        HistoryPage::After(n) => n.checked_add(1).map(|first| HistoryScan { first, end: None, reverse: false }),
    }
}

/// Split the rows of a read that asked for one more row than `limit` into the page and whether
/// more lie beyond, and put the page oldest first (a `Before` page was read newest first).
pub fn split_page<T>(mut rows: Vec<T>, limit: usize, reversed: bool) -> (Vec<T>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    if reversed {
        rows.reverse();
    }
    (rows, more)
}

/// Which cursors a trim removes: `floor < c <= through'` with `through'` clamped to the head (a
/// floor above the head would claim entries were dropped that do not exist yet). `None` when
/// nothing is left to drop. The count is exact without reading, because cursors are dense.
pub fn trim_plan(floor: u64, head: u64, through: u64) -> Option<(u64, u64)> {
    let through = through.min(head);
    (through > floor).then(|| (through, through - floor))
}

/// The automatic retention rule applied after an append moved a user's head to `head`: trim
/// through `head - max_entries` when the head is a multiple of [`TRIM_PERIOD`] and more than
/// `max_entries` entries are held. `max_entries == 0` disables retention.
pub fn auto_trim_through(floor: u64, head: u64, max_entries: u64) -> Option<u64> {
    (max_entries > 0 && head.is_multiple_of(TRIM_PERIOD) && head - floor.min(head) > max_entries)
        .then(|| head - max_entries)
}

/// How a FoundationDB error reaches the rest of palaver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying later: the cluster is slow, busy, unreachable or was reconfigured.
    Unavailable,
    /// A fault: bad input, a limit, a client misconfiguration.
    Backend,
}

/// Sort a FoundationDB error code. `retryable` is FoundationDB's own `retryable` predicate for
/// the code; the listed codes are retryable in effect even where the predicate says no (they
/// end a transaction that the retry limit or the timeout stopped).
pub fn classify_fdb_error(code: i32, retryable: bool) -> ErrorClass {
    const UNAVAILABLE: &[i32] = &[
        1004, // timed_out
        1007, // transaction_too_old
        1009, // future_version
        1020, // not_committed: conflicts outlasted the retry limit
        1021, // commit_unknown_result, after the retry limit
        1031, // transaction_timed_out: the configured timeout, also how an unreachable cluster shows
        1037, // process_behind
        1038, // database_locked
        1039, // cluster_version_changed
    ];
    if retryable || UNAVAILABLE.contains(&code) {
        ErrorClass::Unavailable
    } else {
        ErrorClass::Backend
    }
}

/// The message of a FoundationDB error, with its code so an operator can look it up.
pub fn fdb_error_message(code: i32, retryable: bool, text: &str, doing: &str) -> StoreError {
    let message = format!("fdb error {code} while {doing}: {text}");
    match classify_fdb_error(code, retryable) {
        ErrorClass::Unavailable => StoreError::Unavailable(message),
        ErrorClass::Backend => StoreError::Backend(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_sets_count_like_foundationdb() {
        let mut w = WriteSet::new();
        w.set(b"key".to_vec(), b"value".to_vec());
        assert_eq!(w.bytes(), 3 + 5 + 7);
        w.read(b"ab");
        assert_eq!(w.bytes(), 15 + 5);
        w.clear(b"k".to_vec());
        assert_eq!(w.bytes(), 20 + 1 + 3);
        w.clear_range(KeyRange { begin: b"a".to_vec(), end: b"bb".to_vec() });
        assert_eq!(w.bytes(), 24 + 6);
        assert_eq!(w.mutations().len(), 3);
        w.check("test").unwrap();
    }

    #[test]
    fn oversize_values_keys_and_transactions_are_refused() {
        let mut w = WriteSet::new();
        w.set(b"k".to_vec(), vec![0; VALUE_BYTES_MAX]);
        w.check("append").unwrap();
        w.set(b"k2".to_vec(), vec![0; VALUE_BYTES_MAX + 1]);
        let err = w.check("append").unwrap_err();
        assert!(matches!(&err, StoreError::Backend(m) if m.contains("100000")), "{err}");

        let mut w = WriteSet::new();
        w.set(vec![1; KEY_BYTES_MAX + 1], b"v".to_vec());
        assert!(matches!(w.check("append"), Err(StoreError::Backend(m)) if m.contains("key of 10001 bytes")));

        // Many small writes: the budget, not a per-item limit, refuses them.
        let mut w = WriteSet::new();
        let mut n = 0;
        while w.bytes() <= TRANSACTION_BYTES_BUDGET {
            w.set(format!("pointer-{n}").into_bytes(), vec![0; 80]);
            n += 1;
        }
        assert!(matches!(w.check("append"), Err(StoreError::Backend(m)) if m.contains("budget")));
    }

    #[test]
    fn history_scans() {
        assert_eq!(history_scan(HistoryPage::Before(0)), None);
        assert_eq!(history_scan(HistoryPage::Before(1)), None);
        assert_eq!(history_scan(HistoryPage::Before(5)), Some(HistoryScan { first: 1, end: Some(5), reverse: true }));
        assert_eq!(history_scan(HistoryPage::After(0)), Some(HistoryScan { first: 1, end: None, reverse: false }));
        assert_eq!(history_scan(HistoryPage::After(u64::MAX)), None);
    }

    #[test]
    fn pages_split_at_the_limit_and_come_out_oldest_first() {
        // Forward read of limit + 1 rows.
        assert_eq!(split_page(vec![4, 5, 6], 2, false), (vec![4, 5], true));
        assert_eq!(split_page(vec![4, 5], 2, false), (vec![4, 5], false));
        // Backward read (newest first) of a `Before` page.
        assert_eq!(split_page(vec![9, 8, 7], 2, true), (vec![8, 9], true));
        assert_eq!(split_page(vec![2, 1], 5, true), (vec![1, 2], false));
        assert_eq!(split_page(Vec::<u64>::new(), 0, false), (vec![], false));
        assert_eq!(split_page(vec![1], 0, false), (vec![], true));
        assert_eq!(page_rows(u32::MAX), PAGE_ROWS_MAX);
        assert_eq!(page_rows(7), 7);
    }

    #[test]
    fn trims_clamp_to_the_head_and_count_exactly() {
        assert_eq!(trim_plan(0, 10, 4), Some((4, 4)));
        assert_eq!(trim_plan(4, 10, 4), None);
        assert_eq!(trim_plan(4, 10, 3), None);
        assert_eq!(trim_plan(4, 10, 99), Some((10, 6)));
        assert_eq!(trim_plan(10, 10, 99), None);
        assert_eq!(trim_plan(0, 0, u64::MAX), None);
    }

    #[test]
    fn automatic_retention_trims_every_period_only_past_the_limit() {
        assert_eq!(auto_trim_through(0, 64, 0), None, "0 disables retention");
        assert_eq!(auto_trim_through(0, 64, 64), None, "exactly full is kept");
        assert_eq!(auto_trim_through(0, 64, 10), Some(54));
        assert_eq!(auto_trim_through(0, 63, 10), None, "only at multiples of the period");
        assert_eq!(auto_trim_through(54, 128, 10), Some(118));
        assert_eq!(auto_trim_through(120, 128, 10), None);
    }

    #[test]
    fn errors_sort_into_retryable_and_faults() {
        for code in [1004, 1007, 1009, 1020, 1021, 1031, 1037, 1038, 1039] {
            assert_eq!(classify_fdb_error(code, false), ErrorClass::Unavailable, "{code}");
        }
        for code in [2101, 2102, 2103, 2000, 1500] {
            assert_eq!(classify_fdb_error(code, false), ErrorClass::Backend, "{code}");
        }
        assert_eq!(classify_fdb_error(1213, true), ErrorClass::Unavailable);
        assert!(matches!(
            fdb_error_message(1031, false, "Operation aborted because the transaction timed out", "append"),
            StoreError::Unavailable(m) if m == "fdb error 1031 while append: Operation aborted because the transaction timed out"
        ));
        assert!(matches!(
            fdb_error_message(2101, false, "Transaction exceeds byte limit", "append"),
            StoreError::Backend(_)
        ));
    }
}
