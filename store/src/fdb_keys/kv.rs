//! The seam between the store logic and FoundationDB: an ordered key-value transaction.
//!
//! The operations in `ops` are written against [`KvTxn`] and [`KvDb`] instead of the
//! `foundationdb` crate, for one reason: so they compile and run in the default build, where
//! no FoundationDB client library exists. The `fdb` module implements the two traits over
//! `foundationdb::Database::run`; the tests implement them over an in-memory ordered map
//! (`mem`) and run the store conformance suite and the `commit_unknown_result` scenarios
//! against it. What the in-memory map cannot show (FoundationDB's conflict detection, its
//! timeouts, the client library itself) is listed in docs/STORAGE.md §Verification.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use async_trait::async_trait;

use super::layout::KeyRange;
use super::limits::{Mutation, WriteSet};
use super::tuple::printable;
use super::values::CodecError;
use crate::{StoreError, StoreResult};

/// Which attempt of a transaction this is, as far as the logic needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Attempt {
    /// A previous attempt's commit ended in `commit_unknown_result`: it may have been applied.
    /// The logic then looks for its own earlier write before writing again.
    pub maybe_committed: bool,
}

/// Why an attempt stopped: an answer for the caller ([`StoreError`], nothing is written), or an
/// error of the key-value backend that its runner decides to retry or report.
#[derive(Debug)]
pub enum TxnError<E> {
    Store(StoreError),
    Kv(E),
}

impl<E> From<StoreError> for TxnError<E> {
    fn from(e: StoreError) -> Self {
        TxnError::Store(e)
    }
}

pub type TxnResult<T, E> = Result<T, TxnError<E>>;

/// A value or key that does not decode is a fault of the store's contents, reported with the
/// key so an operator can find it with `fdbcli`.
pub fn corrupt<E>(key: &[u8], e: impl Into<CodecError>) -> TxnError<E> {
    TxnError::Store(StoreError::Backend(format!("fdb: corrupt data at key `{}`: {}", printable(key), e.into())))
}

/// One attempt of a transaction: serializable reads and buffered writes, read-your-writes.
/// Cheap to clone (a handle).
#[async_trait]
pub trait KvTxn: Clone + Send + Sync + 'static {
    /// The backend's own error, which its [`KvDb::transact`] may retry.
    type Error: Send + Sync + 'static;

    async fn get(&self, key: &[u8]) -> TxnResult<Option<Vec<u8>>, Self::Error>;

    /// Several point reads issued together: one round trip instead of one per key.
    async fn get_many(&self, keys: &[Vec<u8>]) -> TxnResult<Vec<Option<Vec<u8>>>, Self::Error>;

    /// The key-value pairs in `range`, in key order (or reversed), at most `limit` of them
    /// (`None`: all).
    async fn get_range(
        &self,
        range: &KeyRange,
        limit: Option<usize>,
        reverse: bool,
    ) -> TxnResult<Vec<(Vec<u8>, Vec<u8>)>, Self::Error>;

    fn set(&self, key: &[u8], value: &[u8]);
    fn clear(&self, key: &[u8]);
    fn clear_range(&self, range: &KeyRange);

    /// Send a checked [`WriteSet`].
    fn apply(&self, writes: WriteSet) {
        for mutation in writes.into_mutations() {
            match mutation {
                Mutation::Set { key, value } => self.set(&key, &value),
                Mutation::Clear { key } => self.clear(&key),
                Mutation::ClearRange(range) => self.clear_range(&range),
            }
        }
    }
}

/// A database that runs transactions: retries an attempt on the backend's retryable errors
/// (within its configured limits) and commits when the attempt returns `Ok`. An attempt that
/// returns [`TxnError::Store`] is not committed and its error is returned as is.
pub trait KvDb: Send + Sync + 'static {
    type Txn: KvTxn;

    /// The backend's short name, for [`Store::backend`](crate::Store::backend).
    const NAME: &'static str;

    /// Run `attempt` until it commits or fails for good. `doing` names the operation in error
    /// messages.
    fn transact<'a, T, F, Fut>(
        &'a self,
        doing: &'static str,
        attempt: F,
    ) -> impl Future<Output = StoreResult<T>> + Send + 'a
    where
        T: Send + 'a,
        F: Fn(Self::Txn, Attempt) -> Fut + Send + Sync + 'a,
        Fut: Future<Output = TxnResult<T, <Self::Txn as KvTxn>::Error>> + Send + 'a;
}

/// Await several reads of one transaction together, outputs in the order given: each read is
/// sent when first polled, and all are polled before any is awaited, so the lot costs one
/// round trip instead of one each (as [`KvTxn::get_many`] does for point reads).
pub async fn together<F: Future + Unpin>(reads: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<F>> = reads.into_iter().map(Some).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut waiting = false;
        for (slot, output) in pending.iter_mut().zip(outputs.iter_mut()) {
            if let Some(read) = slot {
                match Pin::new(read).poll(cx) {
                    Poll::Ready(value) => {
                        *output = Some(value);
                        *slot = None;
                    }
                    Poll::Pending => waiting = true,
                }
            }
        }
        if waiting {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    // Every slot was filled before the poll above returned `Ready`.
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_together_keep_their_order_and_all_finish() {
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let late: Pin<Box<dyn Future<Output = u32> + Send>> = Box::pin(async move { rx.await.unwrap_or(0) + 1 });
        let ready: Pin<Box<dyn Future<Output = u32> + Send>> = Box::pin(async { 7 });
        let joined = tokio::spawn(together(vec![late, ready]));
        tokio::task::yield_now().await;
        tx.send(41).expect("receiver alive");
        assert_eq!(joined.await.expect("joined"), vec![42, 7]);
        assert!(together(Vec::<Pin<Box<dyn Future<Output = u32> + Send>>>::new()).await.is_empty());
    }
}
