//! A real run: local machines first (when the inventory has any), then a
//! session (connections and locks, every host in parallel), the executor,
//! and the summary.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;

use crate::commands;
use crate::events::{Event, Events};
use crate::executor::{self, HostReport};
use crate::inventory::Inventory;
use crate::load::Loaded;
use crate::machines::{MachineSpec, MachineState, Playground};
use crate::plan::{Plan, StepKind};
use crate::probe::HostState;
use crate::session::{Notify, Rider, Session};
use crate::transport::Transport;

pub fn machine_specs(inv: &Inventory) -> Vec<MachineSpec> {
    inv.hosts
        .iter()
        .filter_map(|h| {
            let m = h.machine.as_ref()?;
            let mut spec = MachineSpec::new(&inv.project.name, &h.name, h.address.parse().ok()?);
            spec.init = m.init;
            spec.forwards = m.forward.clone();
            spec.cpus = m.cpus;
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

pub use crate::session::{login, ssh_target, LockPolicy, Login, DEFAULT_LOCK_WAIT};

pub async fn up(loaded: &Loaded, plan: &Plan) -> Vec<HostReport> {
    let events = Arc::new(Events::quiet());
    up_with(
        loaded,
        plan,
        &executor::Options::default(),
        &LockPolicy::default(),
        &events,
    )
    .await
}

/// A run with [`executor::Options`]: each reachable host is locked for the
/// run (a [`Session`]; one waits for a lock another run holds, see
/// [`LockPolicy`]) and gets one audit line at the end. The probe goes side
/// by side with the lock.
pub async fn up_with(
    loaded: &Loaded,
    plan: &Plan,
    opts: &executor::Options,
    policy: &LockPolicy,
    events: &Arc<Events>,
) -> Vec<HostReport> {
    let inv = &loaded.inventory;
    let project = inv.project.name.as_str();
    let names: Vec<&str> = plan.hosts.iter().map(|h| h.host.as_str()).collect();
    let probe = |i: usize,
                 t: Arc<dyn Transport>,
                 extras: Option<Rider>|
     -> BoxFuture<'_, Result<HostState, String>> {
        let hp = &plan.hosts[i];
        Box::pin(async move { executor::probe_host(t.as_ref(), project, hp, extras).await })
    };
    let notify = {
        let events = events.clone();
        Notify::new(move |n| events.notice(Some(n.host()), n.text()))
    };
    // The probe's extras (firewall, pull failures, clock) ride in the lock's
    // command: one process per host for both.
    let extras = commands::probe_extras(project);
    let (session, opened) =
        Session::open_probing(inv, &names, policy, notify, &probe, Some(&extras)).await;
    for (hp, o) in plan.hosts.iter().zip(&opened) {
        events.emit(match &o.transport {
            Ok(_) => Event::HostConnected {
                host: hp.host.clone(),
                address: hp.address.clone(),
            },
            Err(e) => Event::HostFailed {
                host: hp.host.clone(),
                error: format!("cannot connect: {e}"),
            },
        });
    }
    let hosts = plan
        .hosts
        .iter()
        .cloned()
        .zip(opened)
        .map(|(plan, o)| executor::Host {
            plan,
            transport: o.transport,
            probe: o.probe,
        })
        .collect();
    let reports = up_locked(plan, hosts, opts, events).await;
    crate::timing::mark("steps run");
    if crate::timing::enabled() {
        let spans: Vec<_> = reports.iter().flat_map(|r| r.spans.clone()).collect();
        for line in crate::timing::steps_report(&spans, crate::timing::origin()) {
            eprintln!("timing: {line}");
        }
    }
    session
        .close(|host| {
            let result = match reports.iter().find(|r| r.host == host) {
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
            loaded.secrets.mask(&result)
        })
        .await;
    reports
}

async fn up_locked(
    plan: &Plan,
    hosts: Vec<executor::Host>,
    opts: &executor::Options,
    events: &Arc<Events>,
) -> Vec<HostReport> {
    let reports = executor::execute_with(plan, hosts, events.clone(), opts).await;
    if let Some(log) = events.log_path() {
        events.notice(None, format!("log: {}", log.display()));
    }
    reports
}

/// The run's log file: one per run (the pid too: two runs started in the
/// same second keep two logs).
pub fn run_log(inv: &Inventory) -> PathBuf {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    inv.project
        .state_dir
        .join("logs")
        .join(format!("run-{stamp}-{}.log", std::process::id()))
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
            // Only a forward to a service that runs is worth opening.
            let serving = inv
                .services_on(&h.name)
                .find(|s| s.publish.iter().any(|p| p.host_port == f.guest_port));
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
            if let (true, Some(s)) = (runs, serving) {
                // Named after the service that publishes the port.
                out.push_str(&format!(
                    "Open http://127.0.0.1:{}/ ({}) -> {}:{}\n",
                    f.host_port, s.name, h.name, f.guest_port
                ));
            }
        }
    }
    out
}
