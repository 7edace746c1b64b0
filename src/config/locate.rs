//! Maps a key path (`providers[1].kind`) to its line and column, and a position back to its key
//! path, using the spans that `toml_edit` records while parsing. Positions are never found by
//! searching the text for a key name, which would pick the wrong `[[providers]]` entry.

use std::ops::Range;
use toml_edit::{ImDocument, InlineTable, Item, Table, Value};

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

/// A written entry found by position: its key path and the byte ranges that hold it (key and
/// value, or a table's header and body), so a caller can blank it out of the text without
/// moving any other position.
#[derive(Debug)]
pub struct Entry {
    pub path: String,
    pub ranges: Vec<Range<usize>>,
}

impl Locator {
    /// The entry whose key or value starts at byte `offset`, which is where a serde error
    /// points (at the key for an unknown field, at the value for a wrong type).
    pub fn entry_at(&self, offset: usize) -> Option<Entry> {
        find_in_table(self.doc.as_ref()?.as_table(), offset, "")
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn starts_at(span: Option<Range<usize>>, offset: usize) -> bool {
    span.is_some_and(|s| s.start == offset)
}

fn find_in_table(t: &Table, offset: usize, prefix: &str) -> Option<Entry> {
    for (k, item) in t.iter() {
        let key_span = t.key(k).and_then(|k| k.span());
        let path = join(prefix, k);
        if starts_at(key_span.clone(), offset)
            || (item.is_value() && starts_at(item.span(), offset))
        {
            let mut ranges = Vec::new();
            extent(key_span.map(|s| s.start), item, &mut ranges);
            return Some(Entry { path, ranges });
        }
        let found = match item {
            Item::Table(sub) => find_in_table(sub, offset, &path),
            Item::ArrayOfTables(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, sub)| find_in_table(sub, offset, &format!("{path}[{i}]"))),
            Item::Value(Value::InlineTable(it)) => find_in_inline(it, offset, &path),
            _ => None,
        };
        if found.is_some() {
            return found;
        }
    }
    None
}

fn find_in_inline(t: &InlineTable, offset: usize, prefix: &str) -> Option<Entry> {
    for (k, v) in t.iter() {
        let key_span = t.key(k).and_then(|k| k.span());
        let path = join(prefix, k);
        if starts_at(key_span.clone(), offset) || starts_at(v.span(), offset) {
            let ranges = match (key_span, v.span()) {
                (Some(k), Some(v)) => std::iter::once(k.start..v.end).collect(),
                _ => Vec::new(),
            };
            return Some(Entry { path, ranges });
        }
        if let Value::InlineTable(it) = v {
            if let Some(e) = find_in_inline(it, offset, &path) {
                return Some(e);
            }
        }
    }
    None
}

/// The byte ranges an entry occupies, from its key (`key_start`) on.
fn extent(key_start: Option<usize>, item: &Item, out: &mut Vec<Range<usize>>) {
    match item {
        Item::Value(v) => {
            if let (Some(s), Some(v)) = (key_start, v.span()) {
                out.push(s..v.end);
            }
        }
        // `a.b = 1`: from the first key to the end of the last value, dots included.
        Item::Table(t) if t.is_dotted() => {
            let mut inner = Vec::new();
            table_body(t, &mut inner);
            if let (Some(s), Some(end)) = (key_start, inner.iter().map(|r| r.end).max()) {
                out.push(s..end);
            }
        }
        Item::Table(t) => {
            out.extend(t.span());
            table_body(t, out);
        }
        Item::ArrayOfTables(a) => {
            for t in a.iter() {
                out.extend(t.span());
                table_body(t, out);
            }
        }
        Item::None => {}
    }
}

fn table_body(t: &Table, out: &mut Vec<Range<usize>>) {
    for (k, item) in t.iter() {
        extent(t.key(k).and_then(|k| k.span()).map(|s| s.start), item, out);
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
