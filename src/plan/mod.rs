//! The plan: for each host, the ordered steps it needs, each with the exact
//! commands and the condition under which it runs. Pure: no host is asked
//! anything here; the executor checks conditions against one probe per host.
//!
//! Planning is split in two: this module (and [`service`]) decides what
//! should run where (templates rendered, env and secrets, the wiring of
//! `uses` and `logs_to`, live files, volumes, firewalls, who waits for
//! whom); a [`Runtime`] turns that into the steps of one way of running
//! services (today Docker's engine on each host, [`Engine`]).

mod only;
mod service;

use std::collections::BTreeMap;
use std::fmt;

use serde::ser::SerializeStruct;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::commands::{self, shell};
use crate::diagnostics::Diagnostic;
use crate::firewall;
use crate::inventory::{Inventory, Service};
use crate::load::Loaded;
use crate::reach::{self, PortReach, Reach};
use crate::runtime::{Engine, HostWork, Runtime, Swarm};
use crate::templates::{ContextFile, UsedService};

pub use crate::runtime::engine::{container_name, data_container_name, DATA_IMAGE};
pub use only::{only_includes, only_reason, select, OnlyReason, Selection};
pub use service::replacement;

#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub project: String,
    pub hosts: Vec<HostPlan>,
    /// What of the app folder goes to the hosts and what stays here (set
    /// by the caller that read the folder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub app_folder: Option<crate::app_folder::AppFolderReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostPlan {
    pub host: String,
    pub address: String,
    /// Its published ports, where they listen and who may connect.
    pub ports: Vec<PortReach>,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Docker,
    Network,
    Volume,
    DataContainer,
    Firewall,
    Build,
    /// Live files (e.g. pg_hba.conf) installed on the host, the container
    /// told to reload them.
    Config,
    Run,
    Ready,
    /// Swarm mode: the node inits or joins the swarm.
    Swarm,
    /// Swarm mode, on the first manager: every node labelled with its host
    /// name, replaced nodes removed.
    Nodes,
    /// Swarm mode: a Docker secret or config, by its versioned name.
    Secret,
    /// Swarm mode: an image built on another node loaded on this one.
    Ship,
}

impl StepKind {
    /// The word of a step id (`web/rails/run`, `db/data/pg-store`).
    pub fn word(self) -> &'static str {
        match self {
            StepKind::Docker => "docker",
            StepKind::Network => "network",
            StepKind::Volume => "volume",
            StepKind::DataContainer => "data",
            StepKind::Firewall => "firewall",
            StepKind::Build => "build",
            StepKind::Config => "config",
            StepKind::Run => "run",
            StepKind::Ready => "ready",
            StepKind::Swarm => "swarm",
            StepKind::Nodes => "nodes",
            StepKind::Secret => "secret",
            StepKind::Ship => "ship",
        }
    }
}

/// Which step: a value, compared and looked up by its fields. Its text
/// (`host/service/kind`, `host/kind` for a host's own steps, `host/kind/NAME`
/// for a volume or data container) is for people and JSON only; nothing
/// reads it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StepId {
    pub host: String,
    /// The service it is for; `None` for a host's own steps.
    pub service: Option<String>,
    pub kind: StepKind,
    /// Which volume or data container, for those steps.
    pub name: Option<String>,
}

impl StepId {
    /// A host's own step (Docker, its network, its firewall).
    pub fn host(host: &str, kind: StepKind) -> StepId {
        StepId {
            host: host.to_string(),
            service: None,
            kind,
            name: None,
        }
    }

    /// A host's step for one thing of its own: a volume, a data container.
    pub fn named(host: &str, kind: StepKind, name: &str) -> StepId {
        StepId {
            name: Some(name.to_string()),
            ..StepId::host(host, kind)
        }
    }

    /// A step of a service on its host.
    pub fn service(host: &str, service: &str, kind: StepKind) -> StepId {
        StepId {
            service: Some(service.to_string()),
            ..StepId::host(host, kind)
        }
    }

    /// The same host and service, another kind (a Ready step's Run).
    pub fn sibling(&self, kind: StepKind) -> StepId {
        StepId {
            kind,
            ..self.clone()
        }
    }
}

impl fmt::Display for StepId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/", self.host)?;
        if let Some(s) = &self.service {
            write!(f, "{s}/")?;
        }
        f.write_str(self.kind.word())?;
        if let Some(n) = &self.name {
            write!(f, "/{n}")?;
        }
        Ok(())
    }
}

