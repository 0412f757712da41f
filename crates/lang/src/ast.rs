//! The syntax tree of one `.eep` file. Every node keeps its [`Span`]; nothing here is checked
//! beyond syntax (that is `resolve`'s job).

use super::source::Span;

#[derive(Debug, Clone)]
pub struct Ident {
    pub name: String,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum Item {
    Import {
        path: String,
        span: Span,
    },
    /// `pipeline NAME { … }` (block = "pipeline", name set) or `economics|hardware|report { … }`.
    Block {
        block: Ident,
        name: Option<Ident>,
        settings: Vec<Setting>,
    },
    Model {
        name: Ident,
        source: Call,
    },
    Task {
        name: Ident,
        source: Call,
    },
    Let {
        name: Ident,
        value: Expr,
    },
    For(ForLoop),
    Stage {
        target: Option<Target>,
        call: Call,
    },
}

#[derive(Debug, Clone)]
pub struct Setting {
    pub key: Ident,
    pub value: Expr,
}

#[derive(Debug, Clone)]
pub struct ForLoop {
    pub bindings: Vec<(Ident, Expr)>,
    pub body: Vec<Item>,
    pub span: Span,
}

/// `name` or `name[i, j]` on the left of `=`.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: Ident,
    pub index: Vec<Expr>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub func: Ident,
    pub args: Vec<Arg>,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub struct Arg {
    pub name: Option<Ident>,
    pub value: Expr,
}

#[derive(Debug, Clone)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
}

#[derive(Debug, Clone)]
pub enum ExprKind {
    Str(String),
    Int(i64),
    Float(f64),
    Quantity { value: f64, unit: Ident },
    Bool(bool),
    List(Vec<Expr>),
    Name(String),
    Index { name: Ident, index: Vec<Expr> },
    Call(Call),
}
