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
    /// What tells this process apart from any other, past or future.
    process: Process,
}

/// A process, named so that it is never mistaken for another: a hostname
/// is not unique (two machines may share one), and a pid is reused by
/// other processes and after a reboot. The machine id, the boot id and the
/// start time since that boot are.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Process {
    pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat).
    started: Option<u64>,
    /// /proc/sys/kernel/random/boot_id: new at every boot.
    boot: Option<String>,
    /// /etc/machine-id (or D-Bus's copy).
    machine: Option<String>,
    /// The pid namespace (/proc/self/ns/pid): two containers of one kernel
    /// sharing a machine id and hostname cannot see each other's pids.
    pid_ns: Option<String>,
}

impl Process {
    fn current() -> Process {
        let pid = std::process::id();
        let first_line = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty() && !s.contains([' ', ',', ')']))
        };
        Process {
            pid,
            started: start_ticks(pid),
            boot: first_line("/proc/sys/kernel/random/boot_id"),
            machine: first_line("/etc/machine-id")
                .or_else(|| first_line("/var/lib/dbus/machine-id")),
            pid_ns: std::fs::read_link("/proc/self/ns/pid")
                .ok()
                .map(|l| {
                    l.to_string_lossy()
                        .trim_start_matches("pid:")
                        .trim_matches(['[', ']'])
                        .to_string()
                })
                .filter(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit())),
        }
    }
}

/// Field 22 of /proc/PID/stat (after the `(comm)` field, which may hold
/// spaces and parentheses): the start time in clock ticks since boot.
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19)?.parse().ok()
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

/// What a lock's info says: `OWNER (pid N, started T, boot B, machine M,
/// ns P, run R): COMMAND since TIME`. Older locks say less (`OWNER (pid N,
/// run R): COMMAND since TIME`); what is missing is `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    owner: String,
    process: Option<Process>,
    command: String,
    since: Option<String>,
}

impl Holder {
    fn parse(info: &str) -> Option<Holder> {
        let info = info.trim();
        let (head, command) = info.split_once("): ")?;
        let (owner, fields) = head.split_once(" (")?;
        let field = |name: &str| {
            fields.split(", ").find_map(|f| {
                f.strip_prefix(name)
                    .and_then(|v| v.strip_prefix(' '))
                    .map(str::to_string)
            })
        };
        let process = field("pid")
            .and_then(|p| p.parse().ok())
            .map(|pid| Process {
                pid,
                started: field("started").and_then(|t| t.parse().ok()),
                boot: field("boot"),
                machine: field("machine"),
                pid_ns: field("ns"),
            });
        let (command, since) = match command.rsplit_once(" since ") {
            Some((c, t)) => (c.to_string(), Some(t.to_string())),
            None => (command.to_string(), None),
        };
        Some(Holder {
            owner: owner.to_string(),
            process,
            command,
            since,
        })
    }

    /// Gone for certain: a run of this very machine (machine id, and the
    /// same user and hostname) that ran before its last boot, or whose pid
    /// no longer belongs to a process started when it was. Anything
    /// unknown (another machine, a lock without ids, another pid namespace)
    /// is never judged gone.
    fn is_gone(&self, owner_here: &str, here: &Process) -> bool {
        let Some(p) = &self.process else {
            return false;
        };
        let this_machine =
            self.owner == owner_here && p.machine.is_some() && p.machine == here.machine;
        if !this_machine || p.boot.is_none() || here.boot.is_none() {
            return false;
        }
        if p.boot != here.boot {
            return true; // every process of the holder's boot is gone
        }
        if p.pid_ns.is_none() || p.pid_ns != here.pid_ns {
            return false;
        }
        let Some(started) = p.started else {
            return false;
        };
        start_ticks(p.pid) != Some(started)
    }
}

/// A lock's info as people read it: `OWNER (pid N), running `COMMAND`
/// since TIME` (the ids that tell processes apart are left out).
pub fn describe(info: &str) -> String {
    let info = info.trim();
    if info.is_empty() || info == "(no info)" {
        return "a lock with no holder information".into();
    }
    let Some(h) = Holder::parse(info) else {
        return info.to_string();
    };
    let pid = h
        .process
        .map(|p| format!(" (pid {})", p.pid))
        .unwrap_or_default();
    let since = h.since.map(|t| format!(" since {t}")).unwrap_or_default();
    format!("{}{pid}, running `{}`{since}", h.owner, h.command)
}

