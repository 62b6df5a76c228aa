//! `--only HOST`: which steps such a run takes, one rule for the executor
//! and for the plan it prints (`--dry-run --only HOST`).

use std::collections::HashSet;

use super::{Step, StepId, StepKind};

/// Why a step runs under `--only HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnlyReason {
    /// It is on HOST.
    OnHost,
    /// It writes HOST's address (a firewall rule, a pg_hba line).
    Follows,
    /// A Run step that needs this step on HOST.
    Needs(StepId),
    /// The readiness wait of a Run step that runs, or one a running step
    /// needs.
    Waited,
}

/// Whether a pending step (not a readiness wait) runs under `--only HOST`,
/// and why: every step of that host; on the others, Run steps that need
/// something on it (their container's injected settings changed: the only
/// host came back with a new address, a new password...), and the steps
/// that write its address (the firewall and pg_hba of a DB it uses), so a
/// replacement at a new address is admitted and the old address dropped.
pub fn only_reason(only: &str, s: &Step) -> Option<OnlyReason> {
    if s.host() == only {
        return Some(OnlyReason::OnHost);
    }
    if s.follows.iter().any(|h| h == only) {
        return Some(OnlyReason::Follows);
    }
    if s.kind() != StepKind::Run {
        return None;
    }
    s.needs
        .iter()
        .find(|n| n.host == only)
        .map(|n| OnlyReason::Needs(n.clone()))
}

/// [`only_reason`] as a yes or no; with no `--only`, every step runs.
pub fn only_includes(only: Option<&str>, s: &Step) -> bool {
    match only {
        None => true,
        Some(only) => only_reason(only, s).is_some(),
    }
}

/// The steps a run takes: those `pending` says are due (their condition
/// holds on the host) and `--only` includes, then the readiness waits that
/// something taken needs.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Steps to run.
    pub run: HashSet<StepId>,
    /// Due steps that `--only` leaves out.
    pub excluded: HashSet<StepId>,
}

pub fn select(steps: &[&Step], only: Option<&str>, pending: impl Fn(&Step) -> bool) -> Selection {
    let mut sel = Selection::default();
    for s in steps.iter().filter(|s| s.kind() != StepKind::Ready) {
        if !pending(s) {
            continue;
        }
        if only_includes(only, s) {
            sel.run.insert(s.id.clone());
        } else {
            sel.excluded.insert(s.id.clone());
        }
    }
    // A readiness wait runs only when something starts that needs it.
    let mut waits = Vec::new();
    for s in steps.iter().filter(|s| s.kind() == StepKind::Ready) {
        let needed = sel.run.contains(&s.id.sibling(StepKind::Run))
            || steps
                .iter()
                .any(|d| d.needs.contains(&s.id) && sel.run.contains(&d.id));
        if needed {
            waits.push(s.id.clone());
        }
    }
    sel.run.extend(waits);
    sel
}
