//! Secret values: read from the provisioning machine's environment or the
//! project's secrets file, or generated once when marked so. Values never go
//! in hosts.toml, argv, logs or plans; [`Secrets::mask`] scrubs text.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use rand::distributions::Alphanumeric;
use rand::Rng;

use crate::diagnostics::Diagnostic;
use crate::inventory::{AppSource, Inventory};

pub const MASK: &str = "***";
pub const MASK_TOKEN: &str = "PROVISIONxSECRETxMASK";

pub fn unmask_token(text: &str) -> String {
    text.replace(MASK_TOKEN, MASK)
}

#[derive(Clone, Default)]
pub struct Secrets {
    values: BTreeMap<String, String>,
}

// Debug never shows a value.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

/// How to treat a secret that is marked `generate` and is still missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generate {
    /// Create it and keep it in the secrets file (a real run).
    Store,
    /// Use a placeholder and write nothing (a dry run: values show as ***).
    Placeholder,
}

impl Secrets {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// The same names, every value replaced by the mask.
    pub fn masked(&self) -> BTreeMap<String, String> {
        self.values
            .keys()
            .map(|k| (k.clone(), MASK_TOKEN.to_string()))
            .collect()
    }

    /// Replace every secret value found in `text` by the mask, in any of
    /// the encodings that reach output: raw, percent-encoded (as in a
    /// `DATABASE_URL`, any characters encoded, either case of hex, `+` for
    /// a space), JSON-escaped (`--json`) and single-quoted for a shell.
    pub fn mask(&self, text: &str) -> String {
        // Longest first, so a value containing another is masked whole.
        let mut vals: Vec<&[u8]> = self
            .values
            .values()
            .filter(|v| v.len() >= 4)
            .map(|v| v.as_bytes())
            .collect();
        if vals.is_empty() {
            return text.to_string();
        }
        vals.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let bytes = text.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut at = 0;
        while at < bytes.len() {
            match vals.iter().find_map(|v| encoded_len(bytes, at, v)) {
                Some(n) => {
                    out.extend_from_slice(MASK.as_bytes());
                    at += n;
                }
                None => {
                    out.push(bytes[at]);
                    at += 1;
                }
            }
        }
        String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    }

    /// For tests and tools that already hold the values.
    pub fn from_map(values: BTreeMap<String, String>) -> Self {
        Secrets { values }
    }
}

/// How many bytes of `text` from `at` spell `value` in some encoding, if
/// any: each byte of the value appears as itself or as one of its escapes
/// (`%XX` in either case, `+` for a space, JSON's `\"`, `\\`, `\/`, `\n`,
/// `\r`, `\t`, `\u00XX`, a shell's `'\''` and `'"'"'` for a quote).
fn encoded_len(text: &[u8], at: usize, value: &[u8]) -> Option<usize> {
    // Cheap refusal first: this runs at every position of every line.
    let c = *text.get(at)?;
    let first = *value.first()?;
    if c != first && !matches!(c, b'%' | b'+' | b'\\' | b'\'') {
        return None;
    }
    let hex = |h: u8, l: u8| -> Option<u8> {
        let d = |x: u8| (x as char).to_digit(16).map(|v| v as u8);
        Some(d(h)? * 16 + d(l)?)
    };
    // Depth first over (bytes of the value spelled, position in text); a
    // value byte has more than one spelling only for `%`, `\` and `'`.
    let mut stack = vec![(0usize, at)];
    let mut seen = std::collections::HashSet::new();
    while let Some((i, pos)) = stack.pop() {
        if i == value.len() {
            return Some(pos - at);
        }
        if !seen.insert((i, pos)) {
            continue;
        }
        let b = value[i];
        let tail = &text[pos..];
        let mut spellings: Vec<usize> = Vec::new();
        if tail.first() == Some(&b) {
            spellings.push(1);
        }
        if tail.len() >= 3 && tail[0] == b'%' && hex(tail[1], tail[2]) == Some(b) {
            spellings.push(3);
        }
        if b == b' ' && tail.first() == Some(&b'+') {
            spellings.push(1);
        }
        if tail.len() >= 2 && tail[0] == b'\\' {
            let escaped = match tail[1] {
                b'"' | b'\\' | b'/' => Some(tail[1]),
                b'n' => Some(b'\n'),
                b'r' => Some(b'\r'),
                b't' => Some(b'\t'),
                _ => None,
            };
            if escaped == Some(b) {
                spellings.push(2);
            }
            if tail.len() >= 6
                && tail[1] == b'u'
                && tail[2] == b'0'
                && tail[3] == b'0'
                && hex(tail[4], tail[5]) == Some(b)
            {
                spellings.push(6);
            }
        }
        if b == b'\'' {
            for quote in [&b"'\\''"[..], &b"'\"'\"'"[..]] {
                if tail.starts_with(quote) {
                    spellings.push(quote.len());
                }
            }
        }
        // Pushed last, tried first: the value as it is.
        for n in spellings.into_iter().rev() {
            stack.push((i + 1, pos + n));
        }
    }
    None
}

