//! An in-memory [`KvDb`] for tests: the FoundationDB backend's logic without FoundationDB.
//!
//! Transactions run one at a time on a copy of an ordered map, which is trivially
//! serializable, and the copy replaces the map when the attempt succeeds. It can be told to
//! report `commit_unknown_result` after applying a commit, the way FoundationDB may, so the
//! tests can check that every write recognises its own earlier attempt.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::ops::Bound;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use super::kv::{Attempt, KvDb, KvTxn, TxnError, TxnResult};
use super::layout::KeyRange;
use crate::StoreResult;

type Map = BTreeMap<Vec<u8>, Vec<u8>>;

/// One attempt: a private copy of the whole map.
#[derive(Clone, Default)]
pub struct MemTxn {
    state: Arc<Mutex<Map>>,
    /// Bytes of its mutations as FoundationDB counts them roughly: key and value of each set,
    /// the key of each clear, both ends of each range clear.
    written: Arc<AtomicUsize>,
}

impl MemTxn {
    fn map(&self) -> MutexGuard<'_, Map> {
        // A panicking test poisons the lock; the map itself is still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl KvTxn for MemTxn {
    type Error = Infallible;

    async fn get(&self, key: &[u8]) -> TxnResult<Option<Vec<u8>>, Infallible> {
        Ok(self.map().get(key).cloned())
    }

    async fn get_many(&self, keys: &[Vec<u8>]) -> TxnResult<Vec<Option<Vec<u8>>>, Infallible> {
        let map = self.map();
        Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
    }

    async fn get_range(
        &self,
        range: &KeyRange,
        limit: Option<usize>,
        reverse: bool,
    ) -> TxnResult<Vec<(Vec<u8>, Vec<u8>)>, Infallible> {
        if range.is_empty() {
            return Ok(Vec::new());
        }
        let map = self.map();
        let bounds = (Bound::Included(range.begin.clone()), Bound::Excluded(range.end.clone()));
        let items = map.range::<Vec<u8>, _>(bounds).map(|(k, v)| (k.clone(), v.clone()));
        let limit = limit.unwrap_or(usize::MAX);
        Ok(if reverse { items.rev().take(limit).collect() } else { items.take(limit).collect() })
    }

    fn set(&self, key: &[u8], value: &[u8]) {
        self.written.fetch_add(key.len() + value.len(), Ordering::Relaxed);
        self.map().insert(key.to_vec(), value.to_vec());
    }

    fn clear(&self, key: &[u8]) {
        self.written.fetch_add(key.len(), Ordering::Relaxed);
        self.map().remove(key);
    }

    fn clear_range(&self, range: &KeyRange) {
        if range.is_empty() {
            return;
        }
        self.written.fetch_add(range.begin.len() + range.end.len(), Ordering::Relaxed);
        let mut map = self.map();
        let doomed: Vec<Vec<u8>> = map
            .range::<Vec<u8>, _>((Bound::Included(range.begin.clone()), Bound::Excluded(range.end.clone())))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            map.remove(&key);
        }
    }
}

/// The database: one map, one transaction at a time.
#[derive(Default)]
pub struct MemKv {
    data: tokio::sync::Mutex<Map>,
    /// Operations (by the name `ops` gives them) whose every commit applies and then reports
    /// an unknown result once.
    unknown_after: Mutex<Vec<&'static str>>,
    /// Commits that report an unknown result, counted per operation name.
    unknown_reported: AtomicU32,
    /// Every commit so far: the operation's name and the bytes its mutations wrote.
    commits: Mutex<Vec<(&'static str, usize)>>,
}

impl MemKv {
    /// Make every commit of the named operations apply and then run the attempt again with
    /// `maybe_committed`, as FoundationDB does after `commit_unknown_result`.
    pub fn report_unknown_results(&self, operations: &[&'static str]) {
        *self.unknown_after.lock().unwrap_or_else(|p| p.into_inner()) = operations.to_vec();
    }

    /// How many commits reported an unknown result so far.
    pub fn unknown_results_reported(&self) -> u32 {
        self.unknown_reported.load(Ordering::SeqCst)
    }

    /// The bytes written by each commit of operation `doing` so far, in commit order.
    pub fn commits_of(&self, doing: &str) -> Vec<usize> {
        let commits = self.commits.lock().unwrap_or_else(|p| p.into_inner());
        commits.iter().filter(|(name, _)| *name == doing).map(|(_, bytes)| *bytes).collect()
    }

    /// A copy of every key and value (for checks of what was written).
    pub async fn snapshot(&self) -> Map {
        self.data.lock().await.clone()
    }
}

impl KvDb for MemKv {
    type Txn = MemTxn;
    const NAME: &'static str = "fdb-logic-in-memory";

    async fn transact<'a, T, F, Fut>(&'a self, doing: &'static str, attempt: F) -> StoreResult<T>
    where
        T: Send + 'a,
        F: Fn(Self::Txn, Attempt) -> Fut + Send + Sync + 'a,
        Fut: Future<Output = TxnResult<T, Infallible>> + Send + 'a,
    {
        let mut data = self.data.lock().await;
        let mut state = Attempt::default();
        loop {
            let txn = MemTxn { state: Arc::new(Mutex::new(data.clone())), written: Arc::default() };
            match attempt(txn.clone(), state).await {
                Ok(value) => {
                    *data = std::mem::take(&mut *txn.map());
                    let written = txn.written.load(Ordering::Relaxed);
                    self.commits.lock().unwrap_or_else(|p| p.into_inner()).push((doing, written));
                    let unknown = !state.maybe_committed
                        && self.unknown_after.lock().unwrap_or_else(|p| p.into_inner()).contains(&doing);
                    if unknown {
                        self.unknown_reported.fetch_add(1, Ordering::SeqCst);
                        state.maybe_committed = true;
                        continue;
                    }
                    return Ok(value);
                }
                Err(TxnError::Store(e)) => return Err(e),
                Err(TxnError::Kv(never)) => match never {},
            }
        }
    }
}

/// Several stores (each its own subspace) on one map, as several deployments on one cluster.
impl KvDb for Arc<MemKv> {
    type Txn = MemTxn;
    const NAME: &'static str = MemKv::NAME;

    fn transact<'a, T, F, Fut>(
        &'a self,
        doing: &'static str,
        attempt: F,
    ) -> impl Future<Output = StoreResult<T>> + Send + 'a
    where
        T: Send + 'a,
        F: Fn(Self::Txn, Attempt) -> Fut + Send + Sync + 'a,
        Fut: Future<Output = TxnResult<T, Infallible>> + Send + 'a,
    {
        self.as_ref().transact(doing, attempt)
    }
}
