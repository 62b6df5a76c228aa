//! known_hosts checking, OpenSSH style.
//!
//! Written here rather than using `russh::keys::check_known_hosts_path`,
//! which (0.65.1) miscounts line numbers after comment lines, fails on a
//! second key of the same type for a host (key rotation), fails the whole
//! file on one unparseable key, and ignores `*`/`?`/`!` patterns, tabs and
//! `@revoked`. Supported here: plain and comma lists of names, `[host]:port`,
//! hashed `|1|salt|hash` names, wildcards and negation, `@revoked`
//! (`@cert-authority` lines are skipped: host certificates are not used).

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use data_encoding::BASE64;
use hmac::{Hmac, KeyInit, Mac};
use russh::keys::ssh_key::PublicKey;
use sha1::Sha1;

/// How a host's key compares with the recorded ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A recorded key for this host matches.
    Known,
    /// No key of this type is recorded for this host.
    Unknown,
    /// A key of the same type is recorded for this host and differs (or the
    /// key is marked `@revoked`): `line` is 1-based.
    Changed { file: PathBuf, line: usize },
}

/// The name a host is recorded under: `host` on port 22, else `[host]:port`.
pub(crate) fn known_as(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Checks `key` for `host:port` against every file (missing files are
/// empty). An I/O error names the file.
pub(crate) fn check(
    files: &[PathBuf],
    host: &str,
    port: u16,
    key: &PublicKey,
) -> Result<Verdict, (PathBuf, io::Error)> {
    let name = known_as(host, port);
    let mut changed = None;
    for file in files {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err((file.clone(), e)),
        };
        for (idx, raw) in text.lines().enumerate() {
            let Some(entry) = parse_line(raw) else {
                continue;
            };
            if !host_matches(&name, entry.hosts) {
                continue;
            }
            let Ok(recorded) = russh::keys::parse_public_key_base64(entry.key_b64) else {
                continue;
            };
            let same_key = recorded.key_data() == key.key_data();
            match entry.marker {
                Some("@revoked") if same_key => {
                    return Ok(Verdict::Changed {
                        file: file.clone(),
                        line: idx + 1,
                    })
                }
                Some(_) => continue,
                None if same_key => return Ok(Verdict::Known),
                None if recorded.algorithm() == key.algorithm() && changed.is_none() => {
                    changed = Some(Verdict::Changed {
                        file: file.clone(),
                        line: idx + 1,
                    });
                }
                None => {}
            }
        }
    }
    Ok(changed.unwrap_or(Verdict::Unknown))
}

/// Appends `key` for `host:port` to `file` (creating it and its folder).
pub(crate) fn learn(file: &Path, host: &str, port: u16, key: &PublicKey) -> io::Result<()> {
    if let Some(dir) = file.parent() {
        crate::private::create_dir(dir)?;
    }
    let existing = std::fs::read(file).unwrap_or_default();
    let mut line = String::new();
    if !existing.is_empty() && existing.last() != Some(&b'\n') {
        line.push('\n');
    }
    let mut openssh = key.clone();
    openssh.set_comment("");
    let encoded = openssh
        .to_openssh()
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    line.push_str(&format!("{} {}\n", known_as(host, port), encoded.trim()));
    // 0600: which hosts this computer talks to, and their keys, are
    // nobody else's business.
    let mut f = crate::private::append_file(file)?;
    f.write_all(line.as_bytes())
}

/// Whether `file` can take a new line (exists and writable, or creatable).
pub(crate) fn writable(file: &Path) -> bool {
    if file.exists() {
        return OpenOptions::new().append(true).open(file).is_ok();
    }
    // Creatable: the nearest existing ancestor is a writable directory.
    let mut dir = file.parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() {
            dir = Some(Path::new("."));
            continue;
        }
        if d.exists() {
            let c = std::ffi::CString::new(d.as_os_str().as_encoded_bytes()).ok();
            // SAFETY: a NUL-terminated path.
            return c.is_some_and(|c| unsafe { libc::access(c.as_ptr(), libc::W_OK) } == 0);
        }
        dir = d.parent();
    }
    false
}

struct Entry<'a> {
    marker: Option<&'a str>,
    hosts: &'a str,
    key_b64: &'a str,
}

