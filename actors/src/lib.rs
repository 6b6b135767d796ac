//! palaver's actors and store.
pub mod store;
