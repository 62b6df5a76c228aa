//! What a run tells the world, as typed events. The executor and the
//! session emit them; they know no terminal. One [`Events`] hub masks the
//! secrets in every event, stamps it, appends it to the run's log file and
//! hands it to the one renderer chosen for the audience
//! ([`crate::render`]: bars on a terminal, plain lines, or JSON Lines).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::executor::HostReport;
use crate::plan::StepId;
use crate::secrets::Secrets;

/// Events give a step as an object (`{"host", "service", "kind", "name"}`,
/// absent fields left out), where the plan output gives its text.
fn step_object<S: serde::Serializer>(id: &StepId, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut m = s.serialize_map(None)?;
    m.serialize_entry("host", &id.host)?;
    if let Some(service) = &id.service {
        m.serialize_entry("service", service)?;
    }
    m.serialize_entry("kind", &id.kind)?;
    if let Some(name) = &id.name {
        m.serialize_entry("name", name)?;
    }
    m.end()
}

/// One host's counts, as the end-of-run summary gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub changed: usize,
    pub unchanged: usize,
    pub skipped: usize,
    /// Failed, and blocked by a failure (the host is not as planned).
    pub failed: usize,
    pub elapsed_ms: u64,
    pub ok: bool,
}

impl Counts {
    pub fn of(r: &HostReport) -> Counts {
        Counts {
            changed: r.changed.len(),
            unchanged: r.unchanged,
            skipped: r.skipped.len(),
            failed: r.failed.len() + r.blocked.len(),
            elapsed_ms: millis(r.elapsed),
            ok: r.ok(),
        }
    }
}

pub fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        project: String,
        hosts: Vec<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        only: Option<String>,
    },
    HostConnected {
        host: String,
        address: String,
    },
    /// The host cannot be reached or probed: none of its steps run.
    HostFailed {
        host: String,
        error: String,
    },
    StepStarted {
        host: String,
        #[serde(serialize_with = "step_object")]
        step: StepId,
        summary: String,
    },
    StepOutput {
        host: String,
        #[serde(serialize_with = "step_object")]
        step: StepId,
        line: String,
    },
    StepFinished {
        host: String,
        #[serde(serialize_with = "step_object")]
        step: StepId,
        summary: String,
        /// Whether the step changed the host (a readiness wait does not).
        changed: bool,
        /// Not run: the probe found the host already as planned.
        up_to_date: bool,
        elapsed_ms: u64,
    },
    StepFailed {
        host: String,
        #[serde(serialize_with = "step_object")]
        step: StepId,
        summary: String,
        error: String,
        /// Not run at all: a step it needs did not succeed.
        blocked: bool,
        elapsed_ms: u64,
    },
    StepSkipped {
        host: String,
        #[serde(serialize_with = "step_object")]
        step: StepId,
        summary: String,
        reason: String,
    },
    /// Something the user must know that is no step's outcome (a backup
    /// written, a lock waited for).
    Notice {
        #[serde(skip_serializing_if = "Option::is_none")]
        host: Option<String>,
        text: String,
    },
    HostSummary {
        host: String,
        #[serde(flatten)]
        counts: Counts,
    },
    /// The last event of a run: counts per host and the process's exit code.
    Summary {
        hosts: BTreeMap<String, Counts>,
        exit_code: i32,
    },
}

impl Event {
    pub fn host(&self) -> Option<&str> {
        match self {
            Event::RunStarted { .. } | Event::Summary { .. } => None,
            Event::Notice { host, .. } => host.as_deref(),
            Event::HostConnected { host, .. }
            | Event::HostFailed { host, .. }
            | Event::StepStarted { host, .. }
            | Event::StepOutput { host, .. }
            | Event::StepFinished { host, .. }
            | Event::StepFailed { host, .. }
            | Event::StepSkipped { host, .. }
            | Event::HostSummary { host, .. } => Some(host),
        }
    }

