//! Local state stays private: the state folder and its subfolders are 0700,
//! every file provision writes there (secrets, keys, known_hosts, backups,
//! logs) 0600. Every such folder and file is created here, so no caller
//! can forget a mode; [`find_loose`] and [`tighten`] repair a state folder
//! made looser by hand, by a `cp`, or by an older provision.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Folders: the owner alone may list and enter them.
pub const DIR_MODE: u32 = 0o700;
/// Files: the owner alone may read and write them.
pub const FILE_MODE: u32 = 0o600;
/// The bits that let anyone but the owner in.
const OTHERS: u32 = 0o077;

/// Create `dir` and its missing parents with mode 0700. Folders that exist
/// already are left as they are: the user's own folders (a `-o` path) are
/// not ours to change, and the state folder is repaired by [`tighten`],
/// which says so.
pub fn create_dir(dir: &Path) -> io::Result<()> {
    if dir.as_os_str().is_empty() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
}

fn create_parent(path: &Path) -> io::Result<()> {
    match path.parent() {
        Some(d) => create_dir(d),
        None => Ok(()),
    }
}

/// Open `path` for writing from the start (created, or truncated), mode
/// 0600. A file that existed with a looser mode is tightened first: its old
/// content is being replaced by something private.
pub fn create_file(path: &Path) -> io::Result<File> {
    create_parent(path)?;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)?;
    let mode = f.metadata()?.permissions().mode();
    if mode & OTHERS != 0 {
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777 & !OTHERS))?;
    }
    Ok(f)
}

