//! edge-eval: declarative, cached, measured deployment studies of LLM variants.
//! See ARCHITECTURE.md for the map of the code: this crate is the top layer (the command line,
//! the stage kinds, the join of results into the five metrics, the benchmarks); the layers below
//! it are the crates in `crates/`.

pub mod bench;
pub mod cli;
pub mod paper;
pub mod report;
pub mod results;
pub mod stages;
pub mod study;
pub mod tasks;
