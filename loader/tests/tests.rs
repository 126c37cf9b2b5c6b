//! wit-loader's integration tests, one binary (one link, one copy of the dependencies on disk) with a module per
//! concern.

mod common;

mod http;
mod interop;
mod negatives;
mod order;
mod tokenizer;
mod transform;
