//! palaver's application core: the actors that carry chat traffic and the store they persist to.
//!
//! - [`hub`]: one per node; finds room actors and live connections by id.
//! - [`outbound`]: what is pushed to a live connection, and the queue it waits in.
//! - [`peers`]: the other nodes as the hub sees them (a trait the `cluster` crate implements).
//! - [`room`]: one actor per active room; the single, fenced writer of the room's log.
//! - [`session`]: one per connection; the protocol state machine, resume and live delivery.
//! - [`encoded`]: what goes on a client's socket: a message, and an entry of a large room
//!   encoded once for all the connections it goes to.
//! - [`requests`]: the handlers behind each client frame.
//! - [`presence`]: who is online, typing indicators and receipts, across the cluster.
//! - [`auth`]: passwords, tokens, login rate limits.
//!
//! The durable state lives in the `store` crate below this one (re-exported here as `store`, so
//! paths read `crate::store::…`); this crate holds caches of it, never the truth. HTTP and the
//! client WebSocket are the node crate's: it adapts WebSocket messages to [`encoded::Wire`].
//! The cluster (membership, placement, the inter-node router, node links over TCP and TLS) is
//! the `cluster` crate above this one: it implements [`peers::Peers`] and
//! [`presence::PresencePeers`] and calls into the hub, and nothing here imports it. See
//! ARCHITECTURE.md for the whole picture.

pub mod auth;
pub mod encoded;
pub mod hub;
pub mod lease;
pub mod limits;
pub mod media;
pub mod metrics;
pub mod names;
pub mod outbound;
pub mod peers;
pub mod presence;
pub mod push;
pub mod requests;
pub mod room;
pub mod session;
pub mod supervise;
pub mod trace_context;
pub mod webhooks;

pub use store;
