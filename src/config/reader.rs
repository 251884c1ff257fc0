//! A typed reader over a span-preserving TOML document that collects every problem (key path,
//! line, reason) instead of stopping at the first, so `waypost check` can list them all at once.

use std::cell::RefCell;
use std::ops::Range;
use std::time::Duration;

use toml_edit::{Item, TableLike, Value};

/// One configuration problem: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Key path such as `route[2].pools[1]` (indexes count from 0).
    pub path: String,
    /// 1-based line in the file, 0 when the problem has no single place (e.g. a missing table).
    pub line: usize,
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.line > 0 {
            write!(f, "{}: {} (line {})", self.path, self.message, self.line)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Shared state of one read: the source text (for line numbers) and the problems found.
pub struct Ctx<'s> {
    line_starts: Vec<usize>,
    problems: RefCell<Vec<Problem>>,
    _src: std::marker::PhantomData<&'s str>,
}

impl<'s> Ctx<'s> {
    pub fn new(src: &'s str) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(i, _)| i + 1));
        Ctx {
            line_starts,
            problems: RefCell::new(Vec::new()),
            _src: std::marker::PhantomData,
        }
    }

    pub fn line_of(&self, span: Option<Range<usize>>) -> usize {
        match span {
            Some(r) => self.line_starts.partition_point(|&s| s <= r.start),
            None => 0,
        }
    }

    pub fn problem(&self, path: impl Into<String>, line: usize, message: impl Into<String>) {
        self.problems.borrow_mut().push(Problem {
            path: path.into(),
            line,
            message: message.into(),
        });
    }

    pub fn into_problems(self) -> Vec<Problem> {
        let mut p = self.problems.into_inner();
        p.sort_by_key(|p| p.line);
        p
    }

    pub fn has_problems(&self) -> bool {
        !self.problems.borrow().is_empty()
    }
}

/// A place in the document: a value with its key path and line, for cross-reference checks
/// made after reading.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct At {
    pub path: String,
    pub line: usize,
}

/// A table (standard or inline) being read. Keys that are read are marked; `finish` reports
/// the rest as unknown.
pub struct Obj<'c, 's> {
    ctx: &'c Ctx<'s>,
    path: String,
    line: usize,
    tbl: &'c dyn TableLike,
    used: RefCell<Vec<&'static str>>,
}

fn type_name(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
        Item::Value(v) => match v {
            Value::String(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Boolean(_) => "a boolean",
            Value::Datetime(_) => "a datetime",
            Value::Array(_) => "an array",
            Value::InlineTable(_) => "an inline table",
        },
    }
}

fn item_span(item: &Item) -> Option<Range<usize>> {
    match item {
        Item::Value(v) => v.span(),
        Item::Table(t) => t.span(),
        Item::ArrayOfTables(a) => a.span(),
        Item::None => None,
    }
}

impl<'c, 's> Obj<'c, 's> {
    pub fn root(ctx: &'c Ctx<'s>, tbl: &'c dyn TableLike) -> Self {
        Obj {
            ctx,
            path: String::new(),
            line: 1,
            tbl,
            used: RefCell::new(Vec::new()),
        }
    }

    pub fn ctx(&self) -> &'c Ctx<'s> {
        self.ctx
    }

    pub fn at(&self) -> At {
        At {
            path: self.path.clone(),
            line: self.line,
        }
    }

