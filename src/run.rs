//! A real run: local machines first (when the inventory has any), then
//! connections to every host in parallel, the executor, and the summary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::executor::{self, HostReport};
use crate::host_lock::TakeError;
use crate::inventory::{self, Host, Inventory};
use crate::load::Loaded;
use crate::machines::{self, MachineSpec, MachineState, Playground};
use crate::plan::{Plan, StepKind};
use crate::progress::Progress;
use crate::transport::{self, SshTarget, SshTransport, Transport};

pub fn machine_specs(inv: &Inventory) -> Vec<MachineSpec> {
    inv.hosts
        .iter()
        .filter_map(|h| {
            let m = h.machine.as_ref()?;
            let mut spec = MachineSpec::new(&inv.project.name, &h.name, h.address.parse().ok()?);
            spec.init = match m.init {
                inventory::Init::Systemd => machines::Init::Systemd,
                inventory::Init::None => machines::Init::None,
            };
            spec.forwards = m
                .forward
                .iter()
                .map(|f| machines::PortForward {
                    host_port: f.local,
                    guest_port: f.guest,
                })
                .collect();
            Some(spec)
        })
        .collect()
}

pub fn playground(inv: &Inventory) -> Result<Playground, String> {
    let mut p = Playground::new(&inv.project.state_dir);
    // A user's own key is authorized in the machines instead of the
    // project's generated one.
    let user_key = inv
        .hosts
        .iter()
        .filter(|h| h.machine.is_some())
        .find_map(|h| h.identity.clone());
    if let Some(id) = user_key {
        let path = inv.resolve_path(&format!("{}.pub", id.display()));
        let line = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "local machines: cannot read the public key {}: {e}",
                path.display()
            )
        })?;
        p = p.with_public_key(line.trim());
    }
    Ok(p)
}

/// Create or start the local machines. Quick when they already run.
pub async fn machines_up(inv: &Inventory) -> Result<(), String> {
    machines_up_for(inv, None).await
}

