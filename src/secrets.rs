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

    /// Replace every secret value found in `text` by the mask.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        // Longest first, so a value containing another is masked whole.
        let mut vals: Vec<&String> = self.values.values().filter(|v| v.len() >= 4).collect();
        vals.sort_by_key(|v| std::cmp::Reverse(v.len()));
        for v in vals {
            out = out.replace(v.as_str(), MASK);
        }
        out
    }

    /// For tests and tools that already hold the values.
    pub fn from_map(values: BTreeMap<String, String>) -> Self {
        Secrets { values }
    }
}

/// What a container's label records of a secret: 16 hex digits of SHA-256
/// over the value, salted with the project, service and name, so equal
/// values in two places give unrelated digests. Enough to tell that a value
/// changed; never the value.
pub fn digest(project: &str, service: &str, name: &str, value: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in ["provision secret digest", project, service, name, value] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())[..16].to_string()
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
        std::fs::create_dir_all(dir).map_err(fail)?;
        // The state folder holds keys and secrets: keep it out of git.
        let ignore = dir.join(".gitignore");
        if !ignore.exists() {
            let _ = std::fs::write(ignore, "*\n");
        }
    }
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(fail)?;
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
