//! How services run on their hosts: the seam between planning and the
//! steps of one way of running containers.
//!
//! The planner ([`crate::plan`]) decides, for every runtime alike, what
//! should run: each host's volumes and data containers ([`HostWork`]) and
//! each service's image context, environment, secrets, live files, mounts,
//! published ports, log target and what it waits for ([`ServiceWork`]). A
//! [`Runtime`] turns that into steps: the commands, the conditions the
//! probe checks, and the ids (host, service, kind) others wait on. Today's
//! runtime is [`Engine`]: one Docker engine per host, one container per
//! service. A Swarm runtime goes beside it and implements the same two
//! methods; templates, wiring and secrets stay as they are.

pub mod engine;
pub mod swarm;

use crate::commands::SecretRef;
use crate::inventory::{Publish, VolumeMount};
use crate::plan::{Step, StepId};
use crate::templates::ContextFile;

pub use engine::Engine;
pub use swarm::Swarm;

/// What a host holds for its services, whatever runs them.
#[derive(Debug, Clone)]
pub struct HostWork<'a> {
    pub project: &'a str,
    pub host: &'a crate::inventory::Host,
    /// Whether any service or data container is placed on it (a host with
    /// none gets only its engine).
    pub has_work: bool,
    /// Each named volume once, with what a person reads about it.
    pub volumes: Vec<(String, String)>,
    /// Data containers: name and the paths they hold.
    pub data: Vec<(String, Vec<String>)>,
}

/// A service as the planner describes it: everything decided, nothing said
/// about how it is started.
#[derive(Debug, Clone)]
pub struct ServiceWork {
    pub project: String,
    /// The project's folder on the host (`/var/lib/provision/PROJECT`).
    pub root: String,
    pub host: String,
    pub name: String,
    /// hosts.toml pins it to `host` (always so outside swarm mode).
    pub pinned: bool,
    /// Swarm mode: its number of tasks.
    pub replicas: u32,
    /// The image's build context (template files and the app), in path
    /// order, and its hash.
    pub context: Vec<ContextFile>,
    pub context_hash: String,
    /// Images the Dockerfile starts `FROM`.
    pub bases: Vec<String>,
    /// The app tarball the host fetches into the context.
    pub fetch: Option<AppFetch>,
    /// Built from an upstream registry image.
    pub upstream: bool,
    /// `KEY=value` lines of its environment, with real values and as shown
    /// (secrets masked).
    pub env_real: String,
    pub env_shown: String,
    /// Its secrets (never their values) and those it takes as 0600 files.
    pub secrets: Vec<SecretRef>,
    pub secret_files: Vec<ContextFile>,
    /// Files installed beside it and reloaded on a change.
    pub live: Option<Live>,
    pub publish: Vec<Publish>,
    /// The host address published ports bind to.
    pub bind_address: Option<String>,
    pub volumes: Vec<VolumeMount>,
    /// Data containers whose volumes it mounts.
    pub volumes_from: Vec<String>,
    /// `HOST:PORT` of the Fluentd its logs go to.
    pub logs_to: Option<String>,
    /// The readiness command run in it, and whether any service waits for
    /// it (then it gets a Ready step others need).
    pub ready: Vec<String>,
    pub waited_for: bool,
    /// Steps of other services and hosts that must have succeeded before
    /// it starts (the wiring: providers started, their hosts admitting
    /// this one).
    pub after: Vec<StepId>,
    /// It publishes a port only some hosts may reach: it starts after its
    /// host's firewall step.
    pub behind_firewall: bool,
    /// How a new container replaces the running one.
    pub replace: Replacement,
    /// How long a start may take to pass the readiness probe.
    pub ready_timeout: u64,
}

/// Where the host fetches the app tarball from, and with which token.
#[derive(Debug, Clone)]
pub struct AppFetch {
    pub url: String,
    /// The secret's name (for messages) and its value (for curl's config
    /// only).
    pub token: Option<(String, String)>,
}

/// How a new container of a service replaces the running one (the
/// template's `replace`, where the service allows it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replacement {
    /// The old one stops, then the new one starts; `why` says why a
    /// template that asked for start-first does not get it.
    StopFirst { why: Option<String> },
    /// The new one starts beside the old one and takes over once ready.
    StartFirst {
        /// The port it listens on: the old one stops once no connection
        /// to it is left open (in-flight requests finished).
        port: Option<u16>,
        /// Same-host services that use it and must look it up afresh at
        /// the switch: (service, signal).
        reresolve: Vec<(String, String)>,
    },
}

impl Replacement {
    /// What the plan says of it.
    pub fn describe(&self) -> String {
        match self {
            Replacement::StopFirst { why: None } => "stop-first".into(),
            Replacement::StopFirst { why: Some(why) } => format!("stop-first: {why}"),
            Replacement::StartFirst { .. } => {
                "start-first: the new one starts beside the old one and takes over once ready"
                    .into()
            }
        }
    }
}

/// Live files: installed on the host, mounted read-only at `mount`,
/// reloaded with `reload_signal`.
#[derive(Debug, Clone)]
pub struct Live {
    pub files: Vec<ContextFile>,
    pub mount: String,
    pub reload_signal: String,
    /// Other hosts whose addresses the files hold (`--only` follows them).
    pub follows: Vec<String>,
}

/// One way of running services on hosts.
///
/// The ids of its steps are the contract with the planner and the
/// executor: a host's own steps are `StepId::host(h, Docker | Network)` and
/// `StepId::named(h, Volume | DataContainer, name)`; a service's are
/// `StepId::service(h, s, Build | Config | Run | Ready)`, with a Ready step
/// exactly when [`ServiceWork::waited_for`] and a readiness command exist.
pub trait Runtime {
    /// What prepares a host for its services, in order.
    fn host_steps(&self, host: &HostWork) -> Vec<Step>;

    /// The steps of one service: those that prepare it (they need nothing
    /// of other hosts) and those that start it, in order.
    fn service_steps(&self, service: &ServiceWork) -> (Vec<Step>, Vec<Step>);
}

/// The Ready step of `s` if it has one, else its Run step: what a service
/// that depends on `s` waits for.
pub fn started(host: &str, service: &str, has_ready: bool) -> StepId {
    use crate::plan::StepKind;
    StepId::service(
        host,
        service,
        if has_ready {
            StepKind::Ready
        } else {
            StepKind::Run
        },
    )
}
