//! `ssh HOST [-- CMD...]`: OpenSSH's client, exec'd with the settings
//! provision's own connections use ([`session::ssh_target`]): address,
//! user and port, identity key, known_hosts files and host-key policy.
//! The address goes to `ssh` as it is, so a `~/.ssh/config` alias (its
//! HostName, ProxyJump) resolves there the same way; what hosts.toml says
//! is passed explicitly and wins, as it does for provision.
//!
//! Exit codes: 2 for an unknown host; otherwise `ssh`'s own (the remote
//! command's, or 255 when ssh itself fails).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use crate::commands;
use crate::inventory::Inventory;
use crate::session;
use crate::transport::ssh::{user_ssh_dir, HostKeyPolicy};

use super::{EXIT_BAD_INPUT, EXIT_FAILED};

pub(super) fn ssh(inv: &Inventory, host: &str, cmd: &[String]) -> i32 {
    exec_ssh(inv, host, cmd, false)
}

/// `exec -t SERVICE -- CMD`: `docker exec -it` in the service's container
/// through `ssh -t`, whose terminal (a PTY on the host) the command gets;
/// under sudo where provision's own commands use it.
pub(super) fn exec_tty(inv: &Inventory, host: &str, container: &str, cmd: &[String]) -> i32 {
    let Ok(h) = inv.host_named(host) else {
        return exec_ssh(inv, host, &[], true);
    };
    let mut line = Vec::new();
    if session::login(h).sudo {
        line.extend(["sudo".to_string(), "-n".into()]);
    }
    line.extend(commands::exec(container, true, true, cmd));
    exec_ssh(inv, host, &line, true)
}

fn exec_ssh(inv: &Inventory, host: &str, cmd: &[String], tty: bool) -> i32 {
    let h = match inv.host_named(host) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let target = session::ssh_target(inv, h);
    match target.host_key_policy {
        HostKeyPolicy::Strict => {}
        HostKeyPolicy::AcceptNew => eprintln!(
            "note: hosts.toml sets host_key = \"accept-new\" for {host}: an unknown host key is learned, a changed one refused"
        ),
        HostKeyPolicy::Off => eprintln!(
            "warning: hosts.toml turns host key checks off for {host}: any host key is accepted"
        ),
    }
    let mut known = target.known_hosts.clone();
    known.push(user_ssh_dir().join("known_hosts"));
    let args = ssh_args(&Settings {
        address: &target.address,
        user: &target.user,
        port: target.port,
        identity: target.identity.as_ref(),
        known_hosts: &known,
        policy: target.host_key_policy,
        command: cmd,
        tty,
    });
    let err = std::process::Command::new("ssh").args(&args).exec();
    eprintln!("error: cannot run ssh (OpenSSH's client): {err}");
    EXIT_FAILED
}

/// What `ssh`'s command line is made of.
struct Settings<'a> {
    address: &'a str,
    user: &'a str,
    port: u16,
    identity: Option<&'a PathBuf>,
    known_hosts: &'a [PathBuf],
    policy: HostKeyPolicy,
    command: &'a [String],
    /// `-t`: a terminal for the command.
    tty: bool,
}

