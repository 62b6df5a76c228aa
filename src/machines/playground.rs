//! The playground: creates, starts, removes and reports the project's local
//! machines on the local Docker engine. Runs the command values from
//! `commands.rs` through `docker.rs`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::future::try_join_all;

use super::commands;
use super::docker;
use super::image::MachineImage;
use super::keys::{self, KNOWN_HOSTS, PROJECT_KEY};
use super::lock::lock;
use super::spec::{network_name, validate, Init, MachineSpec, LABEL_PROJECT, LABEL_SPEC};
use super::{base_image, engine, Error};

/// The base image tag machine images are built from, unless configured.
pub const DEFAULT_BASE_IMAGE: &str = "debian:bookworm";
const IMAGES_LOCK: &str = "provision-machine-images.lock";
/// How long a machine may take from start until its sshd listens.
const SSH_READY_DEADLINE: Duration = Duration::from_secs(90);

/// A machine's container state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineState {
    Running,
    /// The container exists but is not running (created, exited, paused...).
    Stopped,
    Absent,
}

/// What `up` did to a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpAction {
    Created,
    Started,
    AlreadyRunning,
}

/// A machine after `up`: where to reach it over SSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineInfo {
    pub name: String,
    /// Container name.
    pub container: String,
    pub container_id: String,
    pub address: Ipv4Addr,
    pub ssh_port: u16,
    pub state: MachineState,
    pub action: UpAction,
}

/// A machine as `status` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineStatus {
    pub name: String,
    pub container: String,
    /// None when the container is absent.
    pub container_id: Option<String>,
    pub address: Ipv4Addr,
    pub state: MachineState,
    /// False when the container was created from a different spec (init,
    /// address or forwards); `up` refuses such a machine until it is downed.
    pub matches_spec: bool,
}

/// The project's playground. `state_dir` is the project's `.provision/`
/// folder: it holds the generated key and the machines' known_hosts.
#[derive(Debug, Clone)]
pub struct Playground {
    state_dir: PathBuf,
    base_image: String,
    public_key: Option<String>,
}

