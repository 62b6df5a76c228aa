//! Public key authentication: key files (ed25519, ecdsa, rsa with the best
//! rsa-sha2 hash the server offers), passphrases (env var or TTY prompt),
//! and ssh-agent. Every attempt is recorded for the error message.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client::{Handle, Handler};
use russh::keys::agent::client::AgentClient;
use russh::keys::agent::AgentIdentity;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg};
use russh::{MethodKind, MethodSet};

use crate::transport::TransportError;

/// What to try, in order: explicit key files, then the agent; with no
/// explicit key: the agent, then `~/.ssh/id_{ed25519,ecdsa,rsa}`.
pub(crate) struct AuthPlan<'a> {
    pub host: &'a str,
    pub user: &'a str,
    pub identities: &'a [PathBuf],
    pub passphrase_env: Option<&'a str>,
    pub ssh_dir: &'a Path,
}

pub(crate) async fn authenticate<H: Handler>(
    handle: &mut Handle<H>,
    plan: &AuthPlan<'_>,
) -> Result<(), TransportError> {
    let mut tried = Vec::new();
    let mut server_methods = String::from("(not asked)");
    let lost = |e: russh::Error| TransportError::ConnectionLost {
        host: plan.host.to_string(),
        command: None,
        detail: format!("during authentication: {e}"),
    };

    let (files, agent_first): (Vec<PathBuf>, bool) = if plan.identities.is_empty() {
        let defaults = ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|n| plan.ssh_dir.join(n))
            .filter(|p| p.exists())
            .collect();
        (defaults, true)
    } else {
        (plan.identities.to_vec(), false)
    };

    if agent_first && try_agent(handle, plan, &mut tried, &mut server_methods).await? {
        return Ok(());
    }
    for path in &files {
        let key = match load_key(path, plan.passphrase_env).await {
            Ok(k) => k,
            Err(why) => {
                tried.push(format!("publickey {} ({why})", path.display()));
                continue;
            }
        };
        let hash = if key.algorithm().is_rsa() {
            rsa_hash(handle).await.map_err(lost)?
        } else {
            None
        };
        let key = PrivateKeyWithHashAlg::new(Arc::new(key), hash);
        let alg = key.algorithm().to_string();
        let res = handle
            .authenticate_publickey(plan.user, key)
            .await
            .map_err(lost)?;
        match res {
            russh::client::AuthResult::Success => return Ok(()),
            russh::client::AuthResult::Failure {
                remaining_methods, ..
            } => {
                server_methods = methods(&remaining_methods);
                tried.push(format!("publickey {} ({alg}): refused", path.display()));
            }
        }
    }
    if !agent_first && try_agent(handle, plan, &mut tried, &mut server_methods).await? {
        return Ok(());
    }
    Err(TransportError::AuthFailed {
        host: plan.host.to_string(),
        user: plan.user.to_string(),
        tried,
        server_methods,
    })
}

/// Tries every agent key; `Ok(true)` on success. No agent is not an error.
async fn try_agent<H: Handler>(
    handle: &mut Handle<H>,
    plan: &AuthPlan<'_>,
    tried: &mut Vec<String>,
    server_methods: &mut String,
) -> Result<bool, TransportError> {
    if std::env::var_os("SSH_AUTH_SOCK").is_none() {
        return Ok(false);
    }
    let mut agent = match AgentClient::connect_env().await {
        Ok(a) => a,
        Err(e) => {
            tried.push(format!("agent (SSH_AUTH_SOCK unusable: {e})"));
            return Ok(false);
        }
    };
    let ids = match agent.request_identities().await {
        Ok(ids) => ids,
        Err(e) => {
            tried.push(format!("agent (cannot list keys: {e})"));
            return Ok(false);
        }
    };
    if ids.is_empty() {
        tried.push("agent (no keys)".into());
    }
    for id in ids {
        let (key, comment) = match &id {
            AgentIdentity::PublicKey { key, comment } => (key.clone(), comment.clone()),
            AgentIdentity::Certificate { .. } => continue,
        };
        let hash = if key.algorithm().is_rsa() {
            rsa_hash(handle)
                .await
                .map_err(|e| TransportError::ConnectionLost {
                    host: plan.host.to_string(),
                    command: None,
                    detail: format!("during authentication: {e}"),
                })?
        } else {
            None
        };
        let label = format!(
            "agent key {} {} ({})",
            key.algorithm(),
            key.fingerprint(HashAlg::Sha256),
            comment
        );
        match handle
            .authenticate_publickey_with(plan.user, key, hash, &mut agent)
            .await
        {
            Ok(russh::client::AuthResult::Success) => return Ok(true),
            Ok(russh::client::AuthResult::Failure {
                remaining_methods, ..
            }) => {
                *server_methods = methods(&remaining_methods);
                tried.push(format!("{label}: refused"));
            }
            Err(e) => tried.push(format!("{label}: {e}")),
        }
    }
    Ok(false)
}

