//! Typed table rows. A stage declares its table as a struct with [`table_row!`](crate::table_row):
//! each documented field is a column (name = field name, type from the field's Rust type, the
//! doc comment as the column's description), so a row cannot carry an undeclared or misspelt
//! column — it does not compile. Groups of columns that several tables share (the energy
//! columns) are structs of their own, flattened in. The struct serialises to the [`Row`] a
//! manifest stores and reads back from it ([`TableRow::from_row`]), which is how the report
//! reads results: by field, never by string key.

use crate::stage::{ColType, Column, Row};
use anyhow::{Context, Result};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A table's row type (see the module's documentation).
pub trait TableRow: Serialize + DeserializeOwned + Default {
    /// The columns, in order: the fields, then each group's columns.
    fn columns() -> Vec<Column>;
    /// Fields kept in the manifest only, for the program's own reading (not columns).
    const INTERNAL: &'static [&'static str];

    /// The row as the manifest stores it.
    fn to_row(&self) -> Row {
        match serde_json::to_value(self) {
            Ok(serde_json::Value::Object(row)) => row,
            // A struct of plain fields serialises to an object, always.
            other => unreachable!("a table row serialised to {other:?}"),
        }
    }

    /// A stored row read back (what it may lack: see [`table_row!`](crate::table_row)).
    fn from_row(row: &Row) -> Result<Self> {
        serde_json::from_value(serde_json::Value::Object(row.clone())).with_context(|| {
            format!(
                "a stored row does not read as {}",
                std::any::type_name::<Self>()
            )
        })
    }
}

/// The column type a field's Rust type stores as (an `Option` is the nullable column).
pub trait CellType {
    const TYPE: ColType;
}

macro_rules! cell_types {
    ($($t:ty => $c:ident),* $(,)?) => {
        $(impl CellType for $t { const TYPE: ColType = ColType::$c; })*
    };
}
cell_types!(
    String => Str, bool => Bool, f64 => Float, f32 => Float,
    i64 => Int, u64 => Int, i32 => Int, u32 => Int, usize => Int,
);

impl CellType for std::collections::BTreeMap<String, String> {
    const TYPE: ColType = ColType::Map;
}

/// Microseconds since the Unix epoch, UTC: a timestamp column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Micros(pub i64);

impl CellType for Micros {
    const TYPE: ColType = ColType::Time;
}

/// A float column whose value may be infinite (N_break when local serving never breaks even).
/// JSON has no infinity: it is stored as "inf" / "-inf", which the table writer stores as
/// the float.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Extended(pub f64);

impl Serialize for Extended {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            f64::INFINITY => s.serialize_str("inf"),
            f64::NEG_INFINITY => s.serialize_str("-inf"),
            x => s.serialize_f64(x),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Extended {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Cell {
            Number(f64),
            Word(String),
        }
        match Cell::deserialize(d)? {
            Cell::Number(x) => Ok(Extended(x)),
            Cell::Word(w) if w == "inf" => Ok(Extended(f64::INFINITY)),
            Cell::Word(w) if w == "-inf" => Ok(Extended(f64::NEG_INFINITY)),
            Cell::Word(w) => Err(serde::de::Error::custom(format!(
                "`{w}` is not a number (nor inf, -inf)"
            ))),
        }
    }
}

impl CellType for Extended {
    const TYPE: ColType = ColType::Float;
}

impl<T: CellType> CellType for Option<T> {
    const TYPE: ColType = T::TYPE;
}