impl Playground {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Playground {
            state_dir: state_dir.into(),
            base_image: DEFAULT_BASE_IMAGE.into(),
            public_key: None,
        }
    }

    /// Build machine images from another base image tag (benchmarks, tests).
    pub fn with_base_image(mut self, tag: &str) -> Self {
        self.base_image = tag.into();
        self
    }

    /// Authorize this public key (`ssh-ed25519 AAAA...`) instead of the
    /// project key provision generates.
    pub fn with_public_key(mut self, openssh_line: &str) -> Self {
        self.public_key = Some(openssh_line.trim().into());
        self
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `STATE_DIR/known_hosts`, holding every machine's host key.
    pub fn known_hosts_path(&self) -> PathBuf {
        self.state_dir.join(KNOWN_HOSTS)
    }

    /// `STATE_DIR/id_ed25519`, the key provision generates when none is given.
    pub fn project_key_path(&self) -> PathBuf {
        self.state_dir.join(PROJECT_KEY)
    }

    /// Make sure a local engine answers (may install and start one).
    pub async fn ensure_engine(&self) -> Result<(), Error> {
        engine::ensure_engine().await
    }

    /// Make sure the base image exists (may build it with debootstrap).
    pub async fn ensure_base_image(&self) -> Result<(), Error> {
        base_image::ensure_base_image(&self.base_image).await
    }

    /// Build the machine images for these init kinds unless an image with the
    /// same content hash exists. The no-init image builds first: the systemd
    /// image reuses its layers.
    pub async fn ensure_images(&self, inits: &[Init]) -> Result<(), Error> {
        for init in [Init::None, Init::Systemd] {
            if !inits.contains(&init) {
                continue;
            }
            let image = MachineImage::new(init, &self.base_image);
            if docker::image_exists(&image.tag()).await? {
                continue;
            }
            let _lock = lock(IMAGES_LOCK).await?;
            if docker::image_exists(&image.tag()).await? {
                continue;
            }
            eprintln!("provision: building machine image {}", image.tag());
            let args = commands::build_image(&image);
            docker::run(&args, Some(image.dockerfile.as_bytes())).await?;
        }
        Ok(())
    }

    /// Create missing machines, start stopped ones, leave running ones alone;
    /// authorize the key and record each host key in known_hosts. Returns once
    /// every machine's sshd listens.
    pub async fn up(&self, specs: &[MachineSpec]) -> Result<Vec<MachineInfo>, Error> {
        let (project, subnet) = validate(specs)?;
        self.ensure_engine().await?;
        self.ensure_base_image().await?;
        let inits: Vec<Init> = specs.iter().map(|s| s.init).collect();
        self.ensure_images(&inits).await?;
        let public_key = match &self.public_key {
            Some(key) => key.clone(),
            None => keys::ensure_project_key(&self.state_dir, &format!("provision@{project}"))?,
        };
        ensure_network(&project, &subnet).await?;
        let results = try_join_all(specs.iter().map(|spec| self.up_one(spec, &public_key))).await?;
        let addresses: Vec<Ipv4Addr> = specs.iter().map(|s| s.address).collect();
        let lines: Vec<String> = results.iter().map(|(_, line)| line.clone()).collect();
        keys::update_known_hosts(&self.known_hosts_path(), &addresses, &lines)?;
        Ok(results.into_iter().map(|(info, _)| info).collect())
    }

    async fn up_one(
        &self,
        spec: &MachineSpec,
        public_key: &str,
    ) -> Result<(MachineInfo, String), Error> {
        let container = spec.container_name();
        let found = inspect(spec).await?;
        if let Some(found) = &found {
            if found.fingerprint != spec.fingerprint() {
                return Err(Error::Invalid(format!(
                    "machine {}: its container was created as `{}` but the inventory now says \
                     `{}`; run `down` for it (its /var/lib/docker volume is kept) and `up` again",
                    spec.name,
                    found.fingerprint,
                    spec.fingerprint()
                )));
            }
        }
        let (action, container_id) = match found {
            None => {
                docker::run(&commands::create_volume(spec), None).await?;
                let image = MachineImage::new(spec.init, &self.base_image);
                let id = docker::run(&commands::run_machine(spec, &image), None).await?;
                (UpAction::Created, id.trim().to_string())
            }
            Some(found) if found.state == MachineState::Running => {
                (UpAction::AlreadyRunning, found.id)
            }
            Some(found) => {
                docker::run(&["start".into(), container.clone()], None).await?;
                (UpAction::Started, found.id)
            }
        };
        let authorize = commands::exec_script(&container, commands::AUTHORIZE_KEY_SCRIPT, true);
        docker::run(&authorize, Some(public_key.as_bytes())).await?;
        let host_pub = wait_for_sshd(spec).await?;
        let line = keys::known_hosts_line(spec.address, &host_pub).ok_or_else(|| {
            Error::Invalid(format!(
                "machine {}: unreadable host key {host_pub:?}",
                spec.name
            ))
        })?;
        let info = MachineInfo {
            name: spec.name.clone(),
            container,
            container_id,
            address: spec.address,
            ssh_port: 22,
            state: MachineState::Running,
            action,
        };
        Ok((info, line))
    }

    /// Remove the machines' containers (and their /var/lib/docker volumes when
    /// `volumes`), forget their host keys, and remove the project's network
    /// once no machine of the project is left. Absent things are no error.
    pub async fn down(&self, specs: &[MachineSpec], volumes: bool) -> Result<(), Error> {
        let (project, _) = validate(specs)?;
        try_join_all(specs.iter().map(|spec| async move {
            remove(&["rm".into(), "--force".into(), spec.container_name()]).await?;
            if volumes {
                remove(&["volume".into(), "rm".into(), spec.volume_name()]).await?;
            }
            Ok::<(), Error>(())
        }))
        .await?;
        let left = docker::run(
            &[
                "ps".into(),
                "--all".into(),
                "--quiet".into(),
                "--filter".into(),
                format!("label={LABEL_PROJECT}={project}"),
            ],
            None,
        )
        .await?;
        if left.trim().is_empty() {
            remove(&["network".into(), "rm".into(), network_name(&project)]).await?;
        }
        let addresses: Vec<Ipv4Addr> = specs.iter().map(|s| s.address).collect();
        keys::update_known_hosts(&self.known_hosts_path(), &addresses, &[])
    }

    /// Like [`Playground::status`], read from the engine's socket without a
    /// `docker` process per machine (the fast path of a rerun). None when
    /// the socket cannot answer: use `status`.
    pub async fn quick_status(&self, specs: &[MachineSpec]) -> Option<Vec<MachineStatus>> {
        validate(specs).ok()?;
        let names: Vec<String> = specs.iter().map(|s| s.container_name()).collect();
        let found =
            futures::future::join_all(names.iter().map(|n| docker::inspect_via_socket(n))).await;
        specs
            .iter()
            .zip(found)
            .map(|(spec, found)| {
                let found = found?;
                let state = match &found {
                    None => MachineState::Absent,
                    Some(j) => match j["State"]["Status"].as_str()? {
                        "running" | "restarting" => MachineState::Running,
                        _ => MachineState::Stopped,
                    },
                };
                let fingerprint = found.as_ref().map(|j| {
                    j["Config"]["Labels"][LABEL_SPEC]
                        .as_str()
                        .unwrap_or("")
                        .trim()
                });
                Some(MachineStatus {
                    name: spec.name.clone(),
                    container: spec.container_name(),
                    address: spec.address,
                    state,
                    matches_spec: fingerprint.is_none_or(|f| f == spec.fingerprint()),
                    container_id: found
                        .as_ref()
                        .and_then(|j| j["Id"].as_str().map(String::from)),
                })
            })
            .collect()
    }

    /// Each machine's container state, in the order given.
    pub async fn status(&self, specs: &[MachineSpec]) -> Result<Vec<MachineStatus>, Error> {
        validate(specs)?;
        try_join_all(specs.iter().map(|spec| async move {
            let found = inspect(spec).await?;
            Ok(MachineStatus {
                name: spec.name.clone(),
                container: spec.container_name(),
                address: spec.address,
                state: found.as_ref().map_or(MachineState::Absent, |f| f.state),
                matches_spec: found
                    .as_ref()
                    .is_none_or(|f| f.fingerprint == spec.fingerprint()),
                container_id: found.map(|f| f.id),
            })
        }))
        .await
    }
}