impl Serialize for StepId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// When the executor runs a step, judged against the host's probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "if", rename_all = "kebab-case")]
pub enum Condition {
    DockerNotRunning,
    NetworkMissing {
        name: String,
    },
    VolumeMissing {
        name: String,
    },
    ContainerMissing {
        name: String,
    },
    FirewallDiffers {
        marker: String,
    },
    /// The live files installed for `service` are not version `hash`.
    ConfigDiffers {
        service: String,
        hash: String,
    },
    ImageMissing {
        tag: String,
    },
    /// Missing, stopped, or labelled with another spec hash.
    ContainerOutdated {
        name: String,
        spec: String,
        /// Digest of each secret it takes: a running container labelled
        /// with another digest for a name gets that secret rotated.
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        secrets: BTreeMap<String, String>,
    },
    /// Every run: readiness of a service others wait for.
    Always,
    /// The node is in no swarm (the first manager inits one).
    SwarmInactive,
    /// The node is not in the swarm of the manager at `manager`
    /// (`ADDR:2377`).
    SwarmOutside {
        manager: String,
    },
    /// The nodes are not each host (address -> host name) once, ready and
    /// labelled.
    NodesDiffer {
        expected: BTreeMap<String, String>,
    },
    /// The swarm has no `kind` (secret, config) called `name`.
    SwarmObjectMissing {
        kind: String,
        name: String,
    },
    /// The stack service `name` is missing or labelled with another spec.
    ServiceOutdated {
        name: String,
        spec: String,
    },
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "do", rename_all = "kebab-case")]
pub enum Action {
    /// A shell line; never holds a secret.
    Run { line: String },
    /// A shell line reading a script on stdin.
    Script {
        line: String,
        #[serde(skip)]
        script: &'static str,
    },
    /// A tar of `files` streamed into `dir` (replacing it).
    Upload {
        dir: String,
        files: Vec<ContextFile>,
        /// What a person sees: a summary, or the file with secrets masked.
        shown: String,
    },
    /// Run `line` until it succeeds or `timeout_secs` pass; fail at once
    /// when `container` exits or restarts meanwhile.
    WaitReady {
        line: String,
        timeout_secs: u64,
        #[serde(skip)]
        container: String,
        /// A release started beside the serving one: removed when it
        /// does not get ready, so the old one goes on serving alone.
        #[serde(skip)]
        discard: bool,
    },
    /// Load `image` from the engine of host `from` (`docker save` there
    /// streamed into `docker load` here).
    Relay { from: String, image: String },
    /// Join the swarm of the manager `manager` (a host name) at `remote`
    /// (`ADDR:2377`) as `role`, advertising `advertise`; the join token is
    /// read from the manager over SSH and never shown.
    SwarmJoin {
        manager: String,
        remote: String,
        advertise: String,
        role: String,
        /// The node's hosts.toml name: its `provision.host` label.
        name: String,
    },
    /// Fetch the app tarball on the host with a curl config file (0600)
    /// that carries the token, so it is never in argv.
    Fetch {
        line: String,
        /// For the failure's message: the URL and the token's secret name
        /// (never its value). The plan's JSON already shows the URL in the
        /// config's upload.
        #[serde(skip)]
        url: String,
        #[serde(skip)]
        token: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct Step {
    /// Unique in the plan; its host, service and kind are the step's.
    pub id: StepId,
    pub summary: String,
    /// Steps (on any host) that must have succeeded first.
    pub needs: Vec<StepId>,
    pub when: Condition,
    pub actions: Vec<Action>,
    /// Built from an upstream registry image: skipped with one message on
    /// hosts that cannot pull.
    pub upstream: bool,
    /// Images the step needs on the host first (a Dockerfile's FROM).
    pub bases: Vec<String>,
    /// Other hosts whose addresses this step writes (firewall rules,
    /// pg_hba lines): `--only HOST` runs it when HOST is one of them.
    pub follows: Vec<String>,
}

impl Step {
    /// A step with no needs and no actions yet; the builder methods below
    /// add them.
    pub fn new(id: StepId, summary: impl Into<String>, when: Condition) -> Step {
        Step {
            id,
            summary: summary.into(),
            needs: vec![],
            when,
            actions: vec![],
            upstream: false,
            bases: vec![],
            follows: vec![],
        }
    }

    pub fn needs(mut self, needs: impl IntoIterator<Item = StepId>) -> Step {
        self.needs.extend(needs);
        self
    }

    pub fn action(mut self, a: Action) -> Step {
        self.actions.push(a);
        self
    }

    pub fn actions(mut self, a: impl IntoIterator<Item = Action>) -> Step {
        self.actions.extend(a);
        self
    }

    pub fn upstream(mut self, upstream: bool) -> Step {
        self.upstream = upstream;
        self
    }

    pub fn bases(mut self, bases: Vec<String>) -> Step {
        self.bases = bases;
        self
    }

    pub fn follows(mut self, hosts: Vec<String>) -> Step {
        self.follows = hosts;
        self
    }

    pub fn host(&self) -> &str {
        &self.id.host
    }

    pub fn service(&self) -> Option<&str> {
        self.id.service.as_deref()
    }

    pub fn kind(&self) -> StepKind {
        self.id.kind
    }
}

/// The JSON of a step: its id as text beside its host, service and kind.
impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Step", 11)?;
        st.serialize_field("id", &self.id)?;
        st.serialize_field("host", &self.id.host)?;
        st.serialize_field("service", &self.id.service)?;
        st.serialize_field("kind", &self.id.kind)?;
        st.serialize_field("summary", &self.summary)?;
        st.serialize_field("needs", &self.needs)?;
        st.serialize_field("when", &self.when)?;
        st.serialize_field("actions", &self.actions)?;
        st.serialize_field("upstream", &self.upstream)?;
        if self.bases.is_empty() {
            st.skip_field("bases")?;
        } else {
            st.serialize_field("bases", &self.bases)?;
        }
        if self.follows.is_empty() {
            st.skip_field("follows")?;
        } else {
            st.serialize_field("follows", &self.follows)?;
        }
        st.end()
    }
}

