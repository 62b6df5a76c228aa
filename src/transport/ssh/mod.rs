//! The SSH transport: one russh connection per host, reused for every step,
//! with up to [`MAX_CHANNELS`] commands in flight on it.
//!
//! Settings from /work/shared/PERF.md: `nodelay`, TCP_QUICKACK after every
//! read ([`stream::QuickAckStream`]), and uploads copied with a 256 KiB
//! buffered reader and `copy_buf`. Keepalives are on and there is no
//! inactivity timeout, so long quiet commands (apt, docker build) are never
//! cut for silence.
//!
//! `~/.ssh/config` support and its limits: see [`config`].
//!
//! Stopping a command (timeout, cancelled caller): OpenSSH refuses "signal"
//! channel requests, and closing the channel leaves the command running
//! with its session counted against `MaxSessions`. So every line is sent as
//! `echo provision-pgid:$$; exec sh -c LINE` (see [`remote_line`]): that
//! line (stripped, validated: see [`Pgid`]) names the process group, and a
//! stop runs `kill -TERM -PGID` (SIGKILL 5 s later) on a second channel,
//! then closes the channel. What a login shell's rc file prints before it
//! goes to stderr, never to the command's stdout (a tar stream stays
//! whole), and is never taken for the group: a `1` from a `.bashrc` must not
//! become `kill -1`.
//!
//! Not supported: password and keyboard-interactive auth, host and user
//! certificates, `ProxyCommand`, agent forwarding, non-POSIX login shells
//! (fish, csh) on the host.

mod auth;
pub mod config;
mod known_hosts;
mod stream;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use russh::client::{self, Handle, Msg};
use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate};
use russh::{Channel, ChannelMsg, ChannelReadHalf, ChannelWriteHalf, Sig};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::command_label;
use super::exec::OutputCollector;
use super::{Exec, ExecOutput, Stdin, Transport, TransportError};

/// Commands in flight at once on one connection: below OpenSSH's default
/// `MaxSessions 10`.
pub const MAX_CHANNELS: usize = 8;

/// How long a stopped command's cleanup waits for its pid line.
const PID_LINE_WAIT: Duration = Duration::from_secs(30);

/// How long a stopped command's cleanup waits for sshd to close its session.
const CLOSE_WAIT: Duration = Duration::from_secs(15);

/// Sessions opened at once to stop commands, on top of [`MAX_CHANNELS`]:
/// 8 + 2 stays within OpenSSH's `MaxSessions 10`. (Process-wide: stops are
/// rare and short.)
static KILL_SLOTS: Semaphore = Semaphore::const_new(2);

/// Write size for stdin and uploads (PERF.md: fills 32 KiB packets).
const UPLOAD_BUFFER: usize = 256 * 1024;

/// What to do with a host key that is not in any known_hosts file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Refuse unknown keys (the error shows the command that accepts one).
    #[default]
    Strict,
    /// Record an unknown key in the first writable known_hosts file and
    /// connect; a changed key is still refused.
    AcceptNew,
    /// Accept any key (warns once per host on stderr).
    Off,
}

/// Where and how to reach one host.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// The host's name in the inventory, used in every message.
    pub name: String,
    /// Address or `~/.ssh/config` Host alias.
    pub address: String,
    /// 0: from `~/.ssh/config`, else 22.
    pub port: u16,
    /// Empty: from `~/.ssh/config`, else `$USER`.
    pub user: String,
    /// A private key file; `None`: the config's IdentityFile, the agent, the
    /// default keys.
    pub identity: Option<PathBuf>,
    /// Env var holding the key's passphrase (else a TTY prompt).
    pub passphrase_env: Option<String>,
    pub host_key_policy: HostKeyPolicy,
    /// Extra known_hosts files (e.g. the project's `.provision/known_hosts`),
    /// checked with `~/.ssh/known_hosts`; the first writable one (else
    /// `~/.ssh/known_hosts`) learns keys under [`HostKeyPolicy::AcceptNew`].
    pub known_hosts: Vec<PathBuf>,
    /// Run every line as `sudo -n sh -c LINE` (a non-root user).
    pub sudo: bool,
    /// Bound on TCP connect and on the SSH handshake.
    pub connect_timeout: Duration,
    /// The user's SSH folder (config, known_hosts, default keys); `None`:
    /// `~/.ssh`. Tests point it at a temp folder.
    pub ssh_dir: Option<PathBuf>,
}

impl SshTarget {
    /// A target with defaults: port and user from `~/.ssh/config` (else 22
    /// and `$USER`), strict host keys, no sudo, 10 s connect timeout.
    pub fn new(name: impl Into<String>, address: impl Into<String>) -> Self {
        SshTarget {
            name: name.into(),
            address: address.into(),
            port: 0,
            user: String::new(),
            identity: None,
            passphrase_env: None,
            host_key_policy: HostKeyPolicy::Strict,
            known_hosts: Vec::new(),
            sudo: false,
            connect_timeout: Duration::from_secs(10),
            ssh_dir: None,
        }
    }

    fn ssh_dir(&self) -> PathBuf {
        self.ssh_dir.clone().unwrap_or_else(user_ssh_dir)
    }
}

/// `~/.ssh` of the user running provision.
pub fn user_ssh_dir() -> PathBuf {
    dirs::home_dir()
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".ssh")
}

