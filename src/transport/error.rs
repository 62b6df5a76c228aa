//! Transport failures. Every message names the host and what failed; none
//! contains stdin or a command line beyond its first word (see
//! [`command_label`]), since lines may carry secrets.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{host}: cannot connect to {addr}: connection refused (is sshd running and the port right?)")]
    ConnectRefused { host: String, addr: String },

    #[error("{host}: cannot connect to {addr}: no answer within {}s", after.as_secs_f32())]
    ConnectTimeout {
        host: String,
        addr: String,
        after: Duration,
    },

    #[error("{host}: cannot connect to {addr}: {message}")]
    Connect {
        host: String,
        addr: String,
        message: String,
    },

    #[error("{host}: SSH handshake with {addr} failed: {message}")]
    Handshake {
        host: String,
        addr: String,
        message: String,
    },

    #[error(
        "{host}: authentication as {user:?} failed; tried: {}; the server accepts: {server_methods}",
        if tried.is_empty() { "nothing (no key file, no agent)".to_string() } else { tried.join(", ") }
    )]
    AuthFailed {
        host: String,
        user: String,
        /// One entry per method/key tried, e.g. `publickey /home/me/.ssh/id_ed25519 (ssh-ed25519)`.
        tried: Vec<String>,
        server_methods: String,
    },

    #[error("{host}: cannot use key {}: {message}", path.display())]
    Key {
        host: String,
        path: PathBuf,
        message: String,
    },

    #[error(
        "{host}: unknown host key for {addr} ({algorithm} {fingerprint}).\n\
         Check the fingerprint with the host's owner, then accept it with:\n    {accept_command}\n\
         or set host_key = \"accept-new\" for this host in hosts.toml (it learns an unknown key once)."
    )]
    UnknownHostKey {
        host: String,
        addr: String,
        algorithm: String,
        fingerprint: String,
        /// A shell command that records the key in the known_hosts file.
        accept_command: String,
    },

    #[error(
        "{host}: WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED for {addr}!\n\
         Someone could be eavesdropping on you right now (man-in-the-middle attack),\n\
         or the host key has just been changed.\n\
         The host now sends {algorithm} key {fingerprint}.\n\
         Offending {algorithm} key in {}:{line}\n\
         If the change is expected, remove the old key with:\n    ssh-keygen -f {} -R {known_as}",
        file.display(), shell_words::quote(&file.display().to_string())
    )]
    HostKeyChanged {
        host: String,
        addr: String,
        /// The name the key is recorded under (`host` or `[host]:port`).
        known_as: String,
        algorithm: String,
        fingerprint: String,
        file: PathBuf,
        line: usize,
    },

    #[error(
        "{host}: the host key of {addr} ({algorithm} {fingerprint}) is marked @revoked in {}:{line}; \
         refusing to connect. Ask the host's owner for its new key.",
        file.display()
    )]
    HostKeyRevoked {
        host: String,
        addr: String,
        algorithm: String,
        fingerprint: String,
        file: PathBuf,
        line: usize,
    },

    #[error("{host}: known_hosts file {}: {message}", file.display())]
    KnownHosts {
        host: String,
        file: PathBuf,
        message: String,
    },

    #[error("{host}: sudo needs a password for user {user:?} (running `{command}`); allow it without one (NOPASSWD in sudoers) or connect as root")]
    SudoNeedsPassword {
        host: String,
        user: String,
        command: String,
    },

    #[error("{host}: `{command}` timed out after {}s (its channel was closed)", after.as_secs_f32())]
    Timeout {
        host: String,
        command: String,
        after: Duration,
    },

    #[error("{host}: connection lost{}: {detail}", match command { Some(c) => format!(" while running `{c}`"), None => String::new() })]
    ConnectionLost {
        host: String,
        command: Option<String>,
        detail: String,
    },

    #[error("{host}: `{command}` failed: {message}")]
    Channel {
        host: String,
        command: String,
        message: String,
    },

    #[error(
        "{host}: `{command}` exited with {}{}",
        match status { Some(s) => format!("status {s}"), None => "a signal".into() },
        if stderr.is_empty() { String::new() } else { format!(": {stderr}") }
    )]
    CommandFailed {
        host: String,
        command: String,
        status: Option<u32>,
        stderr: String,
    },

    #[error("{host}: configuration: {message}")]
    Config { host: String, message: String },
}

impl TransportError {
    /// The connection is gone (a new one may succeed).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, TransportError::ConnectionLost { .. })
    }
}

/// A label for a command line that is safe to show: its first word that is
/// not a `VAR=value` assignment (nor `sudo`, `env`, `exec`), cut to 40 chars.
///
/// ```
/// use provision::transport::command_label;
/// assert_eq!(command_label("TOKEN=s3cret docker login -p x"), "docker");
/// assert_eq!(command_label("  apt-get install -y nginx"), "apt-get");
/// ```
pub fn command_label(line: &str) -> String {
    let word = line
        .split_whitespace()
        .find(|w| {
            let assignment = w.split_once('=').is_some_and(|(k, _)| {
                !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            });
            !assignment && !matches!(*w, "sudo" | "-n" | "env" | "exec")
        })
        .unwrap_or("");
    let word = word.trim_matches(|c| c == '\'' || c == '"' || c == '(');
    let mut label: String = word.chars().take(40).collect();
    if label.is_empty() {
        label = "(empty command)".into();
    }
    label
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_never_shows_arguments() {
        assert_eq!(command_label("mysql -psecret"), "mysql");
        assert_eq!(command_label("A=1 B=2 env"), "(empty command)");
        assert_eq!(command_label("sudo -n sh -c 'x'"), "sh");
        assert_eq!(command_label(""), "(empty command)");
    }

    #[test]
    fn host_key_messages_say_what_to_run() {
        let changed = TransportError::HostKeyChanged {
            host: "db".into(),
            addr: "10.0.0.12:22".into(),
            known_as: "10.0.0.12".into(),
            algorithm: "ssh-ed25519".into(),
            fingerprint: "SHA256:abc".into(),
            file: PathBuf::from("/p/.provision/known_hosts"),
            line: 3,
        }
        .to_string();
        assert!(
            changed.contains("ssh-keygen -f /p/.provision/known_hosts -R 10.0.0.12"),
            "{changed}"
        );
        let unknown = TransportError::UnknownHostKey {
            host: "db".into(),
            addr: "10.0.0.12:22".into(),
            algorithm: "ssh-ed25519".into(),
            fingerprint: "SHA256:abc".into(),
            accept_command: "ssh-keyscan -t ed25519 10.0.0.12 >> kh".into(),
        }
        .to_string();
        assert!(
            unknown.contains("ssh-keyscan -t ed25519 10.0.0.12 >> kh"),
            "{unknown}"
        );
        assert!(unknown.contains("host_key = \"accept-new\""), "{unknown}");
    }

    #[test]
    fn timeout_message_names_host_and_word() {
        let e = TransportError::Timeout {
            host: "web1".into(),
            command: command_label("docker build --secret id=x ."),
            after: Duration::from_secs(5),
        };
        assert_eq!(
            e.to_string(),
            "web1: `docker` timed out after 5s (its channel was closed)"
        );
    }
}
