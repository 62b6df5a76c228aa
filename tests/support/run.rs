//! The provision binary run against a lab: in the background or to its end,
//! always within a deadline, its output kept in files of the lab's folder,
//! logged on stderr (shown when a test fails) and added to `Lab::printed`.

#![allow(dead_code)] // each test file uses its own part of the lab

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::lab::Lab;

pub const BIN: &str = env!("CARGO_BIN_EXE_provision");
/// No provision run of a test may take longer; past it, it is killed.
pub const RUN_LIMIT: Duration = Duration::from_secs(900);

/// One finished provision run: how it ended, what it printed, how long it took.
pub struct Run {
    pub label: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub took: Duration,
}

impl Run {
    pub fn secs(&self) -> f64 {
        self.took.as_secs_f64()
    }

    /// stdout and stderr together, for assertions and failure messages.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }

    /// Assert the exit code, showing the whole output when it differs.
    pub fn expect(self, code: i32, what: &str) -> Run {
        assert_eq!(self.code, Some(code), "{what}:\n{}", self.text());
        self
    }

    /// The summary line of a host.
    pub fn host_line(&self, host: &str) -> String {
        self.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{host} ")))
            .unwrap_or_else(|| panic!("no summary line for {host}:\n{}", self.stdout))
            .to_string()
    }
}

/// A provision run in the background.
pub struct Running<'a> {
    lab: &'a Lab,
    pub child: Child,
    out: PathBuf,
    err: PathBuf,
    started: Instant,
    label: String,
}

impl Running<'_> {
    pub fn output_so_far(&self) -> String {
        let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        format!("{}{}", read(&self.out), read(&self.err))
    }

    pub fn finished(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Poll until it exits; past [`RUN_LIMIT`] it is killed and the test fails.
    pub fn wait(mut self) -> Run {
        let deadline = self.started + RUN_LIMIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "provision {} still ran after {RUN_LIMIT:?} (killed); output:\n{}",
                    self.label,
                    tail(&self.output_so_far(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let run = Run {
            code: status.code(),
            stdout: std::fs::read_to_string(&self.out).unwrap(),
            stderr: std::fs::read_to_string(&self.err).unwrap(),
            took: self.started.elapsed(),
            label: self.label,
        };
        eprintln!(
            "== provision {} -> {:?} in {:.1} s\n-- stdout:\n{}-- stderr (tail):\n{}",
            run.label,
            run.code,
            run.secs(),
            run.stdout,
            tail(&run.stderr, 25)
        );
        self.lab.printed.lock().unwrap().push_str(&run.text());
        run
    }
}

impl Lab {
    /// `provision --hosts hosts.toml ARGS` in the lab's folder, in the
    /// background, with the lab's environment.
    pub fn spawn(&self, args: &[&str]) -> Running<'_> {
        self.spawn_env(args, &[])
    }

    pub fn spawn_env(&self, args: &[&str], env: &[(&str, &str)]) -> Running<'_> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst) + 1;
        let outs = self.path().join("outputs");
        std::fs::create_dir_all(&outs).unwrap();
        let out = outs.join(format!("{n}.out"));
        let err = outs.join(format!("{n}.err"));
        let child = Command::new(BIN)
            .current_dir(self.path())
            .args(["--hosts", "hosts.toml"])
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Running {
            lab: self,
            child,
            out,
            err,
            started: Instant::now(),
            label: format!("#{n} {}", args.join(" ")),
        }
    }

    /// `provision --hosts hosts.toml ARGS` to its end.
    pub fn provision(&self, args: &[&str]) -> Run {
        self.spawn(args).wait()
    }

    pub fn provision_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        self.spawn_env(args, env).wait()
    }

    /// [`Lab::provision`] that must exit 0.
    pub fn provision_ok(&self, args: &[&str]) -> Run {
        let what = format!("provision {}", args.join(" "));
        self.provision(args).expect(0, &what)
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n") + "\n"
}
