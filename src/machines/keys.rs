//! SSH keys for the playground: the project's client key (generated once, no
//! external binary) and the project's known_hosts file with each machine's
//! host key, so strict host-key checking works from the first run.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;

use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::ssh_key::LineEnding;
use russh::keys::PrivateKey;

use super::Error;

/// File name of the project's private key in the state folder (`.pub` beside it).
pub const PROJECT_KEY: &str = "id_ed25519";
/// File name of the project's known_hosts in the state folder.
pub const KNOWN_HOSTS: &str = "known_hosts";

/// Return the project key's public line (`ssh-ed25519 AAAA... comment`),
/// generating `STATE_DIR/id_ed25519` (0600) and its `.pub` the first time.
pub fn ensure_project_key(state_dir: &Path, comment: &str) -> Result<String, Error> {
    let private_path = state_dir.join(PROJECT_KEY);
    let public_path = state_dir.join(format!("{PROJECT_KEY}.pub"));
    let io = |what: String| move |source| Error::Io { what, source };
    if private_path.exists() {
        let text = std::fs::read_to_string(&private_path)
            .map_err(io(format!("cannot read {}", private_path.display())))?;
        let key = PrivateKey::from_openssh(&text).map_err(|e| {
            Error::Invalid(format!(
                "{} is not an OpenSSH key: {e}",
                private_path.display()
            ))
        })?;
        return public_line(&key);
    }
    crate::private::create_dir(state_dir)
        .map_err(io(format!("cannot create {}", state_dir.display())))?;
    let seed: [u8; 32] = rand::random();
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    key.set_comment(comment);
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| Error::Invalid(format!("cannot encode the project key: {e}")))?;
    let public = public_line(&key)?;
    // Write beside and rename, so a reader never sees half a key.
    let partial = state_dir.join(format!(".{PROJECT_KEY}.{}", std::process::id()));
    let mut file = crate::private::create_file(&partial)
        .map_err(io(format!("cannot write {}", partial.display())))?;
    file.write_all(private.as_bytes())
        .map_err(io(format!("cannot write {}", partial.display())))?;
    crate::private::write_file(&public_path, format!("{public}\n").as_bytes())
        .map_err(io(format!("cannot write {}", public_path.display())))?;
    std::fs::rename(&partial, &private_path)
        .map_err(io(format!("cannot write {}", private_path.display())))?;
    Ok(public)
}

fn public_line(key: &PrivateKey) -> Result<String, Error> {
    key.public_key()
        .to_openssh()
        .map_err(|e| Error::Invalid(format!("cannot encode a public key: {e}")))
}

/// `ADDRESS TYPE BASE64` from a host's `.pub` file text (its comment dropped).
pub fn known_hosts_line(address: Ipv4Addr, host_pub: &str) -> Option<String> {
    let mut fields = host_pub.split_whitespace();
    let kind = fields.next()?;
    let blob = fields.next()?;
    Some(format!("{address} {kind} {blob}"))
}

/// known_hosts text with every line for `address` removed, then `lines` appended.
pub fn replace_hosts(existing: &str, addresses: &[Ipv4Addr], lines: &[String]) -> String {
    let mut out = String::new();
    for line in existing.lines() {
        let hosts = line.split_whitespace().next().unwrap_or("");
        let stale = hosts
            .split(',')
            .any(|h| addresses.iter().any(|a| h == a.to_string()));
        if !stale && !line.trim().is_empty() {
            out.push_str(line);
            out.push('\n');
        }
    }
    for line in lines {
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Rewrite `path` so `addresses` have exactly the given `lines` (none: forgotten).
pub fn update_known_hosts(
    path: &Path,
    addresses: &[Ipv4Addr],
    lines: &[String],
) -> Result<(), Error> {
    let existing = std::fs::read_to_string(path).unwrap_or_default();
    let updated = replace_hosts(&existing, addresses, lines);
    if updated == existing {
        return Ok(());
    }
    crate::private::write_file(path, updated.as_bytes()).map_err(|source| Error::Io {
        what: format!("cannot write {}", path.display()),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_the_addresses_given() {
        let a = Ipv4Addr::new(10, 0, 0, 5);
        let b = Ipv4Addr::new(10, 0, 0, 6);
        let existing = "10.0.0.5 ssh-ed25519 OLD\n10.0.0.50 ssh-ed25519 KEEP\n\
                        other,10.0.0.5 ssh-rsa OLD2\n10.0.0.6 ssh-ed25519 B\n";
        let line = known_hosts_line(a, "ssh-ed25519 NEW root@web\n").unwrap();
        assert_eq!(line, "10.0.0.5 ssh-ed25519 NEW");
        assert_eq!(
            replace_hosts(existing, &[a], &[line]),
            "10.0.0.50 ssh-ed25519 KEEP\n10.0.0.6 ssh-ed25519 B\n10.0.0.5 ssh-ed25519 NEW\n"
        );
        assert_eq!(
            replace_hosts(existing, &[a, b], &[]),
            "10.0.0.50 ssh-ed25519 KEEP\n"
        );
    }

    #[test]
    fn project_key_is_generated_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_project_key(dir.path(), "provision@demo").unwrap();
        assert!(first.starts_with("ssh-ed25519 AAAA"), "{first}");
        assert!(first.ends_with(" provision@demo"));
        let again = ensure_project_key(dir.path(), "provision@demo").unwrap();
        assert_eq!(first, again);
        let mode = std::fs::metadata(dir.path().join(PROJECT_KEY))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let public = std::fs::read_to_string(dir.path().join("id_ed25519.pub")).unwrap();
        assert_eq!(public.trim(), first);
    }
}
