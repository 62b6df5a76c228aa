//! One renderer per audience for the run's events: bars per host on a
//! terminal (indicatif), plain timestamped lines on stderr otherwise, and
//! JSON Lines on stdout for `--json` (human text then goes to stderr).

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::events::{Event, Render, Stamped};

/// Which renderer a run gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    Terminal,
    Lines,
    Json,
}

impl Audience {
    /// `--json` wins; otherwise bars when stderr is a terminal.
    pub fn pick(json: bool) -> Audience {
        use std::io::IsTerminal;
        if json {
            Audience::Json
        } else if std::io::stderr().is_terminal() {
            Audience::Terminal
        } else {
            Audience::Lines
        }
    }

    pub fn renderer(self, hosts: &[String]) -> Box<dyn Render> {
        match self {
            Audience::Terminal => Box::new(Bars::new(hosts)),
            Audience::Lines => Box::new(Lines),
            Audience::Json => Box::new(JsonLines),
        }
    }
}

/// `HH:MM:SS` of an RFC 3339 stamp.
fn clock(ts: &str) -> &str {
    ts.get(11..19).unwrap_or(ts)
}

/// One line on stderr per event worth reading, with the time.
pub struct Lines;

impl Render for Lines {
    fn render(&self, e: &Stamped) {
        if matches!(
            e.event,
            Event::StepOutput { .. } | Event::HostSummary { .. }
        ) {
            return;
        }
        if let Some(text) = e.event.text() {
            match e.event.host() {
                Some(h) => eprintln!("{} {h:<10} {text}", clock(&e.ts)),
                None => eprintln!("{} {text}", clock(&e.ts)),
            }
        }
    }
}

/// One JSON object per line on stdout.
pub struct JsonLines;

impl Render for JsonLines {
    fn render(&self, e: &Stamped) {
        let line = serde_json::to_string(e).expect("events serialize");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// A spinner per host showing its latest line, with the lines worth
/// keeping printed above them.
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<Vec<(String, ProgressBar)>>,
}

impl Bars {
    pub fn new(hosts: &[String]) -> Bars {
        let multi = MultiProgress::new();
        let style = ProgressStyle::with_template("{spinner} {prefix:<10} {elapsed:>4} {wide_msg}")
            .expect("a valid template");
        let bars = hosts
            .iter()
            .map(|h| {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(style.clone());
                bar.set_prefix(h.clone());
                bar.enable_steady_tick(Duration::from_millis(120));
                (h.clone(), bar)
            })
            .collect();
        Bars {
            multi,
            bars: Mutex::new(bars),
        }
    }

    fn bar(&self, host: &str, f: impl FnOnce(&ProgressBar)) {
        if let Some((_, b)) = self.bars.lock().unwrap().iter().find(|(h, _)| h == host) {
            f(b);
        }
    }
}

impl Render for Bars {
    fn render(&self, e: &Stamped) {
        let Some(text) = e.event.text() else { return };
        match (&e.event, e.event.host()) {
            (Event::StepOutput { line, .. }, Some(h)) => self.bar(h, |b| {
                b.set_message(format!("| {}", line.chars().take(100).collect::<String>()))
            }),
            (Event::HostSummary { .. }, Some(h)) => self.bar(h, |b| b.finish_with_message(text)),
            (_, Some(h)) => {
                let _ = self.multi.println(format!("{h:<10} {text}"));
                self.bar(h, |b| b.set_message(text.clone()));
            }
            (_, None) => {
                let _ = self.multi.println(text);
            }
        }
    }
}