/// A machine's container as the engine reports it.
struct Found {
    id: String,
    state: MachineState,
    /// The spec fingerprint it was created from (empty if unlabelled).
    fingerprint: String,
}

/// The machine's container, or None when it does not exist.
async fn inspect(spec: &MachineSpec) -> Result<Option<Found>, Error> {
    let args = commands::inspect_container(spec);
    let out = docker::output(&args, None).await?;
    if !out.success {
        return if docker::is_missing(&out) {
            Ok(None)
        } else {
            Err(docker::failed(&args, &out))
        };
    }
    let line = out.stdout.trim();
    let mut fields = line.splitn(3, ' ');
    let id = fields.next().unwrap_or_default().to_string();
    let state = match fields.next() {
        Some("running") | Some("restarting") => MachineState::Running,
        _ => MachineState::Stopped,
    };
    let fingerprint = fields.next().unwrap_or_default().trim().to_string();
    Ok(Some(Found {
        id,
        state,
        fingerprint,
    }))
}

/// Create the project's network on `subnet`, or check the existing one uses it.
async fn ensure_network(project: &str, subnet: &str) -> Result<(), Error> {
    let name = network_name(project);
    let args = [
        "network".into(),
        "inspect".into(),
        "--format".into(),
        "{{range .IPAM.Config}}{{.Subnet}} {{end}}".into(),
        name.clone(),
    ];
    let out = docker::output(&args, None).await?;
    if out.success {
        let subnets: Vec<&str> = out.stdout.split_whitespace().collect();
        return if subnets == [subnet] {
            Ok(())
        } else {
            Err(Error::Invalid(format!(
                "network {name} exists with subnet {} but the machines are in {subnet}: \
                 run `down` for the old machines first",
                subnets.join(" ")
            )))
        };
    }
    let create = commands::create_network(project, subnet);
    let out = docker::output(&create, None).await?;
    if out.success {
        return Ok(());
    }
    if out.stderr.contains("overlap") {
        return Err(Error::Invalid(format!(
            "the machines' subnet {subnet} overlaps an existing Docker network ({}); \
             give the machines addresses in another /24",
            out.stderr.trim()
        )));
    }
    // A parallel run may have created it meanwhile.
    if docker::output(&args, None).await?.success {
        return Ok(());
    }
    Err(docker::failed(&create, &out))
}

/// Poll until sshd listens in the machine; return its ed25519 host public key.
/// Fails early, with the machine's last log lines, if the container stops.
async fn wait_for_sshd(spec: &MachineSpec) -> Result<String, Error> {
    let container = spec.container_name();
    let probe = commands::exec_script(&container, commands::SSH_READY_SCRIPT, false);
    let deadline = Instant::now() + SSH_READY_DEADLINE;
    let mut pause = Duration::from_millis(50);
    loop {
        let out = docker::output(&probe, None).await?;
        if out.success && out.stdout.starts_with("ssh-ed25519 ") {
            return Ok(out.stdout.trim().to_string());
        }
        let running = matches!(inspect(spec).await?, Some(f) if f.state == MachineState::Running);
        if !running || Instant::now() > deadline {
            let logs = docker::output(
                &[
                    "logs".into(),
                    "--tail".into(),
                    "20".into(),
                    container.clone(),
                ],
                None,
            )
            .await?;
            let why = if Instant::now() > deadline {
                format!(
                    "sshd did not listen within {}s",
                    SSH_READY_DEADLINE.as_secs()
                )
            } else {
                "the container stopped".to_string()
            };
            return Err(Error::Timeout(format!(
                "machine {}: {why}; last log lines:\n{}{}",
                spec.name, logs.stdout, logs.stderr
            )));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

/// Run a docker removal; an object that is already gone is fine.
async fn remove(args: &[String]) -> Result<(), Error> {
    let out = docker::output(args, None).await?;
    if out.success || docker::is_missing(&out) {
        Ok(())
    } else {
        Err(docker::failed(args, &out))
    }
}
