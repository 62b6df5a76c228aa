//! Where run events go: bars per host on a terminal (indicatif), plain
//! timestamped lines otherwise, and always the run's log file. Every line
//! passes through the secrets mask first.

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::secrets::Secrets;

/// One bar per host, under one multi-bar.
type Bars = (MultiProgress, Mutex<Vec<(String, ProgressBar)>>);

pub struct Progress {
    secrets: Secrets,
    bars: Option<Bars>,
    log: Mutex<Option<std::fs::File>>,
}

fn clock() -> String {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

impl Progress {
    /// `tty`: draw one bar per host; otherwise print plain lines.
    pub fn new(secrets: Secrets, hosts: &[String], tty: bool, log_file: Option<&Path>) -> Progress {
        // Logs show commands and their output: 0600 in a 0700 folder.
        let log = log_file.and_then(|p| crate::private::create_file(p).ok());
        let bars = tty.then(|| {
            let multi = MultiProgress::new();
            let style =
                ProgressStyle::with_template("{spinner} {prefix:<10} {elapsed:>4} {wide_msg}")
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
            (multi, Mutex::new(bars))
        });
        Progress {
            secrets,
            bars,
            log: Mutex::new(log),
        }
    }

    fn to_log(&self, line: &str) {
        if let Some(f) = self.log.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{} {line}", clock());
        }
    }

    fn bar(&self, host: &str, f: impl FnOnce(&ProgressBar)) {
        if let Some((_, bars)) = &self.bars {
            if let Some((_, b)) = bars.lock().unwrap().iter().find(|(h, _)| h == host) {
                f(b);
            }
        }
    }

    /// A step or state change worth a line of its own.
    pub fn status(&self, host: &str, text: &str) {
        let text = self.secrets.mask(text);
        self.to_log(&format!("{host}: {text}"));
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(format!("{host:<10} {text}"));
                self.bar(host, |b| b.set_message(text.clone()));
            }
            None => eprintln!("{} {host:<10} {text}", clock()),
        }
    }

    /// One line of a command's output: the log gets it all, the bar shows
    /// the latest.
    pub fn output(&self, host: &str, line: &str) {
        let line = self.secrets.mask(line);
        self.to_log(&format!("{host}| {line}"));
        self.bar(host, |b| {
            b.set_message(format!("| {}", line.chars().take(100).collect::<String>()))
        });
    }

    pub fn host_done(&self, host: &str, summary: &str) {
        self.to_log(&format!("{host}: {summary}"));
        self.bar(host, |b| b.finish_with_message(summary.to_string()));
    }

    /// Something everyone must see, printed above the bars.
    pub fn notice(&self, text: &str) {
        let text = self.secrets.mask(text);
        self.to_log(&text);
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(text);
            }
            None => eprintln!("{} {text}", clock()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_log_is_private_and_masks_encoded_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("state/logs/run-1-2.log");
        let secrets =
            Secrets::from_map([("PG_PASSWORD".to_string(), "p@ss:w0rd!".to_string())].into());
        let p = Progress::new(secrets, &["web".to_string()], false, Some(&log));
        // As Rails would print it when the database refuses the URL.
        p.output(
            "web",
            "could not connect to postgres://app:p%40ss%3Aw0rd%21@10.0.0.2:5432/app",
        );
        p.status("web", "password p@ss:w0rd! refused");
        drop(p);
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(!text.contains("p%40ss") && !text.contains("p@ss"), "{text}");
        assert!(text.contains("postgres://app:***@10.0.0.2"), "{text}");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&log), 0o600);
        assert_eq!(mode(log.parent().unwrap()), 0o700);
    }
}
