//! The second runtime: every host a node of one Docker swarm (Docker
//! Engine's own orchestrator; provision only describes what should run).
//!
//! - The first manager inits the swarm advertising its hosts.toml address;
//!   the others join it (the token read over SSH, never shown). The
//!   swarm's ports (2377/tcp, 7946/tcp+udp, 4789/udp) admit only the other
//!   nodes.
//! - One attachable overlay network for the project; services find each
//!   other by name through Swarm's DNS, in `dnsrr` endpoint mode (VIP
//!   needs IPVS in the host kernel, which our lab's kernel lacks; dnsrr
//!   works everywhere, and Nginx re-resolves names itself).
//! - Images are built once, on the service's pinned node (or the first
//!   manager), tagged by their context hash, and loaded from there on each
//!   other node that may run them and lacks them: no registry.
//! - Secrets (and env values that hold one) are Docker secrets, and live
//!   files Docker configs, each named with a digest of its content: a new
//!   value is a new name, swapped in by a rolling update.
//! - Each service is one `docker stack deploy` of its own compose file
//!   (stack = project): rolling updates one task at a time, start-first
//!   where the service allows two at once, the template's readiness probe
//!   as its health check, rollback on failure; stateful services are
//!   pinned to their node and updated stop-first.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::commands::{self, shell, SPEC_LABEL};
use crate::inventory::{Inventory, Role};
use crate::plan::{self, Action, Condition, Step, StepId, StepKind};
use crate::secrets::MASK;
use crate::templates::ContextFile;

use super::engine::{self, Engine};
use super::{HostWork, Replacement, Runtime, ServiceWork};

/// The port a manager listens on for the swarm.
pub const MANAGER_PORT: u16 = 2377;

/// The node label that pins a service to a host.
pub const HOST_LABEL: &str = "provision.host";

/// A node as hosts.toml names it.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub address: String,
    pub manager: bool,
    /// Ports its pinned services publish without `public = true`: only
    /// the swarm's nodes may connect (a task anywhere may be their user).
    pub guarded: Vec<u16>,
    /// The named volumes its pinned services mount: made (or restored)
    /// before the node is labelled, so no task of theirs starts on an
    /// empty volume Docker would make itself.
    pub volumes: Vec<String>,
}

/// The swarm of every host of the inventory.
#[derive(Debug, Clone)]
pub struct Swarm {
    pub project: String,
    pub root: String,
    pub nodes: Vec<Node>,
}

/// The stack service of `service`.
pub fn service_name(project: &str, service: &str) -> String {
    format!("{project}_{service}")
}

/// A swarm object's name: Docker allows 64 characters.
fn object_name(project: &str, service: &str, what: &str, digest: &str) -> String {
    let what: String = what
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let mut name = format!("{project}_{service}_{what}");
    name.truncate(64 - 13);
    format!("{name}_{}", &digest[..12])
}

impl Swarm {
    pub fn of(inv: &Inventory) -> Swarm {
        let managers: Vec<String> = inv.managers().iter().map(|h| h.name.clone()).collect();
        Swarm {
            project: inv.project.name.clone(),
            root: commands::remote_root(&inv.project.name),
            nodes: inv
                .hosts
                .iter()
                .map(|h| Node {
                    name: h.name.clone(),
                    address: h.wire_address().to_string(),
                    manager: managers.contains(&h.name) && h.role != Some(Role::Worker),
                    guarded: inv
                        .services
                        .iter()
                        .filter(|s| s.pinned && s.host == h.name && !s.public)
                        .flat_map(|s| s.publish.iter().map(|p| p.host_port))
                        .collect(),
                    volumes: {
                        let mut v: Vec<String> = inv
                            .services
                            .iter()
                            .filter(|s| s.pinned && s.host == h.name)
                            .flat_map(|s| s.volumes.iter().map(|m| m.volume.clone()))
                            .collect();
                        v.sort();
                        v.dedup();
                        v
                    },
                })
                .collect(),
        }
    }

