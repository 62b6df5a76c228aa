//! `.dockerignore` as Docker reads it (moby's patternmatcher and buildkit's
//! dockerignore reader), so an app folder leaves out what `docker build`
//! would: the same file means the same thing here and there.
//!
//! Written here rather than taken from the `ignore` crate: gitignore and
//! Docker disagree where it matters. In gitignore `*.pem` matches at any
//! depth; in Docker it matches only at the top (`**/*.pem` for any depth),
//! and Docker matches a pattern against every parent folder of a path too.
//!
//! The rules, as Docker's documentation and code have them:
//! - a line starting with `#` is a comment; blank lines are skipped; other
//!   lines are trimmed, then cleaned like a path (`./a//b/` is `a/b`), and a
//!   leading `/` is dropped: every pattern is relative to the folder's root;
//! - `*` matches any run of characters but `/`, `?` one character but `/`,
//!   `[a-z]` and `[^a-z]` a class, `\` escapes the next character;
//! - `**` matches any number of folders, none included (`**/x`, `a/**/b`);
//!   a trailing `**` matches everything below;
//! - a path is left out when a pattern matches it or one of its parent
//!   folders; `!pattern` takes a path back in; the last matching line wins.

/// One line of a `.dockerignore` (or a built-in rule), compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The cleaned pattern as written (without the `!`), for messages.
    pub text: String,
    /// `!pattern`: takes matching paths back in.
    pub exception: bool,
    /// 1-based line in its file (0 for built-in rules).
    pub line: usize,
    tokens: Vec<Token>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Char(char),
    /// `*`: any run of characters but `/`.
    Star,
    /// `?`: one character but `/`.
    One,
    /// `[...]`: ranges (single characters are `(c, c)`), maybe negated.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**` before more pattern: any run of whole folders, or none.
    Folders,
    /// `**` at the end: anything at all.
    Rest,
}

/// A line Docker itself refuses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternError {
    pub line: usize,
    pub message: String,
}

impl Pattern {
    /// Compile one pattern (`!` allowed at its start). `line` is kept for
    /// messages.
    pub fn new(raw: &str, line: usize) -> Result<Pattern, PatternError> {
        let err = |message: String| PatternError { line, message };
        let raw = raw.trim();
        let (exception, body) = match raw.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, raw),
        };
        if exception && body.is_empty() {
            return Err(err("illegal exclusion pattern: \"!\"".into()));
        }
        let mut text = clean(body);
        if text.len() > 1 && text.starts_with('/') {
            text.remove(0);
        }
        let tokens = tokenize(&text).map_err(|m| err(format!("bad pattern `{text}`: {m}")))?;
        Ok(Pattern {
            text,
            exception,
            line,
            tokens,
        })
    }

    /// Whether the pattern matches `path` itself (relative, `/`-separated).
    pub fn matches_path(&self, path: &str) -> bool {
        let text: Vec<char> = path.chars().collect();
        let mut failed = std::collections::HashSet::new();
        match_at(&self.tokens, 0, &text, 0, &mut failed)
    }

    /// Whether it matches `path` or one of its parent folders, as Docker
    /// decides for each line.
    pub fn matches(&self, path: &str) -> bool {
        if self.matches_path(path) {
            return true;
        }
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            end += i;
            if self.matches_path(&path[..end]) {
                return true;
            }
            end += 1;
        }
        false
    }
}

impl Pattern {
    /// Whether the pattern might match something below folder `dir`: its
    /// literal start (up to the first wildcard) and `dir/` agree as far as
    /// both go. A walk may leave out a folder whole when no `!` line might.
    pub fn may_match_below(&self, dir: &str) -> bool {
        let literal: String = self
            .text
            .chars()
            .take_while(|c| !matches!(c, '*' | '?' | '[' | '\\'))
            .collect();
        let below = format!("{dir}/");
        literal.starts_with(&below) || below.starts_with(&literal)
    }
}

/// The lines of one `.dockerignore` text, in order.
pub fn parse(text: &str) -> Result<Vec<Pattern>, PatternError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = if i == 0 {
            line.trim_start_matches('\u{feff}')
        } else {
            line
        };
        // As buildkit does: a comment is recognised before trimming.
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        out.push(Pattern::new(line, i + 1)?);
    }
    Ok(out)
}

