//! The plan: for each host, the ordered steps it needs, each with the exact
//! commands and the condition under which it runs. Pure: no host is asked
//! anything here; the executor checks conditions against one probe per host.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::commands::{self, shell, RunSpec, SecretRef};
use crate::diagnostics::Diagnostic;
use crate::firewall;
use crate::inventory::{AppSource, Inventory, Service};
use crate::load::Loaded;
use crate::reach::{self, PortReach, Reach};
use crate::secrets::MASK;
use crate::templates::{ContextFile, RenderInput, UsedService};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    /// Run `line` until it succeeds or `timeout_secs` pass.
    WaitReady { line: String, timeout_secs: u64 },
    /// Fetch the app tarball on the host with a curl config file (0600)
    /// that carries the token, so it is never in argv.
    Fetch { line: String },
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// `host/service/what`, unique in the plan.
    pub id: String,
    pub host: String,
    pub service: Option<String>,
    pub kind: StepKind,
    pub summary: String,
    /// Steps (on any host) that must have succeeded first.
    pub needs: Vec<String>,
    pub when: Condition,
    pub actions: Vec<Action>,
    /// Built from an upstream registry image: skipped with one message on
    /// hosts that cannot pull.
    pub upstream: bool,
    /// Images the step needs on the host first (a Dockerfile's FROM).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bases: Vec<String>,
    /// Other hosts whose addresses this step writes (firewall rules,
    /// pg_hba lines): `--only HOST` runs it when HOST is one of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub follows: Vec<String>,
}

pub const READY_TIMEOUT_SECS: u64 = 180;