/// Open `path` for appending, created with mode 0600 when missing. An
/// existing file keeps its mode (the state folder's files are repaired by
/// [`tighten`] with a message; a user's own file is not ours to change).
pub fn append_file(path: &Path) -> io::Result<File> {
    create_parent(path)?;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

/// Replace `path` with `data` (mode 0600), through a file beside it that is
/// renamed only when complete, so a reader never sees half of it.
pub fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut partial = path.as_os_str().to_owned();
    partial.push(format!(".partial.{}", std::process::id()));
    let partial = PathBuf::from(partial);
    let written = create_file(&partial)
        .and_then(|mut f| f.write_all(data))
        .and_then(|()| std::fs::rename(&partial, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

/// A folder or file that others may read, list or write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loose {
    pub path: PathBuf,
    pub mode: u32,
    /// The same mode without the group's and others' bits.
    pub wanted: u32,
}

/// Every folder and file of `state_dir` (walked whole, symbolic links not
/// followed) and each of `files` (the secrets and known_hosts files, which
/// may live elsewhere) that anyone but its owner may reach. Missing paths
/// are fine: nothing to repair.
pub fn find_loose(state_dir: Option<&Path>, files: &[&Path]) -> Vec<Loose> {
    let mut out: Vec<Loose> = Vec::new();
    let check = |out: &mut Vec<Loose>, path: &Path, meta: &std::fs::Metadata| {
        let mode = meta.permissions().mode() & 0o7777;
        if mode & OTHERS != 0 && !out.iter().any(|l| l.path == path) {
            out.push(Loose {
                path: path.to_path_buf(),
                mode,
                wanted: mode & !OTHERS,
            });
        }
    };
    // The state folder itself may be a link to a folder elsewhere: that
    // folder is the one to keep private.
    if let Some((state_dir, Ok(meta))) = state_dir.map(|d| (d, std::fs::metadata(d))) {
        if meta.is_dir() {
            check(&mut out, state_dir, &meta);
            let mut stack = vec![state_dir.to_path_buf()];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = std::fs::read_dir(&dir) else {
                    continue;
                };
                let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
                entries.sort();
                for p in entries {
                    let Ok(meta) = std::fs::symlink_metadata(&p) else {
                        continue;
                    };
                    // A link's own mode means nothing, and chmod would
                    // change whatever it points to.
                    if meta.file_type().is_symlink() {
                        continue;
                    }
                    check(&mut out, &p, &meta);
                    if meta.is_dir() {
                        stack.push(p);
                    }
                }
            }
        }
    }
    for f in files {
        if state_dir.is_some_and(|d| f.starts_with(d)) {
            continue;
        }
        if let Ok(meta) = std::fs::metadata(f) {
            if meta.is_file() {
                check(&mut out, f, &meta);
            }
        }
    }
    out
}

/// Take the group's and others' bits off each of `loose`.
pub fn tighten(loose: &[Loose]) -> Result<(), String> {
    for l in loose {
        std::fs::set_permissions(&l.path, std::fs::Permissions::from_mode(l.wanted)).map_err(
            |e| {
                format!(
                    "cannot make {} private (chmod {:04o}): {e}",
                    l.path.display(),
                    l.wanted
                )
            },
        )?;
    }
    Ok(())
}

/// One line per path: `  PATH: 0755 -> 0700`.
pub fn describe(loose: &[Loose]) -> String {
    loose
        .iter()
        .map(|l| {
            format!(
                "  {}: {:04o} -> {:04o}\n",
                l.path.display(),
                l.mode,
                l.wanted
            )
        })
        .collect()
}

/// Check the project's local state (its state folder, secrets file and
/// known_hosts file) before a command uses it; with `apply`, tighten what
/// others can reach. Returns what to tell the user (empty: all private).
///
/// A state folder that holds hosts.toml is the project folder itself: it is
/// not walked (that would chmod the whole project), only warned about.
pub fn check_state(inv: &crate::inventory::Inventory, apply: bool) -> Result<String, String> {
    let p = &inv.project;
    let canonical = |d: &Path| d.canonicalize().ok();
    let holds_project = match (canonical(&inv.root), canonical(&p.state_dir)) {
        (Some(root), Some(state)) => root.starts_with(state),
        _ => false,
    };
    let mut out = String::new();
    if holds_project {
        out.push_str(&format!(
            "provision: warning: state_dir {} holds {}: it is not made private; \
             give [project] state_dir a folder of its own\n",
            p.state_dir.display(),
            inv.file.display()
        ));
    }
    let walk = (!holds_project).then_some(p.state_dir.as_path());
    let loose = find_loose(walk, &[&p.secrets_file, &p.known_hosts]);
    if loose.is_empty() {
        return Ok(out);
    }
    if apply {
        tighten(&loose)?;
        out.push_str("provision: the state folder was open to other users; made it private:\n");
    } else {
        out.push_str(
            "provision: warning: the state folder is open to other users \
             (a run without --dry-run makes it private):\n",
        );
    }
    out.push_str(&describe(&loose));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn chmod(p: &Path, m: u32) {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    }

    #[test]
    fn created_folders_and_files_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state/backups");
        create_dir(&state).unwrap();
        assert_eq!(mode(&dir.path().join("state")), 0o700);
        assert_eq!(mode(&state), 0o700);
        let f = state.join("a.tar");
        create_file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
        let g = dir.path().join("state/logs/run.log");
        append_file(&g).unwrap();
        assert_eq!(mode(&g), 0o600);
        assert_eq!(mode(&dir.path().join("state/logs")), 0o700);
        let h = dir.path().join("state/known_hosts");
        write_file(&h, b"x\n").unwrap();
        assert_eq!(mode(&h), 0o600);
        assert_eq!(std::fs::read(&h).unwrap(), b"x\n");
    }

    #[test]
    fn create_file_tightens_a_file_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("old.tar.partial");
        std::fs::write(&f, b"old").unwrap();
        chmod(&f, 0o644);
        create_file(&f).unwrap();
        assert_eq!(mode(&f), 0o600);
    }

    #[test]
    fn loose_entries_are_found_and_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join(".provision");
        std::fs::create_dir_all(state.join("backups")).unwrap();
        std::fs::write(state.join("secrets.env"), "A=b\n").unwrap();
        std::fs::write(state.join("backups/db.tar"), "").unwrap();
        std::fs::write(state.join("id_ed25519"), "").unwrap();
        chmod(&state, 0o755);
        chmod(&state.join("backups"), 0o775);
        chmod(&state.join("secrets.env"), 0o644);
        chmod(&state.join("backups/db.tar"), 0o666);
        chmod(&state.join("id_ed25519"), 0o600);
        // A link inside is never followed: its target is not ours.
        let outside = dir.path().join("outside.txt");
        std::fs::write(&outside, "").unwrap();
        chmod(&outside, 0o644);
        std::os::unix::fs::symlink(&outside, state.join("link")).unwrap();
        let elsewhere = dir.path().join("my-secrets.env");
        std::fs::write(&elsewhere, "").unwrap();
        chmod(&elsewhere, 0o640);

        let loose = find_loose(Some(&state), &[&elsewhere, &state.join("secrets.env")]);
        let found: Vec<(String, u32, u32)> = loose
            .iter()
            .map(|l| {
                (
                    l.path
                        .strip_prefix(dir.path())
                        .unwrap()
                        .display()
                        .to_string(),
                    l.mode,
                    l.wanted,
                )
            })
            .collect();
        assert_eq!(
            found,
            vec![
                (".provision".to_string(), 0o755, 0o700),
                (".provision/backups".to_string(), 0o775, 0o700),
                (".provision/secrets.env".to_string(), 0o644, 0o600),
                (".provision/backups/db.tar".to_string(), 0o666, 0o600),
                ("my-secrets.env".to_string(), 0o640, 0o600),
            ]
        );
        tighten(&loose).unwrap();
        assert!(find_loose(Some(&state), &[&elsewhere]).is_empty());
        assert_eq!(mode(&outside), 0o644);
        assert!(describe(&loose).contains(".provision/secrets.env: 0644 -> 0600\n"));
    }

    #[test]
    fn a_missing_state_folder_is_nothing_to_repair() {
        let dir = tempfile::tempdir().unwrap();
        assert!(find_loose(Some(&dir.path().join("none")), &[&dir.path().join("x")]).is_empty());
    }
}