/// The best RSA signature hash the server accepts (rsa-sha2-512, then -256);
/// SHA-256 when the server does not say.
async fn rsa_hash<H: Handler>(handle: &Handle<H>) -> Result<Option<HashAlg>, russh::Error> {
    Ok(match handle.best_supported_rsa_hash().await? {
        Some(h) => h,
        None => Some(HashAlg::Sha256),
    })
}

fn methods(set: &MethodSet) -> String {
    let names: Vec<&str> = set
        .iter()
        .filter(|m| **m != MethodKind::None)
        .map(<&str>::from)
        .collect();
    if names.is_empty() {
        "nothing more".into()
    } else {
        names.join(",")
    }
}

/// Loads a private key; an encrypted one is opened with the passphrase from
/// the named env var, else from a prompt on the terminal. The error is a
/// short reason for the "tried" list.
async fn load_key(path: &Path, passphrase_env: Option<&str>) -> Result<PrivateKey, String> {
    match russh::keys::load_secret_key(path, None) {
        Ok(k) => return Ok(k),
        Err(russh::keys::Error::KeyIsEncrypted) => {}
        Err(russh::keys::Error::IO(e)) => return Err(format!("cannot read: {e}")),
        Err(e) => return Err(format!("cannot load: {e}")),
    }
    let from_env = passphrase_env.and_then(|v| std::env::var(v).ok());
    let (pass, source) = match from_env {
        Some(p) => (
            p,
            format!("passphrase from ${}", passphrase_env.unwrap_or("")),
        ),
        None => {
            let prompt = format!("Enter passphrase for key {}: ", path.display());
            let asked = tokio::task::spawn_blocking(move || prompt_tty(&prompt))
                .await
                .ok()
                .flatten();
            match asked {
                Some(p) => (p, "passphrase from the terminal".to_string()),
                None => {
                    return Err(match passphrase_env {
                        Some(v) => format!("encrypted; ${v} is not set and there is no terminal"),
                        None => "encrypted; no passphrase_env set and no terminal".into(),
                    })
                }
            }
        }
    };
    russh::keys::load_secret_key(path, Some(&pass))
        .map_err(|_| format!("encrypted; wrong {source}"))
}

/// Reads a line from /dev/tty with echo off; `None` without a terminal.
fn prompt_tty(prompt: &str) -> Option<String> {
    use std::io::{BufRead, Write};
    use std::os::fd::AsRawFd;
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios calls on an open terminal fd with a zeroed struct.
    let saved = unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) != 0 {
            return None;
        }
        let saved = t;
        t.c_lflag &= !libc::ECHO;
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        saved
    };
    let mut w = &tty;
    let _ = w.write_all(prompt.as_bytes());
    let _ = w.flush();
    let mut line = String::new();
    let read = std::io::BufReader::new(&tty).read_line(&mut line);
    // SAFETY: restores the attributes read above.
    unsafe {
        libc::tcsetattr(fd, libc::TCSANOW, &saved);
    }
    let _ = w.write_all(b"\n");
    read.ok()?;
    Some(line.trim_end_matches(['\n', '\r']).to_string())
}
