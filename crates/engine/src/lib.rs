//! The engine: plans a resolved pipeline against the cache ([`plan`]), runs what is missing
//! ([`exec`]: in-process or as Slurm jobs), stores results content-addressed ([`cache`]) and
//! writes the run's tables ([`table`]). It knows stages only through [`stage::Stage`] and the
//! [`stage::Registry`] a program hands it.

pub mod cache;
pub mod exec;
pub mod plan;
pub mod row;
pub mod stage;
pub mod table;
pub mod test_stage;
pub mod ui;

/// An error that is the user's input being invalid (a command-line value such as a remote-cache
/// URL): callers branch on the type (the command line exits 2 for it, 1 for other errors).
#[derive(Debug)]
pub struct InvalidInput(pub String);

impl std::fmt::Display for InvalidInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidInput {}