    pub fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{}", self.path, key)
        }
    }

    /// The line of `key` (its key, else its value), or of this table when absent.
    pub fn key_line(&self, key: &str) -> usize {
        match self.tbl.get_key_value(key) {
            Some((k, v)) => {
                let l = self.ctx.line_of(k.span());
                if l > 0 {
                    l
                } else {
                    let l = self.ctx.line_of(item_span(v));
                    if l > 0 {
                        l
                    } else {
                        self.line
                    }
                }
            }
            None => self.line,
        }
    }

    pub fn at_key(&self, key: &str) -> At {
        At {
            path: self.key_path(key),
            line: self.key_line(key),
        }
    }

    /// Report a problem with `key` of this table.
    pub fn problem(&self, key: &str, message: impl Into<String>) {
        self.ctx.problem(self.key_path(key), self.key_line(key), message);
    }

    /// Report a problem with this table itself.
    pub fn problem_here(&self, message: impl Into<String>) {
        let path = if self.path.is_empty() {
            "(top level)".to_string()
        } else {
            self.path.clone()
        };
        self.ctx.problem(path, self.line, message);
    }

    /// The string at `key` without marking or checking it: for cross-references gathered before
    /// (and whatever the outcome of) reading the table in full.
    pub fn peek_str(&self, key: &str) -> Option<String> {
        self.tbl.get(key).and_then(|i| i.as_str()).map(str::to_string)
    }

    /// The length of the array at `key`, if it is one.
    pub fn str_or_list_len(&self, key: &str) -> Option<usize> {
        self.tbl.get(key).and_then(|i| i.as_array()).map(|a| a.len())
    }

    /// Whether `key` holds an array (of tables or values).
    pub fn is_array(&self, key: &str) -> bool {
        matches!(
            self.tbl.get(key),
            Some(Item::ArrayOfTables(_)) | Some(Item::Value(Value::Array(_)))
        )
    }

    /// A string inside a sub-table (`[route.split] primary`), without marking anything, with
    /// its place: for cross-references.
    pub fn peek_sub_str(&self, table: &str, key: &str) -> Option<(String, At)> {
        let t = self.tbl.get(table)?.as_table_like()?;
        let (k, v) = t.get_key_value(key)?;
        let s = v.as_str()?.to_string();
        let line = self.ctx.line_of(k.span()).max(self.ctx.line_of(item_span(v)));
        Some((
            s,
            At {
                path: format!("{}.{}", self.key_path(table), key),
                line,
            },
        ))
    }

    pub fn has(&self, key: &str) -> bool {
        self.tbl.get(key).is_some()
    }

    fn take(&self, key: &'static str) -> Option<&'c Item> {
        self.used.borrow_mut().push(key);
        self.tbl.get(key)
    }

    fn wrong_type(&self, key: &str, want: &str, got: &Item) {
        self.problem(key, format!("expected {want}, found {}", type_name(got)));
    }

    pub fn str(&self, key: &'static str) -> Option<String> {
        let item = self.take(key)?;
        match item.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                self.wrong_type(key, "a string", item);
                None
            }
        }
    }

    pub fn req_str(&self, key: &'static str) -> Option<String> {
        if !self.has(key) {
            self.problem_here(format!("missing required key `{key}`"));
        }
        self.str(key)
    }

    pub fn bool(&self, key: &'static str) -> Option<bool> {
        let item = self.take(key)?;
        match item.as_bool() {
            Some(b) => Some(b),
            None => {
                self.wrong_type(key, "a boolean", item);
                None
            }
        }
    }

    pub fn int(&self, key: &'static str) -> Option<i64> {
        let item = self.take(key)?;
        match item.as_integer() {
            Some(i) => Some(i),
            None => {
                self.wrong_type(key, "an integer", item);
                None
            }
        }
    }

    /// A non-negative integer no larger than `max`.
    pub fn uint(&self, key: &'static str, max: u64) -> Option<u64> {
        let i = self.int(key)?;
        if i < 0 || i as u64 > max {
            self.problem(key, format!("must be between 0 and {max}, found {i}"));
            return None;
        }
        Some(i as u64)
    }

    pub fn float(&self, key: &'static str) -> Option<f64> {
        let item = self.take(key)?;
        match item.as_float().or_else(|| item.as_integer().map(|i| i as f64)) {
            Some(f) if f.is_finite() => Some(f),
            _ => {
                self.wrong_type(key, "a number", item);
                None
            }
        }
    }

    pub fn duration(&self, key: &'static str) -> Option<Duration> {
        let s = self.str(key)?;
        match parse_duration(&s) {
            Ok(d) => Some(d),
            Err(e) => {
                self.problem(key, e);
                None
            }
        }
    }

    /// A size in bytes ("64KiB", "8MiB", a plain number).
    pub fn size(&self, key: &'static str) -> Option<u64> {
        let item = self.take(key)?;
        if let Some(n) = item.as_integer() {
            if n < 0 {
                self.problem(key, "a size cannot be negative");
                return None;
            }
            return Some(n as u64);
        }
        let Some(s) = item.as_str() else {
            self.wrong_type(key, "a size like \"64KiB\" or a number of bytes", item);
            return None;
        };
        match parse_size(s) {
            Ok(n) => Some(n),
            Err(e) => {
                self.problem(key, e);
                None
            }
        }
    }

    /// An array of strings, each with its own place for later cross-reference checks.
    pub fn str_list(&self, key: &'static str) -> Option<Vec<(String, At)>> {
        self.used.borrow_mut().push(key);
        self.str_list_dyn(key)
    }

    /// `str_list` for a key chosen by the user (`[geo.regions] eu = [...]`): not marked, since
    /// such tables have no unknown keys.
    pub fn str_list_dyn(&self, key: &str) -> Option<Vec<(String, At)>> {
        let item = self.tbl.get(key)?;
        let Some(arr) = item.as_array() else {
            self.wrong_type(key, "an array of strings", item);
            return None;
        };
        let mut out = Vec::with_capacity(arr.len());
        for (i, v) in arr.iter().enumerate() {
            let path = format!("{}[{i}]", self.key_path(key));
            let line = self.ctx.line_of(v.span());
            match v.as_str() {
                Some(s) => out.push((s.to_string(), At { path, line })),
                None => self.ctx.problem(
                    path,
                    line,
                    format!("expected a string, found {}", type_name(&Item::Value(v.clone()))),
                ),
            }
        }
        Some(out)
    }

    /// The strings of an array at `key` with their places, without marking or reporting.
    pub fn peek_str_list(&self, key: &str) -> Vec<(String, At)> {
        let Some(arr) = self.tbl.get(key).and_then(|i| i.as_array()) else {
            return Vec::new();
        };
        arr.iter()
            .enumerate()
            .filter_map(|(i, v)| {
                Some((
                    v.as_str()?.to_string(),
                    At {
                        path: format!("{}[{i}]", self.key_path(key)),
                        line: self.ctx.line_of(v.span()),
                    },
                ))
            })
            .collect()
    }

    /// The keys of a table whose keys the user chooses, with their places.
    pub fn entries_list(&self) -> Vec<(String, At)> {
        self.tbl.iter().map(|(k, _)| (k.to_string(), self.at_key(k))).collect()
    }

    /// A string or an array of strings (e.g. `host = "a"` or `host = ["a", "b"]`).
    pub fn str_or_list(&self, key: &'static str) -> Option<Vec<(String, At)>> {
        let item = self.tbl.get(key)?;
        if let Some(s) = item.as_str() {
            self.used.borrow_mut().push(key);
            return Some(vec![(s.to_string(), self.at_key(key))]);
        }
        self.str_list(key)
    }

    /// A sub-table, standard (`[a.b]`) or inline (`b = { ... }`).
    pub fn obj(&self, key: &'static str) -> Option<Obj<'c, 's>> {
        let item = self.take(key)?;
        match item.as_table_like() {
            Some(t) => Some(Obj {
                ctx: self.ctx,
                path: self.key_path(key),
                line: self.key_line(key),
                tbl: t,
                used: RefCell::new(Vec::new()),
            }),
            None => {
                self.wrong_type(key, "a table", item);
                None
            }
        }
    }

    /// An array of tables (`[[x]]`) or an array of inline tables (`x = [{...}]`).
    pub fn objs(&self, key: &'static str) -> Vec<Obj<'c, 's>> {
        let Some(item) = self.take(key) else {
            return Vec::new();
        };
        let base = self.key_path(key);
        match item {
            Item::ArrayOfTables(a) => a
                .iter()
                .enumerate()
                .map(|(i, t)| Obj {
                    ctx: self.ctx,
                    path: format!("{base}[{i}]"),
                    line: self.ctx.line_of(t.span()),
                    tbl: t as &dyn TableLike,
                    used: RefCell::new(Vec::new()),
                })
                .collect(),
            Item::Value(Value::Array(arr)) => {
                let mut out = Vec::new();
                for (i, v) in arr.iter().enumerate() {
                    let path = format!("{base}[{i}]");
                    let line = self.ctx.line_of(v.span());
                    match v.as_inline_table() {
                        Some(t) => out.push(Obj {
                            ctx: self.ctx,
                            path,
                            line,
                            tbl: t as &dyn TableLike,
                            used: RefCell::new(Vec::new()),
                        }),
                        None => self.ctx.problem(path, line, "expected a table"),
                    }
                }
                out
            }
            other => {
                self.wrong_type(key, "an array of tables", other);
                Vec::new()
            }
        }
    }

    /// `finish` for a table still borrowed elsewhere.
    pub fn finish_ref(&self) {
        let used = self.used.borrow();
        for (k, _) in self.tbl.iter() {
            if !used.contains(&k) {
                self.problem(k, "unknown key");
            }
        }
    }

    /// Report every key of this table that no reader asked for.
    pub fn finish(self) {
        let used = self.used.borrow();
        for (k, _) in self.tbl.iter() {
            if !used.contains(&k) {
                self.problem(k, "unknown key");
            }
        }
    }
}

