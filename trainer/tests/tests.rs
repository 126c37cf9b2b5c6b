//! wit-trainer's integration tests, one binary (one link, one copy of the dependencies on disk) with a module per
//! concern.

mod common;

mod export;
mod resnet;
mod training;