/// The user and port `~/.ssh/config` (in `ssh_dir`, `None`: the user's)
/// gives for `address`, each `None` where it says nothing. A file that
/// cannot be parsed says nothing here; connecting reports it.
pub fn ssh_config_login(ssh_dir: Option<&Path>, address: &str) -> (Option<String>, Option<u16>) {
    let dir = ssh_dir.map(Path::to_path_buf).unwrap_or_else(user_ssh_dir);
    let login = config::login(&dir.join("config"), address).unwrap_or_default();
    (login.user, login.port)
}

/// A connection to one host. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub struct SshTransport {
    inner: Arc<Inner>,
}

struct Inner {
    target: SshTarget,
    /// The user we log in as (after `~/.ssh/config`).
    user: String,
    conn: tokio::sync::Mutex<Arc<Conn>>,
    /// One permit per session channel; a stopped command keeps its permit
    /// until sshd has really closed its session.
    slots: Arc<Semaphore>,
}

struct Conn {
    handle: Handle<Client>,
    /// The jump host's connection, kept alive while this one is used.
    _jump: Option<SshTransport>,
}

impl std::fmt::Debug for SshTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshTransport")
            .field("name", &self.inner.target.name)
            .field("user", &self.inner.user)
            .finish()
    }
}

impl SshTransport {
    /// Connects and authenticates (see [`SshTarget`]).
    pub async fn connect(target: SshTarget) -> Result<SshTransport, TransportError> {
        let (conn, user) = open(&target, None).await?;
        Ok(SshTransport {
            inner: Arc::new(Inner {
                target,
                user,
                conn: tokio::sync::Mutex::new(Arc::new(conn)),
                slots: Arc::new(Semaphore::new(MAX_CHANNELS)),
            }),
        })
    }

    /// The user logged in as.
    pub fn user(&self) -> &str {
        &self.inner.user
    }

    /// Ends the connection politely (dropping the last clone also ends it).
    pub async fn close(&self) {
        let conn = self.inner.conn.lock().await.clone();
        let _ = conn
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }

    /// The live connection, re-established once if it was dropped.
    async fn conn(&self) -> Result<Arc<Conn>, TransportError> {
        let mut cur = self.inner.conn.lock().await;
        if cur.handle.is_closed() {
            let (conn, _) = open(&self.inner.target, None).await?;
            *cur = Arc::new(conn);
        }
        Ok(cur.clone())
    }

    /// Replaces `dead` with a new connection (unless another task did).
    async fn reconnect(&self, dead: &Arc<Conn>) -> Result<Arc<Conn>, TransportError> {
        let mut cur = self.inner.conn.lock().await;
        if Arc::ptr_eq(&cur, dead) {
            let (conn, _) = open(&self.inner.target, None).await?;
            *cur = Arc::new(conn);
        }
        Ok(cur.clone())
    }

    async fn slot(&self) -> OwnedSemaphorePermit {
        self.inner
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("semaphore never closed")
    }

    /// `slot`: a permit taken before the timeout starts (queueing is not
    /// the command's time); a retry takes a new one.
    async fn exec_inner(
        &self,
        line: &str,
        label: &str,
        req: &mut Exec,
        slot: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<ExecOutput, TransportError> {
        let host = &self.inner.target.name;
        let replayable = !matches!(req.stdin, Some(Stdin::Reader(_)));
        let conn = self.conn().await?;
        let sudo = self.inner.target.sudo;
        let permit = match slot.take() {
            Some(p) => p,
            None => self.slot().await,
        };
        let who = Who {
            host: host.clone(),
            command: label.to_string(),
        };
        let first = run_once(conn.clone(), line, sudo, &who, req, permit).await;
        let retry = match &first {
            Err(Failure::Lost { started: false, .. }) => true,
            Err(Failure::Lost {
                sink_written: false,
                ..
            }) => req.idempotent && replayable,
            _ => false,
        };
        let result = if retry {
            let conn = self.reconnect(&conn).await?;
            let permit = self.slot().await;
            run_once(conn, line, sudo, &who, req, permit).await
        } else {
            first
        };
        match result {
            Ok(out) => Ok(out),
            Err(Failure::Lost { detail, .. }) => Err(TransportError::ConnectionLost {
                host: host.clone(),
                command: Some(label.to_string()),
                detail,
            }),
            Err(Failure::Other(message)) => Err(TransportError::Channel {
                host: host.clone(),
                command: label.to_string(),
                message,
            }),
            Err(Failure::SudoPassword) => Err(TransportError::SudoNeedsPassword {
                host: host.clone(),
                user: self.inner.user.clone(),
                command: label.to_string(),
            }),
        }
    }
}

#[async_trait]
impl Transport for SshTransport {
    async fn exec(&self, mut req: Exec) -> Result<ExecOutput, TransportError> {
        let target = &self.inner.target;
        let label = command_label(&req.line);
        let line = remote_line(&req.line, target.sudo);
        let slot = self.slot().await;
        let mut slot = Some(slot);
        match req.timeout {
            Some(after) => {
                match tokio::time::timeout(
                    after,
                    self.exec_inner(&line, &label, &mut req, &mut slot),
                )
                .await
                {
                    Ok(r) => r,
                    // Dropping the run closes its channel (see ChannelGuard).
                    Err(_) => Err(TransportError::Timeout {
                        host: target.name.clone(),
                        command: label,
                        after,
                    }),
                }
            }
            None => self.exec_inner(&line, &label, &mut req, &mut slot).await,
        }
    }

