//! Files and imports: reading, bounds, cycles and diamonds, inlining.

use super::*;

impl Resolver {
    pub(super) fn load_file(&mut self, path: &Path, display: String, from: Option<Span>) {
        let canonical = match std::fs::canonicalize(path) {
            Ok(p) => p,
            Err(e) => {
                let msg = format!("cannot open {display}: {e}");
                self.diags.push(match from {
                    Some(span) => Diagnostic::at(span, msg, "imported here")
                        .with_hint("import paths are relative to the importing file's folder"),
                    None => Diagnostic::error(msg),
                });
                return;
            }
        };
        if let Some(pos) = self.import_stack.iter().position(|p| *p == canonical) {
            let mut chain: Vec<String> = self.import_stack[pos..]
                .iter()
                .map(|p| {
                    self.map
                        .find_path(p)
                        .map(|id| self.map.get(id).name.clone())
                        .unwrap_or_else(|| p.display().to_string())
                })
                .collect();
            chain.push(display.clone());
            let span = from.expect("the main file cannot be on the import stack");
            self.diags.push(
                Diagnostic::at(
                    span,
                    format!("import cycle: {}", chain.join(" → ")),
                    "this import closes the cycle",
                )
                .with_hint("move what both files need into a third file that imports neither"),
            );
            return;
        }
        if self.import_stack.len() >= MAX_IMPORT_DEPTH {
            let span = from.expect("the main file is at depth 0");
            self.diags.push(Diagnostic::at(
                span,
                format!("imports nested more than {MAX_IMPORT_DEPTH} deep"),
                "too deep",
            ));
            return;
        }
        if !self.imported.insert(canonical.clone()) {
            return; // already included (diamond imports are fine)
        }
        let meta = std::fs::metadata(&canonical);
        if let Ok(m) = &meta {
            if m.len() > MAX_FILE_BYTES {
                let msg = format!(
                    "{display} is {} bytes; pipeline files are limited to {MAX_FILE_BYTES}",
                    m.len()
                );
                self.diags.push(match from {
                    Some(span) => Diagnostic::at(span, msg, "imported here"),
                    None => Diagnostic::error(msg),
                });
                return;
            }
            if !m.is_file() {
                // Never opened: a FIFO would block, a device (`/dev/zero`) never end.
                let msg = if m.is_dir() {
                    format!("{display} is a folder, not a pipeline file")
                } else {
                    format!("{display} is not a regular file (a device, FIFO or socket)")
                };
                self.diags.push(match from {
                    Some(span) => Diagnostic::at(span, msg, "imported here"),
                    None => Diagnostic::error(msg),
                });
                return;
            }
        }
        // Bounded even if the file grows after the size check.
        let read = std::fs::File::open(&canonical).and_then(|f| {
            let mut bytes = vec![];
            std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE_BYTES), &mut bytes)
                .map(|_| bytes)
        });
        let bytes = match read {
            Ok(b) => b,
            Err(e) => {
                self.diags
                    .push(Diagnostic::error(format!("cannot read {display}: {e}")));
                return;
            }
        };
        self.add_file(display, canonical, bytes);
    }

    /// A file's bytes read: it joins the source map, is parsed, and its imports are loaded.
    pub(super) fn add_file(&mut self, display: String, canonical: PathBuf, bytes: Vec<u8>) {
        let (text, bad_utf8) = match String::from_utf8(bytes) {
            Ok(t) => (t, None),
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                (String::from_utf8_lossy(e.as_bytes()).into_owned(), Some(at))
            }
        };
        let id = self.map.add(display.clone(), Some(canonical.clone()), text);
        if let Some(at) = bad_utf8 {
            self.diags.push(
                Diagnostic::at(
                    Span::new(id, at, at + 1),
                    format!("{display} is not UTF-8 text"),
                    "invalid byte here",
                )
                .with_hint("pipeline files are UTF-8 text; is this the right file?"),
            );
            return;
        }
        let text = self.map.get(id).text.clone();
        let items = match parse_file(id, &text) {
            Ok(items) => items,
            Err(ds) => {
                self.diags.extend(ds);
                return;
            }
        };
        self.import_stack.push(canonical);
        let display_dir = Path::new(&display)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        for item in items {
            if let Item::Import { path: ipath, span } = &item {
                let target = base_dir_of(&self.map, id).join(ipath);
                let shown = display_dir.join(ipath).display().to_string();
                self.load_file(&target, shown, Some(*span));
            } else {
                self.items.push(item);
            }
        }
        self.import_stack.pop();
    }
}