pub const READY_TIMEOUT_SECS: u64 = 180;

/// Build the plan for Docker's engine on each host. `app_files` is the app
/// source for templates that take it (read by the caller, so this stays
/// pure).
pub fn build(loaded: &Loaded, app_files: &[ContextFile]) -> Result<Plan, Vec<Diagnostic>> {
    if loaded.inventory.swarm() {
        let swarm = Swarm::of(&loaded.inventory);
        let mut plan = build_for(&swarm, loaded, app_files)?;
        // A swarm's steps run where their ids say (a service's deploy on
        // the leader, an image's load on each node), in the order that
        // lets each host go as far as it can without the others.
        let mut all: Vec<Step> = plan
            .hosts
            .iter_mut()
            .flat_map(|h| h.steps.drain(..))
            .collect();
        let order = start_order(&loaded.inventory);
        all.sort_by_key(|s| {
            let rank = crate::runtime::swarm::rank(s.kind());
            // The leader deploys the services in dependency order.
            let pos = match (s.kind(), s.service()) {
                (StepKind::Run | StepKind::Ready, Some(svc)) => {
                    order.iter().position(|o| o == svc).unwrap_or(usize::MAX)
                }
                _ => 0,
            };
            (rank, pos)
        });
        for s in all {
            if let Some(h) = plan.hosts.iter_mut().find(|h| h.host == s.id.host) {
                h.steps.push(s);
            }
        }
        return Ok(plan);
    }
    build_for(&Engine, loaded, app_files)
}

/// [`build`] with the steps of `runtime`.
pub fn build_for(
    runtime: &dyn Runtime,
    loaded: &Loaded,
    app_files: &[ContextFile],
) -> Result<Plan, Vec<Diagnostic>> {
    let inv = &loaded.inventory;
    let project = inv.project.name.clone();
    let root = commands::remote_root(&project);
    let mut problems = Vec::new();
    let mut hosts = Vec::new();
    let order = start_order(inv);

    for host in &inv.hosts {
        let services: Vec<&Service> = order
            .iter()
            .filter_map(|n| inv.service(n))
            .filter(|s| s.host == host.name)
            .collect();
        let mut ports = Vec::new();
        for s in &services {
            match reach::of_service(inv, s) {
                Ok(r) => ports.extend(r),
                Err(d) => problems.push(d),
            }
        }
        // Each volume once, saying why provision added the implied ones.
        let mut volumes: BTreeMap<&str, String> = BTreeMap::new();
        for s in &services {
            for v in &s.volumes {
                let why = if v.implied {
                    format!(
                        "volume {} (for {}'s data at {}, which hosts.toml does not mount)",
                        v.volume, s.name, v.path
                    )
                } else {
                    format!("volume {}", v.volume)
                };
                volumes.entry(v.volume.as_str()).or_insert(why);
            }
        }
        let data: Vec<(String, Vec<String>)> = inv
            .data
            .iter()
            .filter(|d| d.host == host.name)
            .map(|d| (d.name.clone(), d.paths.clone()))
            .collect();
        let has_work = !services.is_empty() || !data.is_empty();
        let mut steps = runtime.host_steps(&HostWork {
            project: &project,
            host,
            has_work,
            volumes: volumes
                .into_iter()
                .map(|(v, why)| (v.to_string(), why))
                .collect(),
            data,
        });
        if !has_work {
            hosts.push(HostPlan {
                host: host.name.clone(),
                address: host.address.clone(),
                ports,
                steps,
            });
            continue;
        }
        if !inv.swarm() {
            steps.extend(firewall_step(inv, &host.name, &ports));
        }

        // Builds first (they need nothing from other hosts), then runs in
        // dependency order.
        let mut builds = Vec::new();
        let mut runs = Vec::new();
        for s in &services {
            match service::describe(loaded, s, app_files, &root) {
                Ok(work) => {
                    let (b, r) = runtime.service_steps(&work);
                    builds.extend(b);
                    runs.extend(r);
                }
                Err(d) => problems.push(d),
            }
        }
        steps.extend(builds);
        steps.extend(runs);
        hosts.push(HostPlan {
            host: host.name.clone(),
            address: host.address.clone(),
            ports,
            steps,
        });
    }
    if problems.is_empty() {
        Ok(Plan {
            project,
            hosts,
            app_folder: None,
        })
    } else {
        Err(problems)
    }
}