/// A lock left by a run of this machine whose process is gone: it died
/// without releasing it (killed, or its host dropped before the release),
/// or the machine rebooted since. See [`Holder::is_gone`].
fn stale_here(holder: &str) -> bool {
    Holder::parse(holder).is_some_and(|h| h.is_gone(&owner_here(), &Process::current()))
}

impl RunId {
    pub fn current() -> RunId {
        let args: Vec<String> = std::env::args().skip(1).collect();
        RunId {
            owner: owner_here(),
            command: format!("provision {}", shell_words::join(&args)),
            token: format!("{:016x}", rand::random::<u64>()),
            process: Process::current(),
        }
    }

    /// What the lock says (the host appends `since TIME`): enough for a
    /// later run on this machine to tell whether this process still runs.
    pub fn lock_info(&self) -> String {
        let p = &self.process;
        let mut fields = vec![format!("pid {}", p.pid)];
        let mut add = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                fields.push(format!("{name} {v}"));
            }
        };
        add("started", p.started.map(|t| t.to_string()));
        add("boot", p.boot.clone());
        add("machine", p.machine.clone());
        add("ns", p.pid_ns.clone());
        fields.push(format!("run {}", self.token));
        format!("{} ({}): {}", self.owner, fields.join(", "), self.command)
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
                "another run holds the lock {}/lock: {}; wait for it, or if it is stale \
                 (that run is gone) run again with --break-lock",
                commands::remote_root(project),
                describe(holder)
            ),
            TakeError::Failed(e) => f.write_str(e),
        }
    }
}

/// Take the project's lock on the host. `Ok(Some(what))` when a lock was
/// removed first (`break_lock`, or a stale one of this machine): what it
/// said, as [`describe`] puts it.
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
    try_take_with(t, project, run, break_lock, None)
        .await
        .map(|taken| taken.broken)
}

/// A lock taken by [`try_take_with`].
pub struct Taken {
    /// What a lock removed first said (see [`take`]).
    pub broken: Option<String>,
    /// The rider's output.
    pub rider: Option<String>,
}

/// [`try_take`] that also runs `rider`, a shell line, in the lock's own
/// command once the lock is taken: one process on the host for both (one
/// sudo for a sudo user). Its exit status is ignored; its output is
/// [`Taken::rider`].
pub async fn try_take_with(
    t: &dyn Transport,
    project: &str,
    run: &RunId,
    break_lock: bool,
    rider: Option<&str>,
) -> Result<Taken, TakeError> {
    let attempt = Attempt {
        t,
        project,
        run,
        rider,
    };
    match attempt.once(break_lock).await {
        Err(TakeError::Held { holder, .. }) if stale_here(&holder) => {
            // Removed only if it still is that lock: a run that took it
            // meanwhile keeps it.
            release_info(t, project, &holder)
                .await
                .map_err(TakeError::Failed)?;
            attempt.once(false).await.map(|taken| Taken {
                broken: Some(format!("{} (that run is gone)", describe(&holder))),
                rider: taken.rider,
            })
        }
        other => other,
    }
}

/// Starts the rider's output in the lock command's.
const RIDER_MARK: &str = "@rider";

/// The lock command `take` followed by `rider`, which runs only once the
/// lock is taken (a held lock exits first); the command's status stays the
/// lock's own.
fn with_rider(take: &str, rider: &str) -> String {
    format!(
        "{take}\ntaken=$?\nif [ \"$taken\" = 0 ]; then echo {RIDER_MARK}; {{ {rider}\n}}; fi\nexit \"$taken\""
    )
}

/// One try of [`try_take_with`].
struct Attempt<'a> {
    t: &'a dyn Transport,
    project: &'a str,
    run: &'a RunId,
    rider: Option<&'a str>,
}

impl Attempt<'_> {
    async fn once(&self, break_lock: bool) -> Result<Taken, TakeError> {
        let Attempt {
            t,
            project,
            run,
            rider,
        } = *self;
        let mut line = commands::lock_take(project, &run.lock_info(), break_lock);
        if let Some(rider) = rider {
            line = with_rider(&line, rider);
        }
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
        let (own, rider_out) = match text.split_once(&format!("{RIDER_MARK}\n")) {
            Some((own, rest)) => (own, Some(rest.to_string())),
            None => (text.as_str(), None),
        };
        Ok(Taken {
            broken: own
                .lines()
                .find_map(|l| l.strip_prefix("@broken").map(describe)),
            rider: rider_out,
        })
    }
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
                    on_held(&describe(&holder));
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

