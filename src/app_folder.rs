//! The app folder sent to a host (`[app] source` a local folder), read
//! before planning so the plan stays pure.
//!
//! What `docker build` would leave out stays here: the folder's
//! `.dockerignore` (Docker's own rules, see [`crate::dockerignore`]), after
//! provision's built-in rules (`.git`, `log`, `tmp`, `node_modules`,
//! `.bundle`), which the file may take back with `!`. Private files stay
//! here too, whatever `.dockerignore` says: provision's state folder, its
//! secrets and known_hosts files, `.env*`, Rails' `config/master.key` and
//! `config/credentials/*.key`, key files (`*.pem`, `*.key`, `id_rsa`, ...)
//! and any file holding a PEM or OpenSSH private key. `[app] include`
//! sends named private files anyway (never the state folder). The plan
//! shows what was left out and why: names and counts, never contents.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::diagnostics::Diagnostic;
use crate::dockerignore::{self, Pattern};
use crate::inventory::Inventory;
use crate::templates::ContextFile;

/// The files to send, and what was left out.
#[derive(Debug, Clone, Default)]
pub struct AppFolder {
    /// Under `app/` in the build context, in path order.
    pub files: Vec<ContextFile>,
    pub report: AppFolderReport,
}

/// What the plan says about the app folder.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AppFolderReport {
    /// The folder as hosts.toml names it.
    pub source: String,
    /// Files that go to the host.
    pub sent: usize,
    pub left_out: Vec<LeftOut>,
}

/// One file or folder that stays on this computer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeftOut {
    /// Relative to the app folder; a folder ends with `/`.
    pub path: String,
    /// Files it holds (1 for a file).
    pub files: usize,
    /// The rule that left it out.
    pub why: String,
    /// Left out as private: `[app] include` can send it anyway.
    pub private: bool,
}

/// As if they were the first lines of every `.dockerignore`.
const BUILT_IN: &[&str] = &[".git", "log", "tmp", "node_modules", ".bundle"];

/// Private by name, at any depth, first match wins.
const PRIVATE_NAMES: &[(&str, &str)] = &[
    ("**/.env*", "an environment file (.env*)"),
    ("**/config/master.key", "the Rails master key"),
    ("**/config/credentials/*.key", "a Rails credentials key"),
    ("**/id_rsa", "an SSH private key"),
    ("**/id_dsa", "an SSH private key"),
    ("**/id_ecdsa", "an SSH private key"),
    ("**/id_ecdsa_sk", "an SSH private key"),
    ("**/id_ed25519", "an SSH private key"),
    ("**/id_ed25519_sk", "an SSH private key"),
    ("**/*.pem", "a key or certificate file (*.pem)"),
    ("**/*.key", "a key file (*.key)"),
    ("**/*.p12", "a key store (*.p12)"),
    ("**/*.pfx", "a key store (*.pfx)"),
];

const STATE_FOLDER: &str = "provision's state folder (keys, secrets, backups, logs): never sent";

