//! A throwaway OpenSSH server for end-to-end tests.
//!
//! ```ignore
//! mod support;
//! use support::sshd::Sshd;
//!
//! let sshd = Sshd::start();                 // sshd -D -e on 127.0.0.1:<free port>
//! let key = sshd.client_key.clone();        // ed25519, authorized for root
//! let kh = sshd.known_hosts_file();         // a known_hosts with its host key
//! // ... connect to 127.0.0.1:sshd.port ...
//! ```                                       // killed when `sshd` is dropped
//!
//! Everything lives in a temp folder: the host key (ed25519), the client
//! key, `sshd_config`, `authorized_keys/<user>` and the server's log
//! (`sshd.log`, shown by [`Sshd::log`]). The server listens on 127.0.0.1
//! only. Readiness is polled (the port answers with an SSH banner), never
//! slept for.
//!
//! Needs root (sshd and [`ensure_user`]) and `/usr/sbin/sshd`: when it is
//! missing the test fails with a clear message (under `CI=true` too; tests
//! never skip silently). Non-root users for sudo tests come from
//! [`ensure_user`], which is idempotent and safe across parallel tests.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

/// A running sshd; killed (and reaped) on drop.
pub struct Sshd {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// `ssh-ed25519 AAAA...` of the server.
    pub host_pubkey: String,
    /// A private key authorized for root (and for users from [`Sshd::authorize`]).
    pub client_key: PathBuf,
    child: Child,
}

