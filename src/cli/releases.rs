//! `releases SERVICE` and `rollback SERVICE [RELEASE]`: the releases of a
//! start-first service kept on its host ([`crate::releases`]), and going
//! back to one of them the way a rollout goes forward: started beside the
//! serving one, switched to only once its readiness probe passes.

use std::sync::Arc;
use std::time::Duration;

use crate::commands;
use crate::inventory::Service;
use crate::load::Loaded;
use crate::plan;
use crate::releases::{self, Release, Reresolve};
use crate::runtime::Replacement;
use crate::session::{self, LockPolicy, Session};
use crate::transport::{Exec, Transport};

use super::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK};

/// The service named, or exit 2 naming the known ones.
fn service<'a>(loaded: &'a Loaded, name: &str) -> Result<&'a Service, i32> {
    loaded.inventory.service_named(name).map_err(|e| {
        eprintln!("error: {e}");
        eprintln!("provision: nothing was run on any host");
        EXIT_BAD_INPUT
    })
}

async fn run(t: &dyn Transport, line: &str) -> Result<String, String> {
    let out = t
        .exec(Exec::new(line).timeout(Duration::from_secs(120)))
        .await
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(out.stdout_str())
    } else {
        Err(format!(
            "`{}` failed: {}",
            crate::transport::command_label(line),
            out.stderr_str().trim()
        ))
    }
}

async fn list(t: &dyn Transport, project: &str, s: &Service) -> Result<Vec<Release>, String> {
    let text = run(t, &releases::list(project, &s.name)).await?;
    Ok(releases::parse(
        &text,
        &plan::container_name(project, &s.name),
    ))
}

/// `provision releases SERVICE`: the releases kept on its host, the
/// serving one first.
pub(super) async fn show(loaded: &Loaded, name: &str) -> i32 {
    let s = match service(loaded, name) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let inv = &loaded.inventory;
    let project = &inv.project.name;
    let opened = session::connect(inv, &[&s.host]).await;
    let t = match opened.into_iter().next().map(|o| o.transport) {
        Some(Ok(t)) => t,
        Some(Err(e)) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
        None => return EXIT_FAILED,
    };
    let list = match list(t.as_ref(), project, s).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {}: {e}", s.host);
            return EXIT_FAILED;
        }
    };
    if list.is_empty() {
        println!("{name} on {}: no release (is it provisioned?)", s.host);
        return EXIT_OK;
    }
    let container = plan::container_name(project, name);
    println!(
        "{:<18} {:<9} {:<32} CONTENT",
        "RELEASE", "STATE", "DEPLOYED"
    );
    for r in &list {
        let state = if r.name == container && r.state == "running" {
            "serving"
        } else {
            r.state.as_str()
        };
        println!(
            "{:<18} {:<9} {:<32} {}",
            r.spec,
            state,
            r.started,
            r.content()
        );
    }
    EXIT_OK
}

/// `provision rollback SERVICE [RELEASE]`: the release before the serving
/// one (or the one named by a prefix of its id) serves again, once ready.
pub(super) async fn rollback(
    loaded: &Loaded,
    name: &str,
    to: Option<&str>,
    lock: LockPolicy,
) -> i32 {
    let s = match service(loaded, name) {
        Ok(s) => s,
        Err(code) => return code,
    };
    let (port, reresolve) = match plan::replacement(loaded, s) {
        Replacement::StartFirst { port, reresolve } => (port, reresolve),
        Replacement::StopFirst { why } => {
            eprintln!(
                "error: {name} is replaced stop-first{}: no earlier release is kept to go back to",
                why.map(|w| format!(" ({w})")).unwrap_or_default()
            );
            eprintln!("provision: nothing was run on any host");
            return EXIT_BAD_INPUT;
        }
    };
    let inv = &loaded.inventory;
    let (session, hosts) = match Session::open_all(inv, &[&s.host], &lock).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: rollback: {e}");
            return EXIT_FAILED;
        }
    };
    let t: Arc<dyn Transport> = hosts[0].clone();
    let result = go_back(loaded, s, t.as_ref(), to, port, &reresolve).await;
    match result {
        Ok(r) => {
            session
                .close(|_| format!("rollback {name} to {}", r.spec))
                .await;
            println!(
                "{name} on {}: release {} serves again (content {}); the next run deploys hosts.toml's release",
                s.host,
                r.spec,
                r.content()
            );
            EXIT_OK
        }
        Err(e) => {
            session
                .close(|_| format!("FAILED: rollback {name}: {e}"))
                .await;
            eprintln!("error: rollback {name} on {}: {e}", s.host);
            EXIT_FAILED
        }
    }
}

async fn go_back(
    loaded: &Loaded,
    s: &Service,
    t: &dyn Transport,
    to: Option<&str>,
    port: Option<u16>,
    reresolve: &[(String, String)],
) -> Result<Release, String> {
    let project = &loaded.inventory.project.name;
    let container = plan::container_name(project, &s.name);
    let list = list(t, project, s).await?;
    let earlier: Vec<&Release> = list.iter().filter(|r| r.name != container).collect();
    let target = match to {
        Some(p) => earlier
            .iter()
            .find(|r| r.spec.starts_with(p))
            .copied()
            .ok_or_else(|| format!("no kept release {p}; kept: {}", names(&earlier)))?,
        None => earlier
            .first()
            .copied()
            .ok_or_else(|| "no earlier release is kept on the host".to_string())?,
    };
    eprintln!(
        "{}: starting release {} of {} beside the serving one",
        s.host, target.spec, s.name
    );
    run(t, &releases::start(&target.name)).await?;
    let ready = &loaded.templates[&s.name].manifest.ready;
    let limit = Duration::from_secs(s.ready_timeout.unwrap_or(plan::READY_TIMEOUT_SECS));
    if let Err(e) = crate::readiness::wait(
        t,
        &commands::shell(&commands::exec_in(&target.name, ready)),
        &target.name,
        limit,
    )
    .await
    {
        let _ = run(t, &releases::stop(&target.name)).await;
        return Err(format!(
            "release {} did not get ready; the serving one goes on: {e}",
            target.spec
        ));
    }
    let reresolve: Vec<Reresolve> = reresolve
        .iter()
        .map(|(service, signal)| Reresolve {
            container: plan::container_name(project, service),
            signal: signal.clone(),
        })
        .collect();
    run(
        t,
        &releases::switch(&releases::Switch {
            project,
            service: &s.name,
            container: &container,
            candidate: &target.name,
            port,
            reresolve: &reresolve,
        }),
    )
    .await?;
    Ok(target.clone())
}

fn names(list: &[&Release]) -> String {
    if list.is_empty() {
        return "none".into();
    }
    list.iter()
        .map(|r| r.spec.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