/// Read `dir` (the app folder of `inv`) with every rule above.
pub fn read(inv: &Inventory, dir: &Path, source: &str) -> Result<AppFolder, Vec<Diagnostic>> {
    let io_error = |e: std::io::Error, p: &Path| {
        vec![inv.diagnostic(
            "app.source",
            format!("cannot read app folder {}: {e}", p.display()),
            None,
        )]
    };
    let ignore_file = dir.join(".dockerignore");
    let mut rules: Vec<Pattern> = BUILT_IN
        .iter()
        .map(|p| Pattern::new(p, 0).expect("a valid built-in rule"))
        .collect();
    match std::fs::read_to_string(&ignore_file) {
        Ok(text) => rules.extend(dockerignore::parse(&text).map_err(|e| {
            vec![Diagnostic {
                file: ignore_file.clone(),
                line: e.line,
                column: 1,
                key_path: String::new(),
                message: e.message,
                hint: Some("Docker's .dockerignore syntax: see https://docs.docker.com/build/concepts/context/#dockerignore-files".into()),
            }]
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error(e, &ignore_file)),
    }
    let includes: Vec<Pattern> = inv
        .app_include
        .iter()
        .filter_map(|p| Pattern::new(p, 0).ok())
        .collect();
    let identity = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let project = &inv.project;
    let state_dir = identity(&project.state_dir);
    let state_files: Vec<(u64, u64, &str)> = [
        (
            &project.secrets_file,
            "provision's secrets file: never sent",
        ),
        (
            &project.known_hosts,
            "provision's known_hosts file: never sent",
        ),
    ]
    .into_iter()
    .filter_map(|(p, why)| identity(p).map(|(d, i)| (d, i, why)))
    .collect();

    let mut walk = Walk {
        rules: &rules,
        exceptions: rules.iter().filter(|r| r.exception).collect(),
        includes: &includes,
        used: vec![false; includes.len()],
        state_dir,
        state_files,
        files: Vec::new(),
        left_out: Vec::new(),
    };
    walk.folder(dir, "").map_err(|(e, p)| io_error(e, &p))?;

    let mut problems = Vec::new();
    for (i, used) in walk.used.iter().enumerate() {
        if !used {
            problems.push(
                inv.diagnostic(
                    &format!("app.include[{i}]"),
                    format!(
                        "`{}` matches no private file of the app folder {}",
                        inv.app_include[i],
                        dir.display()
                    ),
                    Some(
                        "include sends files left out as private (the plan lists them); \
                     a file that .dockerignore leaves out stays out: edit .dockerignore"
                            .into(),
                    ),
                ),
            );
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut files = walk.files;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut left_out = walk.left_out;
    left_out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(AppFolder {
        report: AppFolderReport {
            source: source.to_string(),
            sent: files.len(),
            left_out,
        },
        files,
    })
}

struct Walk<'a> {
    rules: &'a [Pattern],
    /// `!` lines: a left-out folder that one of them may reach into is
    /// walked, as Docker does; any other is left out whole.
    exceptions: Vec<&'a Pattern>,
    includes: &'a [Pattern],
    used: Vec<bool>,
    state_dir: Option<(u64, u64)>,
    state_files: Vec<(u64, u64, &'static str)>,
    files: Vec<ContextFile>,
    left_out: Vec<LeftOut>,
}

type WalkError = (std::io::Error, PathBuf);

fn fail(p: &Path) -> impl FnOnce(std::io::Error) -> WalkError + '_ {
    move |e| (e, p.to_path_buf())
}

impl Walk<'_> {
    fn folder(&mut self, dir: &Path, prefix: &str) -> Result<(), WalkError> {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .map_err(fail(dir))?
            .collect::<Result<_, _>>()
            .map_err(fail(dir))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let rel = format!("{prefix}{}", entry.file_name().to_string_lossy());
            let file_type = entry.file_type().map_err(fail(&path))?;
            // A link to a file is sent as the file it points to (its
            // content is checked like any other); a link to a folder is not
            // followed (it could lead anywhere, or in a circle).
            let meta = if file_type.is_symlink() {
                match std::fs::metadata(&path) {
                    Ok(m) if m.is_dir() => {
                        self.leave_out(&rel, 1, "a link to a folder: not followed", false);
                        continue;
                    }
                    Ok(m) => m,
                    Err(_) => {
                        self.leave_out(&rel, 1, "a broken link", false);
                        continue;
                    }
                }
            } else {
                entry.metadata().map_err(fail(&path))?
            };
            let id = (meta.dev(), meta.ino());
            if meta.is_dir() {
                if Some(id) == self.state_dir {
                    let n = count_files(&path);
                    self.leave_out(&format!("{rel}/"), n, STATE_FOLDER, false);
                } else if let Some(rule) = dockerignore::decide(self.rules, &rel)
                    .filter(|_| !self.exceptions.iter().any(|e| e.may_match_below(&rel)))
                {
                    let why = rule_name(rule);
                    let n = count_files(&path);
                    self.leave_out(&format!("{rel}/"), n, &why, false);
                } else {
                    self.folder(&path, &format!("{rel}/"))?;
                }
                continue;
            }
            if let Some(&(_, _, why)) = self.state_files.iter().find(|(d, i, _)| (*d, *i) == id) {
                self.leave_out(&rel, 1, why, false);
                continue;
            }
            if let Some(rule) = dockerignore::decide(self.rules, &rel) {
                let why = rule_name(rule);
                self.leave_out(&rel, 1, &why, false);
                continue;
            }
            let data = std::fs::read(&path).map_err(fail(&path))?;
            if let Some(why) = private_reason(&rel, &data) {
                let mut included = false;
                for (i, inc) in self.includes.iter().enumerate() {
                    if inc.matches(&rel) {
                        self.used[i] = true;
                        included = true;
                    }
                }
                if !included {
                    self.leave_out(&rel, 1, &format!("private: {why}"), true);
                    continue;
                }
            }
            let mode = if meta.permissions().mode() & 0o111 != 0 {
                0o755
            } else {
                0o644
            };
            self.files.push(ContextFile {
                path: format!("app/{rel}"),
                mode,
                data,
            });
        }
        Ok(())
    }

    fn leave_out(&mut self, path: &str, files: usize, why: &str, private: bool) {
        self.left_out.push(LeftOut {
            path: path.to_string(),
            files,
            why: why.to_string(),
            private,
        });
    }
}

fn rule_name(rule: &Pattern) -> String {
    if rule.line == 0 {
        format!("built-in rule `{}`", rule.text)
    } else {
        format!(".dockerignore line {}: `{}`", rule.line, rule.text)
    }
}

/// Why a file that would be sent is private, by its name or its content.
pub fn private_reason(rel: &str, data: &[u8]) -> Option<&'static str> {
    static RULES: std::sync::LazyLock<Vec<(Pattern, &'static str)>> =
        std::sync::LazyLock::new(|| {
            PRIVATE_NAMES
                .iter()
                .map(|(p, why)| (Pattern::new(p, 0).expect("a valid private-name rule"), *why))
                .collect()
        });
    if let Some((_, why)) = RULES.iter().find(|(p, _)| p.matches(rel)) {
        return Some(why);
    }
    holds_private_key(data).then_some("it holds a private key")
}

/// A PEM block (`-----BEGIN RSA PRIVATE KEY-----`, `... EC ...`,
/// `ENCRYPTED ...`, PGP's `PRIVATE KEY BLOCK`) or an OpenSSH private key.
fn holds_private_key(data: &[u8]) -> bool {
    const BEGIN: &[u8] = b"-----BEGIN ";
    let mut rest = data;
    while let Some(i) = find(rest, BEGIN) {
        let after = &rest[i + BEGIN.len()..];
        let line_end = after
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(after.len());
        if find(&after[..line_end], b"PRIVATE KEY").is_some() {
            return true;
        }
        rest = after;
    }
    false
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Files below `dir` (links counted, not followed), for the plan's counts.
fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(_) => n += 1,
                Err(_) => {}
            }
        }
    }
    n
}

