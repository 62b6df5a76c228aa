//! One end-to-end test lab: a project of local playground machines on this
//! computer's Docker engine, a hosts.toml in a temp folder, ssh and `docker
//! exec` into the machines, and cleanup on drop (also when the test fails):
//! every container, volume and network labelled with the lab's project.
//! Provision runs are in `run.rs`, the Rails stack in `stack.rs`, waits in
//! `wait.rs`, HTTP in `http.rs`.
//!
//! Traffic goes only to the machines a lab creates (its own /24). Under
//! CI=true a missing Docker engine fails the test, never skips it: that
//! rule lives in [`engine`] alone.

#![allow(dead_code)] // each test file uses its own part of the lab

use std::fmt::Display;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use provision::machines::{Init, MachineSpec, Playground, LABEL_PROJECT};

use super::wait::{run_within, wait_until};

/// No ssh or `docker exec` of a test may take longer.
const SHELL_LIMIT: Duration = Duration::from_secs(600);

pub struct Lab {
    pub dir: tempfile::TempDir,
    pub project: String,
    /// The first three octets of the lab's /24.
    pub net: [u8; 3],
    /// The project's machines, driven directly (without provision).
    pub playground: Playground,
    /// Environment of every provision run (e.g. secret values).
    pub env: Vec<(String, String)>,
    /// Everything every provision run printed (see [`Lab::printed`]).
    pub(super) printed: Mutex<String>,
    pub(super) runs: AtomicUsize,
    /// Docker networks made by the test itself, removed on drop.
    networks: Vec<String>,
}

/// Whether this computer's Docker engine answers. When it does not, the
/// test fails if `required` or under CI=true; otherwise it is skipped
/// (false), saying so on stderr.
pub fn engine(required: bool) -> bool {
    let answers = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output()
        .is_ok_and(|o| o.status.success());
    let ci = std::env::var("CI").as_deref() == Ok("true");
    assert!(
        answers || !(required || ci),
        "end-to-end tests need a running local Docker engine (start dockerd; .ci/run does)"
    );
    if !answers {
        eprintln!("skipping: no local Docker engine; under CI=true this fails");
    }
    answers
}

impl Lab {
    /// A lab named `PREFIX-PID` on the /24 `10.SECOND.(20 + pid % 200)`; the
    /// second octet is the test file's own, so files never share a subnet.
    /// No engine: the test fails.
    pub fn new(prefix: &str, second_octet: u8) -> Lab {
        engine(true);
        let pid = std::process::id();
        Lab::at(
            format!("{prefix}-{pid}"),
            [10, second_octet, (20 + pid % 200) as u8],
        )
    }

    /// [`Lab::new`], or None (the test is skipped) with no engine outside CI.
    pub fn or_skip(prefix: &str, second_octet: u8) -> Option<Lab> {
        engine(false).then(|| Lab::new(prefix, second_octet))
    }

