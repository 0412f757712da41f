//! What the language knows of a stage kind: its [`Signature`]. The resolver checks calls against
//! the [`Signatures`] it is given; it never sees the code that runs a stage.

use spec::{Output, ParamSpec};

/// Where a kind may be used in a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `model NAME = kind(...)` or `task NAME = kind(...)`.
    Source,
    /// A stage call statement.
    Stage,
}

/// A stage kind's name, role, result type and parameters.
#[derive(Debug, Clone)]
pub struct Signature {
    pub kind: &'static str,
    pub role: Role,
    pub output: Output,
    /// One line for `edge-eval stages`.
    pub summary: &'static str,
    pub params: Vec<ParamSpec>,
}

/// The kinds a pipeline may call, by name.
#[derive(Debug, Clone, Default)]
pub struct Signatures {
    list: Vec<Signature>,
}

impl Signatures {
    pub fn new(list: Vec<Signature>) -> Signatures {
        Signatures { list }
    }

    pub fn get(&self, kind: &str) -> Option<&Signature> {
        self.list.iter().find(|s| s.kind == kind)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Signature> {
        self.list.iter()
    }
}