    async fn unix_stream(&self, path: &str) -> Result<Option<super::SocketStream>, TransportError> {
        let conn = self.conn().await?;
        let direct = conn.handle.channel_open_direct_streamlocal(path).await;
        if let Ok(ch) = direct {
            // Root, or a sudo user in the socket's group (docker).
            return Ok(Some(super::SocketStream {
                stream: Box::new(ch.into_stream()),
                relayed: false,
            }));
        }
        if self.inner.target.sudo {
            // The socket is root's: sshd, running as the user, may not open
            // it, but `sudo docker` may, and relays it over stdin and stdout.
            // No right is added on the host: the user could run that already.
            let permit = self.slot().await;
            let Ok((ch, permit)) = open_session(&conn, permit).await else {
                return Ok(None);
            };
            if ch.exec(true, relay_line(path)).await.is_err() {
                return Ok(None);
            }
            // sudo asking for a password, or no docker CLI: the stream ends
            // at once, the first request fails and the caller falls back.
            return Ok(Some(super::SocketStream {
                stream: Box::new(WithPermit {
                    stream: ch.into_stream(),
                    _permit: permit,
                }),
                relayed: true,
            }));
        }
        // Forwarding refused (AllowStreamLocalForwarding no, or no socket):
        // the caller falls back to running commands.
        Ok(None)
    }

    async fn upload_tar(
        &self,
        dest_dir: &str,
        archive: Box<dyn AsyncRead + Send + Unpin>,
    ) -> Result<(), TransportError> {
        super::upload_tar_with(self, dest_dir, archive).await
    }