/// Only the admitted peers of a published port may reach it: the host's
/// firewall step, when one of its ports is guarded.
fn firewall_step(inv: &Inventory, host: &str, ports: &[PortReach]) -> Option<Step> {
    let project = &inv.project.name;
    let guards: Vec<firewall::Guard> = ports
        .iter()
        .filter_map(|r| match (&r.from, &r.bind) {
            (Reach::Only { peers }, Some(bind)) => Some(firewall::Guard {
                port: r.host_port,
                bind: bind.clone(),
                allowed: peers.iter().map(|p| p.address.clone()).collect(),
                udp: false,
            }),
            _ => None,
        })
        .collect();
    if guards.is_empty() {
        return None;
    }
    // The hosts whose addresses these rules hold: `--only` of one of
    // them runs this step too.
    let mut followed: Vec<String> = Vec::new();
    for r in ports {
        if let Reach::Only { peers } = &r.from {
            for p in peers.iter().filter(|p| inv.host(&p.name).is_some()) {
                if !followed.contains(&p.name) {
                    followed.push(p.name.clone());
                }
            }
        }
    }
    let probe_files = firewall::files(project, &guards, "");
    let marker = context_hash(&probe_files)[..16].to_string();
    let summary = format!(
        "firewall: {}",
        guards
            .iter()
            .map(|g| format!("port {} only from {}", g.port, g.allowed.join(", ")))
            .collect::<Vec<_>>()
            .join("; ")
    );
    Some(
        Step::new(
            StepId::host(host, StepKind::Firewall),
            summary,
            Condition::FirewallDiffers {
                marker: marker.clone(),
            },
        )
        .needs([StepId::host(host, StepKind::Docker)])
        .actions([
            Action::Upload {
                dir: firewall::staging_dir(project),
                shown: "rules for IPv4 and IPv6, the script that applies them, the docker.service drop-in".into(),
                files: firewall::files(project, &guards, &marker),
            },
            Action::Run {
                line: firewall::apply_line(project),
            },
        ])
        .follows(followed),
    )
}

/// Services in an order where each comes after what it depends on.
pub fn start_order(inv: &Inventory) -> Vec<String> {
    let mut done: Vec<String> = Vec::new();
    let mut pending: Vec<&Service> = inv.services.iter().collect();
    while !pending.is_empty() {
        let before = pending.len();
        pending.retain(|s| {
            if s.dependencies().all(|d| done.contains(d)) {
                done.push(s.name.clone());
                false
            } else {
                true
            }
        });
        if pending.len() == before {
            // Cycles were rejected by the inventory; keep file order.
            done.extend(pending.iter().map(|s| s.name.clone()));
            break;
        }
    }
    done
}

/// Addresses of the other hosts whose services use `s`.
pub fn clients(inv: &Inventory, s: &Service) -> Vec<String> {
    reach::users(inv, s)
        .into_iter()
        .map(|h| h.wire_address().to_string())
        .collect()
}

/// Names of the other hosts whose services use `s` (the hosts behind
/// [`clients`]).
pub fn client_hosts(inv: &Inventory, s: &Service) -> Vec<String> {
    reach::users(inv, s)
        .into_iter()
        .map(|h| h.name.clone())
        .collect()
}

/// Services on `s`'s own host that use it.
pub fn local_users(inv: &Inventory, s: &Service) -> Vec<String> {
    inv.services
        .iter()
        // A swarm's services all share its overlay network.
        .filter(|c| (c.host == s.host || inv.swarm()) && c.name != s.name)
        .filter(|c| c.uses.contains(&s.name) || c.logs_to.as_ref() == Some(&s.name))
        .map(|c| c.name.clone())
        .collect()
}

