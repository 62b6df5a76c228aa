//! The session: what every verb that touches hosts does first and last.
//! Resolve each host's SSH target, connect to the hosts in parallel, take
//! their run locks ([`LockPolicy`]: wait, `--no-wait`, `--break-lock`), and
//! at the end write each locked host's audit line and release its lock.
//!
//! Verbs that change hosts lock them: `up`, `backup`, `restore`, `migrate`
//! ([`Session::open`]). Read-only verbs (`status`, and the coming `logs`,
//! `exec`) only connect ([`connect`]): no lock, no audit line.
//!
//! Two sessions never deadlock: the first try takes every host's lock
//! without waiting; a session that finds one held gives back what it took
//! and then waits for the locks one host at a time, in host-name order.
//! A caller's probe runs side by side with the first try (no extra round
//! trip); its result is kept only when the lock was taken then, and the
//! probe runs again after a wait (the other run may have changed the host).
//! A probe's rider (a shell line it needs run on the host) goes into the
//! lock's own command, so a host starts one process for both.
//!
//! What a session has to say goes through one [`Notify`] as a [`Notice`].

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::{join_all, BoxFuture};

use crate::host_lock::{self, RunId, TakeError};
use crate::inventory::{Host, Inventory};
use crate::transport::{self, SshTarget, SshTransport, Transport};

/// What a session does when another run holds a host's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockPolicy {
    /// Remove a (stale) lock first (`--break-lock`).
    pub break_lock: bool,
    /// Wait up to this long for a held lock; `None`: fail at once
    /// (`--no-wait`), naming the holder.
    pub wait: Option<Duration>,
}

/// Ten minutes: longer than a cold provision of both hosts.
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(600);

impl Default for LockPolicy {
    fn default() -> Self {
        LockPolicy {
            break_lock: false,
            wait: Some(DEFAULT_LOCK_WAIT),
        }
    }
}

/// Something a session tells the user about a host's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice<'a> {
    /// Another run holds the lock; this session waits up to `limit`.
    Waiting {
        host: &'a str,
        holder: &'a str,
        limit: Duration,
    },
    /// The lock was taken after a wait.
    TakenAfter {
        host: &'a str,
        waited: Duration,
    },
    /// A lock was removed first (`--break-lock`, or a stale one).
    Broke {
        host: &'a str,
        holder: &'a str,
    },
    AuditFailed {
        host: &'a str,
        error: &'a str,
    },
    ReleaseFailed {
        host: &'a str,
        error: &'a str,
    },
}

impl<'a> Notice<'a> {
    /// The host it is about.
    pub fn host(&self) -> &'a str {
        match *self {
            Notice::Waiting { host, .. }
            | Notice::TakenAfter { host, .. }
            | Notice::Broke { host, .. }
            | Notice::AuditFailed { host, .. }
            | Notice::ReleaseFailed { host, .. } => host,
        }
    }

    /// What it says, without the host's name in front.
    pub fn text(&self) -> String {
        let full = self.to_string();
        full.strip_prefix(&format!("{}: ", self.host()))
            .unwrap_or(&full)
            .to_string()
    }
}

impl fmt::Display for Notice<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Notice::Waiting {
                host,
                holder,
                limit,
            } => write!(
                f,
                "{host}: waiting for the lock held by {holder} (up to {} s; \
                 --no-wait fails at once instead)",
                limit.as_secs()
            ),
            Notice::TakenAfter { host, waited } => {
                write!(f, "{host}: lock taken after {:.1} s", waited.as_secs_f64())
            }
            Notice::Broke { host, holder } => {
                write!(f, "{host}: removed the lock held by {holder}")
            }
            Notice::AuditFailed { host, error } => {
                write!(f, "{host}: cannot append to the audit log: {error}")
            }
            Notice::ReleaseFailed { host, error } => {
                write!(f, "{host}: cannot release the lock: {error}")
            }
        }
    }
}

/// Where a session's notices go: one function (stderr by default).
#[derive(Clone)]
pub struct Notify(Arc<dyn Fn(&Notice) + Send + Sync>);

impl Notify {
    pub fn new(f: impl Fn(&Notice) + Send + Sync + 'static) -> Notify {
        Notify(Arc::new(f))
    }

    pub fn say(&self, n: Notice) {
        (self.0)(&n)
    }
}

impl Default for Notify {
    fn default() -> Self {
        Notify::new(|n| eprintln!("{n}"))
    }
}

impl fmt::Debug for Notify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Notify")
    }
}

/// Who a host is reached as: the user, the port, and whether lines run
/// through sudo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    pub user: String,
    pub port: u16,
    pub sudo: bool,
}