/// The plan's lines about the app folder (names and counts only).
pub fn describe(report: &AppFolderReport) -> String {
    /// Enough to see what is going on; the JSON plan has them all.
    const SHOWN: usize = 40;
    let mut out = format!(
        "App folder {}: {} file{} sent",
        report.source,
        report.sent,
        if report.sent == 1 { "" } else { "s" }
    );
    if report.left_out.is_empty() {
        out.push_str(", nothing left out\n");
        return out;
    }
    let files: usize = report.left_out.iter().map(|l| l.files).sum();
    out.push_str(&format!(
        "; left out {files} file{} (names only, never contents):\n",
        if files == 1 { "" } else { "s" }
    ));
    for l in report.left_out.iter().take(SHOWN) {
        let count = if l.path.ends_with('/') {
            format!(" ({} file{})", l.files, if l.files == 1 { "" } else { "s" })
        } else {
            String::new()
        };
        out.push_str(&format!("  {}{count}: {}\n", l.path, l.why));
    }
    if report.left_out.len() > SHOWN {
        out.push_str(&format!(
            "  ... and {} more (--json lists them all)\n",
            report.left_out.len() - SHOWN
        ));
    }
    if report.left_out.iter().any(|l| l.private) {
        out.push_str("  ([app] include = [\"PATH\"] sends a private file anyway)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_by_name_at_any_depth() {
        for rel in [
            ".env",
            ".env.production",
            "sub/.env.local",
            "config/master.key",
            "engines/x/config/master.key",
            "config/credentials/production.key",
            "deploy/id_rsa",
            "id_ed25519",
            "certs/server.pem",
            "tls.key",
            "store.p12",
        ] {
            assert!(private_reason(rel, b"").is_some(), "{rel}");
        }
        for rel in [
            "Gemfile",
            "config/credentials.yml.enc",
            "config/credentials/production.yml.enc",
            "id_rsa.pub",
            "app/models/environment.rb",
            "docs/keys.md",
        ] {
            assert_eq!(private_reason(rel, b"plain text"), None, "{rel}");
        }
        assert_eq!(
            private_reason("config/master.key", b""),
            Some("the Rails master key")
        );
    }

    #[test]
    fn private_by_content() {
        for text in [
            "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n",
            "x\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3Bl\n",
            "-----BEGIN PRIVATE KEY-----\n",
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\n",
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\n",
        ] {
            assert_eq!(
                private_reason("deploy_key", text.as_bytes()),
                Some("it holds a private key"),
                "{text}"
            );
        }
        // A certificate, or the words on another line, are not a key.
        assert_eq!(
            private_reason("ca-bundle.crt", b"-----BEGIN CERTIFICATE-----\nMIIB\n"),
            None
        );
        assert_eq!(
            private_reason(
                "notes.txt",
                b"-----BEGIN CERTIFICATE-----\nno PRIVATE KEY here\n"
            ),
            None
        );
    }

    #[test]
    fn the_description_names_and_counts() {
        let report = AppFolderReport {
            source: "app".into(),
            sent: 3,
            left_out: vec![
                LeftOut {
                    path: ".env".into(),
                    files: 1,
                    why: "private: an environment file (.env*)".into(),
                    private: true,
                },
                LeftOut {
                    path: "node_modules/".into(),
                    files: 120,
                    why: ".dockerignore line 1: `node_modules`".into(),
                    private: false,
                },
            ],
        };
        assert_eq!(
            describe(&report),
            "App folder app: 3 files sent; left out 121 files (names only, never contents):\n  \
             .env: private: an environment file (.env*)\n  \
             node_modules/ (120 files): .dockerignore line 1: `node_modules`\n  \
             ([app] include = [\"PATH\"] sends a private file anyway)\n"
        );
    }
}
