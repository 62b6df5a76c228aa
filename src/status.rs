//! What `provision status` reports, as values: each host's answer, each
//! service's container, health, uptime, reach and drift. Pure: the verb
//! (`cli/status.rs`) asks the hosts and hands the answers here.
//!
//! Drift is judged the way a run judges its steps: against the same plan
//! and the same probe, with [`HostState::holds`], so "up to date" means a
//! run would do nothing for the service.

use std::fmt::Write as _;

use serde::Serialize;

use crate::plan::{HostPlan, Step, StepKind};
use crate::probe::HostState;
use crate::reach::{self, PortReach};

/// What a run would do to a service, most disruptive first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Drift {
    #[serde(rename = "up to date")]
    UpToDate,
    /// Its image is missing or built from another context.
    #[serde(rename = "would rebuild")]
    WouldRebuild,
    /// Its container is missing, stopped, or started from another spec
    /// (env, ports, volumes, a rotated secret).
    #[serde(rename = "would restart")]
    WouldRestart,
    /// Only its live files differ: a signal, no new container.
    #[serde(rename = "would reload")]
    WouldReload,
    /// Swarm mode: a node that may run it lacks its image.
    #[serde(rename = "would ship image")]
    WouldShip,
    /// Its host did not answer.
    #[serde(rename = "unknown")]
    Unknown,
}

impl Drift {
    pub fn word(self) -> &'static str {
        match self {
            Drift::UpToDate => "up to date",
            Drift::WouldRebuild => "would rebuild",
            Drift::WouldRestart => "would restart",
            Drift::WouldReload => "would reload",
            Drift::WouldShip => "would ship image",
            Drift::Unknown => "unknown",
        }
    }
}

/// The drift of `service` given its host's probe and the host's planned
/// steps. A rebuild implies a restart (the image tag is in the run spec),
/// so the first that holds of Build, Run, Config names it.
pub fn drift(state: &HostState, steps: &[Step], service: &str) -> Drift {
    drift_over(&[(state, steps)], service)
}

/// [`drift`] over several hosts' probes and steps: in swarm mode a
/// service's build, ships and run are steps of different nodes.
pub fn drift_over(hosts: &[(&HostState, &[Step])], service: &str) -> Drift {
    let holds = |kind: StepKind| {
        hosts.iter().any(|(state, steps)| {
            steps
                .iter()
                .filter(|s| s.service() == Some(service) && s.kind() == kind)
                .any(|s| state.holds(&s.when))
        })
    };
    if holds(StepKind::Build) {
        Drift::WouldRebuild
    } else if holds(StepKind::Run) {
        Drift::WouldRestart
    } else if holds(StepKind::Ship) {
        Drift::WouldShip
    } else if holds(StepKind::Config) {
        Drift::WouldReload
    } else {
        Drift::UpToDate
    }
}

/// One container as [`crate::commands::container_details`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    pub name: String,
    /// Docker's word: running, exited, restarting, created, paused, dead.
    pub state: String,
    /// When it last started (epoch s); `None` when it never did.
    pub started: Option<u64>,
    /// Docker's own health check (healthy, unhealthy, starting), if any.
    pub health: Option<String>,
    pub service: String,
}

/// Parse [`crate::commands::container_details`]'s lines; a line it cannot
/// read is left out.
pub fn parse_containers(text: &str) -> Vec<Container> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            let name = f.next()?.trim_start_matches('/').to_string();
            let state = f.next()?.to_string();
            let started = f.next().and_then(epoch_of);
            let health = f.next().filter(|h| !h.is_empty()).map(String::from);
            let service = f.next().unwrap_or("").to_string();
            (!name.is_empty()).then_some(Container {
                name,
                state,
                started,
                health,
                service,
            })
        })
        .collect()
}

/// Docker's `StartedAt`; its zero time (never started) is `None`.
fn epoch_of(rfc3339: &str) -> Option<u64> {
    let t = humantime::parse_rfc3339_weak(rfc3339.trim()).ok()?;
    let secs = t.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs();
    (secs > 0).then_some(secs)
}