/// [`Login`] for a host: what hosts.toml says wins; what it leaves out
/// comes from `~/.ssh/config` for the host's address (as OpenSSH's command
/// line beats its config file), else root and 22. A local machine is
/// provision's own (root, 22), whatever the config says for its address.
pub fn login(h: &Host) -> Login {
    let (config_user, config_port) = if h.machine.is_some() {
        (None, None)
    } else {
        transport::ssh::ssh_config_login(None, &h.address)
    };
    login_with(h, config_user, config_port)
}

/// [`login`] given what `~/.ssh/config` says. A non-root user, from either
/// source, implies sudo unless hosts.toml sets `sudo`.
fn login_with(h: &Host, config_user: Option<String>, config_port: Option<u16>) -> Login {
    let user = h
        .user
        .clone()
        .or(config_user)
        .unwrap_or_else(|| "root".into());
    Login {
        port: h.port.or(config_port).unwrap_or(22),
        sudo: h.sudo.unwrap_or(user != "root"),
        user,
    }
}

/// How to reach a host over SSH: its login, key, host-key policy and
/// known_hosts files.
pub fn ssh_target(inv: &Inventory, h: &Host) -> SshTarget {
    let login = login(h);
    let mut t = SshTarget::new(&h.name, &h.address);
    t.port = login.port;
    t.user = login.user;
    t.identity = match (&h.identity, &h.machine) {
        (Some(id), _) => Some(inv.resolve_path(&id.to_string_lossy())),
        // Local machines authorize the project's own key.
        (None, Some(_)) => Some(inv.project.state_dir.join("id_ed25519")),
        (None, None) => None,
    };
    t.passphrase_env = h.passphrase_env.clone();
    t.host_key_policy = h.host_key;
    let mut files: Vec<PathBuf> = vec![inv.project.known_hosts.clone()];
    let machine_file = inv.project.state_dir.join("known_hosts");
    if !files.contains(&machine_file) {
        files.push(machine_file);
    }
    t.known_hosts = files;
    t.sudo = login.sudo;
    t.connect_timeout = Duration::from_secs(15);
    t
}

/// One host of a session, as it was opened.
pub struct Opened<P = ()> {
    pub name: String,
    /// The connection, or why there is none (not reachable, or its lock
    /// was not taken: the message names the host).
    pub transport: Result<Arc<dyn Transport>, String>,
    /// The caller's probe of the host, made while this session held its
    /// lock (`None`: not connected, or not locked).
    pub probe: Option<P>,
}

/// Connect to the named hosts in parallel (in the order given), taking no
/// lock: for read-only verbs.
pub async fn connect(inv: &Inventory, names: &[&str]) -> Vec<Opened> {
    let conns = join_all(names.iter().map(|name| async move {
        let h = inv.host(name).expect("the caller checked the host names");
        SshTransport::connect(ssh_target(inv, h))
            .await
            .map(|t| Arc::new(t) as Arc<dyn Transport>)
            .map_err(|e| e.to_string())
    }))
    .await;
    names
        .iter()
        .zip(conns)
        .map(|(name, transport)| Opened {
            name: name.to_string(),
            transport,
            probe: None,
        })
        .collect()
}

/// The locks a session holds, to be given back by [`Session::close`].
pub struct Session {
    project: String,
    run: RunId,
    locked: Vec<Arc<dyn Transport>>,
    notify: Notify,
}

/// A probe to run on each host beside its lock: given the host's index in
/// the names, its connection, and the output of the probe's rider (see
/// [`Session::open_probing`]) when the lock's command ran it.
pub type Probe<'p, P> =
    dyn Fn(usize, Arc<dyn Transport>, Option<Rider>) -> BoxFuture<'p, P> + Sync + 'p;

/// The rider's output, once the lock's command has run: `None` when it did
/// not run it (the lock was held): the probe then runs it itself.
pub type Rider = tokio::sync::oneshot::Receiver<Option<String>>;

impl Session {
    /// Connect to the named hosts and lock them for this run (see the
    /// module comment). A host whose lock was not taken comes back with an
    /// error naming it; the others are locked.
    pub async fn open(
        inv: &Inventory,
        names: &[&str],
        policy: &LockPolicy,
        notify: Notify,
    ) -> (Session, Vec<Opened>) {
        let no_probe: &Probe<'_, ()> = &|_, _, _| Box::pin(async {});
        Session::open_probing(inv, names, policy, notify, no_probe, None).await
    }

