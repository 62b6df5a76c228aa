//! `~/.ssh/config` support.
//!
//! Honoured for the Host blocks whose patterns match the target's address
//! (first value wins, as in OpenSSH): `HostName`, `User`, `Port`,
//! `IdentityFile` (all listed files are tried, `~` expanded) and `ProxyJump`
//! (`[user@]host[:port]`, comma lists hop by hop, `none`). `Include`d
//! files are read as OpenSSH reads them (relative to `~/.ssh`, globs).
//!
//! Precedence: explicit target values beat the file. A target's `user` of
//! `""` and `port` of `0` mean "from the file, else the current user / 22";
//! `identity: None` means "the file's IdentityFile, else the agent and the
//! default keys".
//!
//! Not supported (silently ignored): `Match` blocks, `%` tokens,
//! `ProxyCommand`, `HostKeyAlias`, `CertificateFile`, `IdentitiesOnly`,
//! `StrictHostKeyChecking`/`UserKnownHostsFile` (the target's
//! `host_key_policy` and `known_hosts` decide), algorithm lists.

use std::io::BufReader;
use std::path::{Path, PathBuf};

use ssh2_config::{ParseRule, SshConfig};

/// The address, user, port and keys to use once the config is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Resolved {
    pub address: String,
    pub port: u16,
    pub user: String,
    pub identities: Vec<PathBuf>,
    /// Remaining hops, outermost first (`ProxyJump a,b` -> `["a", "b"]`).
    pub jumps: Vec<String>,
}

/// What the config's Host blocks matching `address` say about the user and
/// the port (`None` where they say nothing, or the file is missing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Login {
    pub user: Option<String>,
    pub port: Option<u16>,
}

/// [`Login`] for `address` from `config_file`.
pub(crate) fn login(config_file: &Path, address: &str) -> Result<Login, String> {
    Ok(match read(config_file)? {
        Some(config) => {
            let params = config.query(address);
            Login {
                user: params.user,
                port: params.port,
            }
        }
        None => Login::default(),
    })
}

fn read(config_file: &Path) -> Result<Option<SshConfig>, String> {
    match std::fs::File::open(config_file) {
        Ok(f) => SshConfig::default()
            .parse(
                &mut BufReader::new(f),
                ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS,
            )
            .map(Some)
            .map_err(|e| format!("{}: {e}", config_file.display())),
        Err(_) => Ok(None),
    }
}

/// Applies `config_file` (if it exists) to the explicit values.
pub(crate) fn resolve(
    config_file: &Path,
    address: &str,
    port: u16,
    user: &str,
    identity: Option<&Path>,
) -> Result<Resolved, String> {
    let config = read(config_file)?;
    let mut r = Resolved {
        address: address.to_string(),
        port,
        user: user.to_string(),
        identities: identity.map(|p| vec![p.to_path_buf()]).unwrap_or_default(),
        jumps: Vec::new(),
    };
    if let Some(config) = config {
        let params = config.query(address);
        if let Some(h) = params.host_name {
            r.address = h;
        }
        if r.port == 0 {
            r.port = params.port.unwrap_or(0);
        }
        if r.user.is_empty() {
            r.user = params.user.unwrap_or_default();
        }
        if r.identities.is_empty() {
            r.identities = params.identity_file.unwrap_or_default();
        }
        if let Some(hops) = params.proxy_jump {
            let none = hops.len() == 1 && hops[0].eq_ignore_ascii_case("none");
            if !none {
                r.jumps = hops
                    .iter()
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect();
            }
        }
    }
    if r.port == 0 {
        r.port = 22;
    }
    if r.user.is_empty() {
        r.user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    }
    Ok(r)
}

/// Splits a ProxyJump hop `[user@]host[:port]` (or `[v6]:port`).
pub(crate) fn parse_hop(hop: &str) -> (String, String, u16) {
    let (user, rest) = match hop.rsplit_once('@') {
        Some((u, r)) => (u.to_string(), r),
        None => (String::new(), hop),
    };
    if let Some(v6) = rest.strip_prefix('[') {
        if let Some((h, p)) = v6.split_once("]:") {
            return (user, h.to_string(), p.parse().unwrap_or(0));
        }
        return (user, v6.trim_end_matches(']').to_string(), 0);
    }
    match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (user, h.to_string(), p.parse().unwrap_or(0)),
        _ => (user, rest.to_string(), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_values_apply_and_explicit_ones_win() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("config");
        std::fs::write(
            &cfg,
            "Host web\n  HostName 10.1.2.3\n  User deploy\n  Port 2200\n  IdentityFile /k/id\n  ProxyJump bastion,me@gw:2022\n  ForwardAgent yes\n\nHost *\n  User nobody\n",
        )
        .unwrap();
        let r = resolve(&cfg, "web", 0, "", None).unwrap();
        assert_eq!(r.address, "10.1.2.3");
        assert_eq!(r.port, 2200);
        assert_eq!(r.user, "deploy");
        assert_eq!(r.identities, vec![PathBuf::from("/k/id")]);
        assert_eq!(r.jumps, vec!["bastion", "me@gw:2022"]);
        let r = resolve(&cfg, "web", 22, "root", Some(Path::new("/x"))).unwrap();
        assert_eq!((r.port, r.user.as_str()), (22, "root"));
        assert_eq!(r.identities, vec![PathBuf::from("/x")]);
        let r = resolve(&cfg, "db", 0, "", None).unwrap();
        assert_eq!(
            (r.address.as_str(), r.port, r.user.as_str()),
            ("db", 22, "nobody")
        );
        assert!(r.jumps.is_empty());
    }

    #[test]
    fn login_says_only_what_the_file_says() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("config");
        std::fs::write(&cfg, "Host web\n  Port 2222\n\nHost db\n  User deploy\n").unwrap();
        assert_eq!(
            login(&cfg, "web").unwrap(),
            Login {
                user: None,
                port: Some(2222)
            }
        );
        assert_eq!(login(&cfg, "db").unwrap().user.as_deref(), Some("deploy"));
        assert_eq!(login(&cfg, "other").unwrap(), Login::default());
        assert_eq!(
            login(Path::new("/nonexistent/config"), "web").unwrap(),
            Login::default()
        );
    }

    #[test]
    fn proxy_jump_none_and_included_files() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("config");
        let more = d.path().join("more.conf");
        std::fs::write(&more, "Host db\n  HostName 10.9.9.9\n  ProxyJump none\n").unwrap();
        std::fs::write(
            &cfg,
            format!("Include {}\n\nHost *\n  ProxyJump gw\n", more.display()),
        )
        .unwrap();
        let r = resolve(&cfg, "db", 0, "u", None).unwrap();
        assert_eq!(r.address, "10.9.9.9");
        assert!(r.jumps.is_empty(), "the first ProxyJump (none) wins: {r:?}");
        let r = resolve(&cfg, "web", 0, "u", None).unwrap();
        assert_eq!(r.jumps, vec!["gw"]);
    }

    #[test]
    fn missing_file_changes_nothing() {
        let r = resolve(Path::new("/nonexistent/config"), "h", 0, "u", None).unwrap();
        assert_eq!(
            (r.address.as_str(), r.port, r.user.as_str()),
            ("h", 22, "u")
        );
    }

    #[test]
    fn hops() {
        assert_eq!(parse_hop("gw"), ("".into(), "gw".into(), 0));
        assert_eq!(parse_hop("me@gw:2022"), ("me".into(), "gw".into(), 2022));
        assert_eq!(parse_hop("[::1]:22"), ("".into(), "::1".into(), 22));
    }
}