    /// The same event with every secret in its text masked.
    fn masked(self, s: &Secrets) -> Event {
        let m = |t: String| s.mask(&t);
        match self {
            Event::HostFailed { host, error } => Event::HostFailed {
                host,
                error: m(error),
            },
            Event::StepStarted {
                host,
                step,
                summary,
            } => Event::StepStarted {
                host,
                step,
                summary: m(summary),
            },
            Event::StepOutput { host, step, line } => Event::StepOutput {
                host,
                step,
                line: m(line),
            },
            Event::StepFinished {
                host,
                step,
                summary,
                changed,
                up_to_date,
                elapsed_ms,
            } => Event::StepFinished {
                host,
                step,
                summary: m(summary),
                changed,
                up_to_date,
                elapsed_ms,
            },
            Event::StepFailed {
                host,
                step,
                summary,
                error,
                blocked,
                elapsed_ms,
            } => Event::StepFailed {
                host,
                step,
                summary: m(summary),
                error: m(error),
                blocked,
                elapsed_ms,
            },
            Event::StepSkipped {
                host,
                step,
                summary,
                reason,
            } => Event::StepSkipped {
                host,
                step,
                summary: m(summary),
                reason: m(reason),
            },
            Event::Notice { host, text } => Event::Notice {
                host,
                text: m(text),
            },
            e => e,
        }
    }

    /// The line a person reads for this event (terminal, plain lines and
    /// the log file), without the host and clock; `None` for events shown
    /// otherwise (output lines go to the bar, the summary is printed by
    /// the caller).
    pub fn text(&self) -> Option<String> {
        match self {
            Event::RunStarted { .. } | Event::HostConnected { .. } | Event::Summary { .. } => None,
            Event::HostFailed { error, .. } => Some(error.clone()),
            Event::StepStarted { summary, .. } => Some(format!("{summary} ...")),
            Event::StepOutput { line, .. } => Some(format!("| {line}")),
            Event::StepFinished {
                up_to_date: true, ..
            } => None,
            Event::StepFinished {
                summary,
                elapsed_ms,
                ..
            } => Some(format!(
                "{summary} done ({:.1} s)",
                *elapsed_ms as f64 / 1000.0
            )),
            Event::StepFailed {
                blocked: false,
                summary,
                error,
                ..
            } => Some(format!("FAILED: {summary}: {error}")),
            Event::StepFailed { .. } | Event::StepSkipped { .. } => None,
            Event::Notice { text, .. } => Some(text.clone()),
            Event::HostSummary { counts, .. } => Some(counts.text()),
        }
    }
}

impl Counts {
    /// "1 changed, 9 unchanged, ..." as the summary and the bars say it.
    pub fn text(&self) -> String {
        let c = self;
        let mut s = format!(
            "{} changed, {} unchanged, {} skipped, {} failed in {:.1} s",
            c.changed,
            c.unchanged,
            c.skipped,
            c.failed,
            c.elapsed_ms as f64 / 1000.0
        );
        if c.changed == 0 && c.ok {
            s.push_str(" (nothing to do)");
        }
        s
    }
}

/// An event as it leaves the hub: masked, with its time.
#[derive(Debug, Clone, Serialize)]
pub struct Stamped {
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    #[serde(flatten)]
    pub event: Event,
}

/// Where stamped events go for one audience.
pub trait Render: Send + Sync {
    fn render(&self, e: &Stamped);
}

/// The one place events go through.
pub struct Events {
    secrets: Secrets,
    render: Box<dyn Render>,
    log: Mutex<Option<std::fs::File>>,
    log_path: Mutex<Option<PathBuf>>,
}

impl Events {
    pub fn new(secrets: Secrets, render: Box<dyn Render>) -> Events {
        Events {
            secrets,
            render,
            log: Mutex::new(None),
            log_path: Mutex::new(None),
        }
    }

    /// Also append every event's text to `path` (0600 in a 0700 folder:
    /// it holds commands and their output).
    pub fn log_to(&self, path: &Path) {
        *self.log.lock().unwrap() = crate::private::create_file(path).ok();
        *self.log_path.lock().unwrap() = Some(path.to_path_buf());
    }

