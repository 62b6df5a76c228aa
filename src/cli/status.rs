//! `status [--json]`: each machine, each host, and per service its
//! container, health, uptime, reach and drift. Read-only: it connects
//! without taking the hosts' locks, probes each host as a run does
//! ([`executor::probe_host`]) and judges the plan a run would build against
//! it; the only other things it runs are one `docker inspect` per host and
//! each running service's readiness probe, once. In swarm mode a service
//! is a stack service: its tasks and their nodes come from one read of the
//! first manager ([`commands::swarm_tasks`]) instead of those.
//!
//! Exit codes: 0 when every host answered, 1 when one did not (its
//! services say `unknown`) or a swarm's manager could not say what runs,
//! 2 for input errors.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;

use crate::commands;
use crate::executor;
use crate::load::Loaded;
use crate::plan::{self, HostPlan, Plan};
use crate::probe::HostState;
use crate::run;
use crate::runtime::swarm::Swarm;
use crate::secrets::Generate;
use crate::session;
use crate::status::{
    self, Answer, Container, HostStatus, MachineLine, Report, ServiceStatus, SwarmTasks,
};
use crate::transport::{Exec, Transport};

use super::{load_plan, Cli, EXIT_FAILED, EXIT_OK};

/// A readiness probe that has not answered by then says "not ready".
const READY_TIMEOUT: Duration = Duration::from_secs(15);

pub(super) fn status(cli: &Cli, json: bool, env: &dyn Fn(&str) -> Option<String>) -> i32 {
    // As a dry run: secrets not yet generated are placeholders, nothing is
    // written (a run would generate them, so their services would restart).
    match load_plan(cli, env, Generate::Placeholder) {
        Ok((loaded, plan)) => super::runtime().block_on(report(&loaded, &plan, json)),
        Err(code) => code,
    }
}