fn parse_line(raw: &str) -> Option<Entry<'_>> {
    let line = raw.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let mut fields = line.split_whitespace();
    let mut first = fields.next()?;
    let mut marker = None;
    if first.starts_with('@') {
        marker = Some(first);
        first = fields.next()?;
    }
    let _key_type = fields.next()?;
    let key_b64 = fields.next()?;
    Some(Entry {
        marker,
        hosts: first,
        key_b64,
    })
}

/// OpenSSH `match_hostname`: any positive pattern matches and no negated
/// one does; hashed entries compare HMAC-SHA1(salt, name).
fn host_matches(name: &str, patterns: &str) -> bool {
    if let Some(hashed) = patterns.strip_prefix("|1|") {
        return hashed_matches(name, hashed);
    }
    let lower = name.to_ascii_lowercase();
    let mut matched = false;
    for pat in patterns.split(',') {
        let (negated, pat) = match pat.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, pat),
        };
        if wildcard(&pat.to_ascii_lowercase(), &lower) {
            if negated {
                return false;
            }
            matched = true;
        }
    }
    matched
}

fn hashed_matches(name: &str, salt_and_hash: &str) -> bool {
    let Some((salt, hash)) = salt_and_hash.split_once('|') else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (
        BASE64.decode(salt.as_bytes()),
        BASE64.decode(hash.as_bytes()),
    ) else {
        return false;
    };
    let Ok(mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(&salt) else {
        return false;
    };
    mac.chain_update(name.as_bytes())
        .verify_slice(&hash)
        .is_ok()
}

/// Glob with `*` and `?`.
fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const K2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAILIG2T/B0l0gaqj3puu510tu9N1OkQ4znY3LYuEm5zCF";

    fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).unwrap()
    }

    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("known_hosts");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn plain_port_and_changed_line_numbers_count_comments() {
        let (_d, p) = file(&format!(
            "# comment\n\n[h]:2222 ssh-ed25519 {K1}\nother ssh-ed25519 {K2}\n"
        ));
        let files = [p.clone()];
        assert_eq!(check(&files, "h", 2222, &key(K1)).unwrap(), Verdict::Known);
        assert_eq!(
            check(&files, "h", 2222, &key(K2)).unwrap(),
            Verdict::Changed { file: p, line: 3 }
        );
        assert_eq!(check(&files, "h", 22, &key(K1)).unwrap(), Verdict::Unknown);
        assert_eq!(
            check(&files, "nope", 22, &key(K1)).unwrap(),
            Verdict::Unknown
        );
    }

    #[test]
    fn hashed_wildcard_negation_and_rotation() {
        // From russh's own test: |1|... is example.com with K2.
        let (_d, p) = file(&format!(
            "|1|O33ESRMWPVkMYIwJ1Uw+n877jTo=|nuuC5vEqXlEZ/8BXQR7m619W6Ak= ssh-ed25519 {K2}\n\
             *.lan,!bad.lan\tssh-ed25519 {K1}\n\
             two ssh-ed25519 {K1}\ntwo ssh-ed25519 {K2}\n"
        ));
        let files = [p];
        assert_eq!(
            check(&files, "example.com", 22, &key(K2)).unwrap(),
            Verdict::Known
        );
        assert_eq!(
            check(&files, "a.lan", 22, &key(K1)).unwrap(),
            Verdict::Known
        );
        assert_eq!(
            check(&files, "bad.lan", 22, &key(K1)).unwrap(),
            Verdict::Unknown
        );
        assert_eq!(check(&files, "two", 22, &key(K2)).unwrap(), Verdict::Known);
    }

    #[test]
    fn learn_appends_and_then_knows() {
        let (_d, p) = file("x ssh-ed25519 AAAA"); // no final newline, bad key
        learn(&p, "10.0.0.1", 2200, &key(K1)).unwrap();
        let files = [p.clone()];
        assert_eq!(
            check(&files, "10.0.0.1", 2200, &key(K1)).unwrap(),
            Verdict::Known
        );
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(
            text.ends_with(&format!("\n[10.0.0.1]:2200 ssh-ed25519 {K1}\n")),
            "{text}"
        );
    }

    #[test]
    fn revoked_key_is_refused() {
        let (_d, p) = file(&format!("@revoked * ssh-ed25519 {K1}\n"));
        assert!(matches!(
            check(&[p], "any", 22, &key(K1)).unwrap(),
            Verdict::Changed { line: 1, .. }
        ));
    }
}