    /// The first manager: it inits the swarm, and the swarm's own steps
    /// (network, secrets, services) run on it.
    pub fn leader(&self) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.manager)
            .unwrap_or(&self.nodes[0])
    }

    fn leader_id(&self, kind: StepKind) -> StepId {
        StepId::host(&self.leader().name, kind)
    }

    fn swarm_step(&self, node: &Node) -> Step {
        let leader = self.leader();
        let docker = StepId::host(&node.name, StepKind::Docker);
        let mut needs = vec![docker];
        if self.nodes.len() > 1 {
            needs.push(StepId::host(&node.name, StepKind::Firewall));
        }
        if node.name == leader.name {
            let listen = format!("{}:{MANAGER_PORT}", node.address);
            return Step::new(
                StepId::host(&node.name, StepKind::Swarm),
                format!("init the swarm (manager {} at {listen})", node.name),
                Condition::SwarmInactive,
            )
            .needs(needs)
            .action(Action::Run {
                line: shell(&commands::argv([
                    "docker",
                    "swarm",
                    "init",
                    "--advertise-addr",
                    &node.address,
                    "--listen-addr",
                    &listen,
                ])),
            });
        }
        let remote = format!("{}:{MANAGER_PORT}", leader.address);
        let role = if node.manager { "manager" } else { "worker" };
        needs.push(self.leader_id(StepKind::Swarm));
        Step::new(
            StepId::host(&node.name, StepKind::Swarm),
            format!("join the swarm of {} as a {role}", leader.name),
            Condition::SwarmOutside {
                manager: remote.clone(),
            },
        )
        .needs(needs)
        .action(Action::SwarmJoin {
            manager: leader.name.clone(),
            remote,
            advertise: node.address.clone(),
            role: role.into(),
            name: node.name.clone(),
        })
    }

    /// The swarm's ports on `node` admit the other nodes only.
    fn firewall_step(&self, node: &Node) -> Step {
        let peers: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| n.address.clone())
            .collect();
        let guards: Vec<crate::firewall::Guard> = [
            (MANAGER_PORT, false),
            (7946, false),
            (7946, true),
            (4789, true),
        ]
        .into_iter()
        .chain(node.guarded.iter().map(|p| (*p, false)))
        .map(|(port, udp)| crate::firewall::Guard {
            port,
            bind: node.address.clone(),
            allowed: peers.clone(),
            udp,
        })
        .collect();
        let marker = plan::context_hash(&crate::firewall::files(&self.project, &guards, ""))[..16]
            .to_string();
        Step::new(
            StepId::host(&node.name, StepKind::Firewall),
            format!(
                "firewall: the swarm's ports 2377/tcp, 7946/tcp+udp, 4789/udp{} only from {}",
                node.guarded
                    .iter()
                    .map(|p| format!(", published {p}/tcp"))
                    .collect::<String>(),
                peers.join(", ")
            ),
            Condition::FirewallDiffers {
                marker: marker.clone(),
            },
        )
        .needs([StepId::host(&node.name, StepKind::Docker)])
        .actions([
            Action::Upload {
                dir: crate::firewall::staging_dir(&self.project),
                shown: "rules for IPv4 and IPv6, the script that applies them, the docker.service drop-in".into(),
                files: crate::firewall::files(&self.project, &guards, &marker),
            },
            Action::Run {
                line: crate::firewall::apply_line(&self.project),
            },
        ])
        .follows(self.nodes.iter().filter(|n| n.name != node.name).map(|n| n.name.clone()).collect())
    }

    /// On the leader: each node labelled with its host's name (what a
    /// pinned service's constraint matches); a node replaced by a new one
    /// at its address, or gone from hosts.toml and down, removed.
    fn nodes_step(&self) -> Step {
        let expected: BTreeMap<String, String> = self
            .nodes
            .iter()
            .map(|n| (n.address.clone(), n.name.clone()))
            .collect();
        let cases: String = expected
            .iter()
            .map(|(a, n)| format!("{}) name={};; ", commands::quote(a), commands::quote(n)))
            .collect();
        let line = format!(
            "for id in $(docker node ls -q); do \
             set -- $(docker node inspect --format '{{{{.Status.Addr}}}} {{{{.Status.State}}}} {{{{if .ManagerStatus}}}}{{{{.ManagerStatus.Addr}}}}{{{{end}}}}' \"$id\"); \
             addr=$1; state=$2; [ \"$addr\" != 0.0.0.0 ] || addr=${{3%:*}}; name=; \
             case \"$addr\" in {cases}esac; \
             if [ \"$state\" != ready ]; then \
               others=$(docker node ls -q | while read -r o; do [ \"$o\" = \"$id\" ] || docker node inspect --format '{{{{.Status.Addr}}}} {{{{.Status.State}}}}' \"$o\"; done | grep -c \"^$addr ready\" || true); \
               if [ -z \"$name\" ] || [ \"$others\" -gt 0 ]; then docker node rm --force \"$id\" >/dev/null && echo \"removed node $id (was $addr)\"; fi; \
               continue; \
             fi; \
             [ -z \"$name\" ] || docker node update --label-add {HOST_LABEL}=\"$name\" \"$id\" >/dev/null; \
             done"
        );
        let needs: Vec<StepId> = self
            .nodes
            .iter()
            .flat_map(|n| {
                std::iter::once(StepId::host(&n.name, StepKind::Swarm)).chain(
                    n.volumes
                        .iter()
                        .map(|v| StepId::named(&n.name, StepKind::Volume, v)),
                )
            })
            .collect();
        Step::new(
            self.leader_id(StepKind::Nodes),
            format!(
                "label the nodes {} ({HOST_LABEL}); remove replaced ones",
                self.nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Condition::NodesDiffer { expected },
        )
        .needs(needs)
        .action(Action::Run { line })
        // `--only NODE` on a replaced node labels it (its pinned services'
        // constraint) and removes the entry it left behind.
        .follows(self.nodes.iter().map(|n| n.name.clone()).collect())
    }

    fn network_step(&self) -> Step {
        let p = &self.project;
        Step::new(
            self.leader_id(StepKind::Network),
            format!("overlay network {p} (attachable)"),
            Condition::NetworkMissing { name: p.clone() },
        )
        .needs([self.leader_id(StepKind::Swarm)])
        .action(Action::Run {
            line: shell(&commands::argv([
                "docker".to_string(),
                "network".into(),
                "create".into(),
                "--driver".into(),
                "overlay".into(),
                "--attachable".into(),
                "--label".into(),
                format!("{}={p}", commands::PROJECT_LABEL),
                p.clone(),
            ])),
        })
    }

    /// A Docker secret or config holding `data`, made once under its
    /// versioned name (the file is removed once Docker has it).
    fn object_step(&self, kind: &str, name: &str, data: Vec<u8>, shown: &str) -> Step {
        let dir = format!("{}/swarm-incoming/{name}", self.root);
        let file = format!("{dir}/value");
        let create = commands::argv([
            "docker".to_string(),
            kind.into(),
            "create".into(),
            "--label".into(),
            format!("{}={}", commands::PROJECT_LABEL, self.project),
            name.into(),
            file.clone(),
        ]);
        Step::new(
            StepId::named(&self.leader().name, StepKind::Secret, name),
            format!("{kind} {name} ({shown})"),
            Condition::SwarmObjectMissing {
                kind: kind.into(),
                name: name.into(),
            },
        )
        .needs([self.leader_id(StepKind::Swarm)])
        .actions([
            Action::Upload {
                dir: dir.clone(),
                files: vec![ContextFile {
                    path: "value".into(),
                    mode: 0o600,
                    data,
                }],
                shown: shown.into(),
            },
            Action::Run {
                line: format!(
                    "{} >/dev/null; s=$?; rm -rf {}; exit $s",
                    shell(&create),
                    commands::quote(&dir)
                ),
            },
        ])
    }
}

