//! The `.eep` language: source map and spans ([`source`]), diagnostics ([`diag`]), the syntax
//! tree ([`ast`]), the pest parser ([`parse`]) and resolution into a pipeline ([`resolve`]).

pub mod ast;
pub mod diag;
pub mod parse;
pub mod resolve;
pub mod source;

pub use resolve::{Node, Pipeline, load};
