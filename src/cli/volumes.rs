//! `backup`, `restore` and `migrate`: a session on the hosts named (every
//! one connected and locked, or nothing runs), the volumes streamed, the
//! session closed with one audit line per host.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backup;
use crate::inventory::Inventory;
use crate::runtime::swarm::{self, Paused, Swarm};
use crate::session::{LockPolicy, Session};
use crate::transport::{Exec, Transport};

use super::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK};

/// `HOST` or `HOST:VOLUME`, the host checked against the inventory.
fn target<'a>(inv: &Inventory, t: &'a str) -> Result<(&'a str, Option<&'a str>), String> {
    let (host, volume) = match t.split_once(':') {
        Some((h, v)) if !v.is_empty() => (h, Some(v)),
        Some((h, _)) => (h, None),
        None => (t, None),
    };
    inv.host_named(host)?;
    Ok((host, volume))
}

/// The named volumes the inventory's services mount on `host`.
fn host_volumes(inv: &Inventory, host: &str) -> Vec<String> {
    let mut v: Vec<String> = inv
        .services
        .iter()
        .filter(|s| s.host == host)
        .flat_map(|s| s.volumes.iter().map(|m| m.volume.clone()))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn rate(bytes: u64, secs: f64) -> String {
    format!(
        "{:.1} MB in {secs:.1} s, {:.1} MB/s",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / secs.max(0.001)
    )
}

/// The services on `host` that mount any of `volumes`.
fn services_of(inv: &Inventory, host: &str, volumes: &[String]) -> Vec<String> {
    inv.services
        .iter()
        .filter(|s| s.host == host && s.volumes.iter().any(|m| volumes.contains(&m.volume)))
        .map(|s| s.name.clone())
        .collect()
}

/// Swarm mode: the hosts a volume verb on `host` opens (the host, and the
/// first manager, which alone can scale the services that use its volumes).
fn with_leader<'a>(inv: &'a Inventory, host: &'a str) -> Vec<&'a str> {
    let mut names = vec![host];
    if inv.swarm() {
        let leader = inv
            .hosts
            .iter()
            .find(|h| h.name == Swarm::of(inv).leader().name)
            .map(|h| h.name.as_str())
            .expect("the leader is a host");
        if leader != host {
            names.push(leader);
        }
    }
    names
}

/// Swarm mode: the stack services of `host` that mount any of `volumes`
/// (none in plain mode, where the copy stops and starts containers itself).
fn swarm_users(inv: &Inventory, host: &str, volumes: &[String]) -> Vec<String> {
    if !inv.swarm() {
        return Vec::new();
    }
    services_of(inv, host, volumes)
        .iter()
        .map(|s| swarm::service_name(&inv.project.name, s))
        .collect()
}

/// In swarm mode, stopping a task's container makes Swarm start another
/// on the same volume (and starting the old one again afterwards would
/// run two): the services are scaled to 0 on the leader instead, the
/// copy waits until no container on the host uses the volumes, and
/// [`resume`] gives the tasks back. Interrupted in between, the services
/// carry a label no plan made, and the next run redeploys them.
async fn pause(
    leader: &dyn Transport,
    host: &dyn Transport,
    services: &[String],
    volumes: &[String],
) -> (Vec<Paused>, Result<(), String>) {
    if services.is_empty() {
        return (Vec::new(), Ok(()));
    }
    let out = match leader
        .exec(Exec::new(swarm::pause_line(services)).timeout(Duration::from_secs(60)))
        .await
    {
        Ok(o) => o,
        Err(e) => return (Vec::new(), Err(e.to_string())),
    };
    // What was scaled down before any failure: it is given back.
    let paused = swarm::parse_paused(&out.stdout_str());
    if !out.success() {
        let e = format!(
            "could not scale {} to 0 on {}: {}",
            services.join(", "),
            leader.name(),
            out.stderr_str().trim()
        );
        return (paused, Err(e));
    }
    if !paused.is_empty() {
        eprintln!(
            "{}: {} scaled to 0 for the copy (a rerun of provision brings them back if this is interrupted)",
            leader.name(),
            paused
                .iter()
                .map(|p| p.service.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let gone = host
        .exec(
            Exec::new(crate::commands::wait_volumes_unused(volumes, 90))
                .timeout(Duration::from_secs(120)),
        )
        .await;
    let r = match gone {
        Ok(o) if o.success() => Ok(()),
        Ok(o) => Err(o.stderr_str().trim().to_string()),
        Err(e) => Err(e.to_string()),
    };
    (paused, r)
}

/// The paused services given back their tasks, waited for until they run.
async fn resume(leader: &dyn Transport, paused: &[Paused]) -> Result<(), String> {
    if paused.is_empty() {
        return Ok(());
    }
    let out = leader
        .exec(Exec::new(swarm::resume_line(paused, 300)).timeout(Duration::from_secs(360)))
        .await
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(())
    } else {
        Err(format!(
            "{} did not come back: {} (the next run of provision redeploys them)",
            paused
                .iter()
                .map(|p| p.service.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            out.stderr_str().trim()
        ))
    }
}

/// `work` with the swarm users of `volumes` on `host` paused around it
/// (plain mode: `work` alone; it stops and starts the containers itself).
async fn paused_around<T>(
    hosts: &[Arc<dyn Transport>],
    services: &[String],
    volumes: &[String],
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    let leader = hosts.last().expect("a host").as_ref();
    let (paused, ready) = pause(leader, hosts[0].as_ref(), services, volumes).await;
    let r = match ready {
        Ok(()) => work.await,
        Err(e) => Err(e),
    };
    let back = resume(leader, &paused).await;
    match (r, back) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(b)) => Err(format!("{e}; and {b}")),
    }
}

pub async fn backup(
    inv: &Inventory,
    t: &str,
    output: Option<&Path>,
    allow_empty: bool,
    lock: LockPolicy,
) -> i32 {
    let (host, volume) = match target(inv, t) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: backup: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    let volumes = match volume {
        Some(v) => vec![v.to_string()],
        None => host_volumes(inv, host),
    };
    if volumes.is_empty() {
        eprintln!(
            "error: backup: no service on {host} mounts a named volume; name one as {host}:VOLUME"
        );
        return EXIT_BAD_INPUT;
    }
    let path = match output {
        Some(p) => p.to_path_buf(),
        None => inv
            .project
            .state_dir
            .join("backups")
            .join(backup::backup_file_name(host, backup::now_secs(), volume)),
    };
    let (session, hosts) = match Session::open_all(inv, &with_leader(inv, host), &lock).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: backup: {e}");
            return EXIT_FAILED;
        }
    };
    let started = Instant::now();
    eprintln!(
        "{host}: backing up {} (containers using them are stopped for the copy)",
        volumes.join(", ")
    );
    let origin = backup::Origin {
        host: host.to_string(),
        address: inv
            .host(host)
            .map(|h| h.address.clone())
            .unwrap_or_default(),
        services: services_of(inv, host, &volumes),
    };
    let users = swarm_users(inv, host, &volumes);
    let copy = backup::backup_to_file(hosts[0].as_ref(), &volumes, &path, true, &origin);
    let r = paused_around(&hosts, &users, &volumes, copy).await;
    let secs = started.elapsed().as_secs_f64();
    match r {
        Ok(w) if !w.manifest.empty_volumes.is_empty() && !allow_empty => {
            backup::remove_backup(&path);
            let msg = backup::empty_volumes_message(host, &w.manifest.empty_volumes);
            session
                .close(|_| {
                    format!(
                        "FAILED: backup: empty {}",
                        w.manifest.empty_volumes.join(",")
                    )
                })
                .await;
            eprintln!(
                "error: backup: {msg}\nNo backup was kept; --allow-empty keeps an empty one."
            );
            EXIT_FAILED
        }
        Ok(w) => {
            session
                .close(|_| format!("ok: backup of {} to {}", volumes.join(","), path.display()))
                .await;
            if !w.manifest.empty_volumes.is_empty() {
                eprintln!(
                    "warning: {} (kept: --allow-empty)",
                    backup::empty_volumes_message(host, &w.manifest.empty_volumes)
                );
            }
            println!(
                "backup of {host} ({}) -> {} ({}, sha256 {}, manifest {})",
                volumes.join(", "),
                path.display(),
                rate(w.manifest.size, secs),
                &w.manifest.sha256[..16],
                w.manifest_path.display()
            );
            EXIT_OK
        }
        Err(e) => {
            session.close(|_| format!("FAILED: backup: {e}")).await;
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}

pub async fn restore(
    inv: &Inventory,
    t: &str,
    file: &Path,
    unverified: bool,
    lock: LockPolicy,
) -> i32 {
    let (host, volume) = match target(inv, t) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: restore: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    // The whole file is checked before any host is contacted.
    let checked = match backup::check_backup(file, unverified) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: restore: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    if checked.manifest.is_none() {
        eprintln!(
            "warning: restore: {} has no manifest: only its tar structure was checked (--unverified)",
            file.display()
        );
    }
    let in_file = &checked.volumes;
    // (volume on the host, folder in the file)
    let pairs: Vec<(String, String)> = match volume {
        Some(v) if in_file.iter().any(|f| f == v) => vec![(v.into(), v.into())],
        Some(v) if in_file.len() == 1 => vec![(v.into(), in_file[0].clone())],
        Some(v) => {
            eprintln!(
                "error: restore: {} has no volume {v} (it holds: {})",
                file.display(),
                in_file.join(", ")
            );
            return EXIT_BAD_INPUT;
        }
        None => in_file.iter().map(|v| (v.clone(), v.clone())).collect(),
    };
    let (session, hosts) = match Session::open_all(inv, &with_leader(inv, host), &lock).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: restore: {e}");
            return EXIT_FAILED;
        }
    };
    for (v, member) in &pairs {
        let started = Instant::now();
        let volumes = [v.clone()];
        let users = swarm_users(inv, host, &volumes);
        let swap = backup::restore_from_file(
            hosts[0].as_ref(),
            session.project(),
            v,
            member,
            file,
            &checked,
        );
        let r = paused_around(&hosts, &users, &volumes, swap).await;
        if let Err(e) = r {
            session.close(|_| format!("FAILED: restore: {e}")).await;
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
        println!(
            "restored volume {v} on {host} from {} ({}, sha256 verified on the host)",
            file.display(),
            rate(checked.size, started.elapsed().as_secs_f64())
        );
    }
    session
        .close(|_| format!("ok: restore from {}", file.display()))
        .await;
    EXIT_OK
}

pub async fn migrate(inv: &Inventory, volume: &str, from: &str, to: &str, lock: LockPolicy) -> i32 {
    for h in [from, to] {
        if let Err(e) = target(inv, h) {
            eprintln!("error: migrate: {e}");
            return EXIT_BAD_INPUT;
        }
    }
    if from == to {
        eprintln!("error: migrate: --from and --to are the same host");
        return EXIT_BAD_INPUT;
    }
    if inv.swarm() {
        eprintln!(
            "error: migrate: not in swarm mode (a pinned service's volume moves with its pin): \
             `backup {from}`, change its `host` to {to}, then `provision --only {to} --restore-from FILE`"
        );
        return EXIT_BAD_INPUT;
    }
    let (session, hosts) = match Session::open_all(inv, &[from, to], &lock).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: migrate: {e}");
            return EXIT_FAILED;
        }
    };
    let started = Instant::now();
    let r = backup::migrate(
        hosts[0].as_ref(),
        hosts[1].as_ref(),
        session.project(),
        volume,
    )
    .await;
    match r {
        Ok(bytes) => {
            session
                .close(|_| format!("ok: migrate {volume} from {from} to {to}"))
                .await;
            println!(
                "volume {volume}: {from} -> {to} ({})",
                rate(bytes, started.elapsed().as_secs_f64())
            );
            EXIT_OK
        }
        Err(e) => {
            session.close(|_| format!("FAILED: migrate: {e}")).await;
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}
