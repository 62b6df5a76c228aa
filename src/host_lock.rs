//! One run at a time per host: a lock folder made with `mkdir` (atomic) under
//! /var/lib/provision/PROJECT, holding who, when and what; and an audit line
//! per run in /var/lib/provision/PROJECT/audit.log.

use std::time::Duration;

use crate::commands;
use crate::transport::{Exec, Transport};

/// Exit status of [`commands::lock_take`] when another run holds the lock.
const LOCKED: u32 = 75;

/// Who runs this and what: written into the lock and the audit log.
#[derive(Debug, Clone)]
pub struct RunId {
    /// `user@machine`
    pub owner: String,
    /// The command line, as typed.
    pub command: String,
    /// Unique per run, so a run releases only its own lock.
    pub token: String,
}

impl RunId {
    pub fn current() -> RunId {
        let user = std::env::var("USER")
            .or_else(|_| std::env::var("LOGNAME"))
            .unwrap_or_else(|_| format!("uid{}", unsafe { libc::getuid() }));
        let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into());
        let args: Vec<String> = std::env::args().skip(1).collect();
        RunId {
            owner: format!("{user}@{machine}"),
            command: format!("provision {}", shell_words::join(&args)),
            token: format!("{:016x}", rand::random::<u64>()),
        }
    }

    /// What the lock says (the host appends `since TIME`).
    pub fn lock_info(&self) -> String {
        format!(
            "{} (pid {}, run {}): {}",
            self.owner,
            std::process::id(),
            self.token,
            self.command
        )
    }
}

/// Take the project's lock on the host. `Ok(Some(info))` when a stale lock
/// was broken (`break_lock`), with what it said.
pub async fn take(
    t: &dyn Transport,
    project: &str,
    run: &RunId,
    break_lock: bool,
) -> Result<Option<String>, String> {
    let line = commands::lock_take(project, &run.lock_info(), break_lock);
    let out = t
        .exec(Exec::new(line).timeout(Duration::from_secs(30)))
        .await
        .map_err(|e| e.to_string())?;
    let text = out.stdout_str();
    if out.status == Some(LOCKED) {
        let holder = text
            .lines()
            .skip_while(|l| *l != "@locked")
            .nth(1)
            .unwrap_or("(no info)")
            .trim()
            .to_string();
        return Err(format!(
            "another run holds the lock {}/lock: {holder}; wait for it, or if it is stale \
             (that run is gone) run again with --break-lock",
            commands::remote_root(project)
        ));
    }
    if !out.success() {
        return Err(format!("cannot take the lock: {}", out.stderr_str().trim()));
    }
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("@broken "))
        .map(|s| s.trim().to_string()))
}

/// Release the lock if it is still this run's.
pub async fn release(t: &dyn Transport, project: &str, run: &RunId) -> Result<(), String> {
    let line = commands::lock_release(project, &run.lock_info());
    t.exec(Exec::new(line).timeout(Duration::from_secs(30)))
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

/// Append `owner<TAB>command<TAB>result` to the host's audit log.
pub async fn audit(
    t: &dyn Transport,
    project: &str,
    run: &RunId,
    result: &str,
) -> Result<(), String> {
    let line = commands::audit_append(
        project,
        &format!("{}\t{}\t{result}", run.owner, run.command),
    );
    t.exec(Exec::new(line).timeout(Duration::from_secs(30)))
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}
