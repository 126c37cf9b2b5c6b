//! wit-shards' integration tests, one binary (one link, one copy of the dependencies on disk) with a module per
//! concern.

mod common;

mod atomic;
mod corrupt;
mod interop;
mod roundtrip;