/// An env file's lines as (key, value), in order.
fn env_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The service's compose document (one service; networks, secrets, configs
/// and volumes external, made by their own steps) and the steps of the
/// secrets and configs it takes.
fn compose(sw: &Swarm, s: &ServiceWork, tag: &str) -> (Value, Vec<Step>) {
    let p = &sw.project;
    let mut objects = Vec::new();
    let mut top_secrets = Map::new();
    let mut top_configs = Map::new();
    let mut secrets = Vec::new();
    let mut configs = Vec::new();

    // Env values that hold a secret (shown masked) go in one secret the
    // image's start script exports; the rest are plain environment.
    let real = env_lines(&s.env_real);
    let shown = env_lines(&s.env_shown);
    let mut environment = Map::new();
    let mut secret_env = String::new();
    for ((k, v), (_, v_shown)) in real.iter().zip(shown.iter()) {
        if v != v_shown || v_shown.contains(MASK) {
            secret_env.push_str(&format!("{k}={v}\n"));
        } else {
            environment.insert(k.clone(), Value::String(v.clone()));
        }
    }
    let mut add_secret = |alias: String, name: String, target: &str, mode: u32| {
        top_secrets.insert(alias.clone(), json!({"external": true, "name": name}));
        secrets
            .push(json!({"source": alias, "target": target, "uid": "0", "gid": "0", "mode": mode}));
    };
    if !secret_env.is_empty() {
        let digest = plan::hash_str(&format!("{p} {} {secret_env}", s.name));
        let name = object_name(p, &s.name, "env", &digest);
        let keys: Vec<&str> = secret_env
            .lines()
            .filter_map(|l| l.split_once('=').map(|(k, _)| k))
            .collect();
        objects.push(sw.object_step(
            "secret",
            &name,
            secret_env.clone().into_bytes(),
            &format!("{} of {}: {MASK}", keys.join(", "), s.name),
        ));
        // Readable by the image's own user, which reads it at start.
        add_secret("env".into(), name, "provision.env", 0o444);
    }
    for f in &s.secret_files {
        let digest = plan::hash_bytes(&[p.as_bytes(), s.name.as_bytes(), &f.data].concat());
        let name = object_name(p, &s.name, &f.path, &digest);
        objects.push(sw.object_step(
            "secret",
            &name,
            f.data.clone(),
            &format!("{} of {}: {MASK}", f.path, s.name),
        ));
        add_secret(f.path.clone(), name, &f.path, 0o400);
    }
    if let Some(live) = &s.live {
        for f in &live.files {
            // The token of the engine's bridge gateway has no meaning on an
            // overlay network: its line goes.
            let text = String::from_utf8_lossy(&f.data);
            let data: String = text
                .lines()
                .filter(|l| !l.contains(crate::templates::NETWORK_GATEWAY_TOKEN))
                .map(|l| format!("{l}\n"))
                .collect();
            let digest = plan::hash_str(&format!("{p} {} {data}", s.name));
            let name = object_name(p, &s.name, &f.path, &digest);
            objects.push(sw.object_step(
                "config",
                &name,
                data.into_bytes(),
                &format!("{} of {}", f.path, s.name),
            ));
            let alias = format!("live-{}", f.path);
            top_configs.insert(alias.clone(), json!({"external": true, "name": name}));
            configs.push(json!({
                "source": alias,
                "target": format!("{}/{}", live.mount, f.path),
                "mode": 0o444,
            }));
        }
    }

    let mut volumes = Vec::new();
    let mut top_volumes = Map::new();
    for v in &s.volumes {
        top_volumes.insert(
            v.volume.clone(),
            json!({"external": true, "name": v.volume}),
        );
        volumes.push(json!({
            "type": "volume",
            "source": v.volume,
            "target": v.path,
            "read_only": v.read_only,
        }));
    }
    let ports: Vec<Value> = s
        .publish
        .iter()
        .map(|pb| {
            json!({"target": pb.container_port, "published": pb.host_port, "protocol": "tcp", "mode": "host"})
        })
        .collect();
    let order = match s.replace {
        Replacement::StartFirst { .. } => "start-first",
        Replacement::StopFirst { .. } => "stop-first",
    };
    let mut placement = json!({
        "preferences": [{"spread": format!("node.labels.{HOST_LABEL}")}],
    });
    if s.pinned {
        placement["constraints"] = json!([format!("node.labels.{HOST_LABEL} == {}", s.host)]);
    }
    let mut service = json!({
        "image": tag,
        "environment": environment,
        "networks": [p],
        "deploy": {
            "mode": "replicated",
            "replicas": s.replicas,
            "endpoint_mode": "dnsrr",
            "labels": {},
            "placement": placement,
            "update_config": {
                "parallelism": 1,
                "delay": "0s",
                "order": order,
                "failure_action": "rollback",
                "monitor": "5s",
            },
            "rollback_config": {"parallelism": 1, "order": order},
            "restart_policy": {"condition": "any", "delay": "2s"},
        },
        "stop_grace_period": "30s",
    });
    if !s.ready.is_empty() {
        let mut test = vec![Value::String("CMD".into())];
        test.extend(s.ready.iter().cloned().map(Value::String));
        service["healthcheck"] = json!({
            "test": test,
            "interval": "2s",
            "timeout": "10s",
            "retries": 3,
            "start_period": format!("{}s", s.ready_timeout),
        });
    }
    if !secrets.is_empty() {
        service["secrets"] = Value::Array(secrets);
    }
    if !configs.is_empty() {
        service["configs"] = Value::Array(configs);
    }
    if !volumes.is_empty() {
        service["volumes"] = Value::Array(volumes);
    }
    if !ports.is_empty() {
        service["ports"] = Value::Array(ports);
    }
    if let Some(addr) = &s.logs_to {
        service["logging"] = json!({
            "driver": "fluentd",
            "options": {
                "fluentd-address": addr,
                "fluentd-async": "true",
                "tag": format!("{p}.{}", s.name),
            },
        });
    }
    let mut doc = json!({
        "version": "3.8",
        "services": { s.name.clone(): service },
        "networks": { p.clone(): {"external": true, "name": p} },
    });
    if !top_secrets.is_empty() {
        doc["secrets"] = Value::Object(top_secrets);
    }
    if !top_configs.is_empty() {
        doc["configs"] = Value::Object(top_configs);
    }
    if !top_volumes.is_empty() {
        doc["volumes"] = Value::Object(top_volumes);
    }
    (doc, objects)
}