    /// A lab for each test of a file whose tests run in parallel:
    /// `PREFIX-PID-N` on `10.SECOND.(20 + (8 pid + N) % 200)`. None as
    /// [`Lab::or_skip`].
    pub fn numbered(prefix: &str, second_octet: u8) -> Option<Lab> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        if !engine(false) {
            return None;
        }
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        Some(Lab::at(
            format!("{prefix}-{pid}-{n}"),
            [10, second_octet, (20 + (pid * 8 + n) % 200) as u8],
        ))
    }

    fn at(project: String, net: [u8; 3]) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(repo().join("examples"), dir.path().join("examples")).unwrap();
        Lab {
            playground: Playground::new(dir.path().join(".provision")),
            dir,
            project,
            net,
            env: Vec::new(),
            printed: Mutex::new(String::new()),
            runs: AtomicUsize::new(0),
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
        let [a, b, c] = self.net;
        Ipv4Addr::new(a, b, c, last)
    }

    /// The container of a service on its host.
    pub fn container(&self, service: &str) -> String {
        format!("{}-{service}", self.project)
    }

    /// The container of a local machine on this computer's engine.
    pub fn machine(&self, host: &str) -> String {
        format!("{}-{host}", self.project)
    }

    /// The spec of a machine of the lab's project at `.last`.
    pub fn spec(&self, name: &str, last: u8, init: Init) -> MachineSpec {
        let mut spec = MachineSpec::new(&self.project, name, self.addr(last));
        spec.init = init;
        spec
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

    /// Everything every provision run of the lab printed (secret scans).
    pub fn printed(&self) -> String {
        self.printed.lock().unwrap().clone()
    }

    /// The project's known_hosts ("" when there is none).
    pub fn known_hosts(&self) -> String {
        std::fs::read_to_string(self.playground.known_hosts_path()).unwrap_or_default()
    }

    /// The files provision kept in `.provision/backups`, sorted.
    pub fn backups(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.state().join("backups"))
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into()))
            .map(Iterator::collect)
            .unwrap_or_default();
        names.sort();
        names
    }

    /// ssh as root into a machine with the project's key, checking its host
    /// key against the project's known_hosts only (strict).
    pub fn ssh_cmd(&self, address: impl Display, script: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(["-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                self.playground.known_hosts_path().display()
            ))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", "IdentitiesOnly=yes", "-i"])
            .arg(self.playground.project_key_path())
            .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"])
            .args(["-o", "ServerAliveInterval=5", "-o", "LogLevel=ERROR"])
            .arg(format!("root@{address}"))
            .arg(script)
            .stdin(Stdio::null());
        c
    }

    /// [`Lab::ssh_cmd`] run to its end (killed past 10 minutes).
    pub fn ssh(&self, address: impl Display, script: &str) -> Output {
        run_within(self.ssh_cmd(address, script), SHELL_LIMIT)
    }

    /// `ssh` that must succeed; its trimmed stdout.
    pub fn ssh_ok(&self, address: impl Display, script: &str) -> String {
        let what = format!("`{script}` on {address}");
        succeeded(&what, self.ssh(address, script))
    }

    /// Poll until `script` succeeds over ssh on `address` (within `limit`).
    pub fn wait_for_ssh(&self, address: impl Display, script: &str, limit: Duration) {
        wait_until(&format!("`{script}` over ssh on {address}"), limit, || {
            let probe = self.ssh_cmd(&address, script);
            run_within(probe, Duration::from_secs(20)).status.success()
        });
    }

    /// Whether a TCP connection from machine `from` to `to:port` opens
    /// (`to` may be an IPv6 address), with a 5 s limit.
    pub fn reaches(&self, from: impl Display, to: &str, port: u16) -> bool {
        let probe = format!(
            "timeout 5 bash -c 'exec 3<>/dev/tcp/{to}/{port}' 2>/dev/null && echo open || echo closed"
        );
        match self.ssh_ok(from, &probe).as_str() {
            "open" => true,
            "closed" => false,
            other => panic!("reachability probe said {other:?}"),
        }
    }

    /// A shell line in a machine, from the outer engine (not over SSH).
    pub fn dexec(&self, host: &str, script: &str) -> Output {
        let mut c = Command::new("docker");
        c.args(["exec", &self.machine(host), "sh", "-c", script]);
        run_within(c, SHELL_LIMIT)
    }

    /// `dexec` that must succeed; its trimmed stdout.
    pub fn dexec_ok(&self, host: &str, script: &str) -> String {
        succeeded(&format!("`{script}` in {host}"), self.dexec(host, script))
    }

    /// `docker ARGS` on this computer's engine, which must succeed.
    pub fn docker(&self, args: &[&str]) -> String {
        let mut c = Command::new("docker");
        c.args(args);
        succeeded(
            &format!("docker {}", args.join(" ")),
            run_within(c, SHELL_LIMIT),
        )
    }

    /// A machine of the lab's project that hosts.toml does not name (a third
    /// machine to probe from); removed on drop with the others.
    pub fn extra_machine(&self, spec: MachineSpec) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(self.playground.up(std::slice::from_ref(&spec)))
            .expect("extra machine");
    }

    /// A Docker network of the lab's own (e.g. `--ipv6 --subnet ...`),
    /// removed on drop.
    pub fn network(&mut self, name: &str, args: &[&str]) -> String {
        let name = format!("{}-{name}", self.project);
        let mut create = vec!["network", "create"];
        create.extend(args);
        create.push(&name);
        self.docker(&create);
        self.networks.push(name.clone());
        name
    }

    /// Names of the project's objects of a kind on this computer's engine
    /// (`ps --all`, `volume ls`, `network ls`), sorted.
    pub fn labelled(&self, list: &[&str]) -> Vec<String> {
        let filter = format!("label={LABEL_PROJECT}={}", self.project);
        let out = Command::new("docker")
            .args(list)
            .args(["--quiet", "--filter", &filter])
            .output()
            .unwrap();
        let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect();
        names.sort();
        names
    }

    /// The project's containers (its machines) on this computer's engine.
    pub fn containers(&self) -> Vec<String> {
        self.labelled(&["ps", "--all"])
    }

    /// The project's volumes on this computer's engine.
    pub fn volumes(&self) -> Vec<String> {
        self.labelled(&["volume", "ls"])
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let rm = |what: &[&str], names: Vec<String>| {
            if !names.is_empty() {
                let _ = Command::new("docker").args(what).args(names).output();
            }
        };
        rm(&["rm", "--force"], self.containers());
        rm(&["volume", "rm", "--force"], self.volumes());
        rm(&["network", "rm"], self.networks.clone());
        rm(&["network", "rm"], self.labelled(&["network", "ls"]));
    }
}

/// The trimmed stdout of a command that must have succeeded.
fn succeeded(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
