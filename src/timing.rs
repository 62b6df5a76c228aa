//! `PROVISION_TIMING=1` prints how long each phase of a run took, to find
//! where a slow no-op run spends its time, and after a run's steps the
//! critical path: which chain of steps, on which hosts, the end waited on
//! (what a cold run's wall time is made of).

use std::sync::OnceLock;
use std::time::Instant;

use crate::plan::StepId;

static START: OnceLock<Option<Instant>> = OnceLock::new();

fn start() -> Option<Instant> {
    *START.get_or_init(|| std::env::var_os("PROVISION_TIMING").map(|_| Instant::now()))
}

/// Call first thing in `main`, so times count from the process start.
pub fn init() {
    let _ = start();
}

pub fn mark(phase: &str) {
    if let Some(t) = start() {
        eprintln!(
            "timing: {:>7.1} ms  {phase}",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
}

/// When a step that ran began and ended (a base image shipped for it
/// counts as its own), and what it needed: the critical path is made of
/// these.
#[derive(Debug, Clone)]
pub struct Span {
    pub id: StepId,
    pub summary: String,
    pub needs: Vec<StepId>,
    pub start: Instant,
    pub end: Instant,
}

/// The chain of steps the run's end waited on, first to last: from the
/// step that ended last, back through whichever of its predecessors (the
/// step before it on its host, or a step it needs on any host) ended last.
pub fn critical_path(spans: &[Span]) -> Vec<&Span> {
    let Some(mut cur) = spans.iter().max_by_key(|s| s.end) else {
        return vec![];
    };
    let mut path = vec![cur];
    while let Some(before) = spans
        .iter()
        .filter(|s| s.end <= cur.start && (s.id.host == cur.id.host || cur.needs.contains(&s.id)))
        .max_by_key(|s| s.end)
    {
        path.push(before);
        cur = before;
    }
    path.reverse();
    path
}

/// `PROVISION_TIMING`'s account of the steps that ran: each host's first
/// start, last end and busy time, then the critical path with the gap
/// before each step (time spent in neither this step nor the one it
/// waited on: connections, probes, shipping bookkeeping). Times count from
/// `origin`. Empty when no step ran.
pub fn steps_report(spans: &[Span], origin: Instant) -> Vec<String> {
    let at = |i: Instant| i.saturating_duration_since(origin).as_secs_f64();
    let mut lines = vec![];
    let mut hosts: Vec<&str> = spans.iter().map(|s| s.id.host.as_str()).collect();
    hosts.sort_unstable();
    hosts.dedup();
    for h in hosts {
        let mine: Vec<&Span> = spans.iter().filter(|s| s.id.host == h).collect();
        let first = mine.iter().map(|s| s.start).min().expect("a span");
        let last = mine.iter().map(|s| s.end).max().expect("a span");
        let busy: f64 = mine.iter().map(|s| (s.end - s.start).as_secs_f64()).sum();
        lines.push(format!(
            "host {h}: {} steps from {:.1} s to {:.1} s, {busy:.1} s of them running",
            mine.len(),
            at(first),
            at(last)
        ));
    }
    let path = critical_path(spans);
    if !path.is_empty() {
        lines.push("critical path (each step waited on the one above it):".into());
    }
    let mut prev_end = origin;
    for s in path {
        let gap = s.start.saturating_duration_since(prev_end).as_secs_f64();
        lines.push(format!(
            "  {:>7.1} s {:>+7.1} s  (gap {gap:.1} s)  {}  {}",
            at(s.start),
            (s.end - s.start).as_secs_f64(),
            s.id.host,
            s.summary
        ));
        prev_end = s.end;
    }
    lines
}

/// Whether `PROVISION_TIMING` is set.
pub fn enabled() -> bool {
    start().is_some()
}

/// The process start, where `mark` counts from (now when timing is off).
pub fn origin() -> Instant {
    start().unwrap_or_else(Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::StepKind;
    use std::time::Duration;

    fn span(host: &str, kind: StepKind, from: u64, to: u64, needs: &[StepId], t0: Instant) -> Span {
        Span {
            id: StepId::host(host, kind),
            summary: format!("{host} {kind:?}"),
            needs: needs.to_vec(),
            start: t0 + Duration::from_secs(from),
            end: t0 + Duration::from_secs(to),
        }
    }

    #[test]
    fn the_critical_path_follows_the_latest_predecessor_across_hosts() {
        let t0 = Instant::now();
        let db_ready = StepId::host("db", StepKind::Ready);
        let spans = vec![
            span("web", StepKind::Docker, 0, 30, &[], t0),
            span("web", StepKind::Build, 30, 60, &[], t0),
            span("db", StepKind::Docker, 0, 25, &[], t0),
            span("db", StepKind::Ready, 25, 80, &[], t0),
            // Started once db was ready, not when web's build ended.
            span("web", StepKind::Run, 80, 90, &[db_ready], t0),
        ];
        let path: Vec<String> = critical_path(&spans)
            .iter()
            .map(|s| s.summary.clone())
            .collect();
        assert_eq!(path, ["db Docker", "db Ready", "web Run"]);
        let lines = steps_report(&spans, t0);
        assert_eq!(
            lines[0],
            "host db: 2 steps from 0.0 s to 80.0 s, 80.0 s of them running"
        );
        assert_eq!(
            lines[1],
            "host web: 3 steps from 0.0 s to 90.0 s, 70.0 s of them running"
        );
        assert!(lines[3].ends_with("db  db Docker"), "{}", lines[3]);
        assert!(critical_path(&[]).is_empty());
    }
}