/// Which pattern decides about `path`: the last one that matches it (or a
/// parent folder), or none. Left out when that one is not an exception.
/// (Docker skips lines that cannot change the answer; the answer is the
/// same, and trying them all names the last line that says so.)
pub fn decide<'p>(patterns: &'p [Pattern], path: &str) -> Option<&'p Pattern> {
    patterns
        .iter()
        .rev()
        .find(|p| p.matches(path))
        .filter(|p| !p.exception)
}

/// Go's `filepath.Clean` on a `/`-separated path: no empty or `.` parts,
/// `..` folded where it can be, no trailing `/`; empty becomes `.`.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            p => parts.push(p),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                // `**/` is `**`: the slash is part of "any folders".
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                out.push(if i == chars.len() {
                    Token::Rest
                } else {
                    Token::Folders
                });
            }
            '*' => out.push(Token::Star),
            '?' => out.push(Token::One),
            '\\' => match chars.get(i) {
                Some(&next) => {
                    out.push(Token::Char(next));
                    i += 1;
                }
                None => out.push(Token::Char('\\')),
            },
            '[' => {
                let mut negated = false;
                if chars.get(i) == Some(&'^') {
                    negated = true;
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut closed = false;
                while i < chars.len() {
                    let mut lo = chars[i];
                    if lo == ']' {
                        // Go's filepath.Match, which Docker checks lines with,
                        // refuses an empty class.
                        if ranges.is_empty() {
                            return Err("empty `[]`".into());
                        }
                        i += 1;
                        closed = true;
                        break;
                    }
                    i += 1;
                    if lo == '\\' {
                        lo = *chars.get(i).ok_or("`\\` at the end of a class")?;
                        i += 1;
                    }
                    let mut hi = lo;
                    if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|&c| c != ']') {
                        hi = chars[i + 1];
                        i += 2;
                        if hi == '\\' {
                            hi = *chars.get(i).ok_or("`\\` at the end of a class")?;
                            i += 1;
                        }
                        if hi < lo {
                            return Err(format!("range `{lo}-{hi}` is backwards"));
                        }
                    }
                    ranges.push((lo, hi));
                }
                if !closed {
                    return Err("`[` without its `]`".into());
                }
                out.push(Token::Class { negated, ranges });
            }
            c => out.push(Token::Char(c)),
        }
    }
    Ok(out)
}