    pub fn log_path(&self) -> Option<PathBuf> {
        self.log_path.lock().unwrap().clone()
    }

    pub fn emit(&self, e: Event) {
        let e = e.masked(&self.secrets);
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        if let Some(f) = self.log.lock().unwrap().as_mut() {
            let line = match (&e, e.text()) {
                (Event::StepOutput { host, line, .. }, _) => Some(format!("{host}| {line}")),
                (_, Some(t)) => Some(match e.host() {
                    Some(h) => format!("{h}: {t}"),
                    None => t,
                }),
                _ => None,
            };
            if let Some(line) = line {
                let _ = writeln!(f, "{} {line}", &ts[11..19]);
            }
        }
        self.render.render(&Stamped { ts, event: e });
    }

    /// A message for everyone, about one host or none.
    pub fn notice(&self, host: Option<&str>, text: impl Into<String>) {
        self.emit(Event::Notice {
            host: host.map(Into::into),
            text: text.into(),
        });
    }

    /// Events that go nowhere (tests, and callers that print themselves).
    pub fn quiet() -> Events {
        Events::new(Secrets::default(), Box::new(Quiet))
    }
}

struct Quiet;

impl Render for Quiet {
    fn render(&self, _: &Stamped) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::Arc;

    struct Keep(Arc<Mutex<Vec<String>>>);
    impl Render for Keep {
        fn render(&self, e: &Stamped) {
            self.0
                .lock()
                .unwrap()
                .push(serde_json::to_string(e).unwrap());
        }
    }

    #[test]
    fn secrets_are_masked_in_the_log_and_the_events() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("state/logs/run-1-2.log");
        let secrets =
            Secrets::from_map([("PG_PASSWORD".to_string(), "p@ss:w0rd!".to_string())].into());
        let kept = Arc::new(Mutex::new(Vec::new()));
        let ev = Events::new(secrets, Box::new(Keep(kept.clone())));
        ev.log_to(&log);
        let step = StepId::service("web", "rails", crate::plan::StepKind::Run);
        // As Rails would print it when the database refuses the URL.
        ev.emit(Event::StepOutput {
            host: "web".into(),
            step: step.clone(),
            line: "could not connect to postgres://app:p%40ss%3Aw0rd%21@10.0.0.2:5432/app".into(),
        });
        ev.emit(Event::StepFailed {
            host: "web".into(),
            step,
            summary: "run rails".into(),
            error: "password p@ss:w0rd! refused".into(),
            blocked: false,
            elapsed_ms: 5,
        });
        drop(ev);
        let text = std::fs::read_to_string(&log).unwrap();
        let json = kept.lock().unwrap().join("\n");
        for t in [&text, &json] {
            assert!(!t.contains("p%40ss") && !t.contains("p@ss"), "{t}");
        }
        assert!(text.contains("postgres://app:***@10.0.0.2"), "{text}");
        assert!(json.contains(r#""event":"step_failed""#), "{json}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&log), 0o600);
        assert_eq!(mode(log.parent().unwrap()), 0o700);
    }

    #[test]
    fn an_event_is_one_flat_json_object() {
        let e = Stamped {
            ts: "2026-12-02T08:00:00.000Z".into(),
            event: Event::HostSummary {
                host: "db".into(),
                counts: Counts {
                    changed: 1,
                    ..Counts::default()
                },
            },
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(v["event"], "host_summary");
        assert_eq!(v["host"], "db");
        assert_eq!(v["changed"], 1);
        assert_eq!(v["ts"], "2026-12-02T08:00:00.000Z");
        let e = Event::StepSkipped {
            host: "db".into(),
            step: StepId::named("db", crate::plan::StepKind::Volume, "pgdata"),
            summary: "create volume pgdata".into(),
            reason: "left out by --only web".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&e).unwrap();
        assert_eq!(
            v["step"],
            serde_json::json!({"host": "db", "kind": "volume", "name": "pgdata"})
        );
    }
}