/// One host as `status` reached it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostStatus {
    pub name: String,
    pub address: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One service of hosts.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceStatus {
    pub name: String,
    pub host: String,
    /// Its container, `PROJECT-SERVICE`.
    pub container: String,
    /// running, exited, restarting, ... as Docker says; `missing` when
    /// there is no such container; `unknown` when the host did not answer.
    pub state: String,
    /// `ready` / `not ready` from the template's readiness probe, else
    /// Docker's own health, else `None`.
    pub health: Option<String>,
    /// Docker's health check, when the image has one besides the probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker_health: Option<String>,
    /// Seconds since it started, while it runs.
    pub uptime_secs: Option<u64>,
    pub ports: Vec<PortReach>,
    /// Who may reach each port, as the plan says it.
    pub reach: Vec<String>,
    pub drift: Drift,
    /// Containers of the service on its host (its releases), this one
    /// included.
    pub releases: usize,
    /// Swarm mode: `RUNNING/DESIRED` tasks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<String>,
    /// Swarm mode: its tasks that should run, wherever they are.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskStatus>,
}

/// Swarm mode: one task of a service, as the manager reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskStatus {
    /// `SERVICE.SLOT`, the hosts.toml service's name and the task's slot.
    pub name: String,
    /// The hosts.toml name of its node (its hostname when unlabelled).
    pub node: String,
    /// Docker's words: `Running 5 minutes ago`, `Preparing 2 seconds ago`.
    pub state: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl TaskStatus {
    pub fn running(&self) -> bool {
        self.state.starts_with("Running")
    }
}

/// Swarm mode: what a manager said of the stack ([`crate::commands::swarm_tasks`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmTasks {
    /// Stack service name to its desired replicas (`None`: global mode).
    pub services: std::collections::BTreeMap<String, Option<u32>>,
    /// Stack service name to its tasks.
    pub tasks: std::collections::BTreeMap<String, Vec<TaskStatus>>,
}

impl SwarmTasks {
    /// Parse [`crate::commands::swarm_tasks`]'s lines; a line it cannot read
    /// is left out.
    pub fn parse(text: &str) -> SwarmTasks {
        // Hostname to label; a ready node wins over a down one of the same
        // hostname (a machine replaced under its old name).
        let mut names: std::collections::BTreeMap<String, (bool, String)> = Default::default();
        let mut out = SwarmTasks::default();
        let mut tasks = Vec::new();
        for line in text.lines() {
            let Some((tag, rest)) = line.split_once(' ') else {
                continue;
            };
            let f: Vec<&str> = rest.split('|').collect();
            match (tag, f.as_slice()) {
                ("@node", [host, state, label]) => {
                    let ready = *state == "ready";
                    let label = match *label {
                        "" | "<no value>" => host,
                        l => l,
                    };
                    let known = names.get(*host).is_some_and(|(r, _)| *r);
                    if ready || !known {
                        names.insert(host.to_string(), (ready, label.to_string()));
                    }
                }
                ("@service", [name, replicas]) => {
                    out.services.insert(name.to_string(), replicas.parse().ok());
                }
                ("@task", [name, node, state, error]) => {
                    tasks.push((
                        name.to_string(),
                        node.to_string(),
                        state.to_string(),
                        error.to_string(),
                    ));
                }
                _ => {}
            }
        }
        for (name, node, state, error) in tasks {
            // `PROJECT_SERVICE.SLOT` (a global task has a node id instead).
            let Some((service, slot)) = name.rsplit_once('.') else {
                continue;
            };
            let short = service.split_once('_').map_or(service, |(_, s)| s);
            out.tasks
                .entry(service.to_string())
                .or_default()
                .push(TaskStatus {
                    name: format!("{short}.{slot}"),
                    node: names.get(&node).map_or(node.clone(), |(_, l)| l.clone()),
                    error: (!error.is_empty()).then_some(error),
                    state,
                });
        }
        out
    }
}

/// What one host answered, for [`service`].
pub struct Answer<'a> {
    pub state: &'a HostState,
    pub containers: &'a [Container],
    /// The readiness probe's verdict, when it ran.
    pub ready: Option<bool>,
}

/// A service's status: `answer` is `None` when its host did not answer.
pub fn service(project: &str, hp: &HostPlan, name: &str, answer: Option<&Answer>) -> ServiceStatus {
    let container = crate::plan::container_name(project, name);
    let ports: Vec<PortReach> = hp
        .ports
        .iter()
        .filter(|p| p.service == name)
        .cloned()
        .collect();
    let reach = ports.iter().map(reach::describe).collect();
    let mut s = ServiceStatus {
        name: name.to_string(),
        host: hp.host.clone(),
        container: container.clone(),
        state: "unknown".into(),
        health: None,
        docker_health: None,
        uptime_secs: None,
        ports,
        reach,
        drift: Drift::Unknown,
        releases: 0,
        replicas: None,
        tasks: Vec::new(),
    };
    let Some(a) = answer else {
        return s;
    };
    s.drift = drift(a.state, &hp.steps, name);
    s.releases = a.containers.iter().filter(|c| c.service == name).count();
    // Other releases carry the same label: the service's container is the
    // one with its exact name.
    let Some(c) = a.containers.iter().find(|c| c.name == container) else {
        s.state = "missing".into();
        return s;
    };
    s.state = c.state.clone();
    if c.state == "running" {
        s.uptime_secs = c.started.map(|t| a.state.now.saturating_sub(t));
    }
    s.docker_health = c.health.clone();
    s.health = match a.ready {
        Some(true) => Some("ready".into()),
        Some(false) => Some("not ready".into()),
        None => c.health.clone(),
    };
    s
}

