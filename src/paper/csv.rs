//! The CSV the paper's result files are written in (pandas' `to_csv`): a header line, comma
//! separated fields, double quotes around a field that holds a comma or a quote (`""` inside),
//! LF or CRLF line ends.

use anyhow::{Context, Result, bail};

/// A table read by its header.
#[derive(Debug, Clone)]
pub struct Table {
    /// Where it was read from (named in errors).
    pub name: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn parse(name: &str, text: &str) -> Result<Table> {
        let mut lines = text.lines().map(|l| l.strip_suffix('\r').unwrap_or(l));
        let header = split(lines.next().with_context(|| format!("{name} is empty"))?);
        let mut rows = vec![];
        for (i, line) in lines.enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let row = split(line);
            if row.len() != header.len() {
                bail!(
                    "{name}:{}: {} fields, the header has {}",
                    i + 2,
                    row.len(),
                    header.len()
                );
            }
            rows.push(row);
        }
        Ok(Table {
            name: name.into(),
            header,
            rows,
        })
    }

    fn column(&self, col: &str) -> Result<usize> {
        self.header
            .iter()
            .position(|h| h == col)
            .with_context(|| format!("{} has no column `{col}`", self.name))
    }

    /// The text of `col` in row `row`.
    pub fn str(&self, row: usize, col: &str) -> Result<&str> {
        Ok(&self.rows[row][self.column(col)?])
    }

    /// The number in `col` of row `row` (`inf` is +∞, as pandas writes it).
    pub fn num(&self, row: usize, col: &str) -> Result<f64> {
        let s = self.str(row, col)?;
        s.parse::<f64>()
            .with_context(|| format!("{}:{}: `{col}` = {s:?} is no number", self.name, row + 2))
    }
}

fn split(line: &str) -> Vec<String> {
    let mut out = vec![];
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut field)),
            _ => field.push(c),
        }
    }
    out.push(field);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_quoted_fields_and_crlf_lines() {
        let t = Table::parse("t.csv", "a,b,c\r\n1,\"x, \"\"y\"\"\",inf\r\n\r\n").unwrap();
        assert_eq!(t.rows, vec![vec!["1", "x, \"y\"", "inf"]]);
        assert_eq!(t.num(0, "c").unwrap(), f64::INFINITY);
        assert!(t.num(0, "b").unwrap_err().to_string().contains("t.csv:2"));
        assert!(t.str(0, "d").is_err());
        let e = Table::parse("u.csv", "a,b\n1\n").unwrap_err().to_string();
        assert!(e.contains("u.csv:2: 1 fields"), "{e}");
    }
}
