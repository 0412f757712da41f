//! The `.eep` language: source map and spans ([`source`]), diagnostics ([`diag`]), the syntax
//! tree ([`ast`]), the pest parser ([`parse`]) and resolution into a pipeline ([`resolve`])
//! against the [`Signatures`] of the stage kinds a program offers.

pub mod ast;
pub mod diag;
pub mod parse;
pub mod resolve;
mod signature;
pub mod source;

pub use resolve::{Node, Pipeline, load, load_text};
pub use signature::{Role, Signature, Signatures};
