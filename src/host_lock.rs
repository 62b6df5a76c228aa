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