    fn name(&self) -> &str {
        &self.inner.target.name
    }
}

/// The line a sudo user's stream to the Docker socket `path` runs, as
/// root: socat where the host has it (it starts in about 2 ms), else the
/// docker CLI's own relay (what `docker -H ssh://` runs on the far side;
/// its start takes about 25 ms of the host's CPU). No pid line: its
/// stdout is the stream.
fn relay_line(path: &str) -> String {
    use crate::commands::quote;
    let docker = format!(
        "exec docker -H {} system dial-stdio",
        quote(&format!("unix://{path}"))
    );
    // socat reads `:` `,` `!` and spaces in an address as its own syntax.
    let plain = !path.contains([':', ',', '!', ' ', '\\', '\'', '"']);
    let inner = if plain {
        format!(
            "command -v socat >/dev/null 2>&1 && exec socat - {}; {docker}",
            quote(&format!("UNIX-CONNECT:{path}"))
        )
    } else {
        docker
    };
    format!("exec sudo -n sh -c {}", quote(&inner))
}

/// A relay's stream, holding its session slot for as long as it is open.
struct WithPermit<S> {
    stream: S,
    _permit: OwnedSemaphorePermit,
}

impl<S: AsyncRead + Unpin> AsyncRead for WithPermit<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WithPermit<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

fn sudo_wants_password(stderr: &[u8]) -> bool {
    let s = String::from_utf8_lossy(stderr);
    s.contains("sudo: a password is required") || s.contains("sudo: a terminal is required")
}

/// Why one run did not finish.
enum Failure {
    /// The connection went away. `started`: the command may have run;
    /// `sink_written`: bytes already went to the stdout sink.
    Lost {
        detail: String,
        started: bool,
        sink_written: bool,
    },
    /// Any other channel failure (message has no stdin and no line).
    Other(String),
    /// `sudo -n` exited 1 saying it needs a password.
    SudoPassword,
}

/// Starts the line that [`remote_line`] prints before the command's output.
const PGID_MARK: &[u8] = b"provision-pgid:";

/// Output a login shell may print before [`PGID_MARK`] (rc files, banners)
/// that is held back while looking for it; past this, the group is unknown.
const MAX_PRELUDE: usize = 64 * 1024;

/// The line sent to the host. It first prints the pid of the login shell
/// (sshd makes it a session and process group leader) after [`PGID_MARK`],
/// then execs the line under `sh -c` (through `sudo -n` when asked), so the
/// command keeps that pid and group. The client strips that first line; it
/// is how a timed-out command is stopped: OpenSSH refuses "signal"
/// requests, and a closed channel alone leaves the command running and its
/// session counted against MaxSessions.
///
/// Needs a POSIX-like login shell on the host (sh, bash, dash, zsh, ksh).
pub fn remote_line(line: &str, sudo: bool) -> String {
    let sudo = if sudo { "sudo -n " } else { "" };
    format!(
        "echo {}$$; exec {sudo}sh -c {}",
        String::from_utf8_lossy(PGID_MARK),
        crate::commands::quote(line)
    )
}

/// A process group that may be signalled: a pid above 1, so never `-1`
/// (every process the user may signal) nor `-0` (the killer's own group).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pgid(u32);

impl Pgid {
    /// Only ASCII digits, no sign, no leading zero, 2..=i32::MAX.
    fn parse(text: &[u8]) -> Option<Pgid> {
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.is_empty() || text[0] == b'0' || !text.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n: u32 = std::str::from_utf8(text).ok()?.parse().ok()?;
        (n > 1 && n <= i32::MAX as u32).then_some(Pgid(n))
    }
}

/// The line that stops the process group `pgid`: SIGTERM, then SIGKILL 5 s
/// later if it is still there (in the background, detached from the channel).
/// No `--`: dash's kill rejects it; `kill -SIG -PGID` works in dash and bash.
fn kill_line(pgid: Pgid) -> String {
    let pgid = pgid.0;
    format!(
        "kill -TERM -{pgid} 2>/dev/null; \
         (sleep 5; kill -0 -{pgid} 2>/dev/null && kill -KILL -{pgid}) \
         </dev/null >/dev/null 2>&1 &"
    )
}

/// The host and command a channel runs, for messages.
#[derive(Debug, Clone)]
struct Who {
    host: String,
    command: String,
}

/// Closes the channel on every path, including when the run is dropped by
/// a timeout or a cancelled caller (russh sends no CHANNEL_CLOSE for a
/// dropped channel). A command still running is stopped first (see
/// [`remote_line`]).
struct ChannelGuard {
    conn: Arc<Conn>,
    write: Arc<ChannelWriteHalf<Msg>>,
    /// Taken by the cleanup task on drop, to wait for the pid line.
    read: Option<ChannelReadHalf>,
    pid_line: PidLine,
    /// The remote process group, once its line arrived (and was valid).
    pgid: Option<Pgid>,
    sudo: bool,
    who: Who,
    done: bool,
    /// Released when the session is really gone.
    permit: Option<OwnedSemaphorePermit>,
}

impl ChannelGuard {
    async fn wait(&mut self) -> Option<ChannelMsg> {
        self.read.as_mut()?.wait().await
    }
}

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (w, conn, mut pgid, sudo) =
            (self.write.clone(), self.conn.clone(), self.pgid, self.sudo);
        let who = self.who.clone();
        let mut read = self.read.take();
        let mut pid_line = std::mem::replace(&mut self.pid_line, PidLine::Found);
        let permit = self.permit.take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // Stopped before its pid line came (a short timeout on a busy
                // host): keep reading for it, or for the command's end.
                let mut ended = false;
                if let (None, Some(read)) = (pgid, read.as_mut()) {
                    let _ = tokio::time::timeout(PID_LINE_WAIT, async {
                        while pid_line.waiting() {
                            match read.wait().await {
                                Some(ChannelMsg::Data { data }) => {
                                    if let Some(p) = pid_line.feed(&data).pgid {
                                        pgid = Some(p);
                                    }
                                }
                                Some(ChannelMsg::Close) | None => {
                                    ended = true;
                                    return;
                                }
                                Some(_) => {}
                            }
                        }
                    })
                    .await;
                }
                // Nothing to kill, and the command may still run: say so
                // (not when it ended, or the connection is gone with it).
                if pgid.is_none() && !ended && !conn.handle.is_closed() {
                    eprintln!(
                        "warning: {}: `{}` was stopped, but it may still run on the host: {}",
                        who.host,
                        who.command,
                        pid_line.why_unknown()
                    );
                }
                if let Some(pgid) = pgid {
                    let _kill_slot = KILL_SLOTS.acquire().await;
                    let mut opened = conn.handle.channel_open_session().await;
                    for _ in 0..3 {
                        // Refused while sshd still counts closing sessions.
                        if !matches!(opened, Err(russh::Error::ChannelOpenFailure(_))) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await; // backoff
                        opened = conn.handle.channel_open_session().await;
                    }
                    if let Ok(mut ch) = opened {
                        let kill = if sudo {
                            format!("sudo -n sh -c {}", crate::commands::quote(&kill_line(pgid)))
                        } else {
                            kill_line(pgid)
                        };
                        if ch.exec(false, kill).await.is_ok() {
                            let _ = ch.eof().await;
                            while let Some(msg) = ch.wait().await {
                                if matches!(msg, ChannelMsg::Close) {
                                    break;
                                }
                            }
                        }
                        let _ = ch.close().await;
                    }
                }
                let _ = w.close().await;
                // The slot is free once sshd closed the session (the command
                // is gone); bounded, as the kill escalates after 5 s.
                if let Some(read) = read.as_mut() {
                    let _ = tokio::time::timeout(CLOSE_WAIT, async {
                        while let Some(msg) = read.wait().await {
                            if matches!(msg, ChannelMsg::Close) {
                                break;
                            }
                        }
                    })
                    .await;
                }
                drop(permit);
            });
        }
    }
}

/// Reads the pid line that [`remote_line`] prints before the command's
/// own output.
enum PidLine {
    /// Not seen yet; what came so far (a login shell may print first).
    Reading(Vec<u8>),
    /// Seen, with a valid group.
    Found,
    /// Seen, but what it says is not a group that may be signalled.
    Invalid(String),
    /// Not within the first [`MAX_PRELUDE`] bytes: given up.
    Missing,
}

/// What one chunk of stdout held.
#[derive(Debug, Default, PartialEq, Eq)]
struct Fed {
    /// The group, when its line completed in this chunk and was valid.
    pgid: Option<Pgid>,
    /// What the login shell printed before the line (not the command's).
    prelude: Vec<u8>,
    /// The command's own stdout.
    stdout: Vec<u8>,
}

impl PidLine {
    fn waiting(&self) -> bool {
        matches!(self, PidLine::Reading(_))
    }

