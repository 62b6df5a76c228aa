//! One end-to-end test lab: a project of local playground machines on this
//! computer's Docker engine, a hosts.toml in a temp folder, the provision
//! binary run against it, ssh into the machines, HTTP through their ports,
//! waits with deadlines, and cleanup on drop (also when the test fails).
//!
//! Traffic goes only to the machines a lab creates (its own /24). A missing
//! Docker engine is a failure, never a skip: these tests are the product's
//! main path.

#![allow(dead_code)] // each test file uses its own part of the lab

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use provision::machines::{MachineSpec, Playground};

pub const BIN: &str = env!("CARGO_BIN_EXE_provision");

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub project: String,
    net: [u8; 3],
    /// Machines made by the test itself (not in hosts.toml), removed on drop.
    extra: Vec<MachineSpec>,
    /// Docker networks made by the test itself, removed on drop.
    networks: Vec<String>,
}

/// One provision run: what it printed, how it ended, how long it took.
pub struct Run {
    pub out: Output,
    pub took: Duration,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.out.status.code()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.out.stdout).into_owned()
    }

    /// stdout and stderr together, for assertions and failure messages.
    pub fn text(&self) -> String {
        format!(
            "{}{}",
            String::from_utf8_lossy(&self.out.stdout),
            String::from_utf8_lossy(&self.out.stderr)
        )
    }

    /// Assert the exit code, showing the whole output when it differs.
    pub fn expect(self, code: i32, what: &str) -> Run {
        assert_eq!(self.code(), Some(code), "{what}:\n{}", self.text());
        self
    }
}

impl Lab {
    /// A lab named `PREFIX-PID` on the /24 `10.SECOND.(20 + pid % 200)`; the
    /// second octet is the test file's own, so files never share a subnet.
    pub fn new(prefix: &str, second_octet: u8) -> Lab {
        let engine = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(
            engine,
            "end-to-end tests need a running local Docker engine (start dockerd; .ci/run does)"
        );
        let pid = std::process::id();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(repo().join("examples"), dir.path().join("examples")).unwrap();
        Lab {
            dir,
            project: format!("{prefix}-{pid}"),
            net: [10, second_octet, (20 + pid % 200) as u8],
            extra: Vec::new(),
            networks: Vec::new(),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn state(&self) -> PathBuf {
        self.path().join(".provision")
    }

    pub fn addr(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.net[0], self.net[1], self.net[2], last)
    }

    pub fn container(&self, service: &str) -> String {
        format!("{}-{service}", self.project)
    }

    /// The container of a local machine on this computer's engine.
    pub fn machine(&self, host: &str) -> String {
        format!("{}-{host}", self.project)
    }

    /// Write `hosts.toml` (or another file of the lab's folder).
    pub fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path().join(name), text).unwrap();
    }

    /// The shipped hosts.toml with this lab's project and addresses (web at
    /// .10, db at .11) and without the forwards on this computer's ports.
    pub fn shipped_hosts(&self) -> String {
        std::fs::read_to_string(repo().join("hosts.toml"))
            .unwrap()
            .replace(
                "name = \"playground\"",
                &format!("name = \"{}\"", self.project),
            )
            .replace("192.168.33.10", &self.addr(10).to_string())
            .replace("192.168.33.11", &self.addr(11).to_string())
            .replace("forward = [\"8080:80\", \"5601:5601\"]\n", "")
    }

    /// `provision --hosts hosts.toml ARGS` in the lab's folder.
    pub fn provision(&self, args: &[&str]) -> Run {
        self.provision_env(args, &[])
    }

    pub fn provision_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let started = Instant::now();
        let out = Command::new(BIN)
            .current_dir(self.path())
            .args(["--hosts", "hosts.toml"])
            .args(args)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        Run {
            out,
            took: started.elapsed(),
        }
    }

    /// ssh as root into a machine with the project's key, checking its host
    /// key against the project's known_hosts only (strict).
    pub fn ssh(&self, address: Ipv4Addr, script: &str) -> Output {
        Command::new("ssh")
            .args(["-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                self.state().join("known_hosts").display()
            ))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "IdentitiesOnly=yes", "-i"])
            .arg(self.state().join("id_ed25519"))
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .args(["-o", "LogLevel=ERROR"])
            .arg(format!("root@{address}"))
            .arg(script)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    }

    /// `ssh` that must succeed; its trimmed stdout.
    pub fn ssh_ok(&self, address: Ipv4Addr, script: &str) -> String {
        let out = self.ssh(address, script);
        assert!(
            out.status.success(),
            "`{script}` on {address}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Whether a TCP connection from machine `from` to `to:port` opens
    /// (`to` may be an IPv6 address), with a 5 s limit.
    pub fn reaches(&self, from: Ipv4Addr, to: &str, port: u16) -> bool {
        let probe = format!(
            "timeout 5 bash -c 'exec 3<>/dev/tcp/{to}/{port}' 2>/dev/null && echo open || echo closed"
        );
        match self.ssh_ok(from, &probe).as_str() {
            "open" => true,
            "closed" => false,
            other => panic!("reachability probe said {other:?}"),
        }
    }

    /// A machine of the lab's project that hosts.toml does not name (a third
    /// machine to probe from); removed on drop.
    pub fn extra_machine(&mut self, spec: MachineSpec) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(Playground::new(self.state()).up(std::slice::from_ref(&spec)))
            .expect("extra machine");
        self.extra.push(spec);
    }

    /// A Docker network of the lab's own (e.g. `--ipv6 --subnet ...`),
    /// removed on drop.
    pub fn network(&mut self, name: &str, args: &[&str]) -> String {
        let name = format!("{}-{name}", self.project);
        let out = Command::new("docker")
            .args(["network", "create"])
            .args(args)
            .arg(&name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "docker network create {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.networks.push(name.clone());
        name
    }

    /// `docker ARGS` on this computer's engine, which must succeed.
    pub fn docker(&self, args: &[&str]) -> String {
        let out = Command::new("docker").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.path().join("hosts.toml").exists() {
            let _ = Command::new(BIN)
                .current_dir(self.path())
                .args(["--hosts", "hosts.toml", "down", "--volumes"])
                .output();
        }
        if !self.extra.is_empty() {
            let rt = tokio::runtime::Runtime::new().unwrap();
            let _ = rt.block_on(Playground::new(self.state()).down(&self.extra, true));
        }
        for n in &self.networks {
            let _ = Command::new("docker").args(["network", "rm", n]).output();
        }
    }
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Poll `f` until it returns `Some`, failing with `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

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
    let deadline = Instant::now() + limit;
    loop {
        let last = match http_get(url, None) {
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
