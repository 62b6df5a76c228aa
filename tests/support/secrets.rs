//! Secrets in end-to-end tests: planted values ([`Secrets`]) and where they
//! must never show up, e.g. in any process's arguments, sampled on a host or
//! here while provision runs ([`Sampler`], bounded on its own).

#![allow(dead_code)] // each test file uses its own part of the lab

use std::fmt::Display;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::lab::Lab;

/// Secret values a test hands to provision (in the environment of every
/// run) and then hunts for everywhere they must not be.
pub struct Secrets {
    pub pg: String,
    pub key_base: String,
    pub token: String,
}

impl Secrets {
    /// Values unique to this run (pid and time).
    pub fn new() -> Secrets {
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let pid = std::process::id();
        Secrets {
            pg: format!("PgPw{pid}x{n:x}"),
            key_base: format!("KeyBase{n:x}{pid}{}", "k".repeat(40)),
            token: format!("RepoTok{pid}y{n:x}"),
        }
    }

    pub fn all(&self) -> [(&'static str, &str); 3] {
        [
            ("PG_PASSWORD", &self.pg),
            ("SECRET_KEY_BASE", &self.key_base),
            ("REPO_TOKEN", &self.token),
        ]
    }

    /// The environment that hands them to provision (`Lab::env`).
    pub fn env(&self) -> Vec<(String, String)> {
        let all = self.all().into_iter();
        all.map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Panics if `text` (from `what`) holds any secret value.
    pub fn assert_absent(&self, what: &str, text: &str) {
        for (name, value) in self.all() {
            assert!(
                !text.contains(value),
                "the value of {name} appears in {what}:\n{}",
                text.lines()
                    .filter(|l| l.contains(value))
                    .take(5)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// `ps -eo args` sampled in the background: on a host over one SSH session
/// (a bounded loop there), or here. `stop` ends it.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<String>>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Sampler {
    pub fn remote(lab: &Lab, addr: impl Display) -> Sampler {
        // At most 3000 samples (about 10 minutes): bounded on its own.
        let script = "for i in $(seq 1 3000); do ps -eo args; echo @sample; sleep 0.2; done";
        let mut child = lab
            .ssh_cmd(addr, script)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(String::new()));
        let (s2, seen2) = (stop.clone(), seen.clone());
        let mut out = child.stdout.take().unwrap();
        let thread = std::thread::spawn(move || {
            let reader = std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                loop {
                    match out.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => seen2
                            .lock()
                            .unwrap()
                            .push_str(&String::from_utf8_lossy(&buf[..n])),
                    }
                }
            });
            while !s2.load(Ordering::Relaxed) && child.try_wait().unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = reader.join();
            0
        });
        Sampler {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub fn local() -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(String::new()));
        let (s2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !s2.load(Ordering::Relaxed) && n < 3000 {
                if let Ok(o) = Command::new("ps").args(["-eo", "args"]).output() {
                    let mut s = seen2.lock().unwrap();
                    s.push_str(&String::from_utf8_lossy(&o.stdout));
                    s.push_str("@sample\n");
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(200));
            }
            n
        });
        Sampler {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Stop; returns everything sampled and the number of samples.
    pub fn finish(mut self) -> (String, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.take().unwrap().join();
        let text = self.seen.lock().unwrap().clone();
        let n = text.lines().filter(|l| *l == "@sample").count();
        (text, n)
    }
}