/// [`machines_up`] for one host's machine only (`--only`): the others are
/// not touched, not even started.
pub async fn machines_up_for(inv: &Inventory, only: Option<&str>) -> Result<(), String> {
    let mut specs = machine_specs(inv);
    if let Some(only) = only {
        specs.retain(|s| s.name == only);
    }
    if specs.is_empty() {
        return Ok(());
    }
    let p = playground(inv)?;
    // Fast path: every machine runs as specified and its key is recorded.
    let status = match p.quick_status(&specs).await {
        Some(s) => Ok(s),
        None => p.status(&specs).await,
    };
    if let Ok(status) = status {
        let known = std::fs::read_to_string(p.known_hosts_path()).unwrap_or_default();
        let all_up = status.iter().all(|s| {
            s.state == MachineState::Running
                && s.matches_spec
                && known
                    .lines()
                    .any(|l| l.split_whitespace().next() == Some(&s.address.to_string()))
        });
        if all_up {
            return Ok(());
        }
    }
    let started = Instant::now();
    let infos = p
        .up(&specs)
        .await
        .map_err(|e| format!("local machines: {e}"))?;
    for m in infos {
        eprintln!("machine {} at {} ({:?})", m.name, m.address, m.action);
    }
    eprintln!(
        "local machines ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
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
    t.host_key_policy = match h.host_key {
        inventory::HostKeyPolicy::Strict => transport::HostKeyPolicy::Strict,
        inventory::HostKeyPolicy::AcceptNew => transport::HostKeyPolicy::AcceptNew,
        inventory::HostKeyPolicy::Off => transport::HostKeyPolicy::Off,
    };
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

/// Connect to every host of the plan in parallel.
pub async fn connect_all(inv: &Inventory, plan: &Plan) -> Vec<executor::Host> {
    let conns = futures::future::join_all(plan.hosts.iter().map(|hp| async move {
        let h = inv.host(&hp.host).expect("planned hosts exist");
        SshTransport::connect(ssh_target(inv, h))
            .await
            .map(|t| Arc::new(t) as Arc<dyn Transport>)
            .map_err(|e| e.to_string())
    }))
    .await;
    plan.hosts
        .iter()
        .cloned()
        .zip(conns)
        .map(|(plan, transport)| executor::Host {
            plan,
            transport,
            probe: None,
        })
        .collect()
}

pub async fn up(loaded: &Loaded, plan: &Plan) -> Vec<HostReport> {
    up_with(
        loaded,
        plan,
        &executor::Options::default(),
        &LockPolicy::default(),
    )
    .await
}

/// What a run does when another run holds a host's lock.
#[derive(Debug, Clone)]
pub struct LockPolicy {
    /// Remove a (stale) lock first.
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

/// A run with [`executor::Options`]: each reachable host is locked for the
/// run and gets one audit line at the end. A host another run holds is
/// waited for (see [`LockPolicy`]), or fails with who holds it.
///
/// Two runs never deadlock: the first try takes every host's lock without
/// waiting; a run that finds one held gives back what it took and then
/// waits for the locks one host at a time, in host-name order.
pub async fn up_with(
    loaded: &Loaded,
    plan: &Plan,
    opts: &executor::Options,
    policy: &LockPolicy,
) -> Vec<HostReport> {
    let inv = &loaded.inventory;
    let project = &inv.project.name;
    let mut hosts = connect_all(inv, plan).await;
    crate::timing::mark("connected");
    let run_id = crate::host_lock::RunId::current();
    // The lock and the probe go side by side: the probe is used only when
    // the lock was taken, so no other run can change the host in between.
    let taken = futures::future::join_all(hosts.iter().map(|h| {
        let run_id = &run_id;
        async move {
            match &h.transport {
                Ok(t) => {
                    let (lock, probe) = tokio::join!(
                        crate::host_lock::try_take(t.as_ref(), project, run_id, policy.break_lock),
                        executor::probe_host(t.as_ref(), project, &h.plan)
                    );
                    Some((lock, probe))
                }
                Err(_) => None,
            }
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
            futures::future::join_all(
                mine.iter()
                    .map(|t| crate::host_lock::release(t.as_ref(), project, &run_id)),
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
            order.sort_by(|&a, &b| hosts[a].plan.host.cmp(&hosts[b].plan.host));
            for (i, t) in taken.into_iter().enumerate() {
                if let Some((Err(e @ TakeError::Failed(_)), _)) = t {
                    hosts[i].transport = Err(format!("{}: {e}", hosts[i].plan.host));
                }
            }
            for i in order {
                let name = hosts[i].plan.host.clone();
                let Ok(t) = hosts[i].transport.clone() else {
                    continue;
                };
                let mut on_held = |holder: &str| {
                    eprintln!(
                        "{name}: waiting for the lock held by {holder} (up to {} s; \
                         --no-wait fails at once instead)",
                        limit.as_secs()
                    )
                };
                let waited = Instant::now();
                match crate::host_lock::take_waiting(
                    t.as_ref(),
                    project,
                    &run_id,
                    limit,
                    &mut on_held,
                )
                .await
                {
                    Ok(()) => {
                        if waited.elapsed() >= crate::host_lock::WAIT_POLL {
                            eprintln!(
                                "{name}: lock taken after {:.1} s",
                                waited.elapsed().as_secs_f64()
                            );
                        }
                        locked.push(t);
                    }
                    Err(e) => hosts[i].transport = Err(format!("{name}: {e}")),
                }
            }
            // The state may have changed while the other run held the lock.
            let probes = futures::future::join_all(hosts.iter().map(|h| async move {
                match &h.transport {
                    Ok(t) => Some(executor::probe_host(t.as_ref(), project, &h.plan).await),
                    Err(_) => None,
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
                            eprintln!("{}: removed the lock held by {info}", h.plan.host);
                        }
                        if let Ok(t) = &h.transport {
                            locked.push(t.clone());
                        }
                    }
                    Some((Err(e), _)) => h.transport = Err(format!("{}: {e}", h.plan.host)),
                    None => {}
                }
            }
        }
    }
    let reports = up_locked(loaded, plan, hosts, opts).await;
    crate::timing::mark("steps run");
    futures::future::join_all(locked.iter().map(|t| {
        let run_id = &run_id;
        let reports = &reports;
        async move {
            let result = match reports.iter().find(|r| r.host == t.name()) {
                Some(r) if r.ok() => format!("ok: {}", r.summary()),
                Some(r) => format!(
                    "FAILED: {}; {}",
                    r.summary(),
                    r.failed
                        .iter()
                        .chain(&r.blocked)
                        .map(|f| format!("{}: {}", f.summary, f.why.lines().next().unwrap_or("")))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                None => "not run".into(),
            };
            let result = loaded.secrets.mask(&result);
            // Two independent commands: side by side on the one connection.
            let (audited, released) = tokio::join!(
                crate::host_lock::audit(t.as_ref(), project, run_id, &result),
                crate::host_lock::release(t.as_ref(), project, run_id)
            );
            if let Err(e) = audited {
                eprintln!("{}: cannot append to the audit log: {e}", t.name());
            }
            if let Err(e) = released {
                eprintln!("{}: cannot release the lock: {e}", t.name());
            }
        }
    }))
    .await;
    reports
}

async fn up_locked(
    loaded: &Loaded,
    plan: &Plan,
    hosts: Vec<executor::Host>,
    opts: &executor::Options,
) -> Vec<HostReport> {
    let inv = &loaded.inventory;
    let names: Vec<String> = plan.hosts.iter().map(|h| h.host.clone()).collect();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let log = inv
        .project
        .state_dir
        .join("logs")
        // The pid too: two runs started in the same second keep two logs.
        .join(format!("run-{stamp}-{}.log", std::process::id()));
    let tty = std::io::stderr().is_terminal();
    let progress = Arc::new(Progress::new(
        loaded.secrets.clone(),
        &names,
        tty,
        Some(&log),
    ));
    for h in &hosts {
        if let Err(e) = &h.transport {
            progress.status(&h.plan.host, &format!("cannot connect: {e}"));
        }
    }
    let reports = executor::execute_with(plan, hosts, progress.clone(), opts).await;
    progress.notice(&format!("log: {}", log.display()));
    reports
}

/// The end-of-run summary, one block per host.
pub fn summary(reports: &[HostReport], inv: &Inventory) -> String {
    let mut out = String::new();
    for r in reports {
        out.push_str(&format!("{:<10} {}\n", r.host, r.summary()));
        for f in &r.failed {
            out.push_str(&format!("  FAILED  {}: {}\n", f.summary, f.why));
        }
        for f in &r.blocked {
            out.push_str(&format!("  BLOCKED {}: {}\n", f.summary, f.why));
        }
        for note in &r.notes {
            out.push_str(&format!("  note    {note}\n"));
        }
        let mut seen: Vec<&String> = Vec::new();
        for (service, why) in &r.skipped {
            if !seen.contains(&service) {
                seen.push(service);
                out.push_str(&format!("  skipped {service}: {why}\n"));
            }
        }
    }
    if reports.iter().all(|r| r.changed.is_empty() && r.ok()) {
        out.push_str("Nothing changed: every host is already as planned.\n");
    }
    for h in &inv.hosts {
        for f in h.machine.iter().flat_map(|m| m.forward.iter()) {
            let what = match f.guest {
                80 => " (nginx)",
                5601 => " (kibana)",
                _ => "",
            };
            // Only a forward to a service that runs is worth opening.
            let serving = inv
                .services_on(&h.name)
                .find(|s| s.publish.iter().any(|p| p.host_port == f.guest));
            let runs = reports.iter().any(|r| {
                r.host == h.name
                    && serving.is_some_and(|s| {
                        !r.skipped.iter().any(|(name, _)| name == &s.name)
                            && !r.failed.iter().chain(&r.blocked).any(|f| {
                                f.step.kind == StepKind::Run
                                    && f.step.service.as_deref() == Some(s.name.as_str())
                            })
                    })
            });
            if runs {
                out.push_str(&format!(
                    "Open http://127.0.0.1:{}/{what} -> {}:{}\n",
                    f.local, h.name, f.guest
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
