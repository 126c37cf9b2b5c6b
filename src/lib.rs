//! The root package of wit: the `wit` command line, the embedded test web, the demo and the
//! dataset statistics report. The library half exists so integration tests and benchmarks can
//! start the test web in-process.

pub mod cmd;
pub mod stats;
pub mod testweb;
