//! Everything of the FoundationDB backend that needs no FoundationDB: the key layout, the value
//! codec, the size limits, the configuration and the store logic itself.
//!
//! This module compiles in every build; only the thin adapter in `store::fdb` (cargo feature
//! `fdb`) links the FoundationDB client. The split exists so the logic is tested here, where no
//! FoundationDB server or client library can be installed: the unit tests below run the key
//! layout, the codec and the limits, and run the store logic (`ops`) over an in-memory ordered
//! map through the same [`kv::KvDb`] seam the adapter implements over FoundationDB.
//!
//! - `tuple`: FoundationDB's tuple encoding (the `foundationdb-tuple` crate), one element at a
//!   time, order-preserving;
//! - `layout`: [`Keyspace`], every key under the subspace `(prefix,)`;
//! - `values`: value types, each encoded as a format byte plus a tuple;
//! - `limits`: FoundationDB's key, value and transaction limits, page and retention
//!   arithmetic, the sorting of FoundationDB errors;
//! - `options`: [`FdbOptions`];
//! - `kv`: the transaction seam; `ops`: [`KvStore`], the [`Store`](super::Store) over it;
//!   `amend`: its messages that change (edits, deletes, reactions, replies, mentions);
//!   `moderate`: its roles, kicks, bans and mutes; `erase`: account deletion; `api_keys`: the
//!   server API's keys; `devices`: devices for push notifications; `webhooks`: webhook
//!   endpoints, their outboxes and leases; `media`: uploads' records and their indexes.
//!
//! docs/STORAGE.md describes the layout and the reasoning behind it.

mod amend;
mod api_keys;
mod devices;
mod erase;
pub mod kv;
pub mod layout;
pub mod limits;
mod media;
#[cfg(test)]
pub mod mem;
mod moderate;
pub mod ops;
pub mod options;
mod push;
pub mod tuple;
pub mod values;
mod webhooks;

pub use layout::{KeyRange, Keyspace, DEFAULT_SUBSPACE_PREFIX};
pub use ops::KvStore;
pub use options::FdbOptions;

#[cfg(test)]
mod tests;
