//! Maps a key path (`providers[1].kind`) to its line and column, using the spans that
//! `toml_edit` records while parsing. Positions are never found by searching the text for a
//! key name, which would pick the wrong `[[providers]]` entry.

use toml_edit::{ImDocument, Item, Table};

/// A parsed document kept only for locating keys.
pub struct Locator {
    doc: Option<ImDocument<String>>,
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        while let Some(end) = rest.find(']') {
            if let Ok(i) = rest[1..end].parse() {
                out.push(Seg::Index(i));
            }
            rest = &rest[end + 1..];
        }
    }
    out
}

impl Locator {
    pub fn new(text: &str) -> Self {
        Self {
            doc: ImDocument::parse(text.to_string()).ok(),
        }
    }

    /// Byte span of the deepest part of `path` present in the document: the key itself when it
    /// is written, else the nearest enclosing table that is (a default that conflicts with
    /// another key is reported at the table the user would edit).
    pub fn span(&self, path: &str) -> Option<std::ops::Range<usize>> {
        let doc = self.doc.as_ref()?;
        let mut table: &Table = doc.as_table();
        let mut best = None;
        let segs = segments(path);
        let mut i = 0;
        while i < segs.len() {
            let Seg::Key(k) = segs[i] else { return best };
            let Some((key, item)) = table.get_key_value(k) else {
                return best;
            };
            best = key.span().or(best);
            match (item, segs.get(i + 1)) {
                (Item::ArrayOfTables(aot), Some(Seg::Index(n))) => {
                    let Some(t) = aot.get(*n) else { return best };
                    best = t.span().or(best);
                    table = t;
                    i += 2;
                }
                (Item::Table(t), _) => {
                    table = t;
                    i += 1;
                }
                (Item::Value(v), Some(Seg::Index(n))) => {
                    if let Some(el) = v.as_array().and_then(|a| a.get(*n)) {
                        best = el.span().or(best);
                    }
                    return best;
                }
                (Item::Value(v), _) => {
                    if let Some(t) = v.as_inline_table() {
                        if let Some(Seg::Key(next)) = segs.get(i + 1) {
                            if let Some((k2, _)) = t.get_key_value(next) {
                                best = k2.span().or(best);
                            }
                        }
                    }
                    return best;
                }
                _ => return best,
            }
        }
        best
    }
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let col = before.rfind('\n').map_or(offset, |nl| offset - nl - 1) + 1;
    (line, col)
}