/// Every secret the inventory needs, with the key path that asks for it.
pub fn needed(inv: &Inventory) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for s in &inv.services {
        for (i, name) in s.secrets.iter().enumerate() {
            if !out.iter().any(|(n, _)| n == name) {
                out.push((name.clone(), format!("services.{}.secrets[{i}]", s.name)));
            }
        }
    }
    if let AppSource::Tarball { token: Some(t), .. } = &inv.app {
        if !out.iter().any(|(n, _)| n == t) {
            out.push((t.clone(), "app.token".into()));
        }
    }
    out
}

/// Resolve every needed secret: environment first, then the secrets file,
/// then generation for those marked `generate`.
pub fn resolve(
    inv: &Inventory,
    env: &dyn Fn(&str) -> Option<String>,
    generate: Generate,
) -> Result<Secrets, Vec<Diagnostic>> {
    let file_values = read_file(&inv.project.secrets_file)
        .map_err(|e| vec![inv.diagnostic("project.secrets_file", e, None)])?;
    let mut values = BTreeMap::new();
    let mut generated = Vec::new();
    let mut problems = Vec::new();
    for (name, path) in needed(inv) {
        if let Some(v) = env(&name).filter(|v| !v.is_empty()) {
            values.insert(name, v);
        } else if let Some(v) = file_values.get(&name) {
            values.insert(name, v.clone());
        } else if inv.secrets.iter().any(|d| d.name == name && d.generate) {
            let v = match generate {
                Generate::Store => random_value(),
                Generate::Placeholder => format!("generated-{name}"),
            };
            generated.push((name.clone(), v.clone()));
            values.insert(name, v);
        } else {
            problems.push(inv.diagnostic(
                &path,
                format!("secret `{name}` is not set"),
                Some(format!(
                    "export {name}=... on this machine, add it to {}, or declare [secrets.{name}] generate = true",
                    inv.project.secrets_file.display()
                )),
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    if generate == Generate::Store && !generated.is_empty() {
        append_file(&inv.project.secrets_file, &generated)
            .map_err(|e| vec![inv.diagnostic("project.secrets_file", e, None)])?;
    }
    Ok(Secrets { values })
}

/// A strong value that needs no quoting anywhere: 40 alphanumerics
/// (about 238 bits).
fn random_value() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(40)
        .map(char::from)
        .collect()
}

/// `NAME=value` lines; `#` comments and blank lines are skipped.
fn read_file(path: &Path) -> Result<BTreeMap<String, String>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(format!("cannot read secrets file {}: {e}", path.display())),
    };
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) => {
                out.insert(k.trim().to_string(), v.to_string());
            }
            // The line may hold a value: never echo it.
            None => return Err(format!("{}:{}: expected NAME=value", path.display(), i + 1)),
        }
    }
    Ok(out)
}

fn append_file(path: &Path, items: &[(String, String)]) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("cannot write secrets file {}: {e}", path.display());
    if let Some(dir) = path.parent() {
        crate::private::create_dir(dir).map_err(fail)?;
        // The state folder holds keys and secrets: keep it out of git.
        let ignore = dir.join(".gitignore");
        if !ignore.exists() {
            let _ = crate::private::write_file(&ignore, b"*\n");
        }
    }
    let mut f = crate::private::append_file(path).map_err(fail)?;
    for (k, v) in items {
        writeln!(f, "{k}={v}").map_err(fail)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_replaces_every_value() {
        let s = Secrets::from_map(
            [
                ("A".into(), "hunter22".into()),
                ("B".into(), "tok-123456".into()),
            ]
            .into(),
        );
        assert_eq!(
            s.mask("x hunter22 y tok-123456 hunter22"),
            "x *** y *** ***"
        );
    }

    #[test]
    fn mask_catches_the_encoded_forms_of_a_value() {
        let value = "p@ss/w:rd é\"x'y";
        let s = Secrets::from_map([("PG_PASSWORD".into(), value.into())].into());
        // The form DATABASE_URL carries: the postgis template's own filter.
        let url = minijinja::Environment::new()
            .render_str(
                "postgres://app:{{ v | urlencode }}@10.0.0.2:5432/app",
                minijinja::context! { v => value },
            )
            .unwrap();
        assert_ne!(url, format!("postgres://app:{value}@10.0.0.2:5432/app"));
        assert_eq!(s.mask(&url), "postgres://app:***@10.0.0.2:5432/app");
        let every_byte: String = value.bytes().map(|b| format!("%{b:02x}")).collect();
        assert_eq!(s.mask(&format!("u={every_byte};")), "u=***;");
        let form = "p%40ss%2Fw%3Ard+%C3%A9%22x%27y";
        assert_eq!(s.mask(form), "***");
        let json = serde_json::to_string(value).unwrap();
        assert_eq!(s.mask(&json), "\"***\"");
        let quoted = crate::commands::quote(value).into_owned();
        assert!(!s.mask(&quoted).contains("ss/w"), "{quoted}");
        // Text around and between stays as it was.
        assert_eq!(s.mask("a p@ss/w:rd é\"x'y b"), "a *** b");
        assert_eq!(s.mask("p@ss/w:rd"), "p@ss/w:rd");
    }

    #[test]
    fn generated_values_are_long_and_plain() {
        let v = random_value();
        assert_eq!(v.len(), 40);
        assert!(v.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn debug_never_shows_values() {
        let s = Secrets::from_map([("A".into(), "hunter22".into())].into());
        assert!(!format!("{s:?}").contains("hunter22"));
    }
}