/// Append `owner<TAB>command<TAB>result` to the host's audit log, then
/// release the lock if it is still this run's: one command, so the end of a
/// run costs each host one process, not two. The release runs whatever the
/// append did.
pub async fn audit_and_release(
    t: &dyn Transport,
    project: &str,
    run: &RunId,
    result: &str,
) -> Result<(), String> {
    let line = format!(
        "{{ {}; }}; {}",
        commands::audit_append(
            project,
            &format!("{}\t{}\t{result}", run.owner, run.command),
        ),
        commands::lock_release(project, &run.lock_info())
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
    fn the_rider_runs_only_once_the_lock_is_taken_and_keeps_its_status() {
        let sh = |line: String| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(line)
                .output()
                .unwrap();
            (out.status.code(), String::from_utf8(out.stdout).unwrap())
        };
        let rider = "echo extras; false";
        assert_eq!(
            sh(with_rider("echo taken", rider)),
            (Some(0), "taken\n@rider\nextras\n".into())
        );
        // Held: lock_take exits 75 itself; the rider never runs.
        assert_eq!(
            sh(with_rider("echo @locked; exit 75", rider)),
            (Some(75), "@locked\n".into())
        );
        // A failed take (the info file not written) stays a failure.
        assert_eq!(
            sh(with_rider("if true; then false; fi", rider)),
            (Some(1), String::new())
        );
    }

    fn here() -> Process {
        Process {
            pid: 4242,
            started: Some(100),
            boot: Some("boot-now".into()),
            machine: Some("m1".into()),
            pid_ns: Some("4026531836".into()),
        }
    }

    #[test]
    fn lock_info_round_trips_and_describes_without_ids() {
        let run = RunId {
            owner: "me@box".into(),
            command: "provision up --only db".into(),
            token: "ab12".into(),
            process: here(),
        };
        let info = format!("{} since 2025-01-01T00:00:00Z", run.lock_info());
        assert_eq!(
            info,
            "me@box (pid 4242, started 100, boot boot-now, machine m1, ns 4026531836, run ab12): \
             provision up --only db since 2025-01-01T00:00:00Z"
        );
        let h = Holder::parse(&info).unwrap();
        assert_eq!(h.process, Some(here()));
        assert_eq!(h.command, "provision up --only db");
        assert_eq!(
            describe(&info),
            "me@box (pid 4242), running `provision up --only db` since 2025-01-01T00:00:00Z"
        );
        assert_eq!(describe(" "), "a lock with no holder information");
        assert_eq!(describe("garbage"), "garbage");
    }

    #[test]
    fn only_a_provably_gone_run_of_this_machine_is_gone() {
        let me = Process {
            pid: std::process::id(),
            started: start_ticks(std::process::id()),
            ..here()
        };
        let holder = |p: Process| Holder {
            owner: "me@box".into(),
            process: Some(p),
            command: "provision up".into(),
            since: None,
        };
        // This very process: alive.
        assert!(!holder(me.clone()).is_gone("me@box", &me));
        // Its pid, but a process started at another time: the pid was reused.
        let reused = Process {
            started: me.started.map(|t| t + 1),
            ..me.clone()
        };
        assert!(holder(reused).is_gone("me@box", &me));
        // A run before the last reboot.
        let before_boot = Process {
            boot: Some("boot-before".into()),
            ..me.clone()
        };
        assert!(holder(before_boot).is_gone("me@box", &me));
        // Another machine with this hostname, a dead pid: not ours to judge.
        let elsewhere = Process {
            pid: 4_194_304_999,
            machine: Some("m2".into()),
            ..me.clone()
        };
        assert!(!holder(elsewhere).is_gone("me@box", &me));
        // Another pid namespace, another user, no machine id: unknown.
        let other_ns = Process {
            pid: 4_194_304_999,
            pid_ns: Some("1".into()),
            ..me.clone()
        };
        assert!(!holder(other_ns).is_gone("me@box", &me));
        assert!(!holder(Process {
            pid: 4_194_304_999,
            ..me.clone()
        })
        .is_gone("you@box", &me));
        let no_ids = Holder::parse("me@box (pid 4194304999, run ab): provision up").unwrap();
        assert!(!no_ids.is_gone("me@box", &me));
    }
}