/// Wait on the leader until the service runs all its tasks, healthy, and
/// no update is under way; a rolled-back update fails it with Docker's
/// reason.
fn converged_line(service: &str, replicas: u32, timeout: u64) -> String {
    let q = commands::quote(service);
    format!(
        "end=$(( $(date +%s) + {timeout} )); \
         while :; do \
           st=$(docker service inspect --format '{{{{if .UpdateStatus}}}}{{{{.UpdateStatus.State}}}}{{{{end}}}}' {q}); \
           case \"$st\" in rollback_completed|rollback_paused|paused) \
             echo \"the update of {service} failed and was rolled back: $(docker service inspect --format '{{{{.UpdateStatus.Message}}}}' {q})\" >&2; \
             docker service ps --no-trunc --format '{{{{.Name}}}} {{{{.Node}}}} {{{{.CurrentState}}}} {{{{.Error}}}}' {q} | head -6 >&2; exit 1;; esac; \
           n=$(docker service ps {q} --filter desired-state=running --format '{{{{.CurrentState}}}}' | grep -c '^Running' || true); \
           if [ \"$n\" -ge {replicas} ] && [ \"$st\" != updating ] && [ \"$st\" != rollback_started ]; then exit 0; fi; \
           if [ \"$(date +%s)\" -ge \"$end\" ]; then \
             echo \"{service}: $n of {replicas} tasks running after {timeout} s (update: ${{st:-none}})\" >&2; \
             docker service ps --no-trunc --format '{{{{.Name}}}} {{{{.Node}}}} {{{{.CurrentState}}}} {{{{.Error}}}}' {q} | head -6 >&2; exit 1; fi; \
           sleep 1; \
         done"
    )
}

