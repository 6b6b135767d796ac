//! placeholder, written by the sqlite backend work
