//! `backup`, `restore` and `migrate`: connect to the hosts named, lock them
//! for the operation, stream the volumes, audit, unlock.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::backup;
use crate::cli::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK};
use crate::host_lock::{self, RunId};
use crate::inventory::Inventory;
use crate::run;
use crate::transport::{SshTransport, Transport};

/// `HOST` or `HOST:VOLUME`, the host checked against the inventory.
fn target<'a>(inv: &Inventory, t: &'a str) -> Result<(&'a str, Option<&'a str>), String> {
    let (host, volume) = match t.split_once(':') {
        Some((h, v)) if !v.is_empty() => (h, Some(v)),
        Some((h, _)) => (h, None),
        None => (t, None),
    };
    if inv.host(host).is_none() {
        let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
        return Err(format!(
            "no host {host} in {} (hosts: {})",
            inv.file.display(),
            names.join(", ")
        ));
    }
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

/// How a volume command treats a lock another run holds.
#[derive(Debug, Clone, Copy)]
pub struct LockPolicy {
    /// Remove a stale lock first.
    pub break_lock: bool,
    /// Wait this long for a held lock; `None`: fail at once naming it.
    pub wait: Option<std::time::Duration>,
}

/// Connected and locked hosts of one operation.
struct Session {
    project: String,
    run: RunId,
    hosts: Vec<Arc<dyn Transport>>,
}

impl Session {
    async fn open(inv: &Inventory, names: &[&str], lock: LockPolicy) -> Result<Session, String> {
        let run_id = RunId::current();
        let project = inv.project.name.clone();
        let mut hosts: Vec<Arc<dyn Transport>> = Vec::new();
        let mut failure = None;
        // Locks are taken in host-name order, as runs take them, so two
        // commands waiting for each other's hosts cannot deadlock.
        let mut in_lock_order = names.to_vec();
        in_lock_order.sort_unstable();
        let mut locked: Vec<(&str, Arc<dyn Transport>)> = Vec::new();
        for name in in_lock_order {
            let h = inv.host(name).expect("checked host");
            let t = match SshTransport::connect(run::ssh_target(inv, h)).await {
                Ok(t) => Arc::new(t) as Arc<dyn Transport>,
                Err(e) => {
                    failure = Some(e.to_string());
                    break;
                }
            };
            let taken = match lock.wait {
                Some(limit) if !lock.break_lock => {
                    let mut told = |holder: &str| {
                        eprintln!("{name}: waiting for the lock held by {holder}");
                    };
                    host_lock::take_waiting(t.as_ref(), &project, &run_id, limit, &mut told)
                        .await
                        .map(|()| None)
                        .map_err(|e| e.to_string())
                }
                _ => host_lock::take(t.as_ref(), &project, &run_id, lock.break_lock).await,
            };
            match taken {
                Ok(broken) => {
                    if let Some(info) = broken {
                        eprintln!("{name}: removed the lock held by {info}");
                    }
                    locked.push((name, t));
                }
                Err(e) => {
                    failure = Some(format!("{name}: {e}"));
                    break;
                }
            }
        }
        // The session keeps the caller's order (migrate: from, then to).
        for name in names {
            if let Some(i) = locked.iter().position(|(n, _)| n == name) {
                hosts.push(locked.swap_remove(i).1);
            }
        }
        let s = Session {
            project,
            run: run_id,
            hosts,
        };
        match failure {
            None => Ok(s),
            Some(e) => {
                s.close("not run").await;
                Err(e)
            }
        }
    }

    async fn close(&self, result: &str) {
        for t in &self.hosts {
            if let Err(e) = host_lock::audit(t.as_ref(), &self.project, &self.run, result).await {
                eprintln!("{}: cannot append to the audit log: {e}", t.name());
            }
            if let Err(e) = host_lock::release(t.as_ref(), &self.project, &self.run).await {
                eprintln!("{}: cannot release the lock: {e}", t.name());
            }
        }
    }
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
    let session = match Session::open(inv, &[host], lock).await {
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
    let r = backup::backup_to_file(session.hosts[0].as_ref(), &volumes, &path, true, &origin).await;
    let secs = started.elapsed().as_secs_f64();
    match r {
        Ok(w) if !w.manifest.empty_volumes.is_empty() && !allow_empty => {
            backup::remove_backup(&path);
            let msg = backup::empty_volumes_message(host, &w.manifest.empty_volumes);
            session
                .close(&format!(
                    "FAILED: backup: empty {}",
                    w.manifest.empty_volumes.join(",")
                ))
                .await;
            eprintln!(
                "error: backup: {msg}\nNo backup was kept; --allow-empty keeps an empty one."
            );
            EXIT_FAILED
        }
        Ok(w) => {
            session
                .close(&format!(
                    "ok: backup of {} to {}",
                    volumes.join(","),
                    path.display()
                ))
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
            session.close(&format!("FAILED: backup: {e}")).await;
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
    let session = match Session::open(inv, &[host], lock).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: restore: {e}");
            return EXIT_FAILED;
        }
    };
    for (v, member) in &pairs {
        let started = Instant::now();
        let r = backup::restore_from_file(
            session.hosts[0].as_ref(),
            &session.project,
            v,
            member,
            file,
            &checked,
        )
        .await;
        if let Err(e) = r {
            session.close(&format!("FAILED: restore: {e}")).await;
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
        .close(&format!("ok: restore from {}", file.display()))
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
    let session = match Session::open(inv, &[from, to], lock).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: migrate: {e}");
            return EXIT_FAILED;
        }
    };
    let started = Instant::now();
    let r = backup::migrate(
        session.hosts[0].as_ref(),
        session.hosts[1].as_ref(),
        &session.project,
        volume,
    )
    .await;
    match r {
        Ok(bytes) => {
            session
                .close(&format!("ok: migrate {volume} from {from} to {to}"))
                .await;
            println!(
                "volume {volume}: {from} -> {to} ({})",
                rate(bytes, started.elapsed().as_secs_f64())
            );
            EXIT_OK
        }
        Err(e) => {
            session.close(&format!("FAILED: migrate: {e}")).await;
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}