    /// [`Session::open`] that also probes each host beside its lock. A
    /// `rider` (a shell line the probe needs run on each host) goes into the
    /// lock's own command, after the lock is taken: one process on the host
    /// for both. Its output reaches the probe through its [`Rider`].
    pub async fn open_probing<'p, P: Send + 'p>(
        inv: &Inventory,
        names: &[&str],
        policy: &LockPolicy,
        notify: Notify,
        probe: &Probe<'p, P>,
        rider: Option<&str>,
    ) -> (Session, Vec<Opened<P>>) {
        let project = inv.project.name.clone();
        let run = RunId::current();
        let mut hosts: Vec<Opened<P>> = connect(inv, names)
            .await
            .into_iter()
            .map(|o| Opened {
                name: o.name,
                transport: o.transport,
                probe: None,
            })
            .collect();
        crate::timing::mark("connected");
        let locked = lock(&project, &run, policy, &notify, &mut hosts, probe, rider).await;
        let session = Session {
            project,
            run,
            locked,
            notify,
        };
        (session, hosts)
    }

    /// [`Session::open`] for a verb that needs every host: the first
    /// failure (in host-name order) when one is not connected or not
    /// locked; the session is then closed with "not run".
    pub async fn open_all(
        inv: &Inventory,
        names: &[&str],
        policy: &LockPolicy,
    ) -> Result<(Session, Vec<Arc<dyn Transport>>), String> {
        let (session, hosts) = Session::open(inv, names, policy, Notify::default()).await;
        let mut failed: Vec<(&str, &String)> = hosts
            .iter()
            .filter_map(|h| h.transport.as_ref().err().map(|e| (h.name.as_str(), e)))
            .collect();
        failed.sort_by_key(|f| f.0);
        if let Some((_, e)) = failed.first() {
            let e = e.to_string();
            session.close(|_| "not run".into()).await;
            return Err(e);
        }
        let transports = hosts.into_iter().filter_map(|h| h.transport.ok()).collect();
        Ok((session, transports))
    }

    /// The project the locks are of.
    pub fn project(&self) -> &str {
        &self.project
    }

    /// Write each locked host's audit line (`result` of its name: the
    /// caller masks secrets) and release its lock, hosts side by side.
    pub async fn close(self, result: impl Fn(&str) -> String + Sync) {
        let (project, run, notify) = (&self.project, &self.run, &self.notify);
        let result = &result;
        join_all(self.locked.iter().map(|t| async move {
            let line = result(t.name());
            if let Err(e) = host_lock::audit_and_release(t.as_ref(), project, run, &line).await {
                // One command did both: neither is known to have happened.
                notify.say(Notice::AuditFailed {
                    host: t.name(),
                    error: &e,
                });
                notify.say(Notice::ReleaseFailed {
                    host: t.name(),
                    error: &e,
                });
            }
        }))
        .await;
    }
}