/// The reason of a TOML syntax error, on one line (toml_edit's message may span several). Some
/// errors come without any message (a control character in a comment, found by fuzzing): those
/// name the character found where the error is.
pub(super) fn syntax_message(text: &str, e: &toml_edit::TomlError) -> String {
    let msg = e
        .message()
        .trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if !msg.is_empty() {
        return msg;
    }
    match e
        .span()
        .and_then(|s| text.get(s.start..))
        .and_then(|t| t.chars().next())
    {
        Some(c) if c.is_control() => format!("control character U+{:04X} is not allowed here", u32::from(c)),
        Some(c) => format!("unexpected character {c:?}"),
        None => "unexpected end of the file".into(),
    }
}

/// Parse "250ms", "2s", "5m", "1h", "7d" (and "0").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected a number and a unit, like \"250ms\", \"2s\", \"5m\""))?;
    let mult = match unit.trim() {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        "d" => 86400.0,
        "" => return Err(format!("invalid duration {s:?}: missing unit (ms, s, m, h, d)")),
        u => return Err(format!("invalid duration {s:?}: unknown unit {u:?} (ms, s, m, h, d)")),
    };
    let secs = n * mult;
    if !secs.is_finite() || secs > 100.0 * 365.0 * 86400.0 {
        return Err(format!("invalid duration {s:?}: too large"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parse "64KiB", "16MiB", "1GiB", "10MB", "512B" or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a whole number and a unit, like \"64KiB\""))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        u => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {u:?} (B, KiB, MiB, GiB, KB, MB, GB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn durations_without_unit_or_with_unknown_unit_are_refused() {
        assert!(parse_duration("30").unwrap_err().contains("missing unit"));
        assert!(parse_duration("3 weeks").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn sizes_parse_binary_and_decimal_units() {
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("10MB").unwrap(), 10_000_000);
        assert_eq!(parse_size("0").unwrap(), 0);
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn a_control_character_in_a_comment_has_a_reason() {
        // Found by the `config` fuzz target: toml_edit reports this error with an empty message,
        // which `waypost check` printed as "(syntax):  (line 2)".
        let problems = crate::config::parse("[server]\n# a\0b\n", None).unwrap_err();
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].path, "(syntax)");
        assert_eq!(problems[0].line, 2);
        assert_eq!(problems[0].message, "control character U+0000 is not allowed here");
    }

    #[test]
    fn lines_are_counted_from_one() {
        let ctx = Ctx::new("a\nbb\nccc\n");
        assert_eq!(ctx.line_of(Some(0..1)), 1);
        assert_eq!(ctx.line_of(Some(2..3)), 2);
        assert_eq!(ctx.line_of(Some(5..6)), 3);
    }
}