/// Where a service's live files are installed on its host (mounted
/// read-only into its container), and the version file the probe reads.
pub fn live_dir(root: &str, service: &str) -> String {
    format!("{root}/live/{service}")
}

/// How `consumer` reaches `provider`: by name on the same host's network,
/// by the provider host's address and published port otherwise. The name
/// is the service's network alias, which every container of it carries;
/// for a service whose template is start-first it is its container name,
/// which only the
/// serving release holds: a release starting beside it, or one stopped
/// after the switch, is never looked up (a cached address of a stopped
/// container hangs a request until its connect timeout).
pub fn resolve_use(loaded: &Loaded, consumer: &Service, provider: &Service) -> Option<UsedService> {
    let inv = &loaded.inventory;
    let listen = loaded
        .templates
        .get(&provider.name)
        .and_then(|t| t.manifest.port);
    if inv.swarm() {
        // By its service name, through Swarm's DNS on the overlay network.
        let port = listen.or_else(|| provider.publish.first().map(|p| p.container_port))?;
        return Some(UsedService::new(provider.name.clone(), port));
    }
    if consumer.host == provider.host {
        let port = listen.or_else(|| provider.publish.first().map(|p| p.container_port))?;
        // The template's choice, not the service's: a hosts.toml that opts
        // out of start-first must not change its consumers' configs.
        let start_first = loaded
            .templates
            .get(&provider.name)
            .map(|t| t.manifest.replace)
            == Some(crate::templates::Replace::StartFirst);
        let name = if start_first {
            container_name(&inv.project.name, &provider.name)
        } else {
            provider.name.clone()
        };
        Some(UsedService::new(name, port))
    } else {
        let host = inv.host(&provider.host)?;
        let p = provider
            .publish
            .iter()
            .find(|p| Some(p.container_port) == listen)
            .or(provider.publish.first())?;
        Some(UsedService::new(
            host.wire_address().to_string(),
            p.host_port,
        ))
    }
}

/// Fetch the app tarball with curl's config file `cfg` (it holds the
/// token) and unpack it into `app`. The config and the tarball are removed
/// whatever happens, by traps of the shell that runs the line (both
/// transports run each line with `sh -c`): after a failed fetch or unpack
/// too, and when the step is stopped (the transport's TERM on a timeout,
/// or HUP, INT). The line's exit code is the fetch's or the unpack's.
pub fn fetch_line(cfg: &str, tgz: &str, app: &str) -> String {
    let q = |p: &str| shell(&[p.to_string()]);
    let cleanup = format!("rm -f {} {}", q(cfg), q(tgz));
    format!(
        "trap {cleanup} EXIT; trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM; \
         curl -K {cfg} && mkdir -p {app} && tar -xzf {tgz} -C {app} --strip-components=1",
        cleanup = q(&cleanup),
        cfg = q(cfg),
        app = q(app),
        tgz = q(tgz),
    )
}

/// The images a Dockerfile starts `FROM`, leaving out its own build stages.
pub fn from_images(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in dockerfile.lines() {
        let mut words = line.split_whitespace();
        if !words.next().is_some_and(|w| w.eq_ignore_ascii_case("FROM")) {
            continue;
        }
        let rest: Vec<&str> = words.filter(|w| !w.starts_with("--")).collect();
        let Some(image) = rest.first() else { continue };
        if !stages.iter().any(|s| s == image)
            && !out.iter().any(|o: &String| o == image)
            && *image != "scratch"
        {
            out.push(image.to_string());
        }
        if rest.len() >= 3 && rest[1].eq_ignore_ascii_case("AS") {
            stages.push(rest[2].to_string());
        }
    }
    out
}

pub fn hash_str(s: &str) -> String {
    hash_bytes(s.as_bytes())
}

/// SHA-256 in hex, as `sha256sum` prints it.
pub fn hash_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Hash of a build context: paths, modes and contents, in path order.
pub fn context_hash(files: &[ContextFile]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update(f.mode.to_be_bytes());
        h.update((f.data.len() as u64).to_be_bytes());
        h.update(&f.data);
    }
    hex::encode(h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_images_skips_stages_and_flags() {
        let d = "FROM --platform=linux/amd64 debian:bookworm AS build\nRUN x\nFROM build\nFROM fluent/fluentd:v1\n";
        assert_eq!(from_images(d), vec!["debian:bookworm", "fluent/fluentd:v1"]);
    }
}
