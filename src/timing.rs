//! `PROVISION_TIMING=1` prints how long each phase of a run took, to find
//! where a slow no-op run spends its time.

use std::sync::OnceLock;
use std::time::Instant;

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