/// Build the plan. `app_files` is the app source for templates that take it
/// (read by the caller, so this stays pure).
pub fn build(loaded: &Loaded, app_files: &[ContextFile]) -> Result<Plan, Vec<Diagnostic>> {
    let inv = &loaded.inventory;
    let project = inv.project.name.clone();
    let root = commands::remote_root(&project);
    let mut problems = Vec::new();
    let mut hosts = Vec::new();
    let order = start_order(inv);

    for host in &inv.hosts {
        let mut steps = Vec::new();
        let id = |rest: &str| format!("{}/{rest}", host.name);
        let services: Vec<&Service> = order
            .iter()
            .filter_map(|n| inv.service(n))
            .filter(|s| s.host == host.name)
            .collect();

        steps.push(Step {
            id: id("docker"),
            host: host.name.clone(),
            service: None,
            kind: StepKind::Docker,
            summary: format!("install and start Docker ({})", docker_source(host)),
            needs: vec![],
            when: Condition::DockerNotRunning,
            actions: vec![Action::Script {
                line: shell(&commands::install_docker(docker_source(host))),
                script: commands::install_docker_script(),
            }],
            upstream: false,
            bases: vec![],
            follows: vec![],
        });
        let mut ports = Vec::new();
        for s in &services {
            match reach::of_service(inv, s) {
                Ok(r) => ports.extend(r),
                Err(d) => problems.push(d),
            }
        }
        if services.is_empty() && !inv.data.iter().any(|d| d.host == host.name) {
            hosts.push(HostPlan {
                host: host.name.clone(),
                address: host.address.clone(),
                ports,
                steps,
            });
            continue;
        }
        let docker = id("docker");
        steps.push(Step {
            id: id("network"),
            host: host.name.clone(),
            service: None,
            kind: StepKind::Network,
            summary: format!("network {project}"),
            needs: vec![docker.clone()],
            when: Condition::NetworkMissing {
                name: project.clone(),
            },
            actions: vec![Action::Run {
                line: shell(&commands::network_create(&project, &project)),
            }],
            upstream: false,
            bases: vec![],
            follows: vec![],
        });
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
        for (v, summary) in volumes {
            steps.push(Step {
                id: id(&format!("volume/{v}")),
                host: host.name.clone(),
                service: None,
                kind: StepKind::Volume,
                summary,
                needs: vec![docker.clone()],
                when: Condition::VolumeMissing {
                    name: v.to_string(),
                },
                actions: vec![Action::Run {
                    line: shell(&commands::volume_create(&project, v)),
                }],
                upstream: false,
                bases: vec![],
                follows: vec![],
            });
        }
        for d in inv.data.iter().filter(|d| d.host == host.name) {
            let name = data_container_name(&project, &d.name);
            steps.push(Step {
                id: id(&format!("data/{}", d.name)),
                host: host.name.clone(),
                service: None,
                kind: StepKind::DataContainer,
                summary: format!("data container {name} ({})", d.paths.join(", ")),
                needs: vec![docker.clone()],
                when: Condition::ContainerMissing { name: name.clone() },
                actions: vec![Action::Run {
                    line: shell(&commands::data_container_create(
                        &project, &name, DATA_IMAGE, &d.paths,
                    )),
                }],
                upstream: false,
                bases: vec![],
                follows: vec![],
            });
        }

        // Only the admitted peers of a published port may reach it.
        let guards: Vec<firewall::Guard> = ports
            .iter()
            .filter_map(|r| match (&r.from, &r.bind) {
                (Reach::Only { peers }, Some(bind)) => Some(firewall::Guard {
                    port: r.host_port,
                    bind: bind.clone(),
                    allowed: peers.iter().map(|p| p.address.clone()).collect(),
                }),
                _ => None,
            })
            .collect();
        // The hosts whose addresses these rules hold: `--only` of one of
        // them runs this step too.
        let mut followed: Vec<String> = Vec::new();
        for r in &ports {
            if let Reach::Only { peers } = &r.from {
                for p in peers.iter().filter(|p| inv.host(&p.name).is_some()) {
                    if !followed.contains(&p.name) {
                        followed.push(p.name.clone());
                    }
                }
            }
        }
        if !guards.is_empty() {
            let probe_files = firewall::files(&project, &guards, "");
            let marker = context_hash(&probe_files)[..16].to_string();
            steps.push(Step {
                id: id("firewall"),
                host: host.name.clone(),
                service: None,
                kind: StepKind::Firewall,
                summary: format!(
                    "firewall: {}",
                    guards
                        .iter()
                        .map(|g| format!("port {} only from {}", g.port, g.allowed.join(", ")))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                needs: vec![docker.clone()],
                when: Condition::FirewallDiffers {
                    marker: marker.clone(),
                },
                actions: vec![
                    Action::Upload {
                        dir: firewall::staging_dir(&project),
                        shown: "rules for IPv4 and IPv6, the script that applies them, the docker.service drop-in".into(),
                        files: firewall::files(&project, &guards, &marker),
                    },
                    Action::Run {
                        line: firewall::apply_line(&project),
                    },
                ],
                upstream: false,
                bases: vec![],
                follows: followed,
            });
        }

        // Builds first (they need nothing from other hosts), then runs in
        // dependency order.
        let mut builds = Vec::new();
        let mut runs = Vec::new();
        for s in &services {
            match service_steps(loaded, s, app_files, &root) {
                Ok((b, r)) => {
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

/// The image of data containers: it only holds volumes, never runs.
pub const DATA_IMAGE: &str = "debian:bookworm";

pub fn container_name(project: &str, service: &str) -> String {
    format!("{project}-{service}")
}

pub fn data_container_name(project: &str, data: &str) -> String {
    format!("{project}-data-{data}")
}

fn docker_source(host: &crate::inventory::Host) -> &'static str {
    match host.docker {
        crate::inventory::DockerSource::Distro => "distro",
        crate::inventory::DockerSource::Upstream => "upstream",
    }
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
        .filter(|c| c.host == s.host && c.name != s.name)
        .filter(|c| c.uses.contains(&s.name) || c.logs_to.as_ref() == Some(&s.name))
        .map(|c| c.name.clone())
        .collect()
}

/// Where a service's live files are installed on its host (mounted
/// read-only into its container), and the version file the probe reads.
pub fn live_dir(root: &str, service: &str) -> String {
    format!("{root}/live/{service}")
}

/// How `consumer` reaches `provider`: by container name on the same host's
/// network, by the provider host's address and published port otherwise.
pub fn resolve_use(loaded: &Loaded, consumer: &Service, provider: &Service) -> Option<UsedService> {
    let inv = &loaded.inventory;
    let listen = loaded
        .templates
        .get(&provider.name)
        .and_then(|t| t.manifest.port);
    if consumer.host == provider.host {
        let port = listen.or_else(|| provider.publish.first().map(|p| p.container_port))?;
        Some(UsedService::new(provider.name.clone(), port))
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

fn service_steps(
    loaded: &Loaded,
    s: &Service,
    app_files: &[ContextFile],
    root: &str,
) -> Result<(Vec<Step>, Vec<Step>), Diagnostic> {
    let inv = &loaded.inventory;
    let project = &inv.project.name;
    let host = inv.host(&s.host).expect("validated host");
    let t = &loaded.templates[&s.name];
    let vars = &loaded.vars[&s.name];
    let id = |rest: &str| format!("{}/{}/{rest}", s.host, s.name);
    let upstream = t.manifest.upstream;

    let mut uses = BTreeMap::new();
    for u in &s.uses {
        let provider = inv.service(u).expect("validated use");
        let used = resolve_use(loaded, s, provider).ok_or_else(|| {
            inv.diagnostic(
                &format!("services.{}.uses", s.name),
                format!("cannot tell how to reach `{u}`: its template has no port"),
                None,
            )
        })?;
        uses.insert(u.clone(), used);
    }
    let input = RenderInput {
        service: [("name".to_string(), s.name.clone())].into(),
        host: [
            ("name".to_string(), host.name.clone()),
            ("address".to_string(), host.address.clone()),
        ]
        .into(),
        uses: uses.clone(),
        clients: clients(inv, s),
        local_users: local_users(inv, s),
    };
    let mut files = t.render(vars, &input).map_err(|e| {
        inv.diagnostic(
            &format!("services.{}.template", s.name),
            e.to_string(),
            None,
        )
    })?;
    // Live files stay out of the image (and its context hash): a change of
    // them is a reload, not a rebuild and a new container.
    let mut live_files = Vec::new();
    if let Some(live) = &t.manifest.live {
        for name in &live.files {
            let Some(i) = files.iter().position(|f| &f.path == name) else {
                return Err(inv.diagnostic(
                    &format!("services.{}.template", s.name),
                    format!(
                        "template `{}`: its live file {name} is not among its files",
                        t.name
                    ),
                    None,
                ));
            };
            let mut f = files.remove(i);
            f.mode = 0o644;
            live_files.push(f);
        }
    }
    let mut fetch = None;
    if t.manifest.app {
        match &inv.app {
            AppSource::Folder(_) => files.extend(app_files.iter().cloned()),
            AppSource::Tarball { url, token } => {
                // The content is not known before the host fetches it: the
                // URL stands for it in the context hash.
                files.push(ContextFile {
                    path: "app.url".into(),
                    mode: 0o644,
                    data: url.clone().into_bytes(),
                });
                fetch = Some((url.clone(), token.clone()));
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let bases = files
        .iter()
        .find(|f| f.path == "Dockerfile")
        .map(|f| from_images(&String::from_utf8_lossy(&f.data)))
        .unwrap_or_default();
    let context_hash = context_hash(&files);
    let tag = format!(
        "{}:{}",
        container_name(project, &s.name),
        &context_hash[..12]
    );
    let build_dir = format!("{root}/build/{}", s.name);

    let mut build_actions = vec![Action::Upload {
        dir: build_dir.clone(),
        shown: format!(
            "{} files, context sha256 {}",
            files.len(),
            &context_hash[..12]
        ),
        files,
    }];
    if let Some((url, token)) = fetch {
        let q = commands::curl_config_quote;
        let mut cfg = format!(
            "url = {}\nlocation\nfail\nsilent\nshow-error\noutput = {}\n",
            q(&url),
            q(&format!("{build_dir}/app.tar.gz"))
        );
        let mut shown = cfg.clone();
        if let Some(tok) = token {
            let value = loaded.secrets.get(&tok).unwrap_or_default();
            cfg.push_str(&format!(
                "user = {}\n",
                q(&format!("{value}:x-oauth-basic"))
            ));
            shown.push_str(&format!("user = {}\n", q(&format!("{MASK}:x-oauth-basic"))));
        }
        let fetch_dir = format!("{root}/fetch/{}", s.name);
        build_actions.push(Action::Upload {
            dir: fetch_dir.clone(),
            files: vec![ContextFile {
                path: "curl.cfg".into(),
                mode: 0o600,
                data: cfg.into_bytes(),
            }],
            shown,
        });
        build_actions.push(Action::Fetch {
            line: fetch_line(
                &format!("{fetch_dir}/curl.cfg"),
                &format!("{build_dir}/app.tar.gz"),
                &format!("{build_dir}/app"),
            ),
        });
    }
    build_actions.push(Action::Run {
        line: shell(&commands::build(
            project,
            &s.name,
            &tag,
            &context_hash,
            &build_dir,
        )),
    });
    let build = Step {
        id: id("build"),
        host: s.host.clone(),
        service: Some(s.name.clone()),
        kind: StepKind::Build,
        summary: format!("build image {tag}"),
        needs: vec![format!("{}/network", s.host)],
        when: Condition::ImageMissing { tag: tag.clone() },
        actions: build_actions,
        upstream,
        bases,
        follows: vec![],
    };

    // The container's environment: plain values, secrets, and what the
    // services it uses export (DATABASE_URL, REDIS_URL, ...). Secrets the
    // template takes as files go to 0600 files mounted read-only instead.
    let mut env: BTreeMap<String, (String, String)> = BTreeMap::new();
    for (k, v) in &s.env {
        env.insert(k.clone(), (v.clone(), v.clone()));
    }
    let secrets_dir = format!("{root}/secrets/{}", s.name);
    let mut secret_refs = Vec::new();
    let mut secret_files = Vec::new();
    for name in &s.secrets {
        let v = loaded.secrets.get(name).unwrap_or_default().to_string();
        let as_file = t.manifest.secret_files.contains(name);
        secret_refs.push(SecretRef {
            name: name.clone(),
            digest: crate::secrets::digest(project, &s.name, name, &v),
            file: as_file.then(|| format!("{secrets_dir}/{name}")),
        });
        if as_file {
            secret_files.push(ContextFile {
                path: name.clone(),
                mode: 0o600,
                data: v.into_bytes(),
            });
        } else {
            env.insert(name.clone(), (v, MASK.to_string()));
        }
    }
    let masked_secrets = loaded.secrets.masked();
    for (u, used) in &uses {
        let pt = &loaded.templates[u];
        let pvars = &loaded.vars[u];
        for key in pt.manifest.exports.keys() {
            if s.env.contains_key(key) {
                continue; // the user's own value wins
            }
            let err = |e: crate::templates::TemplateError| {
                inv.diagnostic(&format!("services.{}.uses", s.name), e.to_string(), None)
            };
            let real = pt
                .export(key, pvars, used, loaded.secrets.values())
                .map_err(err)?;
            let shown = crate::secrets::unmask_token(
                &pt.export(key, pvars, used, &masked_secrets).map_err(err)?,
            );
            env.insert(key.clone(), (real, shown));
        }
    }
    for (k, (real, _)) in &env {
        // Docker reads env files line by line and drops a line's final
        // carriage return: none of these would reach the container intact.
        let problem = if real.contains('\n') {
            Some("a newline")
        } else if real.contains('\0') {
            Some("a NUL character")
        } else if real.ends_with('\r') {
            Some("a carriage return at its end")
        } else {
            None
        };
        if let Some(what) = problem {
            return Err(inv.diagnostic(
                &format!("services.{}.env.{k}", s.name),
                format!("`{k}` holds {what}, which a Docker env file cannot carry"),
                None,
            ));
        }
    }
    let env_real: String = env.iter().map(|(k, (v, _))| format!("{k}={v}\n")).collect();
    let env_shown: String = env.iter().map(|(k, (_, v))| format!("{k}={v}\n")).collect();
    let env_dir = format!("{root}/env/{}", s.name);

    let fluentd = match &s.logs_to {
        Some(l) => {
            let provider = inv.service(l).expect("validated logs_to");
            let listen = loaded.templates.get(l).and_then(|t| t.manifest.port);
            // The log driver runs in the host's dockerd, not in a container:
            // it reaches a same-host Fluentd on a published port via loopback.
            let p = provider
                .publish
                .iter()
                .find(|p| Some(p.container_port) == listen)
                .or(provider.publish.first());
            match p {
                Some(p) if provider.host == s.host => Some(format!("127.0.0.1:{}", p.host_port)),
                Some(p) => inv
                    .host(&provider.host)
                    .map(|h| format!("{}:{}", h.wire_address(), p.host_port)),
                None => {
                    return Err(inv.diagnostic(
                        &format!("services.{}.logs_to", s.name),
                        format!("`{l}` must publish its port for Docker's log driver to reach it"),
                        Some(format!(
                            "add publish = [\"{}\"] to [services.{l}]",
                            listen.unwrap_or(24224)
                        )),
                    ))
                }
            }
        }
        None => None,
    };
    let container = container_name(project, &s.name);
    // Live files: installed beside the container and mounted read-only; the
    // run line names only the folder, so the spec hash (and the container)
    // does not change when they do.
    let mut binds = Vec::new();
    let mut config = None;
    if let (Some(live), false) = (&t.manifest.live, live_files.is_empty()) {
        if let Some(f) = live_files.iter().find(|f| f.path.contains('/')) {
            return Err(inv.diagnostic(
                &format!("services.{}.template", s.name),
                format!(
                    "template `{}`: live file {} must be at the top of the template folder",
                    t.name, f.path
                ),
                None,
            ));
        }
        let dir = live_dir(root, &s.name);
        binds.push(crate::inventory::VolumeMount {
            volume: dir.clone(),
            path: live.mount.clone(),
            read_only: true,
            implied: false,
        });
        let token = crate::templates::NETWORK_GATEWAY_TOKEN.as_bytes();
        let listed: Vec<commands::LiveFile> = live_files
            .iter()
            .map(|f| commands::LiveFile {
                name: &f.path,
                gateway: f.data.windows(token.len()).any(|w| w == token),
            })
            .collect();
        let hash = self::context_hash(&live_files);
        // The marker changes with the content and with where and how it
        // is applied.
        let version = hash_str(&format!(
            "{hash} {project} {} {}",
            live.mount, live.reload_signal
        ))[..16]
            .to_string();
        let staged = format!("{root}/live/.incoming-{}", s.name);
        let names: Vec<&str> = live_files.iter().map(|f| f.path.as_str()).collect();
        config = Some(Step {
            id: id("config"),
            host: s.host.clone(),
            service: Some(s.name.clone()),
            kind: StepKind::Config,
            summary: format!(
                "install {} of {} (mounted read-only at {}; a change is a reload: SIG{})",
                names.join(", "),
                s.name,
                live.mount,
                live.reload_signal
            ),
            needs: vec![format!("{}/network", s.host)],
            when: Condition::ConfigDiffers {
                service: s.name.clone(),
                hash: version.clone(),
            },
            actions: vec![
                Action::Upload {
                    dir: staged.clone(),
                    shown: format!("{}, sha256 {}", names.join(", "), &hash[..12]),
                    files: live_files.clone(),
                },
                Action::Run {
                    line: commands::install_live(
                        &staged,
                        &dir,
                        &format!("{root}/live/{}.hash", s.name),
                        &listed,
                        project,
                        &container,
                        &live.reload_signal,
                        &format!("{} {version}", s.name),
                    ),
                },
            ],
            upstream,
            bases: vec![],
            follows: client_hosts(inv, s),
        });
    }
    let spec = RunSpec {
        project: project.clone(),
        service: s.name.clone(),
        container: container.clone(),
        image: tag.clone(),
        network: project.clone(),
        // Reported with the host's ports when it cannot be told.
        bind_address: reach::bind_address(inv, s).ok().flatten(),
        publish: s.publish.clone(),
        volumes: s.volumes.clone(),
        binds,
        volumes_from: s
            .volumes_from
            .iter()
            .map(|d| data_container_name(project, d))
            .collect(),
        env_file: Some(format!("{env_dir}/env")),
        fluentd,
        secrets: secret_refs.clone(),
    };
    // The hash covers the run line (with the secrets' digests), the env file
    // (with real values: a new password must restart the service) and
    // nothing else.
    let spec_hash = hash_str(&format!(
        "{}\n{}",
        shell(&commands::run(&spec, "")),
        env_real
    ))[..16]
        .to_string();
    let mut needs = vec![id("build")];
    for d in s.dependencies() {
        let p = inv.service(d).expect("validated");
        let ready = format!("{}/{}/ready", p.host, p.name);
        if loaded.templates[d].manifest.ready.is_empty() {
            needs.push(format!("{}/{}/run", p.host, p.name));
        } else {
            needs.push(ready);
        }
        // Across hosts: only once the provider's host admits this one.
        if p.host != s.host && s.uses.contains(&p.name) && !p.publish.is_empty() {
            needs.push(format!("{}/firewall", p.host));
            if loaded.templates[d].manifest.live.is_some() {
                needs.push(format!("{}/{}/config", p.host, p.name));
            }
        }
    }
    if config.is_some() {
        needs.push(id("config"));
    }
    for v in &s.volumes {
        needs.push(format!("{}/volume/{}", s.host, v.volume));
    }
    for d in &s.volumes_from {
        needs.push(format!("{}/data/{d}", s.host));
    }
    let guarded = reach::of_service(inv, s)
        .map(|ports| ports.iter().any(|r| matches!(r.from, Reach::Only { .. })))
        .unwrap_or(false);
    if guarded {
        needs.push(format!("{}/firewall", s.host));
    }
    let mut run_actions = vec![Action::Upload {
        dir: env_dir,
        files: vec![ContextFile {
            path: "env".into(),
            mode: 0o600,
            data: env_real.into_bytes(),
        }],
        shown: env_shown,
    }];
    if !secret_files.is_empty() {
        run_actions.push(Action::Upload {
            dir: secrets_dir,
            shown: secret_files
                .iter()
                .map(|f| format!("{}: {MASK}", f.path))
                .collect::<Vec<_>>()
                .join(", "),
            files: secret_files,
        });
    }
    run_actions.push(Action::Run {
        line: format!(
            "{} 2>/dev/null || true",
            shell(&commands::remove_container(&container))
        ),
    });
    run_actions.push(Action::Run {
        line: shell(&commands::run(&spec, &spec_hash)),
    });
    let run = Step {
        id: id("run"),
        host: s.host.clone(),
        service: Some(s.name.clone()),
        kind: StepKind::Run,
        summary: format!("run container {container} (spec {spec_hash})"),
        needs,
        when: Condition::ContainerOutdated {
            name: container.clone(),
            spec: spec_hash.clone(),
            secrets: secret_refs
                .iter()
                .map(|r| (r.name.clone(), r.digest.clone()))
                .collect(),
        },
        actions: run_actions,
        upstream,
        bases: vec![],
        follows: vec![],
    };
    let mut runs = vec![run];
    let has_users = inv
        .services
        .iter()
        .any(|c| c.dependencies().any(|d| d == &s.name));
    if has_users && !t.manifest.ready.is_empty() {
        runs.push(Step {
            id: id("ready"),
            host: s.host.clone(),
            service: Some(s.name.clone()),
            kind: StepKind::Ready,
            summary: format!("wait until {} is ready", s.name),
            needs: vec![id("run")],
            when: Condition::Always,
            actions: vec![Action::WaitReady {
                line: shell(&commands::exec_in(&container, &t.manifest.ready)),
                timeout_secs: READY_TIMEOUT_SECS,
            }],
            upstream,
            bases: vec![],
            follows: vec![],
        });
    }
    Ok((vec![build].into_iter().chain(config).collect(), runs))
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
    hex::encode(Sha256::digest(s.as_bytes()))
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
