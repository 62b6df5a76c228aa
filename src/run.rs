//! A real run: local machines first (when the inventory has any), then
//! connections to every host in parallel, the executor, and the summary.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::executor::{self, HostReport};
use crate::inventory::{self, Host, Inventory};
use crate::load::Loaded;
use crate::machines::{self, MachineSpec, MachineState, Playground};
use crate::plan::Plan;
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
    let specs = machine_specs(inv);
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

pub fn ssh_target(inv: &Inventory, h: &Host) -> SshTarget {
    let mut t = SshTarget::new(&h.name, &h.address);
    t.port = h.port;
    t.user = h.user.clone();
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
    t.sudo = h.sudo;
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
        .map(|(plan, transport)| executor::Host { plan, transport })
        .collect()
}

pub async fn up(loaded: &Loaded, plan: &Plan) -> Vec<HostReport> {
    let inv = &loaded.inventory;
    let hosts = connect_all(inv, plan).await;
    let names: Vec<String> = plan.hosts.iter().map(|h| h.host.clone()).collect();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let log = inv
        .project
        .state_dir
        .join("logs")
        .join(format!("run-{stamp}.log"));
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
    let reports = executor::execute(plan, hosts, progress.clone()).await;
    progress.notice(&format!("log: {}", log.display()));
    reports
}

/// The end-of-run summary, one block per host.
pub fn summary(reports: &[HostReport], inv: &Inventory) -> String {
    let mut out = String::new();
    for r in reports {
        out.push_str(&format!("{:<10} {}\n", r.host, r.summary()));
        for (what, why) in &r.failed {
            out.push_str(&format!("  FAILED  {what}: {why}\n"));
        }
        for (what, why) in &r.blocked {
            out.push_str(&format!("  BLOCKED {what}: {why}\n"));
        }
        let mut reasons: Vec<&String> = r.skipped.iter().map(|(_, why)| why).collect();
        reasons.dedup();
        for why in reasons {
            let n = r.skipped.iter().filter(|(_, w)| w == why).count();
            out.push_str(&format!("  skipped {n} steps: {why}\n"));
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
            if reports.iter().any(|r| r.host == h.name && r.ok()) {
                out.push_str(&format!(
                    "Open http://127.0.0.1:{}/{what} -> {}:{}\n",
                    f.local, h.name, f.guest
                ));
            }
        }
    }
    out
}