/// The spec label a service holds while a volume verb has scaled it to 0:
/// a run that finds it redeploys the service (the label is not the plan's),
/// so an interrupted backup is undone by the next run.
pub const PAUSED_SPEC: &str = "paused-for-volume-copy";

/// A stack service a volume verb scaled to 0, and what to give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paused {
    pub service: String,
    pub replicas: u32,
    pub spec: String,
}

/// On the leader: each of `services` that exists scaled to 0 tasks, its
/// label set to [`PAUSED_SPEC`]; prints `SERVICE REPLICAS SPEC` for each
/// (read by [`parse_paused`]). A service not deployed yet is skipped.
pub fn pause_line(services: &[String]) -> String {
    let mut lines = vec!["set -e".to_string()];
    for s in services {
        let q = commands::quote(s);
        lines.push(format!(
            "if cur=$(docker service inspect --format '{{{{.Spec.Mode.Replicated.Replicas}}}} {{{{index .Spec.Labels \"{SPEC_LABEL}\"}}}}' {q} 2>/dev/null); then \
               echo {q} $cur; \
               docker service update --detach --quiet --replicas 0 --label-add {SPEC_LABEL}={PAUSED_SPEC} {q} >/dev/null; \
             fi"
        ));
    }
    lines.join("\n")
}