    /// Feeds stdout bytes. Our line is the first the wrapper prints, so
    /// anything before it came from the login shell (an rc file, a banner).
    fn feed(&mut self, data: &[u8]) -> Fed {
        let PidLine::Reading(buf) = self else {
            return Fed {
                stdout: data.to_vec(),
                ..Fed::default()
            };
        };
        buf.extend_from_slice(data);
        let start = buf.windows(PGID_MARK.len()).position(|w| w == PGID_MARK);
        let line = start.and_then(|start| {
            let value = start + PGID_MARK.len();
            let nl = buf[value..].iter().position(|&b| b == b'\n')?;
            Some((start, value, value + nl))
        });
        let Some((start, value, nl)) = line else {
            if buf.len() > MAX_PRELUDE {
                let all = std::mem::take(buf);
                *self = PidLine::Missing;
                return Fed {
                    stdout: all,
                    ..Fed::default()
                };
            }
            return Fed::default();
        };
        let pgid = Pgid::parse(&buf[value..nl]);
        let fed = Fed {
            pgid,
            prelude: buf[..start].to_vec(),
            stdout: buf[nl + 1..].to_vec(),
        };
        *self = match pgid {
            Some(_) => PidLine::Found,
            None => PidLine::Invalid(
                String::from_utf8_lossy(&buf[value..nl])
                    .chars()
                    .take(40)
                    .collect(),
            ),
        };
        fed
    }

    /// Bytes still held at the end of the output (no pid line came).
    fn leftover(&mut self) -> Vec<u8> {
        match std::mem::replace(self, PidLine::Missing) {
            PidLine::Reading(b) => b,
            other => {
                *self = other;
                Vec::new()
            }
        }
    }

    /// Why the group is not known, for the warning of a stop that cannot
    /// kill anything.
    fn why_unknown(&self) -> String {
        match self {
            PidLine::Reading(_) => format!(
                "its process-group line did not come within {} s",
                PID_LINE_WAIT.as_secs()
            ),
            PidLine::Found => "its process group is unknown".into(),
            PidLine::Invalid(v) => format!(
                "its process-group line said {v:?}, which is not a process group that may be signalled"
            ),
            PidLine::Missing => format!(
                "no process-group line came in the first {} KiB of output (does the login shell print that much?)",
                MAX_PRELUDE / 1024
            ),
        }
    }
}

/// Opens a session channel; the permit travels with it. If the caller gives
/// up meanwhile (a timeout), the channel, once open, is closed (rather than
/// left counted by sshd) and the permit is released only after that.
/// A refusal (sshd still counting sessions that are closing) is retried.
async fn open_session(
    conn: &Arc<Conn>,
    permit: OwnedSemaphorePermit,
) -> Result<(Channel<Msg>, OwnedSemaphorePermit), russh::Error> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let c = conn.clone();
    tokio::spawn(async move {
        let mut opened = c.handle.channel_open_session().await;
        for _ in 0..4 {
            if !matches!(opened, Err(russh::Error::ChannelOpenFailure(_))) || tx.is_closed() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await; // backoff
            opened = c.handle.channel_open_session().await;
        }
        if let Err(Ok((mut orphan, permit))) = tx.send(opened.map(|ch| (ch, permit))) {
            let _ = orphan.close().await;
            let _ = tokio::time::timeout(CLOSE_WAIT, async {
                while let Some(msg) = orphan.wait().await {
                    if matches!(msg, ChannelMsg::Close) {
                        break;
                    }
                }
            })
            .await;
            drop(permit);
        }
    });
    rx.await.unwrap_or(Err(russh::Error::Disconnect))
}

