//! Waiting for a container to be ready: its template's probe run until it
//! passes or a deadline does, watching the container meanwhile, so that one
//! that exits or crash-loops fails the wait at once with its own last
//! words instead of after the whole deadline.

use std::time::{Duration, Instant};

use crate::commands;
use crate::executor::without_colours;
use crate::transport::{Exec, Transport, TransportError};

/// Poll until the probe succeeds or the deadline passes; between
/// polls, fail at once when `container` exited or restarted.
pub async fn wait(
    t: &dyn Transport,
    line: &str,
    container: &str,
    limit: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let mut first: Option<ContainerState> = None;
    loop {
        let last = match t
            .exec(
                Exec::new(line)
                    .timeout(Duration::from_secs(30))
                    .idempotent(true),
            )
            .await
        {
            Ok(out) if out.success() => return Ok(()),
            Ok(out) => out.stderr_str().trim().to_string(),
            Err(e @ TransportError::Timeout { .. }) => e.to_string(),
            Err(e) => return Err(e.to_string()),
        };
        if !container.is_empty() {
            if let Some(now) = state(t, container).await {
                let since = first.get_or_insert(now.clone());
                if now.died_since(since) {
                    return Err(death(t, container, &now).await);
                }
            }
        }
        if Instant::now() >= deadline {
            let said = if last.is_empty() {
                String::new()
            } else {
                format!(": {last}")
            };
            let mut why = format!("not ready after {} s{said}", limit.as_secs());
            if !container.is_empty() {
                let tail = last_lines(&log_tail(t, container).await);
                if !tail.is_empty() {
                    why.push_str(&format!("; {container}'s last log lines:\n    {tail}"));
                }
            }
            return Err(why);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The container's state, or None when docker cannot say (no such
/// container yet, an answer not understood).
async fn state(t: &dyn Transport, container: &str) -> Option<ContainerState> {
    let out = t
        .exec(
            Exec::new(commands::shell(&commands::container_state(container)))
                .timeout(Duration::from_secs(30))
                .idempotent(true),
        )
        .await
        .ok()?;
    if !out.success() {
        return None;
    }
    ContainerState::parse(&out.stdout_str())
}

/// Why a wait failed: the container's exit code, its restarts and its
/// own last words (masked by the event hub like every error).
async fn death(t: &dyn Transport, container: &str, state: &ContainerState) -> String {
    death_message(container, state, &log_tail(t, container).await)
}

async fn log_tail(t: &dyn Transport, container: &str) -> String {
    t.exec(
        Exec::new(commands::shell(&commands::container_log_tail(
            container,
            LOG_TAIL_LINES,
        )))
        .timeout(Duration::from_secs(30))
        .idempotent(true),
    )
    .await
    .map(|o| format!("{}{}", o.stdout_str(), o.stderr_str()))
    .unwrap_or_else(|e| format!("(docker logs failed: {e})"))
}

/// The last [`LOG_TAIL_LINES`] non-empty lines, without colours, indented
/// under the message.
fn last_lines(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(LOG_TAIL_LINES as usize)..]
        .iter()
        .map(|l| without_colours(l))
        .collect::<Vec<_>>()
        .join("\n    ")
}

/// How many of a dead container's last log lines a failed wait shows.
const LOG_TAIL_LINES: u32 = 20;

/// A container's state as `docker inspect` reports it
/// ([`commands::container_state`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ContainerState {
    status: String,
    restarts: u64,
    exit_code: i64,
}

impl ContainerState {
    /// `STATUS RESTARTCOUNT EXITCODE`, e.g. `restarting 3 1`.
    fn parse(text: &str) -> Option<ContainerState> {
        let mut words = text.split_whitespace();
        let state = ContainerState {
            status: words.next()?.to_string(),
            restarts: words.next()?.parse().ok()?,
            exit_code: words.next()?.parse().ok()?,
        };
        words.next().is_none().then_some(state)
    }

    /// It exited, is dead or restarting, or restarted since `first` was
    /// seen (a crash loop seen while it briefly runs).
    fn died_since(&self, first: &ContainerState) -> bool {
        matches!(self.status.as_str(), "restarting" | "exited" | "dead")
            || self.restarts > first.restarts
    }
}

fn death_message(container: &str, state: &ContainerState, logs: &str) -> String {
    let tail = last_lines(logs);
    let times = if state.restarts == 1 { "time" } else { "times" };
    let head = format!(
        "container {container} exited with code {} (restarted {} {times})",
        state.exit_code, state.restarts
    );
    if tail.is_empty() {
        format!("{head}; it logged nothing")
    } else {
        format!("{head}; its last log lines:\n    {tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_container_state_is_read_from_one_line() {
        assert_eq!(
            ContainerState::parse("restarting 3 1\n"),
            Some(ContainerState {
                status: "restarting".into(),
                restarts: 3,
                exit_code: 1
            })
        );
        assert_eq!(ContainerState::parse("running"), None);
        assert_eq!(ContainerState::parse("running x 0"), None);
        assert_eq!(ContainerState::parse("running 0 0 extra"), None);
    }

    #[test]
    fn a_wait_fails_when_the_container_exits_or_restarts() {
        let st = |s: &str| ContainerState::parse(s).unwrap();
        let first = st("running 2 0");
        assert!(!st("running 2 0").died_since(&first));
        assert!(!st("created 0 0").died_since(&st("created 0 0")));
        assert!(st("running 3 1").died_since(&first), "restarted meanwhile");
        assert!(st("restarting 2 1").died_since(&first));
        assert!(st("exited 2 1").died_since(&first));
        assert!(st("dead 2 137").died_since(&first));
    }

    #[test]
    fn a_dead_container_shows_its_exit_code_and_last_lines() {
        let logs: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let state = ContainerState::parse("restarting 4 1").unwrap();
        let m = death_message(
            "p-rails",
            &state,
            &format!("{logs}SECRET_KEY_BASE: is not set\n"),
        );
        assert!(m.starts_with(
            "container p-rails exited with code 1 (restarted 4 times); its last log lines:\n    "
        ));
        assert!(
            m.ends_with("line 30\n    SECRET_KEY_BASE: is not set"),
            "{m}"
        );
        assert!(!m.contains("line 11\n"), "only the last 20 lines: {m}");
        assert!(m.contains("line 12\n"), "{m}");
        let quiet = death_message("p-x", &ContainerState::parse("exited 0 2").unwrap(), "");
        assert_eq!(
            quiet,
            "container p-x exited with code 2 (restarted 0 times); it logged nothing"
        );
    }
}