async fn report(loaded: &Loaded, plan: &Plan, json: bool) -> i32 {
    let inv = &loaded.inventory;
    let machines = machine_lines(loaded).await;
    let names: Vec<&str> = plan.hosts.iter().map(|h| h.host.as_str()).collect();
    let opened = session::connect(inv, &names).await;
    // Swarm mode: the stack's services and tasks, as the first manager
    // knows them, asked beside the hosts' probes.
    let leader = inv
        .swarm()
        .then(|| Swarm::of(inv).leader().name.clone())
        .and_then(|l| names.iter().position(|n| *n == l))
        .map(|i| opened[i].transport.clone());
    let stack = async {
        match leader {
            Some(Ok(t)) => Some(
                read(t.as_ref(), commands::swarm_tasks(&plan.project))
                    .await
                    .map(|text| SwarmTasks::parse(&text)),
            ),
            Some(Err(e)) => Some(Err(e)),
            None => None,
        }
    };
    let asked = join_all(
        plan.hosts
            .iter()
            .zip(opened)
            .map(|(hp, o)| ask(loaded, &plan.project, hp, o.transport)),
    );
    let (answers, stack) = futures::join!(asked, stack);
    if let Some(Err(e)) = &stack {
        eprintln!("error: the swarm's manager did not say what runs: {e}");
    }
    let stack = stack.and_then(Result::ok);
    let hosts = plan
        .hosts
        .iter()
        .zip(&answers)
        .map(|(hp, answer)| HostStatus {
            name: hp.host.clone(),
            address: hp.address.clone(),
            reachable: answer.is_ok(),
            error: answer.as_ref().err().cloned(),
        })
        .collect();
    // In hosts.toml's order, as a person wrote them.
    let services = inv
        .services
        .iter()
        .filter_map(|s| {
            let i = plan.hosts.iter().position(|h| h.host == s.host)?;
            if inv.swarm() {
                return Some(swarm_status(
                    plan,
                    &answers,
                    s,
                    &plan.hosts[i],
                    stack.as_ref(),
                ));
            }
            let a = answers[i].as_ref().ok().map(|h| Answer {
                state: &h.state,
                containers: &h.containers,
                ready: h.ready.iter().find(|(n, _)| *n == s.name).map(|(_, r)| *r),
            });
            Some(status::service(
                &plan.project,
                &plan.hosts[i],
                &s.name,
                a.as_ref(),
            ))
        })
        .collect();
    let r = Report {
        hosts,
        services,
        machines,
    };
    let out = if json {
        format!(
            "{}\n",
            serde_json::to_string(&r).expect("a report serializes")
        )
    } else {
        status::table(&r)
    };
    // Nothing above holds a secret; masking is the rule on every output.
    print!("{}", loaded.secrets.mask(&out));
    if r.hosts.iter().all(|h| h.reachable) && (!inv.swarm() || stack.is_some()) {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
}

/// Swarm mode: a service's line. Its drift is judged over every node with
/// a step of it (build, ship, run); unknown when one of them did not answer.
fn swarm_status(
    plan: &Plan,
    answers: &[Result<HostAnswer, String>],
    s: &crate::inventory::Service,
    hp: &HostPlan,
    stack: Option<&SwarmTasks>,
) -> ServiceStatus {
    let mut parts = Vec::new();
    let mut known = true;
    for (h, a) in plan.hosts.iter().zip(answers) {
        if !h
            .steps
            .iter()
            .any(|st| st.service() == Some(s.name.as_str()))
        {
            continue;
        }
        match a {
            Ok(a) => parts.push((&a.state, h.steps.as_slice())),
            Err(_) => known = false,
        }
    }
    let drift = known.then(|| status::drift_over(&parts, &s.name));
    let pinned = s.pinned.then_some(s.host.as_str());
    status::swarm_service(&plan.project, hp, &s.name, pinned, stack, drift)
}

/// The local playground machines, as this computer's engine has them.
async fn machine_lines(loaded: &Loaded) -> Vec<MachineLine> {
    let inv = &loaded.inventory;
    let specs = run::machine_specs(inv);
    if specs.is_empty() {
        return Vec::new();
    }
    let Ok(p) = run::playground(inv) else {
        return Vec::new();
    };
    match p.status(&specs).await {
        Ok(list) => list
            .into_iter()
            .map(|m| MachineLine {
                state: format!("{:?}", m.state).to_lowercase(),
                name: m.name,
                address: m.address.to_string(),
            })
            .collect(),
        Err(e) => {
            eprintln!("machines: {e}");
            Vec::new()
        }
    }
}

/// What one host answered.
struct HostAnswer {
    state: HostState,
    containers: Vec<Container>,
    /// Each running service's readiness probe: service, passed.
    ready: Vec<(String, bool)>,
}

async fn ask(
    loaded: &Loaded,
    project: &str,
    hp: &HostPlan,
    transport: Result<Arc<dyn Transport>, String>,
) -> Result<HostAnswer, String> {
    let t = transport?;
    let (state, listed) =
        futures::join!(executor::probe_host(t.as_ref(), project, hp, None), async {
            // Swarm mode's containers are tasks: the manager's read names
            // them, and no readiness probe of plain mode applies.
            if loaded.inventory.swarm() {
                Ok(String::new())
            } else {
                read(t.as_ref(), commands::container_details(project)).await
            }
        },);
    let state = state?;
    let containers = status::parse_containers(&listed.map_err(|e| format!("docker: {e}"))?);
    let probes = loaded.inventory.services_on(&hp.host).filter_map(|s| {
        let probe = &loaded.templates.get(&s.name)?.manifest.ready;
        let name = plan::container_name(project, &s.name);
        let running = containers
            .iter()
            .any(|c| c.name == name && c.state == "running");
        (running && !probe.is_empty()).then(|| {
            let line = commands::shell(&commands::exec_in(&name, probe));
            let t = t.clone();
            async move {
                let req = Exec::new(line).timeout(READY_TIMEOUT).idempotent(true);
                let passed = t.exec(req).await.is_ok_and(|o| o.success());
                (s.name.clone(), passed)
            }
        })
    });
    let ready = join_all(probes).await;
    Ok(HostAnswer {
        state,
        containers,
        ready,
    })
}

/// A read-only line's stdout, or why there is none.
async fn read(t: &dyn Transport, line: String) -> Result<String, String> {
    let req = Exec::new(line)
        .timeout(Duration::from_secs(60))
        .idempotent(true);
    match t.exec(req).await {
        Ok(o) if o.success() => Ok(o.stdout_str().to_string()),
        Ok(o) => Err(o.stderr_str().trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}