async fn run_once(
    conn: Arc<Conn>,
    line: &str,
    sudo: bool,
    who: &Who,
    req: &mut Exec,
    permit: OwnedSemaphorePermit,
) -> Result<ExecOutput, Failure> {
    let (channel, permit) = open_session(&conn, permit).await.map_err(|e| match e {
        russh::Error::ChannelOpenFailure(reason) => {
            Failure::Other(format!("the server refused a session channel: {reason:?}"))
        }
        e => Failure::Lost {
            detail: e.to_string(),
            started: false,
            sink_written: false,
        },
    })?;
    let (read, write) = channel.split();
    let write = Arc::new(write);
    let mut guard = ChannelGuard {
        conn: conn.clone(),
        write: write.clone(),
        read: Some(read),
        pid_line: PidLine::Reading(Vec::new()),
        pgid: None,
        sudo,
        who: who.clone(),
        done: false,
        permit: Some(permit),
    };
    let lost = |e: russh::Error, sink_written: bool| Failure::Lost {
        detail: e.to_string(),
        started: true,
        sink_written,
    };
    write.exec(true, line).await.map_err(|e| lost(e, false))?;

    // Stdin is written while output is read (either can fill a window).
    let stdin = match &mut req.stdin {
        Some(Stdin::Reader(_)) => req.stdin.take(),
        Some(Stdin::Bytes(b)) => Some(Stdin::Bytes(b.clone())),
        None => None,
    };
    let w2 = write.clone();
    let feed = async move {
        let mut tx = w2.make_writer();
        match stdin {
            None => {}
            Some(Stdin::Bytes(b)) => {
                let wrote = b.is_empty() || tx.write_all(&b).await.is_ok();
                if !wrote {
                    return Ok(()); // the command stopped reading: its exit tells
                }
            }
            Some(Stdin::Reader(r)) => {
                let mut r = BufReader::with_capacity(UPLOAD_BUFFER, r);
                loop {
                    let chunk = r
                        .fill_buf()
                        .await
                        .map_err(|e| format!("reading its stdin: {e}"))?;
                    if chunk.is_empty() {
                        break;
                    }
                    let n = chunk.len();
                    if tx.write_all(chunk).await.is_err() {
                        return Ok(());
                    }
                    r.consume(n);
                }
            }
        }
        let _ = tx.shutdown().await; // EOF
        Ok::<(), String>(())
    };
    let mut feed = std::pin::pin!(feed);
    let mut feeding = true;

    let mut collector = OutputCollector::new(req.capture, req.on_line.clone());
    let mut sink: Option<&mut Box<dyn AsyncWrite + Send + Unpin>> = req.stdout_sink.as_mut();
    let mut sink_written = false;
    let mut status = None;
    let mut signal = None;
    let mut closed = false;
    loop {
        tokio::select! {
            r = &mut feed, if feeding => {
                feeding = false;
                r.map_err(Failure::Other)?;
            }
            msg = guard.wait() => match msg {
                Some(ChannelMsg::Data { data }) => {
                    let fed = guard.pid_line.feed(&data);
                    if fed.pgid.is_some() {
                        guard.pgid = fed.pgid;
                    }
                    if !fed.prelude.is_empty() {
                        collector.stderr(&fed.prelude);
                    }
                    if !fed.stdout.is_empty() {
                        stdout(&fed.stdout, &mut sink, &mut sink_written, &mut collector).await?;
                    }
                }
                Some(ChannelMsg::ExtendedData { data, ext: 1 }) => collector.stderr(&data),
                Some(ChannelMsg::ExitStatus { exit_status }) => status = Some(exit_status),
                Some(ChannelMsg::ExitSignal { signal_name, .. }) => {
                    signal = Some(sig_name(&signal_name))
                }
                Some(ChannelMsg::Failure) => {
                    return Err(Failure::Other("the server refused to run it".into()))
                }
                Some(ChannelMsg::Close) => {
                    closed = true;
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    guard.done = closed;
    let rest = guard.pid_line.leftover();
    if !rest.is_empty() {
        stdout(&rest, &mut sink, &mut sink_written, &mut collector).await?;
    }
    if !closed && status.is_none() && signal.is_none() {
        return Err(Failure::Lost {
            detail: "the channel ended without an exit status".into(),
            started: true,
            sink_written,
        });
    }
    if let Some(s) = sink {
        s.flush()
            .await
            .map_err(|e| Failure::Other(format!("writing its stdout: {e}")))?;
    }
    let (mut out, stderr_tail) = collector.finish();
    if sudo && status == Some(1) && sudo_wants_password(&stderr_tail) {
        return Err(Failure::SudoPassword);
    }
    out.status = status;
    out.signal = signal;
    Ok(out)
}

/// Sends command stdout to the sink, or to capture and the line callback.
async fn stdout(
    data: &[u8],
    sink: &mut Option<&mut Box<dyn AsyncWrite + Send + Unpin>>,
    sink_written: &mut bool,
    collector: &mut OutputCollector,
) -> Result<(), Failure> {
    match sink.as_mut() {
        Some(s) => {
            *sink_written = true;
            s.write_all(data)
                .await
                .map_err(|e| Failure::Other(format!("writing its stdout: {e}")))
        }
        None => {
            collector.stdout(data);
            Ok(())
        }
    }
}

fn sig_name(sig: &Sig) -> String {
    match sig {
        Sig::ABRT => "ABRT",
        Sig::ALRM => "ALRM",
        Sig::FPE => "FPE",
        Sig::HUP => "HUP",
        Sig::ILL => "ILL",
        Sig::INT => "INT",
        Sig::KILL => "KILL",
        Sig::PIPE => "PIPE",
        Sig::QUIT => "QUIT",
        Sig::SEGV => "SEGV",
        Sig::TERM => "TERM",
        Sig::USR1 => "USR1",
        Sig::Custom(c) => c,
    }
    .to_string()
}

/// The russh handler: checks the host key against known_hosts.
struct Client {
    host: String,
    address: String,
    port: u16,
    policy: HostKeyPolicy,
    files: Vec<PathBuf>,
    learn_file: PathBuf,
    /// Why the key was refused, read back after the handshake fails.
    refusal: Arc<Mutex<Option<TransportError>>>,
}

impl Client {
    fn refuse(&self, e: TransportError) -> Result<bool, russh::Error> {
        *self.refusal.lock().unwrap() = Some(e);
        Ok(false)
    }
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let key: PublicKey = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => key.clone(),
            PublicKeyOrCertificate::Certificate(c) => PublicKey::from(c.public_key().clone()),
        };
        let addr = format!("{}:{}", self.address, self.port);
        let algorithm = key.algorithm().to_string();
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        if self.policy == HostKeyPolicy::Off {
            warn_once(&self.host, &addr);
            return Ok(true);
        }
        let verdict = match known_hosts::check(&self.files, &self.address, self.port, &key) {
            Ok(v) => v,
            Err((file, e)) => {
                return self.refuse(TransportError::KnownHosts {
                    host: self.host.clone(),
                    file,
                    message: e.to_string(),
                })
            }
        };
        match verdict {
            known_hosts::Verdict::Known => Ok(true),
            known_hosts::Verdict::Changed { file, line } => {
                self.refuse(TransportError::HostKeyChanged {
                    host: self.host.clone(),
                    addr,
                    known_as: known_hosts::known_as(&self.address, self.port),
                    algorithm,
                    fingerprint,
                    file,
                    line,
                })
            }
            known_hosts::Verdict::Revoked { file, line } => {
                self.refuse(TransportError::HostKeyRevoked {
                    host: self.host.clone(),
                    addr,
                    algorithm,
                    fingerprint,
                    file,
                    line,
                })
            }
            known_hosts::Verdict::Unknown if self.policy == HostKeyPolicy::AcceptNew => {
                match known_hosts::learn(&self.learn_file, &self.address, self.port, &key) {
                    Ok(()) => Ok(true),
                    Err(e) => self.refuse(TransportError::KnownHosts {
                        host: self.host.clone(),
                        file: self.learn_file.clone(),
                        message: format!("cannot record the new host key: {e}"),
                    }),
                }
            }
            known_hosts::Verdict::Unknown => {
                let short = match key.algorithm() {
                    russh::keys::Algorithm::Ed25519 => "ed25519".to_string(),
                    russh::keys::Algorithm::Ecdsa { .. } => "ecdsa".to_string(),
                    russh::keys::Algorithm::Rsa { .. } => "rsa".to_string(),
                    other => other.to_string(),
                };
                let port = if self.port == 22 {
                    String::new()
                } else {
                    format!("-p {} ", self.port)
                };
                let accept_command = format!(
                    "ssh-keyscan {port}-t {short} {} >> {}",
                    shell_words::quote(&self.address),
                    shell_words::quote(&self.learn_file.display().to_string())
                );
                self.refuse(TransportError::UnknownHostKey {
                    host: self.host.clone(),
                    addr,
                    algorithm,
                    fingerprint,
                    accept_command,
                })
            }
        }
    }
}

fn warn_once(host: &str, addr: &str) {
    static WARNED: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let set = WARNED.get_or_init(|| Mutex::new(HashSet::new()));
    if set.lock().unwrap().insert(addr.to_string()) {
        eprintln!(
            "warning: {host}: host key checking is off for {addr}; the connection could be intercepted"
        );
    }
}

/// `recorded`: the host-key algorithms known_hosts holds for the host,
/// asked for first (see [`known_hosts::prefer_recorded`]).
fn client_config(recorded: &[russh::keys::Algorithm]) -> Arc<client::Config> {
    let mut preferred = russh::Preferred::default();
    preferred.key = known_hosts::prefer_recorded(&preferred.key, recorded).into();
    Arc::new(client::Config {
        nodelay: true,
        inactivity_timeout: None,
        keepalive_interval: Some(Duration::from_secs(15)),
        keepalive_max: 4,
        preferred,
        ..Default::default()
    })
}

/// Opens and authenticates one connection (through jump hosts when the
/// config says so). `jumps`: hops still to go through, overriding the
/// config (used for the hops themselves).
fn open<'a>(
    target: &'a SshTarget,
    jumps: Option<Vec<String>>,
) -> futures::future::BoxFuture<'a, Result<(Conn, String), TransportError>> {
    Box::pin(async move {
        let host = target.name.clone();
        let ssh_dir = target.ssh_dir();
        let r = config::resolve(
            &ssh_dir.join("config"),
            &target.address,
            target.port,
            &target.user,
            target.identity.as_deref(),
        )
        .map_err(|message| TransportError::Config {
            host: host.clone(),
            message,
        })?;
        let jumps = jumps.unwrap_or_else(|| r.jumps.clone());
        let addr = format!("{}:{}", r.address, r.port);

        let mut files = target.known_hosts.clone();
        let user_file = ssh_dir.join("known_hosts");
        files.push(user_file.clone());
        files.push(PathBuf::from("/etc/ssh/ssh_known_hosts"));
        let learn_file = target
            .known_hosts
            .iter()
            .find(|f| known_hosts::writable(f))
            .cloned()
            .unwrap_or(user_file);
        let recorded = known_hosts::recorded_algorithms(&files, &r.address, r.port);
        let refusal = Arc::new(Mutex::new(None));
        let handler = Client {
            host: host.clone(),
            address: r.address.clone(),
            port: r.port,
            policy: target.host_key_policy,
            files,
            learn_file,
            refusal: refusal.clone(),
        };

        let timeout = target.connect_timeout;
        let handshake_failed = |e: russh::Error| {
            refusal
                .lock()
                .unwrap()
                .take()
                .unwrap_or_else(|| TransportError::Handshake {
                    host: host.clone(),
                    addr: addr.clone(),
                    message: e.to_string(),
                })
        };
        let handshake_timeout = || TransportError::Handshake {
            host: host.clone(),
            addr: addr.clone(),
            message: format!("no answer within {}s", timeout.as_secs_f32()),
        };

        let (mut handle, jump) = if let Some((last, before)) = jumps.split_last() {
            let (juser, jhost, jport) = config::parse_hop(last);
            let mut jt = target.clone();
            jt.name = format!("{} (via jump host {jhost})", target.name);
            jt.address = jhost;
            jt.port = jport;
            jt.user = juser;
            jt.identity = None;
            jt.sudo = false;
            let (jconn, juser) = open(&jt, Some(before.to_vec())).await?;
            let jump = SshTransport {
                inner: Arc::new(Inner {
                    target: jt,
                    user: juser,
                    conn: tokio::sync::Mutex::new(Arc::new(jconn)),
                    slots: Arc::new(Semaphore::new(MAX_CHANNELS)),
                }),
            };
            let conn = jump.conn().await?;
            let channel = conn
                .handle
                .channel_open_direct_tcpip(r.address.clone(), r.port as u32, "127.0.0.1", 0)
                .await
                .map_err(|e| TransportError::Connect {
                    host: host.clone(),
                    addr: addr.clone(),
                    message: format!("the jump host could not open a tunnel: {e}"),
                })?;
            let h = tokio::time::timeout(
                timeout,
                client::connect_stream(client_config(&recorded), channel.into_stream(), handler),
            )
            .await
            .map_err(|_| handshake_timeout())?
            .map_err(handshake_failed)?;
            (h, Some(jump))
        } else {
            let tcp = match tokio::time::timeout(
                timeout,
                TcpStream::connect((r.address.as_str(), r.port)),
            )
            .await
            {
                Err(_) => {
                    return Err(TransportError::ConnectTimeout {
                        host,
                        addr,
                        after: timeout,
                    })
                }
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    return Err(TransportError::ConnectRefused { host, addr })
                }
                Ok(Err(e)) => {
                    return Err(TransportError::Connect {
                        host,
                        addr,
                        message: e.to_string(),
                    })
                }
                Ok(Ok(s)) => s,
            };
            let stream = stream::QuickAckStream::new(tcp).map_err(|e| TransportError::Connect {
                host: host.clone(),
                addr: addr.clone(),
                message: e.to_string(),
            })?;
            let h = tokio::time::timeout(
                timeout,
                client::connect_stream(client_config(&recorded), stream, handler),
            )
            .await
            .map_err(|_| handshake_timeout())?
            .map_err(handshake_failed)?;
            (h, None)
        };

        auth::authenticate(
            &mut handle,
            &auth::AuthPlan {
                host: &host,
                user: &r.user,
                identities: &r.identities,
                passphrase_env: target.passphrase_env.as_deref(),
                ssh_dir: &ssh_dir,
            },
        )
        .await?;
        Ok((
            Conn {
                handle,
                _jump: jump,
            },
            r.user,
        ))
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_relay_takes_socat_where_the_host_has_it_else_the_docker_cli() {
        assert_eq!(
            relay_line("/var/run/docker.sock"),
            "exec sudo -n sh -c 'command -v socat >/dev/null 2>&1 && exec socat - \
             UNIX-CONNECT:/var/run/docker.sock; exec docker -H unix:///var/run/docker.sock \
             system dial-stdio'"
        );
        // A path socat would read as its own syntax goes to the docker CLI.
        assert_eq!(
            relay_line("/run/a,b.sock"),
            "exec sudo -n sh -c \"exec docker -H 'unix:///run/a,b.sock' system dial-stdio\""
        );
    }

    use super::*;

    #[test]
    fn remote_line_prints_the_pid_then_execs() {
        assert_eq!(
            remote_line("echo 'a b'", false),
            format!(
                "echo provision-pgid:$$; exec sh -c {}",
                crate::commands::quote("echo 'a b'")
            )
        );
        assert_eq!(
            remote_line("ls", true),
            "echo provision-pgid:$$; exec sudo -n sh -c ls"
        );
    }

    fn fed(pgid: Option<u32>, prelude: &[u8], stdout: &[u8]) -> Fed {
        Fed {
            pgid: pgid.map(Pgid),
            prelude: prelude.to_vec(),
            stdout: stdout.to_vec(),
        }
    }

    #[test]
    fn pid_line_is_stripped_across_chunks() {
        let mut p = PidLine::Reading(Vec::new());
        assert_eq!(p.feed(b"provision-pg"), fed(None, b"", b""));
        assert_eq!(p.feed(b"id:12"), fed(None, b"", b""));
        assert_eq!(p.feed(b"34\nhello"), fed(Some(1234), b"", b"hello"));
        assert_eq!(p.feed(b" world"), fed(None, b"", b" world"));
        let mut p = PidLine::Reading(Vec::new());
        p.feed(b"provision-pgid:99");
        assert_eq!(p.leftover(), b"provision-pgid:99".to_vec());
    }

    #[test]
    fn what_a_login_shell_prints_first_is_neither_the_group_nor_stdout() {
        // A `.bashrc` that prints `1`, then our line.
        let mut p = PidLine::Reading(Vec::new());
        assert_eq!(
            p.feed(b"1\nprovision-pgid:4321\nout\n"),
            fed(Some(4321), b"1\n", b"out\n")
        );
        // A banner without its newline.
        let mut p = PidLine::Reading(Vec::new());
        assert_eq!(
            p.feed(b"Welcome!provision-pgid:77\r\n"),
            fed(Some(77), b"Welcome!", b"")
        );
        // Nothing of ours in 64 KiB: all of it is output, the group unknown.
        let mut p = PidLine::Reading(Vec::new());
        let chatty = vec![b'x'; MAX_PRELUDE + 1];
        assert_eq!(p.feed(&chatty).stdout, chatty);
        assert!(p.why_unknown().contains("64 KiB"), "{}", p.why_unknown());
    }

    #[test]
    fn only_a_pid_above_1_is_a_group_to_signal() {
        for bad in [
            &b"1"[..],
            b"0",
            b"-5",
            b"+5",
            b"05",
            b"",
            b" 5",
            b"5 6",
            b"2147483648",
            b"99999999999",
            b"12a",
        ] {
            assert_eq!(Pgid::parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(Pgid::parse(b"2"), Some(Pgid(2)));
        assert_eq!(Pgid::parse(b"2147483647"), Some(Pgid(2147483647)));
        let mut p = PidLine::Reading(Vec::new());
        assert_eq!(p.feed(b"provision-pgid:1\nrest"), fed(None, b"", b"rest"));
        assert!(p.why_unknown().contains("\"1\""), "{}", p.why_unknown());
        assert_eq!(kill_line(Pgid(42)).matches("-42").count(), 3);
    }
}
