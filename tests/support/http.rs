//! HTTP as a user sees it: curl against a machine's address, polled until a
//! page shows what it should (within a deadline).

#![allow(dead_code)] // each test file uses its own part of the lab

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// GET `url` with curl (a cookie jar in `jar` when given); the body when the
/// status is 2xx.
pub fn http_get(url: &str, jar: Option<&Path>) -> Result<String, String> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "10"]);
    if let Some(jar) = jar {
        cmd.arg("-c").arg(jar).arg("-b").arg(jar);
    }
    let out = cmd.arg(url).output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// GET `url` until its body contains `needle` (within `limit`).
pub fn http_until(url: &str, needle: &str, limit: Duration) -> String {
    http_until_jar(url, None, needle, limit)
}

/// [`http_until`] keeping cookies in `jar` (a session across visits).
pub fn http_until_jar(url: &str, jar: Option<&Path>, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let last = match http_get(url, jar) {
            Ok(body) if body.contains(needle) => return body,
            Ok(body) => body,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{url} never showed {needle:?} within {limit:?}; last: {last}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The number in `<... id="ID">N<` of a page.
pub fn number_after(page: &str, id: &str) -> u64 {
    let marker = format!("id=\"{id}\">");
    let at = page
        .find(&marker)
        .unwrap_or_else(|| panic!("no #{id} in {page}"));
    let rest = &page[at + marker.len()..];
    rest[..rest.find('<').unwrap()].parse().unwrap()
}

/// Requests sent through nginx, and the failures among them.
#[derive(Debug, Default)]
pub struct Load {
    pub sent: u64,
    pub failed: Vec<String>,
}

impl Load {
    /// The client kept requesting (more than 20 requests) and none failed,
    /// `during` what.
    pub fn assert_none_failed(&self, during: &str) {
        assert!(
            self.sent > 20,
            "the client kept requesting during {during}: {} requests",
            self.sent
        );
        assert!(
            self.failed.is_empty(),
            "{} of {} requests failed during {during}, e.g. {:?}",
            self.failed.len(),
            self.sent,
            &self.failed[..self.failed.len().min(3)]
        );
    }
}

/// A thread requesting the app's page at `url` back to back (a new
/// connection each time) until [`Client::finish`]; a page without "Total
/// visits" counts as failed.
pub struct Client {
    stop: Arc<AtomicBool>,
    pub seen: Arc<Mutex<Load>>,
    thread: JoinHandle<()>,
}

impl Client {
    pub fn start(url: &str) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Load::default()));
        let thread = {
            let (url, stop, seen) = (url.to_string(), stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let r = http_get(&url, None);
                    let mut l = seen.lock().unwrap();
                    l.sent += 1;
                    match r {
                        Ok(body) if body.contains("Total visits") => {}
                        Ok(body) => l.failed.push(format!("unexpected page: {body}")),
                        Err(e) => l.failed.push(e),
                    }
                }
            })
        };
        Client { stop, seen, thread }
    }

    /// Stop the thread; what it saw.
    pub fn finish(self) -> Load {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}