/// Declares a table's row type:
///
/// ```ignore
/// engine::table_row! {
///     /// One conversion.
///     pub struct QuantizeRow {
///         /// target precision
///         precision: String,
///         /// output file size
///         output_bytes: Option<u64>,
///         internal {
///             /// per-repetition values, for the report
///             reps: Vec<Option<f64>>,
///         }
///         groups {
///             energy: Energy,
///         }
///     }
/// }
/// ```
///
/// Every field is public and documented; `internal` fields are stored in the manifest but are
/// no column; `groups` are other row types whose columns follow. A stored row that lacks an
/// `Option` cell (a result of an older version) reads it as None, and one that lacks an
/// `internal` list reads it empty; a row that lacks a plain cell does not read at all.
#[macro_export]
macro_rules! table_row {
    (
        $(#[doc = $sdoc:literal])*
        $vis:vis struct $name:ident {
            $( $(#[doc = $doc:literal])+ $field:ident : $ty:ty, )*
            $( internal { $( $(#[doc = $idoc:literal])+ $ifield:ident : $ity:ty, )* } )?
            $( groups { $( $group:ident : $gty:ty, )* } )?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        $vis struct $name {
            $( $(#[doc = $doc])+ pub $field: $ty, )*
            $( $( $(#[doc = $idoc])+ #[serde(default)] pub $ifield: $ity, )* )?
            $( $( #[serde(flatten)] pub $group: $gty, )* )?
        }

        impl $crate::row::TableRow for $name {
            fn columns() -> Vec<$crate::stage::Column> {
                #[allow(unused_mut)]
                let mut cols = vec![$(
                    $crate::stage::Column {
                        name: stringify!($field),
                        ty: <$ty as $crate::row::CellType>::TYPE,
                        doc: concat!($($doc),+).trim_ascii(),
                    },
                )*];
                $( $( cols.extend(<$gty as $crate::row::TableRow>::columns()); )* )?
                cols
            }
            const INTERNAL: &'static [&'static str] = &[$( $( stringify!($ifield) ),* )?];
        }
    };
}

#[cfg(test)]
mod tests {
    use super::TableRow;
    use crate::stage::ColType;

    crate::table_row! {
        /// Shared cells.
        pub struct Shared {
            /// joules
            energy_j: Option<f64>,
        }
    }

    crate::table_row! {
        /// A row.
        pub struct Sample {
            /// what it is,
            /// over two lines
            kind: String,
            /// how many
            count: Option<u64>,
            internal {
                /// kept for the report
                reps: Vec<Option<f64>>,
            }
            groups {
                shared: Shared,
            }
        }
    }

    #[test]
    fn fields_are_the_columns_and_rows_read_back() {
        let cols = Sample::columns();
        let names: Vec<_> = cols.iter().map(|c| c.name).collect();
        assert_eq!(names, ["kind", "count", "energy_j"]);
        assert_eq!(cols[0].doc, "what it is, over two lines");
        assert_eq!(
            cols.iter().map(|c| c.ty).collect::<Vec<_>>(),
            [ColType::Str, ColType::Int, ColType::Float]
        );
        assert_eq!(Sample::INTERNAL, ["reps"]);
        let s = Sample {
            kind: "summary".into(),
            count: Some(3),
            reps: vec![Some(1.5), None],
            shared: Shared {
                energy_j: Some(2.0),
            },
        };
        let row = s.to_row();
        let mut keys: Vec<_> = row.keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["count", "energy_j", "kind", "reps"]);
        assert_eq!(Sample::from_row(&row).unwrap(), s);
        // A row of an older result, without some columns, reads with them empty.
        let mut old = row.clone();
        old.remove("count");
        assert_eq!(Sample::from_row(&old).unwrap().count, None);
        old.remove("reps");
        assert_eq!(Sample::from_row(&old).unwrap().reps, []);
        // A cell of another type is an error, not a silent null; so is a missing plain cell.
        old.insert("count".into(), serde_json::json!("three"));
        assert!(Sample::from_row(&old).is_err());
        old.remove("count");
        old.remove("kind");
        assert!(Sample::from_row(&old).is_err());
    }

    #[test]
    fn an_extended_float_stores_infinity_as_a_word_and_reads_it_back() {
        use super::Extended;
        for (x, json) in [
            (f64::INFINITY, serde_json::json!("inf")),
            (f64::NEG_INFINITY, serde_json::json!("-inf")),
            (2.5, serde_json::json!(2.5)),
        ] {
            assert_eq!(serde_json::to_value(Extended(x)).unwrap(), json);
            assert_eq!(
                serde_json::from_value::<Extended>(json).unwrap(),
                Extended(x)
            );
        }
        assert!(serde_json::from_value::<Extended>(serde_json::json!("many")).is_err());
    }
}
