//! The inventory: what hosts.toml says, validated. Everything after this
//! point may assume names are well formed and references resolve.

mod reader;

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};

use crate::diagnostics::{Collector, Diagnostic};

pub use reader::parse;

/// How a local machine boots and what it forwards: the playground's own
/// types (one each for hosts.toml and the machines).
pub use crate::machines::{Cpus, Init, PortForward};
/// How a host's SSH key is checked: the transport's own policy (one type
/// for hosts.toml and the connection).
pub use crate::transport::HostKeyPolicy;

#[derive(Debug, Clone)]
pub struct Inventory {
    /// The hosts.toml path as the user gave it (used in messages).
    pub file: PathBuf,
    /// Folder of hosts.toml: relative paths in it resolve from here.
    pub root: PathBuf,
    pub source: String,
    pub project: Project,
    pub app: AppSource,
    /// `[app] include`: patterns of private files in the app folder that
    /// are sent anyway (by default they are left out).
    pub app_include: Vec<String>,
    pub secrets: Vec<SecretDecl>,
    pub hosts: Vec<Host>,
    pub services: Vec<Service>,
    pub data: Vec<DataContainer>,
    /// Byte span of every key path read, for errors found after parsing.
    pub spans: HashMap<String, Range<usize>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    pub name: String,
    /// How services run: one Docker engine per host (the default), or one
    /// swarm of every host (`mode = "swarm"`).
    pub mode: Mode,
    /// Keys, known_hosts, generated secrets, logs and backups live here.
    pub state_dir: PathBuf,
    pub secrets_file: PathBuf,
    /// A project known_hosts file checked besides ~/.ssh/known_hosts.
    pub known_hosts: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Plain,
    Swarm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Manager,
    Worker,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppSource {
    Folder(PathBuf),
    /// A tarball fetched on the host; `token` names the secret sent as a
    /// bearer token (the seed's `$REPO_TOKEN`).
    Tarball {
        url: String,
        token: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDecl {
    pub name: String,
    /// Create a strong random value once when it is missing.
    pub generate: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DockerSource {
    /// The distribution's own package (docker.io on Debian/Ubuntu).
    Distro,
    /// Docker's apt/dnf repository (docker-ce).
    Upstream,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub address: String,
    /// The address the other hosts reach this one at (a private network);
    /// wiring and the published ports they use go there. `None`: `address`.
    pub private_address: Option<String>,
    /// `None`: not in hosts.toml; `~/.ssh/config` for the address may say
    /// (else 22). [`crate::run::login`] decides.
    pub port: Option<u16>,
    /// `None`: not in hosts.toml; `~/.ssh/config` may say (else root).
    pub user: Option<String>,
    pub identity: Option<PathBuf>,
    /// Environment variable holding the identity's passphrase.
    pub passphrase_env: Option<String>,
    pub host_key: HostKeyPolicy,
    /// `None`: sudo unless the user logged in as (from hosts.toml or
    /// `~/.ssh/config`) is root.
    pub sudo: Option<bool>,
    pub docker: DockerSource,
    /// Set when provision creates this host as a local playground machine.
    pub machine: Option<LocalMachine>,
    /// Its role in the swarm (`role = "manager"`); `None` where hosts.toml
    /// does not say.
    pub role: Option<Role>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalMachine {
    pub init: Init,
    /// `127.0.0.1:host_port` on the provisioning computer -> `guest_port`
    /// on the machine.
    pub forward: Vec<PortForward>,
    /// `cpus = 1`: the machine's share of this computer's CPUs; `None`: all.
    pub cpus: Option<Cpus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateRef {
    Builtin(String),
    /// A user's own folder; its files override the built-in template of
    /// the same name when `base` is set.
    Folder {
        path: PathBuf,
        base: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum VarValue {
    String(String),
    Integer(i64),
    Bool(bool),
}

impl std::fmt::Display for VarValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VarValue::String(s) => f.write_str(s),
            VarValue::Integer(i) => write!(f, "{i}"),
            VarValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// A published port: `host_port` on the host's address -> `container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Publish {
    pub host_port: u16,
    pub container_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VolumeMount {
    pub volume: String,
    pub path: String,
    pub read_only: bool,
    /// Added by provision for a template's data path that hosts.toml does
    /// not mount (see `data_paths`), never written by the user.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub implied: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    /// The host it runs on; in swarm mode, for a service hosts.toml does not
    /// pin, the first manager (where its image is built and its steps run).
    pub host: String,
    /// hosts.toml names its host (always so outside swarm mode).
    pub pinned: bool,
    /// Swarm mode: how many tasks run it.
    pub replicas: Option<u32>,
    pub template: TemplateRef,
    pub vars: BTreeMap<String, VarValue>,
    pub publish: Vec<Publish>,
    pub volumes: Vec<VolumeMount>,
    /// Data containers (the seed's pattern) whose volumes this one mounts.
    pub volumes_from: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    /// Wiring: services whose address this one needs.
    pub uses: Vec<String>,
    /// Plain ordering: services that must be running first.
    pub after: Vec<String>,
    /// The fluentd service this one logs to through Docker's log driver.
    pub logs_to: Option<String>,
    /// Its published ports are open to anyone; otherwise only to the hosts
    /// whose services use it and to this computer's forwards.
    pub public: bool,
    /// How long a start may take to pass its readiness probe (default
    /// [`crate::plan::READY_TIMEOUT_SECS`]).
    pub ready_timeout: Option<u64>,
    /// How a new container replaces the running one, where hosts.toml
    /// overrides its template's choice.
    pub replace: Option<crate::templates::Replace>,
}

impl Service {
    /// Every service this one waits for, wiring first. Not `logs_to`: the
    /// log driver is asynchronous, so a missing Fluentd never blocks a start.
    pub fn dependencies(&self) -> impl Iterator<Item = &String> {
        self.uses.iter().chain(self.after.iter())
    }
}

/// A data container: created once, never run, holding volumes that
/// services mount with `volumes_from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataContainer {
    pub name: String,
    pub host: String,
    pub paths: Vec<String>,
}

impl Host {
    /// The address other hosts use to reach this one.
    pub fn wire_address(&self) -> &str {
        self.private_address.as_deref().unwrap_or(&self.address)
    }
}

impl Inventory {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The host named `name`, or the message for a command line that
    /// names one this file does not have (with the names it has).
    pub fn host_named(&self, name: &str) -> Result<&Host, String> {
        self.host(name).ok_or_else(|| {
            let names: Vec<&str> = self.hosts.iter().map(|h| h.name.as_str()).collect();
            format!(
                "no such host {name} in {} (hosts: {})",
                self.file.display(),
                names.join(", ")
            )
        })
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The service named `name`, or the message for a command line that
    /// names one this file does not have (with the names it has).
    pub fn service_named(&self, name: &str) -> Result<&Service, String> {
        self.service(name).ok_or_else(|| {
            let names: Vec<&str> = self.services.iter().map(|s| s.name.as_str()).collect();
            format!(
                "no service named {name:?} in {}; known services: {}",
                self.file.display(),
                names.join(", ")
            )
        })
    }

    pub fn swarm(&self) -> bool {
        self.project.mode == Mode::Swarm
    }

    /// The swarm's managers: those hosts.toml marks, else the first host.
    pub fn managers(&self) -> Vec<&Host> {
        let marked: Vec<&Host> = self
            .hosts
            .iter()
            .filter(|h| h.role == Some(Role::Manager))
            .collect();
        if marked.is_empty() {
            self.hosts.iter().take(1).collect()
        } else {
            marked
        }
    }

    /// What is legal but unwise in hosts.toml, for the user to read.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let managers = self.managers().len();
        if self.swarm() && managers > 1 && managers.is_multiple_of(2) {
            out.push(format!(
                "{}: {managers} managers: a swarm keeps its quorum with a majority of them, so \
                 {managers} tolerate no more losses than {}; use an odd number",
                self.file.display(),
                managers - 1
            ));
        }
        out
    }

    pub fn services_on<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Service> + 'a {
        self.services.iter().filter(move |s| s.host == host)
    }

    /// A diagnostic for a key path read earlier (falls back to the file's
    /// start when the path was never seen, e.g. a default value).
    pub fn diagnostic(
        &self,
        key_path: &str,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Diagnostic {
        let span = self.span(key_path);
        let mut c = Collector::new(&self.file, &self.source);
        match hint {
            Some(h) => c.error_with_hint(span, key_path, message, h),
            None => c.error(span, key_path, message),
        }
        c.items.remove(0)
    }

    /// Span of a key path, or of its nearest recorded parent.
    pub fn span(&self, key_path: &str) -> Range<usize> {
        let mut path = key_path;
        loop {
            if let Some(s) = self.spans.get(path) {
                return s.clone();
            }
            match path.rfind(['.', '[']) {
                Some(i) => path = &path[..i],
                None => return 0..0,
            }
        }
    }

    /// Resolve a path written in hosts.toml (`~` and relative to its folder).
    pub fn resolve_path(&self, p: &str) -> PathBuf {
        resolve_path(&self.root, p)
    }
}

pub fn resolve_path(root: &Path, p: &str) -> PathBuf {
    if let Some(rest) = p.strip_prefix("~/") {
        if let Some(home) = dirs::home_dir() {
            return home.join(rest);
        }
    }
    let path = Path::new(p);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        root.join(path)
    }
}

/// A valid inventory of project `pv` for unit tests: `hosts.toml` in `dir`
/// made of `tables` (its hosts and services).
#[cfg(test)]
pub fn fixture(dir: &str, tables: &str) -> Inventory {
    let toml = format!("[project]\nname = \"pv\"\n{tables}");
    parse(&Path::new(dir).join("hosts.toml"), &toml).expect("a valid inventory")
}