/// Take the locks of the connected `hosts` (the protocol of the module
/// comment); the hosts whose lock was taken, with their probes filled in.
async fn lock<'p, P: Send + 'p>(
    project: &str,
    run: &RunId,
    policy: &LockPolicy,
    notify: &Notify,
    hosts: &mut [Opened<P>],
    probe: &Probe<'p, P>,
    rider: Option<&str>,
) -> Vec<Arc<dyn Transport>> {
    // The lock and the probe go side by side: the probe is used only when
    // the lock was taken, so no other run can change the host in between.
    let taken = join_all(hosts.iter().enumerate().map(|(i, h)| {
        let (ridden, rider_out) = tokio::sync::oneshot::channel();
        let first = h
            .transport
            .clone()
            .ok()
            .map(|t| (probe(i, t.clone(), rider.map(|_| rider_out)), t));
        async move {
            let (probed, t) = first?;
            let take = async {
                let taken =
                    host_lock::try_take_with(t.as_ref(), project, run, policy.break_lock, rider)
                        .await;
                let _ = ridden.send(taken.as_ref().ok().and_then(|k| k.rider.clone()));
                taken.map(|k| k.broken)
            };
            Some(tokio::join!(take, probed))
        }
    }))
    .await;
    let held = taken
        .iter()
        .any(|t| matches!(t, Some((Err(TakeError::Held { .. }), _))));
    let mut locked: Vec<Arc<dyn Transport>> = Vec::new();
    match policy.wait {
        Some(limit) if held => {
            // Give back what the first try took, then wait in order.
            let mine: Vec<&Arc<dyn Transport>> = hosts
                .iter()
                .zip(&taken)
                .filter(|(_, t)| matches!(t, Some((Ok(_), _))))
                .filter_map(|(h, _)| h.transport.as_ref().ok())
                .collect();
            join_all(
                mine.iter()
                    .map(|t| host_lock::release(t.as_ref(), project, run)),
            )
            .await;
            let mut order: Vec<usize> = (0..hosts.len())
                .filter(|&i| {
                    matches!(
                        taken[i],
                        Some((Ok(_), _)) | Some((Err(TakeError::Held { .. }), _))
                    )
                })
                .collect();
            order.sort_by(|&a, &b| hosts[a].name.cmp(&hosts[b].name));
            for (i, t) in taken.into_iter().enumerate() {
                if let Some((Err(e @ TakeError::Failed(_)), _)) = t {
                    hosts[i].transport = Err(format!("{}: {e}", hosts[i].name));
                }
            }
            for i in order {
                let name = hosts[i].name.clone();
                let Ok(t) = hosts[i].transport.clone() else {
                    continue;
                };
                let mut on_held = |holder: &str| {
                    notify.say(Notice::Waiting {
                        host: &name,
                        holder,
                        limit,
                    })
                };
                let waited = Instant::now();
                match host_lock::take_waiting(t.as_ref(), project, run, limit, &mut on_held).await {
                    Ok(()) => {
                        if waited.elapsed() >= host_lock::WAIT_POLL {
                            notify.say(Notice::TakenAfter {
                                host: &name,
                                waited: waited.elapsed(),
                            });
                        }
                        locked.push(t);
                    }
                    Err(e) => hosts[i].transport = Err(format!("{name}: {e}")),
                }
            }
            // The state may have changed while the other run held the lock.
            let probes = join_all(hosts.iter().enumerate().map(|(i, h)| {
                let again = h.transport.clone().ok().map(|t| probe(i, t, None));
                async move {
                    match again {
                        Some(p) => Some(p.await),
                        None => None,
                    }
                }
            }))
            .await;
            for (h, p) in hosts.iter_mut().zip(probes) {
                h.probe = p;
            }
        }
        _ => {
            for (h, t) in hosts.iter_mut().zip(taken) {
                match t {
                    Some((Ok(broken), probe)) => {
                        h.probe = Some(probe);
                        if let Some(info) = broken {
                            notify.say(Notice::Broke {
                                host: &h.name,
                                holder: &info,
                            });
                        }
                        if let Ok(t) = &h.transport {
                            locked.push(t.clone());
                        }
                    }
                    Some((Err(e), _)) => h.transport = Err(format!("{}: {e}", h.name)),
                    None => {}
                }
            }
        }
    }
    locked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory;

    fn host(port: Option<u16>, user: Option<&str>, sudo: Option<bool>) -> Host {
        Host {
            name: "db".into(),
            address: "db-alias".into(),
            private_address: None,
            port,
            user: user.map(Into::into),
            identity: None,
            passphrase_env: None,
            host_key: inventory::HostKeyPolicy::Strict,
            sudo,
            docker: inventory::DockerSource::Distro,
            machine: None,
            role: None,
        }
    }

    #[test]
    fn hosts_toml_wins_the_ssh_config_fills_the_rest_then_root_and_22() {
        let cfg = || (Some("deploy".to_string()), Some(2222));
        let (u, p) = cfg();
        assert_eq!(
            login_with(&host(None, None, None), u, p),
            Login {
                user: "deploy".into(),
                port: 2222,
                sudo: true
            }
        );
        let (u, p) = cfg();
        assert_eq!(
            login_with(&host(Some(22), Some("root"), None), u, p),
            Login {
                user: "root".into(),
                port: 22,
                sudo: false
            }
        );
        let (u, p) = cfg();
        assert!(!login_with(&host(None, None, Some(false)), u, p).sudo);
        assert_eq!(
            login_with(&host(None, None, None), None, None),
            Login {
                user: "root".into(),
                port: 22,
                sudo: false
            }
        );
    }

    #[test]
    fn notices_read_as_they_always_did() {
        let waiting = Notice::Waiting {
            host: "web",
            holder: "ann@laptop (pid 7), running `provision up`",
            limit: Duration::from_secs(600),
        };
        assert_eq!(
            waiting.to_string(),
            "web: waiting for the lock held by ann@laptop (pid 7), running `provision up` \
             (up to 600 s; --no-wait fails at once instead)"
        );
        let taken = Notice::TakenAfter {
            host: "db",
            waited: Duration::from_millis(2500),
        };
        assert_eq!(taken.to_string(), "db: lock taken after 2.5 s");
        let broke = Notice::Broke {
            host: "db",
            holder: "x",
        };
        assert_eq!(broke.to_string(), "db: removed the lock held by x");
    }
}