/// What [`pause_line`] printed.
pub fn parse_paused(stdout: &str) -> Vec<Paused> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let service = w.next()?.to_string();
            let replicas = w.next()?.parse().ok()?;
            let spec = w.next().unwrap_or_default().to_string();
            Some(Paused {
                service,
                replicas,
                spec,
            })
        })
        .collect()
}

/// On the leader: the paused services given back their tasks and labels,
/// waited for until they run (a service paused twice keeps 0: the next
/// run redeploys it).
pub fn resume_line(paused: &[Paused], timeout: u64) -> String {
    let mut lines = vec!["set -e".to_string()];
    for p in paused {
        let mut update = commands::argv([
            "docker",
            "service",
            "update",
            "--detach",
            "--quiet",
            "--replicas",
        ]);
        update.push(p.replicas.to_string());
        update.push("--label-add".into());
        update.push(format!("{SPEC_LABEL}={}", p.spec));
        update.push(p.service.clone());
        lines.push(format!("{} >/dev/null", shell(&update)));
    }
    for p in paused.iter().filter(|p| p.replicas > 0) {
        lines.push(converged_line(&p.service, p.replicas, timeout));
    }
    lines.join("\n")
}

impl Runtime for Swarm {
    fn host_steps(&self, w: &HostWork) -> Vec<Step> {
        let node = self
            .nodes
            .iter()
            .find(|n| n.name == w.host.name)
            .expect("every host is a node")
            .clone();
        // The engine's own first step: Docker installed and running.
        let mut steps = Engine.host_steps(&HostWork {
            has_work: false,
            ..w.clone()
        });
        if self.nodes.len() > 1 {
            steps.push(self.firewall_step(&node));
        }
        steps.push(self.swarm_step(&node));
        if node.name == self.leader().name {
            steps.push(self.network_step());
            steps.push(self.nodes_step());
        }
        for (v, summary) in &w.volumes {
            steps.push(
                Step::new(
                    StepId::named(&node.name, StepKind::Volume, v),
                    summary.clone(),
                    Condition::VolumeMissing { name: v.clone() },
                )
                .needs([StepId::host(&node.name, StepKind::Docker)])
                .action(Action::Run {
                    line: shell(&commands::volume_create(w.project, v)),
                }),
            );
        }
        steps
    }

    fn service_steps(&self, s: &ServiceWork) -> (Vec<Step>, Vec<Step>) {
        let leader = self.leader().name.clone();
        let tag = engine::image_tag(s);
        let build_id = StepId::service(&s.host, &s.name, StepKind::Build);
        let mut build = engine::build_step(s);
        build.needs = vec![StepId::host(&s.host, StepKind::Docker)];
        let mut prepare = vec![build];
        // Loaded wherever it may run: its pinned node builds it; any node
        // may run an unpinned one.
        let mut needs = vec![build_id.clone()];
        if !s.pinned {
            for n in self.nodes.iter().filter(|n| n.name != s.host) {
                let id = StepId::service(&n.name, &s.name, StepKind::Ship);
                prepare.push(
                    Step::new(
                        id.clone(),
                        format!("load image {tag} from {}", s.host),
                        Condition::ImageMissing { tag: tag.clone() },
                    )
                    .needs([build_id.clone(), StepId::host(&n.name, StepKind::Docker)])
                    .action(Action::Relay {
                        from: s.host.clone(),
                        image: tag.clone(),
                    }),
                );
                needs.push(id);
            }
        }
        let (doc, objects) = compose(self, s, &tag);
        needs.extend(objects.iter().map(|o| o.id.clone()));
        prepare.extend(objects);
        // The spec: the whole document; its label is how the probe tells.
        let spec = plan::hash_str(&doc.to_string())[..16].to_string();
        let mut doc = doc;
        doc["services"][&s.name]["deploy"]["labels"] = json!({ SPEC_LABEL: spec });
        let text = serde_json::to_string_pretty(&doc).expect("json");

        needs.push(StepId::host(&leader, StepKind::Network));
        needs.push(StepId::host(&leader, StepKind::Nodes));
        for v in &s.volumes {
            needs.push(StepId::named(&s.host, StepKind::Volume, &v.volume));
        }
        // What it waits for: its providers converged (on the leader, as
        // every service's steps are).
        for a in &s.after {
            if let Some(p) = &a.service {
                let id = StepId::service(&leader, p, StepKind::Ready);
                if !needs.contains(&id) {
                    needs.push(id);
                }
            }
        }
        let name = service_name(&self.project, &s.name);
        let dir = format!("{}/stack/{}", self.root, s.name);
        let replicas = s.replicas;
        let run = Step::new(
            StepId::service(&leader, &s.name, StepKind::Run),
            format!(
                "deploy service {name} ({replicas} task{}{}, spec {spec}; rolling, {})",
                if replicas == 1 { "" } else { "s" },
                if s.pinned {
                    format!(" on {}", s.host)
                } else {
                    String::new()
                },
                s.replace.describe()
            ),
            Condition::ServiceOutdated {
                name: name.clone(),
                spec,
            },
        )
        .needs(needs)
        .actions([
            Action::Upload {
                dir: dir.clone(),
                files: vec![ContextFile {
                    path: "stack.json".into(),
                    mode: 0o600,
                    data: text.clone().into_bytes(),
                }],
                shown: text,
            },
            Action::Run {
                line: shell(&commands::argv([
                    "docker".to_string(),
                    "stack".into(),
                    "deploy".into(),
                    "--resolve-image".into(),
                    "never".into(),
                    "--compose-file".into(),
                    format!("{dir}/stack.json"),
                    self.project.clone(),
                ])),
            },
        ]);
        let ready = Step::new(
            StepId::service(&leader, &s.name, StepKind::Ready),
            format!(
                "wait until {name} runs {replicas} healthy task{}",
                if replicas == 1 { "" } else { "s" }
            ),
            Condition::Always,
        )
        .needs([run.id.clone()])
        .action(Action::Run {
            line: converged_line(&name, replicas, s.ready_timeout + 120),
        });
        (prepare, vec![run, ready])
    }
}