/// The arguments of `ssh`, options first; the command, if any, as one
/// quoted line (ssh hands the remote shell one string: `sh -c 'exit 3'`
/// passed as three words would arrive as `sh -c exit 3`).
fn ssh_args(s: &Settings) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut opt = |o: String| {
        a.push("-o".into());
        a.push(o.into());
    };
    let strict = match s.policy {
        HostKeyPolicy::Strict => "yes",
        HostKeyPolicy::AcceptNew => "accept-new",
        HostKeyPolicy::Off => "no",
    };
    opt(format!("StrictHostKeyChecking={strict}"));
    // ssh splits this option's value at spaces; a path with one is quoted.
    let files: Vec<String> = s
        .known_hosts
        .iter()
        .map(|p| {
            let p = p.display().to_string();
            if p.contains(' ') {
                format!("\"{p}\"")
            } else {
                p
            }
        })
        .collect();
    opt(format!("UserKnownHostsFile={}", files.join(" ")));
    if s.identity.is_some() {
        opt("IdentitiesOnly=yes".into());
    }
    if s.tty {
        a.push("-t".into());
    }
    a.extend(["-p".into(), s.port.to_string().into()]);
    if !s.user.is_empty() {
        a.extend(["-l".into(), s.user.into()]);
    }
    if let Some(id) = s.identity {
        a.push("-i".into());
        a.push(id.into());
    }
    // Nothing after `--` is read as an option of ssh.
    a.push("--".into());
    a.push(s.address.into());
    if !s.command.is_empty() {
        a.push(commands::shell(s.command).into());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory() -> Inventory {
        crate::inventory::fixture(
            "/srv/p",
            r#"
[hosts.web]
machine = "local"
address = "10.0.0.10"

[hosts.db]
address = "db.example"
user = "deploy"
port = 2222
identity = "keys/db"
host_key = "accept-new"

[services.redis]
host = "web"
template = "redis"
"#,
        )
    }

    fn args_of(inv: &Inventory, host: &str, cmd: &[&str]) -> Vec<String> {
        let t = session::ssh_target(inv, inv.host(host).unwrap());
        let cmd: Vec<String> = cmd.iter().map(|c| c.to_string()).collect();
        ssh_args(&Settings {
            address: &t.address,
            user: &t.user,
            port: t.port,
            identity: t.identity.as_ref(),
            known_hosts: &t.known_hosts,
            policy: t.host_key_policy,
            command: &cmd,
            tty: false,
        })
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect()
    }

    #[test]
    fn a_local_machine_uses_the_project_key_and_strict_host_keys() {
        let inv = inventory();
        let a = args_of(&inv, "web", &["sh", "-c", "exit 3"]);
        let state = inv.project.state_dir.display().to_string();
        let known: Vec<String> = session::ssh_target(&inv, inv.host("web").unwrap())
            .known_hosts
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            a,
            [
                "-o".to_string(),
                "StrictHostKeyChecking=yes".into(),
                "-o".into(),
                format!("UserKnownHostsFile={}", known.join(" ")),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
                "-p".into(),
                "22".into(),
                "-l".into(),
                "root".into(),
                "-i".into(),
                format!("{state}/id_ed25519"),
                "--".into(),
                "10.0.0.10".into(),
                "sh -c 'exit 3'".into(),
            ]
        );
    }

    #[test]
    fn what_hosts_toml_says_is_passed_explicitly() {
        let inv = inventory();
        let a = args_of(&inv, "db", &[]);
        assert!(a.contains(&"StrictHostKeyChecking=accept-new".to_string()));
        let port = a.iter().position(|w| w == "-p").unwrap();
        assert_eq!(a[port + 1], "2222");
        let user = a.iter().position(|w| w == "-l").unwrap();
        assert_eq!(a[user + 1], "deploy");
        let key = a.iter().position(|w| w == "-i").unwrap();
        assert_eq!(a[key + 1], "/srv/p/keys/db");
        // No command: an interactive shell, the address last.
        assert_eq!(a.last().unwrap(), "db.example");
    }

    #[test]
    fn a_terminal_is_asked_for_with_dash_t() {
        let cmd = ["docker".to_string(), "exec".into()];
        let a = ssh_args(&Settings {
            address: "h",
            user: "",
            port: 22,
            identity: None,
            known_hosts: &[],
            policy: HostKeyPolicy::Strict,
            command: &cmd,
            tty: true,
        });
        let a: Vec<String> = a.iter().map(|w| w.to_string_lossy().into()).collect();
        let t = a.iter().position(|w| w == "-t").expect("-t");
        assert!(t < a.iter().position(|w| w == "--").unwrap(), "{a:?}");
        assert_eq!(a.last().unwrap(), "docker exec");
    }

    #[test]
    fn a_known_hosts_path_with_a_space_is_quoted() {
        let files = [PathBuf::from("/a b/known_hosts"), PathBuf::from("/c")];
        let a = ssh_args(&Settings {
            address: "h",
            user: "",
            port: 22,
            identity: None,
            known_hosts: &files,
            policy: HostKeyPolicy::Off,
            command: &[],
            tty: false,
        });
        let a: Vec<String> = a.iter().map(|w| w.to_string_lossy().into()).collect();
        assert_eq!(
            a,
            [
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=\"/a b/known_hosts\" /c",
                "-p",
                "22",
                "--",
                "h"
            ]
        );
    }
}
