//! The engine: plans a resolved pipeline against the cache ([`plan`]), runs what is missing
//! ([`exec`]: in-process or as Slurm jobs), stores results content-addressed ([`cache`]) and
//! writes the run's tables ([`table`]). It knows stages only through [`stage::Stage`] and the
//! [`stage::Registry`] a program hands it.

pub mod cache;
pub mod exec;
pub mod plan;
pub mod stage;
pub mod table;
pub mod test_stage;
pub mod ui;