/// Swarm steps run on their host in this order: what needs nothing of
/// other nodes first (Docker, the firewall, the swarm, builds, secrets),
/// then the nodes' labels (they wait for every node to join), then the
/// services in dependency order.
pub fn rank(kind: StepKind) -> u8 {
    match kind {
        StepKind::Docker => 0,
        StepKind::Firewall => 1,
        StepKind::Swarm => 2,
        StepKind::Network => 3,
        StepKind::Volume | StepKind::DataContainer => 4,
        StepKind::Build => 5,
        StepKind::Secret | StepKind::Config => 6,
        StepKind::Ship => 7,
        StepKind::Nodes => 8,
        StepKind::Run | StepKind::Ready => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_fit_docker_and_change_with_the_content() {
        let a = object_name("pv", "postgis", "PG_PASSWORD", &plan::hash_str("one"));
        let b = object_name("pv", "postgis", "PG_PASSWORD", &plan::hash_str("two"));
        assert_ne!(a, b);
        assert!(a.starts_with("pv_postgis_PG_PASSWORD_"), "{a}");
        let long = object_name(
            &"p".repeat(40),
            &"s".repeat(40),
            "pg_hba.conf",
            &plan::hash_str("x"),
        );
        assert!(long.len() <= 64, "{long}");
    }

    #[test]
    fn a_paused_service_is_given_back_what_it_had() {
        let line = pause_line(&["shop_postgis".to_string()]);
        assert!(
            line.contains(
                "--replicas 0 --label-add provision.spec=paused-for-volume-copy shop_postgis"
            ),
            "{line}"
        );
        let paused = parse_paused("shop_postgis 1 0123abcd\nshop_redis 1\n\n");
        assert_eq!(
            paused,
            [
                Paused {
                    service: "shop_postgis".into(),
                    replicas: 1,
                    spec: "0123abcd".into()
                },
                Paused {
                    service: "shop_redis".into(),
                    replicas: 1,
                    spec: String::new()
                }
            ]
        );
        let back = resume_line(&paused[..1], 60);
        assert!(
            back.contains("docker service update --detach --quiet --replicas 1 --label-add 'provision.spec=0123abcd' shop_postgis"),
            "{back}"
        );
        assert!(
            back.contains("tasks running after 60 s"),
            "it waits for the task: {back}"
        );
    }

    #[test]
    fn the_convergence_wait_fails_on_a_rollback() {
        let l = converged_line("pv_rails", 3, 60);
        assert!(l.contains("rollback_completed"), "{l}");
        assert!(l.contains("-ge 3"), "{l}");
    }
}
