//! edge-eval: declarative, cached, measured deployment studies of LLM variants.
//! See ARCHITECTURE.md for the map of the code.

pub mod bench;
pub mod cache;
pub mod cli;
pub mod dsl;
pub mod exec;
pub mod hw;
pub mod meter;
pub mod metrics;
pub mod plan;
pub mod runtime;
pub mod spec;
pub mod stages;
pub mod table;
pub mod tasks;
pub mod ui;
