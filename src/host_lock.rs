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

/// `user@machine` of this process.
fn owner_here() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| format!("uid{}", unsafe { libc::getuid() }));
    let machine = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{machine}")
}

/// The pid in a lock's info when its owner is `owner`
/// (`OWNER (pid N, run T): COMMAND since TIME`).
fn holder_pid(holder: &str, owner: &str) -> Option<u32> {
    let rest = holder.strip_prefix(owner)?.strip_prefix(" (pid ")?;
    rest.split(',').next()?.parse().ok()
}

/// A lock left by a run of this computer (same user) whose process is gone:
/// it died without releasing it (killed, or its host dropped before the
/// release). Locks of other computers are never judged stale.
fn stale_here(holder: &str) -> bool {
    let Some(pid) = holder_pid(holder, &owner_here()) else {
        return false;
    };
    let alive = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("provision"))
        .unwrap_or(false);
    !alive
}

impl RunId {
    pub fn current() -> RunId {
        let args: Vec<String> = std::env::args().skip(1).collect();
        RunId {
            owner: owner_here(),
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

/// Why a lock was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TakeError {
    /// Another run holds it; what its lock says.
    Held { project: String, holder: String },
    /// The lock command itself failed (connection, permissions).
    Failed(String),
}

impl std::fmt::Display for TakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TakeError::Held { project, holder } => write!(
                f,
                "another run holds the lock {}/lock: {holder}; wait for it, or if it is stale \
                 (that run is gone) run again with --break-lock",
                commands::remote_root(project)
            ),
            TakeError::Failed(e) => f.write_str(e),
        }
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
    try_take(t, project, run, break_lock)
        .await
        .map_err(|e| e.to_string())
}

/// [`take`], telling a lock held by another run apart from a failure.
pub async fn try_take(
    t: &dyn Transport,
    project: &str,
    run: &RunId,
    break_lock: bool,
) -> Result<Option<String>, TakeError> {
    match try_take_once(t, project, run, break_lock).await {
        Err(TakeError::Held { holder, .. }) if stale_here(&holder) => {
            // Removed only if it still is that lock: a run that took it
            // meanwhile keeps it.
            release_info(t, project, &holder)
                .await
                .map_err(TakeError::Failed)?;
            try_take_once(t, project, run, false)
                .await
                .map(|_| Some(format!("{holder} (that run is gone)")))
        }
        other => other,
    }
}

async fn try_take_once(
    t: &dyn Transport,
    project: &str,
    run: &RunId,
    break_lock: bool,
) -> Result<Option<String>, TakeError> {
    let line = commands::lock_take(project, &run.lock_info(), break_lock);
    let out = t
        .exec(Exec::new(line).timeout(Duration::from_secs(30)))
        .await
        .map_err(|e| TakeError::Failed(e.to_string()))?;
    let text = out.stdout_str();
    if out.status == Some(LOCKED) {
        let holder = text
            .lines()
            .skip_while(|l| *l != "@locked")
            .nth(1)
            .unwrap_or("(no info)")
            .trim()
            .to_string();
        return Err(TakeError::Held {
            project: project.to_string(),
            holder,
        });
    }
    if !out.success() {
        return Err(TakeError::Failed(format!(
            "cannot take the lock: {}",
            out.stderr_str().trim()
        )));
    }
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix("@broken ").map(|s| s.trim().to_string())))
}

/// How often a waiting run looks at a held lock again.
pub const WAIT_POLL: Duration = Duration::from_secs(1);

/// Take the lock, waiting up to `limit` while another run holds it.
/// `on_held` is called once, with the holder, when the first try finds the
/// lock held. A holder that changes meanwhile (a third run got it first) is
/// waited for too, within the same limit.
pub async fn take_waiting(
    t: &dyn Transport,
    project: &str,
    run: &RunId,
    limit: Duration,
    on_held: &mut (dyn FnMut(&str) + Send),
) -> Result<(), TakeError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut told = false;
    loop {
        match try_take(t, project, run, false).await {
            Ok(_) => return Ok(()),
            Err(TakeError::Held { project, holder }) => {
                if !told {
                    on_held(&holder);
                    told = true;
                }
                if tokio::time::Instant::now() + WAIT_POLL > deadline {
                    return Err(TakeError::Held {
                        project,
                        holder: format!("{holder} (waited {} s)", limit.as_secs()),
                    });
                }
                tokio::time::sleep(WAIT_POLL).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Release the lock if it is still this run's.
pub async fn release(t: &dyn Transport, project: &str, run: &RunId) -> Result<(), String> {
    release_info(t, project, &run.lock_info()).await
}

/// Remove the lock if its info starts with `info`.
async fn release_info(t: &dyn Transport, project: &str, info: &str) -> Result<(), String> {
    let line = commands::lock_release(project, info);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_of_a_gone_run_here_is_stale_and_others_are_not() {
        let me = owner_here();
        let mine = format!(
            "{me} (pid {}, run ab): provision up since 2025-01-01T00:00:00Z",
            std::process::id()
        );
        assert_eq!(holder_pid(&mine, &me), Some(std::process::id()));
        // This test's own binary (provision-HASH) is alive: a live run.
        assert!(!stale_here(&mine));
        let gone = format!("{me} (pid 4194304999, run ab): provision up since x");
        assert!(stale_here(&gone));
        assert!(!stale_here(
            "someone@elsewhere (pid 1, run ab): provision up since x"
        ));
        assert!(!stale_here("(no info)"));
    }
}