/// Fails the test with a clear message when OpenSSH's server is absent.
pub fn require_sshd() {
    if Path::new(SSHD).exists() {
        return;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{SSHD} is missing in CI: .ci/run must install openssh-server");
    }
    panic!(
        "{SSHD} is missing: install it (apt-get install -y openssh-server) to run the SSH tests"
    );
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Generates a key with ssh-keygen; `kind` is ed25519, ecdsa or rsa.
pub fn keygen(path: &Path, kind: &str, passphrase: &str) {
    let mut cmd = Command::new("ssh-keygen");
    cmd.args([
        "-q",
        "-t",
        kind,
        "-N",
        passphrase,
        "-C",
        "provision-test",
        "-f",
    ])
    .arg(path);
    if kind == "rsa" {
        cmd.args(["-b", "2048"]);
    }
    run(&mut cmd);
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

impl Sshd {
    /// Starts a server (retrying on another port if one was taken).
    pub fn start() -> Sshd {
        Self::start_with("")
    }

    /// Starts a server with extra `sshd_config` lines (they come first, so
    /// they win over the defaults: sshd keeps the first value it reads).
    pub fn start_with(extra_config: &str) -> Sshd {
        require_sshd();
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd (privilege separation)");
        let dir = tempfile::Builder::new()
            .prefix("provision-sshd-")
            .tempdir()
            .expect("tempdir");
        // Users other than root read their authorized_keys through here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = dir.path().to_path_buf();
        keygen(&d.join("host_ed25519"), "ed25519", "");
        keygen(&d.join("client_ed25519"), "ed25519", "");
        let host_pubkey = std::fs::read_to_string(d.join("host_ed25519.pub")).unwrap();
        let host_pubkey = host_pubkey
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::create_dir_all(d.join("authorized_keys")).unwrap();
        std::fs::set_permissions(
            d.join("authorized_keys"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();

        let mut last_log = String::new();
        for _attempt in 0..5 {
            // The probed port may be taken before sshd binds it: retry.
            let port = free_port();
            let config = format!(
                "{extra_config}\n\
                 Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {d}/host_ed25519\n\
                 PidFile none\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 AuthorizedKeysFile {d}/authorized_keys/%u\n\
                 Subsystem sftp internal-sftp\n\
                 MaxStartups 100:30:200\n\
                 LogLevel VERBOSE\n",
                d = d.display()
            );
            std::fs::write(d.join("sshd_config"), config).unwrap();
            let log = std::fs::File::create(d.join("sshd.log")).unwrap();
            let mut child = Command::new(SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(d.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {SSHD}: {e}"));
            if wait_ready(&mut child, port, Duration::from_secs(15)) {
                let sshd = Sshd {
                    client_key: d.join("client_ed25519"),
                    dir,
                    port,
                    host_pubkey,
                    child,
                };
                sshd.authorize("root", &sshd.client_key.with_extension("pub"));
                return sshd;
            }
            let _ = child.kill();
            let _ = child.wait();
            last_log = std::fs::read_to_string(d.join("sshd.log")).unwrap_or_default();
            eprintln!("sshd did not come up on port {port}, retrying; its log:\n{last_log}");
        }
        panic!("sshd did not start after 5 attempts:\n{last_log}");
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far (for assertion messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// The `known_hosts` line for this server.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_pubkey)
    }

    /// A fresh known_hosts file (in the temp folder) that knows this server.
    pub fn known_hosts_file(&self) -> PathBuf {
        let p = self
            .dir
            .path()
            .join(format!("known_hosts-{}", rand_suffix()));
        std::fs::write(&p, format!("{}\n", self.known_hosts_line())).unwrap();
        p
    }

    /// A new empty folder inside the temp folder (e.g. a fake `~/.ssh`).
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Adds a public key to `user`'s authorized_keys.
    pub fn authorize(&self, user: &str, pubkey: &Path) {
        let key = std::fs::read_to_string(pubkey).unwrap();
        let path = self.dir.path().join("authorized_keys").join(user);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(key.trim().as_bytes()).unwrap();
        f.write_all(b"\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// Generates a client key in the temp folder (not authorized).
    pub fn new_key(&self, name: &str, kind: &str, passphrase: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        keygen(&p, kind, passphrase);
        p
    }

    /// Every live process below the server (per-connection sshd processes
    /// and the commands they run).
    pub fn descendants(&self) -> Vec<(u32, String)> {
        let mut parent = std::collections::HashMap::new();
        let mut cmd = std::collections::HashMap::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...: comm may hold spaces, split after ')'.
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            if fields.first() == Some(&"Z") {
                continue;
            }
            if let Some(ppid) = fields.get(1).and_then(|p| p.parse::<u32>().ok()) {
                parent.insert(pid, ppid);
                let c = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                cmd.insert(pid, c.trim().to_string());
            }
        }
        let root = self.pid();
        let mut out = Vec::new();
        for (&pid, _) in parent.iter() {
            let mut p = pid;
            let mut depth = 0;
            while let Some(&pp) = parent.get(&p) {
                if pp == root {
                    out.push((pid, cmd.get(&pid).cloned().unwrap_or_default()));
                    break;
                }
                p = pp;
                depth += 1;
                if depth > 64 || pp <= 1 {
                    break;
                }
            }
        }
        out
    }

    /// SIGKILLs every per-connection process (the listener stays up): every
    /// open connection drops at once, as when a host's sshd dies. The sshd
    /// processes die first, so none can report its command's death; then the
    /// commands (they would otherwise outlive the test).
    pub fn kill_sessions(&self) -> usize {
        let procs = self.descendants();
        let (sshds, commands): (Vec<_>, Vec<_>) =
            procs.iter().partition(|(_, cmd)| cmd.starts_with("sshd"));
        for (pid, _) in sshds.iter().chain(commands.iter()) {
            // SAFETY: plain kill(2) on a pid that descends from our own child.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
        procs.len()
    }
}

/// Polls until the port answers with an SSH banner, the child exits, or
/// the deadline passes.
fn wait_ready(child: &mut Child, port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 8];
            if s.read_exact(&mut buf).is_ok() && &buf == b"SSH-2.0-" {
                let _ = s.write_all(b"SSH-2.0-probe\r\n");
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20)); // poll interval, not a wait for readiness
    }
    false
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_sessions();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// What sudo lets a test user do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SudoRule {
    /// `NOPASSWD: ALL`
    NoPassword,
    /// `ALL` with a password (the user has none, so `sudo -n` always fails).
    Password,
}

static USERS: Mutex<()> = Mutex::new(());

/// Creates a local user (idempotent, no password, shell /bin/sh) and its
/// sudo rule in `/etc/sudoers.d/provision-test-<user>`. Needs root and sudo.
pub fn ensure_user(name: &str, rule: SudoRule) {
    ensure_user_with_shell(name, rule, "/bin/sh")
}

/// [`ensure_user`] with another login shell (e.g. `/bin/bash`, whose
/// `~/.bashrc` Debian's bash reads also for `ssh host command`).
pub fn ensure_user_with_shell(name: &str, rule: SudoRule, shell: &str) {
    let _lock = USERS.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        Path::new("/usr/bin/sudo").exists(),
        "sudo is missing: install it (apt-get install -y sudo; .ci/run does)"
    );
    let exists = Command::new("id")
        .arg("-u")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !exists {
        // useradd locks /etc/passwd: another test binary may hold it briefly.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // Password "*": no password, yet not "locked" (sshd without PAM
            // refuses locked accounts, even for keys).
            let out = Command::new("useradd")
                .args(["-m", "-s", shell, "-p", "*", name])
                .output()
                .expect("run useradd");
            if out.status.success() || out.status.code() == Some(9) {
                break; // 9: exists (created by a parallel test)
            }
            assert!(
                Instant::now() < deadline,
                "useradd {name} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50)); // lock retry
        }
    }
    let rule_text = match rule {
        SudoRule::NoPassword => format!("{name} ALL=(ALL) NOPASSWD: ALL\n"),
        SudoRule::Password => format!("{name} ALL=(ALL) ALL\n"),
    };
    let file = PathBuf::from(format!("/etc/sudoers.d/provision-test-{name}"));
    if std::fs::read_to_string(&file).ok().as_deref() != Some(rule_text.as_str()) {
        std::fs::create_dir_all("/etc/sudoers.d").unwrap();
        let tmp = PathBuf::from(format!(
            "/etc/sudoers.d/.provision-test-{name}.{}",
            rand_suffix()
        ));
        std::fs::write(&tmp, &rule_text).unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o440)).unwrap();
        std::fs::rename(&tmp, &file).unwrap();
    }
}
