//! Errors about the user's files, each pinned to a file, a line:column and a
//! key path, so a user can jump straight to the mistake.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in an input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    /// 1-based line and column of the offending key or value.
    pub line: usize,
    pub column: usize,
    /// Dotted key path such as `services.rails.uses[0]`.
    pub key_path: String,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file.display(),
            self.line,
            self.column,
            self.key_path
        )?;
        if !self.key_path.is_empty() {
            write!(f, ": ")?;
        }
        write!(f, "{}", self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Collects diagnostics for one source text, turning byte spans into lines.
#[derive(Debug)]
pub struct Collector<'a> {
    file: PathBuf,
    source: &'a str,
    pub items: Vec<Diagnostic>,
}

impl<'a> Collector<'a> {
    pub fn new(file: &Path, source: &'a str) -> Self {
        Collector {
            file: file.to_path_buf(),
            source,
            items: Vec::new(),
        }
    }

    pub fn error(
        &mut self,
        span: Range<usize>,
        key_path: impl Into<String>,
        message: impl Into<String>,
    ) {
        self.push(span, key_path.into(), message.into(), None);
    }

    pub fn error_with_hint(
        &mut self,
        span: Range<usize>,
        key_path: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.push(span, key_path.into(), message.into(), Some(hint.into()));
    }

    fn push(
        &mut self,
        span: Range<usize>,
        key_path: String,
        message: String,
        hint: Option<String>,
    ) {
        let (line, column) = line_column(self.source, span.start);
        self.items.push(Diagnostic {
            file: self.file.clone(),
            line,
            column,
            key_path,
            message,
            hint,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = &source[..floor_char_boundary(source, offset)];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The closest candidate to `word`, for "did you mean" hints.
pub fn suggest<'c>(word: &str, candidates: impl IntoIterator<Item = &'c str>) -> Option<String> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| format!("did you mean `{c}`?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 6), (2, 1));
        assert_eq!(line_column(src, 9), (2, 4));
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            suggest("postgres", ["postgis", "redis"]).as_deref(),
            Some("did you mean `postgis`?")
        );
        assert_eq!(suggest("zzz", ["postgis", "redis"]), None);
    }
}