/// Swarm mode: a service's status from the manager's report. `pinned` is
/// its node when hosts.toml pins it; `drift` is judged over every node
/// ([`drift_over`]), `None` when one of them did not answer.
pub fn swarm_service(
    project: &str,
    hp: &HostPlan,
    name: &str,
    pinned: Option<&str>,
    stack: Option<&SwarmTasks>,
    drift: Option<Drift>,
) -> ServiceStatus {
    let mut s = service(project, hp, name, None);
    s.host = pinned.unwrap_or("any").to_string();
    s.container = crate::runtime::swarm::service_name(project, name);
    s.drift = drift.unwrap_or(Drift::Unknown);
    let Some(stack) = stack else {
        return s;
    };
    let Some(desired) = stack.services.get(&s.container) else {
        s.state = "missing".into();
        return s;
    };
    s.tasks = stack.tasks.get(&s.container).cloned().unwrap_or_default();
    let running = s.tasks.iter().filter(|t| t.running()).count();
    let desired = desired.map_or(s.tasks.len(), |d| d as usize);
    s.replicas = Some(format!("{running}/{desired}"));
    s.state = if running >= desired && desired > 0 {
        "running"
    } else if running > 0 {
        "degraded"
    } else {
        "down"
    }
    .into();
    s
}

/// A local playground machine: its container's state on this computer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MachineLine {
    pub name: String,
    pub address: String,
    /// running, stopped, absent.
    pub state: String,
}

/// The whole report, `--json`'s document.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub hosts: Vec<HostStatus>,
    pub services: Vec<ServiceStatus>,
    pub machines: Vec<MachineLine>,
}