/// Backtracking match; `failed` remembers positions already known not to
/// match, so patterns with many stars stay linear-ish.
fn match_at(
    tokens: &[Token],
    t: usize,
    text: &[char],
    s: usize,
    failed: &mut std::collections::HashSet<(usize, usize)>,
) -> bool {
    if failed.contains(&(t, s)) {
        return false;
    }
    let ok = match tokens.get(t) {
        None => s == text.len(),
        Some(Token::Char(c)) => {
            text.get(s) == Some(c) && match_at(tokens, t + 1, text, s + 1, failed)
        }
        Some(Token::One) => {
            text.get(s).is_some_and(|&c| c != '/') && match_at(tokens, t + 1, text, s + 1, failed)
        }
        Some(Token::Class { negated, ranges }) => {
            text.get(s).is_some_and(|&c| {
                c != '/' && ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi) != *negated
            }) && match_at(tokens, t + 1, text, s + 1, failed)
        }
        Some(Token::Star) => {
            let mut end = s;
            loop {
                if match_at(tokens, t + 1, text, end, failed) {
                    break true;
                }
                if end == text.len() || text[end] == '/' {
                    break false;
                }
                end += 1;
            }
        }
        // `(.*/)?`: nothing, or anything up to and including a `/`.
        Some(Token::Folders) => {
            match_at(tokens, t + 1, text, s, failed)
                || (s..text.len())
                    .filter(|&i| text[i] == '/')
                    .any(|i| match_at(tokens, t + 1, text, i + 1, failed))
        }
        Some(Token::Rest) => true,
    };
    if !ok {
        failed.insert((t, s));
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left_out(ignore: &str, path: &str) -> bool {
        decide(&parse(ignore).unwrap(), path).is_some()
    }

    #[test]
    fn a_plain_pattern_matches_at_the_top_only() {
        // Docker, unlike gitignore: `*.pem` is the top folder's only.
        assert!(left_out("*.pem", "server.pem"));
        assert!(!left_out("*.pem", "certs/server.pem"));
        assert!(left_out("**/*.pem", "certs/server.pem"));
        assert!(left_out("**/*.pem", "server.pem"));
        assert!(left_out("certs/*.pem", "certs/a.pem"));
        assert!(!left_out("certs/*.pem", "certs/sub/a.pem"));
    }

    #[test]
    fn a_matching_folder_leaves_out_everything_below() {
        assert!(left_out("node_modules", "node_modules/a/b.js"));
        assert!(left_out("node_modules/", "node_modules/a/b.js"));
        assert!(left_out("/node_modules", "node_modules/x"));
        assert!(!left_out("node_modules", "web/node_modules/x"));
        assert!(left_out("**/node_modules", "web/node_modules/x"));
        assert!(left_out("tmp/*", "tmp/cache/x"));
        assert!(!left_out("tmp/*", "tmp"));
    }

    #[test]
    fn stars_and_double_stars() {
        assert!(left_out("a/**/b", "a/b"));
        assert!(left_out("a/**/b", "a/x/y/b"));
        assert!(!left_out("a/**/b", "a/xb"));
        assert!(left_out("a/**", "a/x/y"));
        assert!(left_out("**", "anything/at/all"));
        assert!(left_out("*", "top"));
        assert!(left_out("*", "top/below"), "via its parent `top`");
        assert!(!left_out("*.log", "x.log.1"));
        assert!(left_out("?.txt", "a.txt"));
        assert!(!left_out("?.txt", "ab.txt"));
        // moby's regexp turns `a**b` into `a(.*/)?b`.
        assert!(left_out("a**b", "ab"));
        assert!(left_out("a**b", "a/x/b"));
        assert!(!left_out("a**b", "axb"));
    }

    #[test]
    fn classes_and_escapes() {
        assert!(left_out("file[0-9].txt", "file7.txt"));
        assert!(!left_out("file[0-9].txt", "filex.txt"));
        assert!(left_out("file[^0-9].txt", "filex.txt"));
        assert!(!left_out("file[^0-9].txt", "file1.txt"));
        assert!(left_out(r"\*.txt", "*.txt"));
        assert!(!left_out(r"\*.txt", "a.txt"));
        assert!(left_out(r"[\]a]", "]"));
        assert!(parse("[]a]").is_err());
        assert!(parse("[a-").is_err());
        assert!(parse("[z-a]").is_err());
    }

    #[test]
    fn exceptions_and_the_last_matching_line_wins() {
        let ignore = "*.md\n!README.md\n";
        assert!(left_out(ignore, "CHANGES.md"));
        assert!(!left_out(ignore, "README.md"));
        let ignore = "*.md\n!README*.md\nREADME-secret.md\n";
        assert!(!left_out(ignore, "README.md"));
        assert!(left_out(ignore, "README-secret.md"));
        // An exception inside a left-out folder takes the file back.
        let ignore = "config\n!config/app.yml\n";
        assert!(left_out(ignore, "config/secrets.yml"));
        assert!(!left_out(ignore, "config/app.yml"));
        assert!(parse("!").is_err());
        assert!(parse("! ").is_err());
    }

    #[test]
    fn comments_blanks_and_cleaning() {
        let ps =
            parse("\u{feff}# comment\n\n  ./log//  \n  # not a comment\n/tmp/../cache\n").unwrap();
        let texts: Vec<(&str, usize)> = ps.iter().map(|p| (p.text.as_str(), p.line)).collect();
        assert_eq!(
            texts,
            vec![("log", 3), ("# not a comment", 4), ("cache", 5)]
        );
        assert!(left_out("./log", "log/x"));
        assert_eq!(clean("a/../.."), "..");
        assert_eq!(clean("/.."), "/");
        assert_eq!(clean(""), ".");
    }

    #[test]
    fn an_exception_may_reach_below_a_folder() {
        let p = |t: &str| Pattern::new(t, 1).unwrap();
        assert!(p("!node_modules/keep.js").may_match_below("node_modules"));
        assert!(p("!node_*/keep.js").may_match_below("node_modules"));
        assert!(p("!**/keep.js").may_match_below("node_modules"));
        assert!(p("!*.js").may_match_below("node_modules"));
        assert!(!p("!docs/README.md").may_match_below("node_modules"));
        assert!(!p("!node_modules2/x").may_match_below("node_modules"));
    }

    #[test]
    fn decide_names_the_deciding_line() {
        let ps = parse("log\n*.key\n!keep.key\n").unwrap();
        assert_eq!(decide(&ps, "a.key").map(|p| p.line), Some(2));
        assert_eq!(decide(&ps, "keep.key"), None);
        assert_eq!(decide(&ps, "log/x").map(|p| p.text.as_str()), Some("log"));
    }
}