/// `3d4h`, `2h13m`, `5m2s`, `40s`: the two largest units.
pub fn uptime_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// The plain output: one line per machine and per host, then one aligned
/// line per service.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    for m in &r.machines {
        // The words of the old status (Running, Stopped, Absent).
        let mut state = m.state.clone();
        if let Some(first) = state.get_mut(..1) {
            first.make_ascii_uppercase();
        }
        let _ = writeln!(out, "machine {:<10} {:<15} {state}", m.name, m.address);
    }
    for h in &r.hosts {
        match &h.error {
            None => {
                let _ = writeln!(out, "host {} ({}): reachable", h.name, h.address);
            }
            Some(e) => {
                let _ = writeln!(out, "host {} ({}): unreachable: {e}", h.name, h.address);
            }
        }
    }
    let header = [
        "SERVICE", "HOST", "STATE", "HEALTH", "UPTIME", "DRIFT", "PORTS",
    ];
    let rows: Vec<[String; 7]> = r
        .services
        .iter()
        .map(|s| {
            let ports = if s.reach.is_empty() {
                "-".to_string()
            } else {
                s.reach.join("; ")
            };
            let state = match &s.replicas {
                Some(r) => format!("{} {r}", s.state),
                None => s.state.clone(),
            };
            [
                s.name.clone(),
                s.host.clone(),
                state,
                s.health.clone().unwrap_or_else(|| "-".into()),
                s.uptime_secs.map_or("-".into(), uptime_text),
                s.drift.word().to_string(),
                ports,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        l.trim_end().to_string()
    };
    let _ = writeln!(out, "{}", line(&header.map(String::from)));
    for row in &rows {
        let _ = writeln!(out, "{}", line(row));
    }
    let tasks: Vec<&TaskStatus> = r.services.iter().flat_map(|s| &s.tasks).collect();
    if !tasks.is_empty() {
        let w = tasks.iter().map(|t| t.name.len()).max().unwrap_or(0).max(4);
        let n = tasks.iter().map(|t| t.node.len()).max().unwrap_or(0).max(4);
        let _ = writeln!(out, "{:<w$}  {:<n$}  STATE", "TASK", "NODE");
        for t in tasks {
            let mut l = format!("{:<w$}  {:<n$}  {}", t.name, t.node, t.state);
            if let Some(e) = &t.error {
                let _ = write!(l, " ({e})");
            }
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::{Condition, StepId};
    use crate::reach::Reach;

    fn step(kind: StepKind, when: Condition) -> Step {
        Step::new(StepId::service("web", "nginx", kind), "", when)
    }

    fn steps() -> Vec<Step> {
        vec![
            step(
                StepKind::Build,
                Condition::ImageMissing {
                    tag: "p-nginx:new".into(),
                },
            ),
            step(
                StepKind::Config,
                Condition::ConfigDiffers {
                    service: "nginx".into(),
                    hash: "v2".into(),
                },
            ),
            step(
                StepKind::Run,
                Condition::ContainerOutdated {
                    name: "p-nginx".into(),
                    spec: "s2".into(),
                    secrets: BTreeMap::new(),
                },
            ),
            step(StepKind::Ready, Condition::Always),
        ]
    }

    fn probe(image: &str, container: &str, config: &str) -> HostState {
        HostState::parse(&format!(
            "@docker 24\n@images\n{image}\n@containers\n{container}\n@config\nnginx {config}\n@now 1000\n"
        ))
    }

    #[test]
    fn drift_names_the_most_disruptive_step_that_would_run() {
        let current = "p-nginx\trunning\ts2";
        let all = steps();
        let d = |s: &HostState| drift(s, &all, "nginx");
        assert_eq!(d(&probe("p-nginx:new", current, "v2")), Drift::UpToDate);
        // Always-ready steps run every time and say nothing of drift.
        assert_eq!(d(&probe("p-nginx:old", current, "v2")), Drift::WouldRebuild);
        assert_eq!(
            d(&probe("p-nginx:new", "p-nginx\texited\ts2", "v2")),
            Drift::WouldRestart
        );
        assert_eq!(
            d(&probe("p-nginx:new", "p-nginx\trunning\ts1", "v1")),
            Drift::WouldRestart
        );
        assert_eq!(d(&probe("p-nginx:new", "", "v2")), Drift::WouldRestart);
        assert_eq!(d(&probe("p-nginx:new", current, "v1")), Drift::WouldReload);
        // Another service's steps are not this one's.
        assert_eq!(
            drift(&probe("p-nginx:old", current, "v1"), &all, "redis"),
            Drift::UpToDate
        );
    }

    #[test]
    fn containers_parse_with_and_without_health() {
        let text = "/p-nginx\trunning\t1970-01-01T00:10:00.123456789Z\t\tnginx\n\
                    /p-redis\texited\t0001-01-01T00:00:00Z\tunhealthy\tredis\n\
                    garbage\n";
        let c = parse_containers(text);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].name, "p-nginx");
        assert_eq!(c[0].started, Some(600));
        assert_eq!(c[0].health, None);
        assert_eq!(c[1].started, None);
        assert_eq!(c[1].health.as_deref(), Some("unhealthy"));
        assert_eq!(c[1].service, "redis");
    }

    fn host_plan() -> HostPlan {
        HostPlan {
            host: "web".into(),
            address: "10.0.0.10".into(),
            ports: vec![PortReach {
                service: "nginx".into(),
                host_port: 80,
                container_port: 80,
                bind: None,
                from: Reach::Anyone,
            }],
            steps: steps(),
        }
    }

    #[test]
    fn the_service_container_is_the_exact_name_and_releases_are_counted() {
        let state = probe("p-nginx:new", "p-nginx\trunning\ts2", "v2");
        let containers = parse_containers(
            "/p-nginx-3f2a\texited\t1970-01-01T00:01:00Z\t\tnginx\n\
             /p-nginx\trunning\t1970-01-01T00:10:00Z\t\tnginx\n",
        );
        let a = Answer {
            state: &state,
            containers: &containers,
            ready: Some(true),
        };
        let s = service("p", &host_plan(), "nginx", Some(&a));
        assert_eq!(s.state, "running");
        assert_eq!(s.uptime_secs, Some(400));
        assert_eq!(s.health.as_deref(), Some("ready"));
        assert_eq!(s.releases, 2);
        assert_eq!(s.drift, Drift::UpToDate);
        assert_eq!(
            s.reach,
            ["80 (nginx) on every address: anyone (public = true)"]
        );

        let none: Vec<Container> = Vec::new();
        let a = Answer {
            state: &state,
            containers: &none,
            ready: None,
        };
        assert_eq!(
            service("p", &host_plan(), "nginx", Some(&a)).state,
            "missing"
        );
        let unknown = service("p", &host_plan(), "nginx", None);
        assert_eq!(
            (unknown.state.as_str(), unknown.drift),
            ("unknown", Drift::Unknown)
        );
    }

    #[test]
    fn swarm_tasks_name_their_nodes_by_label_and_count_replicas() {
        let text = "@node m1|ready|n1\n\
                    @node m4|down|n4\n\
                    @node m4|ready|n4b\n\
                    @node m5|ready|<no value>\n\
                    @service p_rails|3\n\
                    @service p_nginx|1\n\
                    @task p_rails.1|m1|Running 5 minutes ago|\n\
                    @task p_rails.2|m4|Running 2 minutes ago|\n\
                    @task p_rails.3|m5|Preparing 3 seconds ago|no suitable node\n\
                    garbage\n";
        let stack = SwarmTasks::parse(text);
        let rails = service_in(&stack, "rails", None);
        assert_eq!(rails.host, "any");
        assert_eq!(rails.container, "p_rails");
        assert_eq!(
            (rails.state.as_str(), rails.replicas.as_deref()),
            ("degraded", Some("2/3"))
        );
        let nodes: Vec<&str> = rails.tasks.iter().map(|t| t.node.as_str()).collect();
        assert_eq!(nodes, ["n1", "n4b", "m5"]);
        assert_eq!(rails.tasks[2].error.as_deref(), Some("no suitable node"));
        let nginx = service_in(&stack, "nginx", Some("n1"));
        assert_eq!((nginx.state.as_str(), nginx.host.as_str()), ("down", "n1"));
        assert_eq!(service_in(&stack, "redis", None).state, "missing");
        let r = Report {
            hosts: Vec::new(),
            services: vec![rails],
            machines: Vec::new(),
        };
        assert_eq!(
            table(&r),
            "SERVICE  HOST  STATE         HEALTH  UPTIME  DRIFT       PORTS\n\
             rails    any   degraded 2/3  -       -       up to date  -\n\
             TASK     NODE  STATE\n\
             rails.1  n1    Running 5 minutes ago\n\
             rails.2  n4b   Running 2 minutes ago\n\
             rails.3  m5    Preparing 3 seconds ago (no suitable node)\n"
        );
    }

    fn service_in(stack: &SwarmTasks, name: &str, pinned: Option<&str>) -> ServiceStatus {
        let hp = HostPlan {
            ports: Vec::new(),
            ..host_plan()
        };
        swarm_service("p", &hp, name, pinned, Some(stack), Some(Drift::UpToDate))
    }

    #[test]
    fn uptime_keeps_the_two_largest_units() {
        assert_eq!(uptime_text(40), "40s");
        assert_eq!(uptime_text(302), "5m2s");
        assert_eq!(uptime_text(7_980), "2h13m");
        assert_eq!(uptime_text(3 * 86_400 + 4 * 3_600 + 5), "3d4h");
    }

    #[test]
    fn the_table_aligns_its_columns() {
        let state = probe("p-nginx:old", "p-nginx\trunning\ts2", "v2");
        let containers = parse_containers("/p-nginx\trunning\t1970-01-01T00:10:00Z\t\tnginx\n");
        let a = Answer {
            state: &state,
            containers: &containers,
            ready: Some(false),
        };
        let r = Report {
            hosts: vec![
                HostStatus {
                    name: "web".into(),
                    address: "10.0.0.10".into(),
                    reachable: true,
                    error: None,
                },
                HostStatus {
                    name: "db".into(),
                    address: "10.0.0.11".into(),
                    reachable: false,
                    error: Some("connection refused".into()),
                },
            ],
            services: vec![
                service("p", &host_plan(), "nginx", Some(&a)),
                service("p", &host_plan(), "postgis", None),
            ],
            machines: vec![MachineLine {
                name: "web".into(),
                address: "10.0.0.10".into(),
                state: "running".into(),
            }],
        };
        let mut postgis = r.services[1].clone();
        postgis.host = "db".into();
        let r = Report {
            services: vec![r.services[0].clone(), postgis],
            ..r
        };
        assert_eq!(
            table(&r),
            "machine web        10.0.0.10       Running\n\
             host web (10.0.0.10): reachable\n\
             host db (10.0.0.11): unreachable: connection refused\n\
             SERVICE  HOST  STATE    HEALTH     UPTIME  DRIFT          PORTS\n\
             nginx    web   running  not ready  6m40s   would rebuild  80 (nginx) on every address: anyone (public = true)\n\
             postgis  db    unknown  -          -       unknown        -\n"
        );
    }
}
