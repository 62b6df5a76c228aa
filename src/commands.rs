//! Pure command builders: every command provision runs on a host is built
//! here as an argument vector, and becomes a shell line only through
//! [`shell`], which quotes with a crate. Nothing here touches a network.

use crate::inventory::{Publish, VolumeMount};

/// The label every object provision creates carries, so a project's
/// containers, images, networks and volumes are found in one query.
pub const PROJECT_LABEL: &str = "provision.project";
/// Hash of a container's whole spec: equal means nothing to do.
pub const SPEC_LABEL: &str = "provision.spec";
/// Hash of an image's rendered build context.
pub const CONTEXT_LABEL: &str = "provision.context";
pub const SERVICE_LABEL: &str = "provision.service";
/// `NAME:DIGEST,...` of the secrets a container was started with (salted
/// digests, never values), so a later run can say which one it rotates.
pub const SECRETS_LABEL: &str = "provision.secrets";

/// Where provision keeps its files on a host.
pub fn remote_root(project: &str) -> String {
    format!("/var/lib/provision/{project}")
}

pub fn argv<I, S>(words: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    words.into_iter().map(Into::into).collect()
}

/// Quote an argument vector into one POSIX shell line.
pub fn shell(argv: &[String]) -> String {
    argv.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" ")
}

/// Quote one word for sh and bash, with shlex: words any shell would
/// expand are quoted, including `{a,b}` (bash brace expansion) and a leading
/// `~`, which `shell_words::quote` leaves bare (`/srv/{a,b}` became two words
/// on a host). A NUL cannot be carried by any command line: the inventory
/// and the planner refuse such values before they get here, and it is
/// dropped should one slip through.
pub fn quote(word: &str) -> std::borrow::Cow<'_, str> {
    match shlex::try_quote(word) {
        Ok(q) => q,
        Err(_) => {
            let clean = word.replace('\0', "");
            std::borrow::Cow::Owned(shlex::try_quote(&clean).expect("no NUL left").into_owned())
        }
    }
}

/// One value of a curl config file (`curl -K`), double-quoted with the
/// escapes curl reads back: a `"` or a newline in a URL or token stays part
/// of the value and can never start another option line.
pub fn curl_config_quote(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Join shell lines so that each runs only if the previous succeeded.
pub fn and(lines: &[String]) -> String {
    lines.join(" && ")
}

pub fn install_docker_script() -> &'static str {
    include_str!("scripts/install-docker.sh")
}

/// `sh -s SOURCE` reading [`install_docker_script`] on stdin: the script is
/// data, never an argument.
pub fn install_docker(source: &str) -> Vec<String> {
    argv(["sh", "-s", source])
}

/// One round trip that tells the executor the state of a host: whether
/// Docker answers, and the project's images, containers, networks and
/// volumes. Parsed by [`crate::probe::HostState::parse`].
///
/// This is the fallback of [`crate::docker_api::probe`], for hosts whose
/// Docker socket the SSH connection cannot reach (a sudo user). Every
/// `docker` call costs a process start (~22 ms of CPU on the lab's hosts;
/// `docker info` alone took 50-75 ms), so the calls run concurrently, each
/// into its own file of a temporary folder, printed in a fixed order.
pub fn probe(project: &str, bases: &[String]) -> String {
    let filter = format!("label={PROJECT_LABEL}={project}");
    let version = shell(&argv([
        "docker",
        "version",
        "--format",
        "{{.Server.Version}}",
    ]));
    let images = shell(&argv([
        "docker",
        "images",
        "--filter",
        &filter,
        "--format",
        "{{.Repository}}:{{.Tag}}",
    ]));
    let containers = shell(&argv([
        "docker",
        "ps",
        "-a",
        "--filter",
        &filter,
        "--format",
        &format!(
            "{{{{.Names}}}}\t{{{{.State}}}}\t{{{{.Label \"{SPEC_LABEL}\"}}}}\t{{{{.Label \"{SECRETS_LABEL}\"}}}}"
        ),
    ]));
    let networks = shell(&argv([
        "docker",
        "network",
        "ls",
        "--filter",
        &filter,
        "--format",
        "{{.Name}}",
    ]));
    let volumes = shell(&argv(["docker", "volume", "ls", "--format", "{{.Name}}"]));
    let bases_check: String = bases
        .iter()
        .map(|b| {
            let q = shell(std::slice::from_ref(b));
            format!(
                "{{ docker image inspect {q} >/dev/null 2>&1 && echo {q}; }} >\"$d/b.{}\" & ",
                hex::encode(b)
            )
        })
        .collect();
    let unpullable = shell(&[unpullable_file(project)]);
    let config = live_markers(project);
    let chain = crate::firewall::forward_chain(project);
    let firewall = format!(
        "{} 2>/dev/null | grep -o 'provision [0-9a-f]*'; {} 2>/dev/null && echo hooked",
        shell(&argv(["iptables", "-w", "-S", &chain])),
        shell(&argv(["iptables", "-w", "-C", "DOCKER-USER", "-j", &chain]))
    );
    // The docker queries run side by side (each costs a CLI start and an
    // API round trip), then print in a fixed order.
    format!(
        "if ! command -v docker >/dev/null 2>&1; then echo '@docker missing'; exit 0; fi; \
         d=$(mktemp -d) || exit 1; \
         {version} >\"$d/v\" 2>/dev/null & {images} >\"$d/i\" 2>/dev/null & \
         {containers} >\"$d/c\" 2>/dev/null & {networks} >\"$d/n\" 2>/dev/null & \
         {volumes} >\"$d/vol\" 2>/dev/null & {bases_check}wait; \
         if [ ! -s \"$d/v\" ]; then echo '@docker stopped'; rm -rf \"$d\"; exit 0; fi; \
         echo \"@docker $(cat \"$d/v\")\"; echo '@images'; cat \"$d/i\"; echo '@containers'; cat \"$d/c\"; \
         echo '@networks'; cat \"$d/n\"; echo '@volumes'; cat \"$d/vol\"; echo '@firewall'; {firewall}; \
         echo '@bases'; cat \"$d\"/b.* 2>/dev/null; rm -rf \"$d\"; \
         echo '@unpullable'; cat {unpullable} 2>/dev/null; echo '@config'; cat {config} 2>/dev/null; \
         echo \"@now $(date +%s)\"; true"
    )
}

/// The part of the probe the Docker API cannot answer: the firewall chain,
/// images the host failed to pull, and the host's clock.
pub fn probe_extras(project: &str) -> String {
    let chain = crate::firewall::forward_chain(project);
    format!(
        "echo '@firewall'; {} 2>/dev/null | grep -o 'provision [0-9a-f]*'; {} 2>/dev/null && echo hooked; \
         echo '@unpullable'; cat {} 2>/dev/null; echo '@config'; cat {} 2>/dev/null; echo \"@now $(date +%s)\"; true",
        shell(&argv(["iptables", "-w", "-S", &chain])),
        shell(&argv(["iptables", "-w", "-C", "DOCKER-USER", "-j", &chain])),
        shell(&[unpullable_file(project)]),
        live_markers(project)
    )
}

/// Swarm mode, on a manager: the ids of the project's stack services.
pub fn stack_services(project: &str) -> Vec<String> {
    argv([
        "docker".to_string(),
        "service".into(),
        "ls".into(),
        "-q".into(),
        "--filter".into(),
        format!("label=com.docker.stack.namespace={project}"),
    ])
}

/// The swarm's part of the probe: this node's swarm state and the
/// managers it knows; on a manager also the nodes (id, address, state,
/// `provision.host` label), the project's stack services with their spec
/// label, and the swarm's secrets and configs (names only).
pub fn swarm_probe(project: &str) -> String {
    let info = shell(&argv([
        "docker",
        "info",
        "--format",
        "@swarm {{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}{{println}}@swarm-managers{{range .Swarm.RemoteManagers}}{{println}}{{.Addr}}{{end}}",
    ]));
    let nodes = format!(
        "docker node ls -q | xargs -r {}",
        shell(&argv([
            "docker",
            "node",
            "inspect",
            "--format",
            "{{.ID}} {{.Status.Addr}} {{.Status.State}} {{if .ManagerStatus}}{{.ManagerStatus.Addr}}{{else}}-{{end}} {{index .Spec.Labels \"provision.host\"}}",
        ]))
    );
    let services = format!(
        "{} | xargs -r {}",
        shell(&stack_services(project)),
        shell(&argv([
            "docker",
            "service",
            "inspect",
            "--format",
            "{{.Spec.Name}} {{index .Spec.Labels \"provision.spec\"}}",
        ]))
    );
    format!(
        "s=$({info} 2>/dev/null) || s='@swarm inactive false'; echo \"$s\"; \
         case \"$s\" in '@swarm active true'*) \
         echo '@swarm-nodes'; {nodes} 2>/dev/null; echo '@swarm-services'; {services} 2>/dev/null; \
         echo '@swarm-objects'; docker secret ls --format 'secret {{{{.Name}}}}' 2>/dev/null; \
         docker config ls --format 'config {{{{.Name}}}}' 2>/dev/null;; esac; true"
    )
}

/// The version files of every service's live files (`SERVICE VERSION`
/// lines), a glob for `cat`.
fn live_markers(project: &str) -> String {
    format!("{}/live/*.hash", shell(&[remote_root(project)]))
}

/// Images a host could not pull, one `IMAGE EPOCH` line each.
pub fn unpullable_file(project: &str) -> String {
    format!("{}/unpullable", remote_root(project))
}

/// Remember that `image` could not be pulled, with the host's time.
pub fn remember_unpullable(project: &str, image: &str) -> String {
    let file = unpullable_file(project);
    format!(
        "mkdir -p {} && printf '%s %s\\n' {} \"$(date +%s)\" >> {}",
        shell(&[remote_root(project)]),
        shell(&[image.to_string()]),
        shell(&[file])
    )
}

pub fn network_create(project: &str, name: &str) -> Vec<String> {
    argv([
        "docker".to_string(),
        "network".into(),
        "create".into(),
        "--label".into(),
        format!("{PROJECT_LABEL}={project}"),
        name.into(),
    ])
}

pub fn volume_create(project: &str, name: &str) -> Vec<String> {
    argv([
        "docker".to_string(),
        "volume".into(),
        "create".into(),
        "--label".into(),
        format!("{PROJECT_LABEL}={project}"),
        name.into(),
    ])
}

/// The seed's data container: created, never started; others mount its
/// volumes with `--volumes-from`.
pub fn data_container_create(
    project: &str,
    name: &str,
    image: &str,
    paths: &[String],
) -> Vec<String> {
    let mut a = argv([
        "docker".to_string(),
        "create".into(),
        "--name".into(),
        name.into(),
        "--label".into(),
        format!("{PROJECT_LABEL}={project}"),
    ]);
    for p in paths {
        a.push("-v".into());
        a.push(p.clone());
    }
    a.push(image.into());
    a.push("true".into());
    a
}

/// Replace a folder's content with a tar stream read from stdin. Modes are
/// kept (`-p`: a 0600 env file stays 0600) and files belong to the user
/// that extracts (root under sudo).
pub fn untar_into(dir: &str) -> String {
    let d = shell(&[dir.to_string()]);
    format!("rm -rf {d} && mkdir -p {d} && tar -x -p --no-same-owner -f - -C {d}")
}

pub fn build(
    project: &str,
    service: &str,
    tag: &str,
    context_hash: &str,
    dir: &str,
) -> Vec<String> {
    argv([
        "docker".to_string(),
        "build".into(),
        "--tag".into(),
        tag.into(),
        "--label".into(),
        format!("{PROJECT_LABEL}={project}"),
        "--label".into(),
        format!("{SERVICE_LABEL}={service}"),
        "--label".into(),
        format!("{CONTEXT_LABEL}={context_hash}"),
        dir.into(),
    ])
}

/// Everything `docker run` needs, gathered by the planner.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunSpec {
    pub project: String,
    pub service: String,
    pub container: String,
    pub image: String,
    pub network: String,
    /// The host address published ports bind to.
    pub bind_address: Option<String>,
    pub publish: Vec<Publish>,
    pub volumes: Vec<VolumeMount>,
    /// Host folders bind-mounted into the container (its live files).
    pub binds: Vec<VolumeMount>,
    pub volumes_from: Vec<String>,
    pub env_file: Option<String>,
    /// `HOST:PORT` of a Fluentd for Docker's log driver.
    pub fluentd: Option<String>,
    /// The secrets the container takes: each one's digest goes in a label;
    /// those with a file are mounted read-only at `/run/secrets/NAME`.
    pub secrets: Vec<SecretRef>,
}

/// One secret of a container, as `docker run` sees it: never its value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretRef {
    pub name: String,
    /// [`crate::secrets::digest`] of the value.
    pub digest: String,
    /// The 0600 file on the host that holds it, when the template takes it
    /// as a file (`secret_files`); `None`: it is in the env file.
    pub file: Option<String>,
}

/// `docker run` with the spec hash as a label. Secret values never appear
/// here: they are in the env file or a mounted file.
pub fn run(spec: &RunSpec, spec_hash: &str) -> Vec<String> {
    run_as(spec, spec_hash, &spec.container)
}

/// [`run`] under another container name (a release started beside the
/// running one); everything else, its log tag included, is the service's.
pub fn run_as(spec: &RunSpec, spec_hash: &str, name: &str) -> Vec<String> {
    let mut a = argv([
        "docker".to_string(),
        "run".into(),
        "--detach".into(),
        "--name".into(),
        name.to_string(),
        "--hostname".into(),
        spec.service.clone(),
        "--network".into(),
        spec.network.clone(),
        "--network-alias".into(),
        spec.service.clone(),
        "--restart".into(),
        "unless-stopped".into(),
        "--label".into(),
        format!("{PROJECT_LABEL}={}", spec.project),
        "--label".into(),
        format!("{SERVICE_LABEL}={}", spec.service),
        "--label".into(),
        format!("{SPEC_LABEL}={spec_hash}"),
    ]);
    if !spec.secrets.is_empty() {
        let digests: Vec<String> = spec
            .secrets
            .iter()
            .map(|s| format!("{}:{}", s.name, s.digest))
            .collect();
        a.push("--label".into());
        a.push(format!("{SECRETS_LABEL}={}", digests.join(",")));
    }
    if let Some(f) = &spec.env_file {
        a.push("--env-file".into());
        a.push(f.clone());
    }
    for s in &spec.secrets {
        if let Some(file) = &s.file {
            // --mount, not --volume: a missing file is an error, where
            // --volume would mount a new empty folder in its place.
            a.push("--mount".into());
            a.push(format!(
                "type=bind,source={file},target={},readonly",
                crate::templates::secret_file_path(&s.name)
            ));
        }
    }
    for p in &spec.publish {
        a.push("--publish".into());
        a.push(match &spec.bind_address {
            Some(addr) if addr.contains(':') => {
                format!("[{addr}]:{}:{}", p.host_port, p.container_port)
            }
            Some(addr) => format!("{addr}:{}:{}", p.host_port, p.container_port),
            None => format!("{}:{}", p.host_port, p.container_port),
        });
    }
    for v in &spec.volumes {
        a.push("--volume".into());
        a.push(format!(
            "{}:{}{}",
            v.volume,
            v.path,
            if v.read_only { ":ro" } else { "" }
        ));
    }
    for b in &spec.binds {
        a.push("--volume".into());
        a.push(format!(
            "{}:{}{}",
            b.volume,
            b.path,
            if b.read_only { ":ro" } else { "" }
        ));
    }
    for d in &spec.volumes_from {
        a.push("--volumes-from".into());
        a.push(d.clone());
    }
    if let Some(addr) = &spec.fluentd {
        // Async: a missing Fluentd must never keep a container from starting.
        for opt in [
            "--log-driver".to_string(),
            "fluentd".into(),
            "--log-opt".into(),
            format!("fluentd-address={addr}"),
            "--log-opt".into(),
            "fluentd-async=true".into(),
            "--log-opt".into(),
            // The service's container name, not `{{.Name}}`: a release
            // started under another name logs under the same tag.
            format!("tag={}.{}", spec.project, spec.container),
        ] {
            a.push(opt);
        }
    }
    a.push(spec.image.clone());
    a
}

pub fn remove_container(name: &str) -> Vec<String> {
    argv(["docker", "rm", "--force", name])
}

pub fn start_container(name: &str) -> Vec<String> {
    argv(["docker", "start", name])
}

/// A container's state in one line: `STATUS RESTARTCOUNT EXITCODE`
/// (`running 0 0`, `restarting 3 1`), read between readiness polls.
pub fn container_state(name: &str) -> Vec<String> {
    argv([
        "docker",
        "inspect",
        "--format",
        "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}",
        name,
    ])
}

/// The last `lines` lines a container wrote (stdout and stderr).
pub fn container_log_tail(name: &str, lines: u32) -> Vec<String> {
    let mut a = argv(["docker", "logs", "--tail"]);
    a.push(lines.to_string());
    a.push(name.to_string());
    a
}

/// The readiness probe of a template, run inside the container.
pub fn exec_in(container: &str, probe: &[String]) -> Vec<String> {
    let mut a = argv(["docker", "exec", container]);
    a.extend(probe.iter().cloned());
    a
}

/// One tab-separated line per container of the project (`status`): its
/// name (Docker's, with a leading `/`), state, when it started, Docker's own
/// health if its image declares one, and the service label. Extra releases
/// of a service carry the same label under other names.
pub fn container_details(project: &str) -> String {
    let ids = shell(&argv([
        "docker",
        "ps",
        "-aq",
        "--filter",
        &format!("label={PROJECT_LABEL}={project}"),
    ]));
    let format = format!(
        "{{{{.Name}}}}\t{{{{.State.Status}}}}\t{{{{.State.StartedAt}}}}\t\
         {{{{if .State.Health}}}}{{{{.State.Health.Status}}}}{{{{end}}}}\t\
         {{{{index .Config.Labels \"{SERVICE_LABEL}\"}}}}"
    );
    let inspect = shell(&argv(["docker", "inspect", "--format", &format]));
    // No container at all is an empty answer, not `docker inspect`'s usage error.
    format!("ids=$({ids}) || exit 1; [ -z \"$ids\" ] || {inspect} $ids")
}

/// Swarm mode, on a manager, after node `id` joined from `address`: every
/// other node entry at that address (a replaced machine's) is demoted and
/// removed, then `id` is labelled `provision.host=NAME`. The manager's own
/// entry reports 0.0.0.0 and never matches.
pub fn claim_node(id: &str, address: &str, name: &str) -> String {
    let inspect = shell(&argv([
        "docker",
        "node",
        "inspect",
        "--format",
        "{{.Status.Addr}}",
    ]));
    let label = shell(&argv([
        "docker".to_string(),
        "node".into(),
        "update".into(),
        "--label-add".into(),
        format!("provision.host={name}"),
        id.to_string(),
    ]));
    format!(
        "for o in $(docker node ls -q); do [ \"$o\" != {id} ] || continue; \
         [ \"$({inspect} \"$o\")\" = {address} ] || continue; \
         docker node demote \"$o\" >/dev/null 2>&1; \
         docker node rm --force \"$o\" >/dev/null && echo \"removed node $o (was {address})\"; \
         done; {label} >/dev/null",
        id = quote(id),
        address = quote(address),
    )
}

/// Swarm mode, on a manager: for `status`, each node's hostname and
/// `provision.host` label, each stack service's replica count, and each
/// task that should run, as `@node`, `@service` and `@task` lines.
pub fn swarm_tasks(project: &str) -> String {
    let stack = shell(&stack_services(project));
    let nodes = shell(&argv([
        "docker",
        "node",
        "inspect",
        "--format",
        "@node {{.Description.Hostname}}|{{.Status.State}}|{{index .Spec.Labels \"provision.host\"}}",
    ]));
    let services = shell(&argv([
        "docker",
        "service",
        "inspect",
        "--format",
        "@service {{.Spec.Name}}|{{if .Spec.Mode.Replicated}}{{.Spec.Mode.Replicated.Replicas}}{{else}}-{{end}}",
    ]));
    let tasks = shell(&argv([
        "docker",
        "service",
        "ps",
        "--no-trunc",
        "--filter",
        "desired-state=running",
        "--format",
        "@task {{.Name}}|{{.Node}}|{{.CurrentState}}|{{.Error}}",
    ]));
    format!(
        "docker node ls -q | xargs -r {nodes} || exit 1; ids=$({stack}) || exit 1; \
         [ -z \"$ids\" ] || {{ {services} $ids && {tasks} $ids; }}"
    )
}

/// What `provision logs` asks of a container's logs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogsOptions {
    /// Keep streaming new lines (`docker logs --follow`).
    pub follow: bool,
    /// Only the last N lines.
    pub tail: Option<u64>,
    /// Only lines newer than this (`10m`, `2h`, an RFC 3339 time).
    pub since: Option<String>,
}

/// `docker logs` of one container: its stdout on stdout, its stderr on
/// stderr. With the fluentd log driver this still works on Docker >= 20.10
/// (dual logging keeps a local copy).
pub fn logs(container: &str, opts: &LogsOptions) -> Vec<String> {
    let mut a = argv(["docker", "logs"]);
    if opts.follow {
        a.push("--follow".into());
    }
    if let Some(n) = opts.tail {
        a.extend(["--tail".to_string(), n.to_string()]);
    }
    if let Some(since) = &opts.since {
        a.extend(["--since".to_string(), since.clone()]);
    }
    // `--` ends the options: a container name can never be read as one.
    a.extend(["--".to_string(), container.to_string()]);
    a
}

/// Swarm mode: `docker service logs` of a stack service on a manager (every
/// task's lines, each prefixed with its task and node by Docker).
pub fn service_logs(service: &str, opts: &LogsOptions) -> Vec<String> {
    let mut a = logs(service, opts);
    a.insert(1, "service".into());
    a
}

/// Swarm mode: the ids of the running task containers of stack service
/// `service` on this node.
pub fn task_containers(service: &str) -> Vec<String> {
    argv([
        "docker".to_string(),
        "ps".into(),
        "-q".into(),
        "--filter".into(),
        format!("label=com.docker.swarm.service.name={service}"),
    ])
}

/// Swarm mode: `docker exec` in the first running task container of stack
/// service `service` on this node; exit 125 (Docker's own code for "could
/// not run") when none runs here.
pub fn exec_in_task(service: &str, interactive: bool, cmd: &[String]) -> String {
    let find = shell(&task_containers(service));
    let mut exec = argv(["docker", "exec"]);
    if interactive {
        exec.push("--interactive".into());
    }
    format!(
        "c=$({find} | head -n1); [ -n \"$c\" ] || {{ echo {} >&2; exit 125; }}; {} \"$c\" {}",
        quote(&format!("no task of {service} runs on this node")),
        shell(&exec),
        shell(cmd)
    )
}

/// `docker exec` of a command in a service's container: `-i` keeps its
/// stdin open, `-t` gives it a terminal. Each word of `cmd` stays one
/// argument, quoted once by [`shell`].
pub fn exec(container: &str, interactive: bool, tty: bool, cmd: &[String]) -> Vec<String> {
    let mut a = argv(["docker", "exec"]);
    if interactive {
        a.push("--interactive".into());
    }
    if tty {
        a.push("--tty".into());
    }
    a.push(container.to_string());
    a.extend(cmd.iter().cloned());
    a
}

/// One live file to install: its name and whether its lines carry
/// [`crate::templates::NETWORK_GATEWAY_TOKEN`].
pub struct LiveFile<'a> {
    pub name: &'a str,
    pub gateway: bool,
}

/// Install the live files staged in `staged` into `dir` (the folder mounted
/// read-only into `container`), each through a rename so the container
/// never reads half a file, then send `signal` to the container when it
/// runs (a reload: no restart), and record `hash` in `marker` last, so an
/// interrupted install is redone. A line with the gateway token is written
/// once per gateway address of `network`; a network without one fails the
/// step rather than install a file that would admit it.
#[allow(clippy::too_many_arguments)]
pub fn install_live(
    staged: &str,
    dir: &str,
    marker: &str,
    files: &[LiveFile],
    network: &str,
    container: &str,
    signal: &str,
    line_for_marker: &str,
) -> String {
    let q = |s: &str| shell(&[s.to_string()]);
    let mut lines = vec![format!("mkdir -p {}", q(dir))];
    if files.iter().any(|f| f.gateway) {
        lines.push(format!(
            "gws=$({})",
            shell(&argv([
                "docker",
                "network",
                "inspect",
                "--format",
                "{{range .IPAM.Config}}{{.Gateway}} {{end}}",
                network,
            ]))
        ));
        lines.push(format!(
            "{{ [ -n \"$(echo $gws)\" ] || {{ echo {} >&2; exit 3; }}; }}",
            q(&format!(
                "network {network} has no gateway address to refuse"
            ))
        ));
    }
    let token = crate::templates::NETWORK_GATEWAY_TOKEN;
    for f in files {
        let from = q(&format!("{staged}/{}", f.name));
        let tmp = q(&format!("{dir}/.{}.new", f.name));
        let to = q(&format!("{dir}/{}", f.name));
        if f.gateway {
            let program = "index($0, t) { n = split(gws, g, \" \"); for (i = 1; i <= n; i++) \
                 { a = g[i] (index(g[i], \":\") ? \"/128\" : \"/32\"); l = $0; gsub(t, a, l); print l } next } { print }";
            lines.push(format!(
                "awk -v gws=\"$gws\" -v t={} {} {from} > {tmp}",
                q(token),
                q(program)
            ));
        } else {
            lines.push(format!("cp {from} {tmp}"));
        }
        lines.push(format!("chmod 0644 {tmp} && mv -f {tmp} {to}"));
    }
    lines.push(format!("rm -rf {}", q(staged)));
    let c = q(container);
    lines.push(format!(
        "if [ \"$(docker inspect --format '{{{{.State.Running}}}}' {c} 2>/dev/null)\" = true ]; then docker kill --signal {} {c} >/dev/null; fi",
        q(signal)
    ));
    let tmp_marker = q(&format!("{marker}.new"));
    lines.push(format!(
        "printf '%s\\n' {} > {tmp_marker} && mv -f {tmp_marker} {}",
        q(line_for_marker),
        q(marker)
    ));
    and(&lines)
}

/// Where a volume is mounted inside the throwaway container that reads or
/// writes it: `/volumes/NAME`, so a tar made with `-C /volumes` holds one
/// top-level folder per volume.
pub fn volume_mount_point(volume: &str) -> String {
    format!("/volumes/{volume}")
}

/// The folders a restore keeps beside a volume's content while it works:
/// the verified copy waiting for its swap, and the old content during the
/// swap. Backups leave them out.
pub const STAGING_DIR: &str = ".provision-incoming";
pub const OLD_DIR: &str = ".provision-old";

/// Started in its own session (`setsid`) before any container is stopped:
/// it reads the FIFO `$1/f`, whose only writers are the shell that stops
/// the containers and that shell's children. `done` on it means "nothing to
/// do"; end of file without it means that shell died however it died
/// (SIGKILL of its process group after a timeout, a dropped SSH
/// connection, an OOM kill), and the containers are started again: first
/// `docker stop`, so one whose interrupted stop is still under way is
/// settled, and after waiting for the helper container `$2` (a swap that
/// must finish before its users start; `-` for none).
const RESTART_WATCHER: &str = r#"w="$1"; helper="$2"; shift 2
IFS= read -r said <"$w/f" || said=
rm -rf "$w"
[ "$said" = done ] && exit 0
[ "$helper" = - ] || docker wait "$helper" >/dev/null 2>&1 || true
docker stop "$@" >/dev/null 2>&1 || true
docker start "$@" >/dev/null 2>&1"#;

/// `body` run with the containers that use `volumes` stopped, and those
/// containers always started again afterwards: by a trap when this shell
/// ends (a failure, HUP, TERM, PIPE), and by a detached watcher
/// ([`RESTART_WATCHER`]) when it is killed outright. With `restart` false
/// (the caller is about to replace the containers) they are started again
/// only if `body` failed. `helper` names the container `body` runs whose
/// end the watcher waits for. Nothing here writes to stdout: it may carry
/// a tar stream.
fn with_users_stopped(volumes: &[String], body: &str, restart: bool, helper: &str) -> String {
    let mut ps = argv(["docker", "ps", "-q"]);
    for v in volumes {
        ps.push("--filter".into());
        ps.push(format!("volume={v}"));
    }
    let watcher = shell(&argv([
        "setsid",
        "sh",
        "-c",
        RESTART_WATCHER,
        "provision-restart",
    ]));
    let helper = shell(&[helper.to_string()]);
    let on_exit = if restart {
        "started_again"
    } else {
        "if [ $finished = yes ]; then told_done; else started_again; fi"
    };
    [
        "command -v setsid >/dev/null || { echo 'setsid (util-linux) is missing on this host' >&2; exit 5; }".to_string(),
        format!("ids=$({})", shell(&ps)),
        "finished=no".into(),
        // A watcher gone (it cannot be) must not fail a finished copy.
        "told_done() { [ -z \"$ids\" ] || echo done >&9 2>/dev/null || true; }".into(),
        "started_again() { [ -z \"$ids\" ] || { docker start $ids >/dev/null && told_done; }; }".into(),
        "if [ -n \"$ids\" ]; then".into(),
        "  w=$(mktemp -d) && mkfifo \"$w/f\"".into(),
        format!("  {watcher} \"$w\" {helper} $ids </dev/null >/dev/null 2>&1 &"),
        // Blocks until the watcher opened its end: it is in place before
        // anything is stopped.
        "  exec 9>\"$w/f\"".into(),
        "fi".into(),
        format!("trap 'rc=$?; trap \"\" PIPE HUP TERM; {on_exit}; exit $rc' EXIT"),
        "trap 'exit 129' HUP".into(),
        "trap 'exit 141' PIPE".into(),
        "trap 'exit 143' TERM".into(),
        "[ -z \"$ids\" ] || docker stop $ids >/dev/null".into(),
        body.to_string(),
        "finished=yes".into(),
    ]
    .join("\n")
}

/// Wait until no running container on the host uses any of `volumes`
/// (Swarm stops a scaled-down task on its own time); after `timeout`
/// seconds fail naming the containers still using them.
pub fn wait_volumes_unused(volumes: &[String], timeout: u64) -> String {
    let mut ps = argv(["docker", "ps", "-q"]);
    for v in volumes {
        ps.push("--filter".into());
        ps.push(format!("volume={v}"));
    }
    let ps = shell(&ps);
    let msg = shell(&[format!(
        "{} still in use after {timeout} s by:",
        volumes.join(", ")
    )]);
    format!(
        "end=$(( $(date +%s) + {timeout} )); \
         while [ -n \"$({ps})\" ]; do \
           if [ \"$(date +%s)\" -ge \"$end\" ]; then echo {msg} $({ps} --format '{{{{.Names}}}}') >&2; exit 1; fi; \
           sleep 1; \
         done"
    )
}

/// Stream a tar of `volumes` to stdout, read through a throwaway container of
/// `image` (the seed's `docker run --rm --volumes-from ... tar`). Containers
/// that use the volumes are stopped for the copy so it is consistent (a
/// stopped PostgreSQL has checkpointed), and started again afterwards
/// whatever happens to the copy or the connection (see
/// [`with_users_stopped`]); when `restart` is false (the caller is about to
/// replace them) only if the copy failed. A missing volume is an error,
/// never an empty archive.
pub fn backup_volumes(volumes: &[String], image: &str, restart: bool) -> String {
    let mut lines = vec!["set -e".to_string()];
    for v in volumes {
        let q = shell(std::slice::from_ref(v));
        let msg = shell(&[format!("no volume {v} on this host")]);
        lines.push(format!(
            "docker volume inspect {q} >/dev/null 2>&1 || {{ echo {msg} >&2; exit 3; }}",
        ));
    }
    let mut run = argv(["docker", "run", "--rm", "--log-driver", "none"]);
    for v in volumes {
        run.push("--volume".into());
        run.push(format!("{v}:{}:ro", volume_mount_point(v)));
    }
    run.extend(argv([image, "tar", "-C", "/volumes", "--anchored"]));
    for v in volumes {
        for dir in [STAGING_DIR, OLD_DIR] {
            run.push(format!("--exclude={v}/{dir}"));
        }
    }
    run.extend(argv(["-cf", "-"]));
    run.extend(volumes.iter().cloned());
    lines.push(with_users_stopped(volumes, &shell(&run), restart, "-"));
    lines.join("\n")
}

/// The script the throwaway container runs on a volume mounted at `$3`:
///
/// - `stage MEMBER DIR`: extract folder MEMBER of the tar on stdin beside
///   the volume's content (in [`STAGING_DIR`]), hashing every byte that
///   arrives, and print `@received SIZE SHA256`. The content is not touched:
///   whoever sent the stream compares the digest with what was sent (GNU tar
///   exits 0 on a stream cut exactly at a member boundary) and only then
///   asks for the swap.
/// - `swap MEMBER DIR "SIZE SHA256"`: replace the content with the staged
///   copy, if it is the one with that digest. The old content moves aside
///   first and goes only once the new one is in place.
/// - `discard MEMBER DIR`: remove a staged copy.
const VOLUME_IN_CONTAINER: &str = r#"set -eu
mode="$1"; m="$2"; cd "$3"
if [ -e .provision-old ]; then
  echo "a swap of this volume was interrupted: its old content is in .provision-old; look at it before restoring again" >&2
  exit 5
fi
case "$mode" in
stage)
  rm -rf .provision-incoming
  mkdir .provision-incoming
  t=$(mktemp -d)
  mkfifo "$t/sum" "$t/size"
  sha256sum <"$t/sum" >"$t/sha" &
  wc -c <"$t/size" >"$t/n" &
  ok=yes
  tee "$t/sum" "$t/size" | { tar -C .provision-incoming --numeric-owner -xpf - "$m" || exit 4; cat >/dev/null; } || ok=no
  wait
  read -r sha _ <"$t/sha"
  read -r n <"$t/n"
  echo "@received $n $sha"
  if [ $ok = no ] || [ ! -d ".provision-incoming/$m" ]; then
    rm -rf .provision-incoming
    echo "the archive is incomplete, corrupted or has no folder $m: volume left as it was" >&2
    exit 4
  fi
  echo "$n $sha" >.provision-incoming/.digest
  ;;
swap)
  got=$(cat .provision-incoming/.digest 2>/dev/null || true)
  if [ -z "$got" ] || [ "$got" != "$4" ]; then
    echo "the staged copy is not the verified one (${got:-none}; expected $4): volume left as it was" >&2
    exit 4
  fi
  mkdir .provision-old
  find . -mindepth 1 -maxdepth 1 ! -name .provision-incoming ! -name .provision-old -exec mv -t .provision-old {} +
  find ".provision-incoming/$m" -mindepth 1 -maxdepth 1 -exec mv -t . {} +
  chown --reference=".provision-incoming/$m" .
  chmod --reference=".provision-incoming/$m" .
  rm -rf .provision-incoming .provision-old
  ;;
discard)
  rm -rf .provision-incoming
  ;;
esac"#;

/// `docker run` of the throwaway container running [`VOLUME_IN_CONTAINER`].
fn volume_container(volume: &str, image: &str, extra: &[&str], args: &[&str]) -> Vec<String> {
    let mount = volume_mount_point(volume);
    let mut a = argv(["docker", "run", "--rm", "--log-driver", "none"]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a.extend(argv([
        "--volume".to_string(),
        format!("{volume}:{mount}"),
        image.into(),
        "sh".into(),
        "-c".into(),
        VOLUME_IN_CONTAINER.into(),
        "provision-volume".into(),
    ]));
    a.push(args[0].to_string());
    a.push(args[1].to_string());
    a.push(mount);
    a.extend(args[2..].iter().map(|s| s.to_string()));
    a
}

/// Extract folder `member` of the tar read on stdin beside the content of
/// `volume` (creating the volume when missing) and print `@received SIZE
/// SHA256` of the whole stream. Nothing is stopped and nothing replaced:
/// [`swap_volume`] does that once the caller compared the digest.
pub fn stage_volume(project: &str, volume: &str, member: &str, image: &str) -> String {
    let q = shell(&[volume.to_string()]);
    [
        "set -e".to_string(),
        format!(
            "docker volume inspect {q} >/dev/null 2>&1 || {} >/dev/null",
            shell(&volume_create(project, volume))
        ),
        shell(&volume_container(
            volume,
            image,
            &["-i"],
            &["stage", member],
        )),
    ]
    .join("\n")
}

/// Name of the container that swaps a volume's content: the restart
/// watcher waits for it.
pub fn swap_container(project: &str, volume: &str) -> String {
    format!("{project}-swap-{volume}")
}

/// Replace the content of `volume` with the copy [`stage_volume`] staged, if
/// its digest is `digest` (`SIZE SHA256`). Containers using the volume are
/// stopped meanwhile and always started again. The swap container ignores
/// the signals its CLI gets (`--sig-proxy=false`): once begun, the few
/// renames run to their end.
pub fn swap_volume(project: &str, volume: &str, member: &str, image: &str, digest: &str) -> String {
    let name = swap_container(project, volume);
    let run = volume_container(
        volume,
        image,
        &["--sig-proxy=false", "--name", &name],
        &["swap", member, digest],
    );
    [
        "set -e".to_string(),
        format!(
            "{} >/dev/null 2>&1 || true",
            shell(&argv(["docker", "rm", "--force", &name]))
        ),
        with_users_stopped(&[volume.to_string()], &shell(&run), true, &name),
    ]
    .join("\n")
}

/// Remove a staged copy that did not match what was sent.
pub fn discard_staged(volume: &str, member: &str, image: &str) -> String {
    shell(&volume_container(volume, image, &[], &["discard", member]))
}

/// The named volumes a container mounts, one per line.
pub fn container_volumes(container: &str) -> Vec<String> {
    argv([
        "docker",
        "inspect",
        "--format",
        "{{range .Mounts}}{{if eq .Type \"volume\"}}{{println .Name}}{{end}}{{end}}",
        container,
    ])
}

/// Take the run lock of a project on a host: `mkdir` is atomic, so of two
/// runs exactly one gets it. The winner writes `info` (owner, time, command)
/// into it; a loser prints the holder's info after `@locked` and exits 75.
/// `break_lock` removes a (stale) lock first.
pub fn lock_take(project: &str, info: &str, break_lock: bool) -> String {
    let root = remote_root(project);
    let dir = shell(&[format!("{root}/lock")]);
    let mut lines = vec![format!("mkdir -p {}", shell(&[root]))];
    if break_lock {
        lines.push(format!(
            "if [ -d {dir} ]; then echo \"@broken $(cat {dir}/info 2>/dev/null)\"; rm -rf {dir}; fi"
        ));
    }
    lines.push(format!(
        "if mkdir {dir} 2>/dev/null; then printf '%s since %s\\n' {} \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" > {dir}/info; \
         else echo @locked; cat {dir}/info 2>/dev/null; exit 75; fi",
        shell(&[info.to_string()])
    ));
    lines.join("\n")
}

/// Release the lock if it is still ours (its info starts with `info`).
pub fn lock_release(project: &str, info: &str) -> String {
    let dir = shell(&[format!("{}/lock", remote_root(project))]);
    format!(
        "case \"$(cat {dir}/info 2>/dev/null)\" in {}*) rm -rf {dir};; esac",
        shell(&[info.to_string()])
    )
}

/// Append one line to the project's audit log on the host, prefixed with the
/// host's UTC time.
pub fn audit_append(project: &str, line: &str) -> String {
    let root = remote_root(project);
    format!(
        "mkdir -p {} && printf '%s\\t%s\\n' \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" {} >> {}",
        shell(std::slice::from_ref(&root)),
        shell(&[line.replace(['\n', '\r'], " ")]),
        shell(&[format!("{root}/audit.log")])
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_joined_node_claims_its_address_and_label() {
        let line = claim_node("abc123", "10.0.0.15", "n5");
        assert!(
            line.contains("[ \"$o\" != abc123 ] || continue"),
            "the new node itself is kept: {line}"
        );
        assert!(line.contains("= 10.0.0.15 ] || continue"), "{line}");
        assert!(line.contains("docker node rm --force \"$o\""), "{line}");
        assert!(
            line.ends_with("docker node update --label-add 'provision.host=n5' abc123 >/dev/null"),
            "{line}"
        );
        // hosts.toml names are checked, but the line quotes what it is given.
        let odd = claim_node("x", "10.0.0.1", "n 5;rm");
        assert!(odd.contains("'provision.host=n 5;rm'"), "{odd}");
    }

    #[test]
    fn container_state_and_log_tail_are_one_line_each() {
        assert_eq!(
            shell(&container_state("p-rails")),
            "docker inspect --format '{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}' p-rails"
        );
        assert_eq!(
            shell(&container_log_tail("p-rails", 20)),
            "docker logs --tail 20 p-rails"
        );
    }

    use super::*;

    fn spec() -> RunSpec {
        RunSpec {
            project: "pg".into(),
            service: "rails".into(),
            container: "pg-rails".into(),
            image: "pg-rails:abc".into(),
            network: "pg".into(),
            bind_address: Some("10.0.0.1".into()),
            publish: vec![Publish {
                host_port: 8080,
                container_port: 3000,
            }],
            volumes: vec![VolumeMount {
                volume: "data".into(),
                path: "/data".into(),
                read_only: true,
                implied: false,
            }],
            binds: vec![],
            volumes_from: vec!["pg-store".into()],
            env_file: Some("/var/lib/provision/pg/env/rails.env".into()),
            fluentd: Some("127.0.0.1:24224".into()),
            secrets: vec![
                SecretRef {
                    name: "PG_PASSWORD".into(),
                    digest: "0123abcd".into(),
                    file: Some("/var/lib/provision/pg/secrets/rails/PG_PASSWORD".into()),
                },
                SecretRef {
                    name: "SECRET_KEY_BASE".into(),
                    digest: "4567ef01".into(),
                    file: None,
                },
            ],
        }
    }

    #[test]
    fn run_argv_is_exact() {
        assert_eq!(
            run(&spec(), "h1"),
            argv([
                "docker",
                "run",
                "--detach",
                "--name",
                "pg-rails",
                "--hostname",
                "rails",
                "--network",
                "pg",
                "--network-alias",
                "rails",
                "--restart",
                "unless-stopped",
                "--label",
                "provision.project=pg",
                "--label",
                "provision.service=rails",
                "--label",
                "provision.spec=h1",
                "--label",
                "provision.secrets=PG_PASSWORD:0123abcd,SECRET_KEY_BASE:4567ef01",
                "--env-file",
                "/var/lib/provision/pg/env/rails.env",
                "--mount",
                "type=bind,source=/var/lib/provision/pg/secrets/rails/PG_PASSWORD,target=/run/secrets/PG_PASSWORD,readonly",
                "--publish",
                "10.0.0.1:8080:3000",
                "--volume",
                "data:/data:ro",
                "--volumes-from",
                "pg-store",
                "--log-driver",
                "fluentd",
                "--log-opt",
                "fluentd-address=127.0.0.1:24224",
                "--log-opt",
                "fluentd-async=true",
                "--log-opt",
                "tag=pg.pg-rails",
                "pg-rails:abc",
            ])
        );
    }

    #[test]
    fn build_argv_is_exact() {
        assert_eq!(
            build(
                "pg",
                "nginx",
                "pg-nginx:1234",
                "1234abcd",
                "/var/lib/provision/pg/build/nginx"
            ),
            argv([
                "docker",
                "build",
                "--tag",
                "pg-nginx:1234",
                "--label",
                "provision.project=pg",
                "--label",
                "provision.service=nginx",
                "--label",
                "provision.context=1234abcd",
                "/var/lib/provision/pg/build/nginx",
            ])
        );
    }

    #[test]
    fn network_volume_and_data_container_argv() {
        assert_eq!(
            network_create("pg", "pg"),
            argv([
                "docker",
                "network",
                "create",
                "--label",
                "provision.project=pg",
                "pg"
            ])
        );
        assert_eq!(
            volume_create("pg", "pgdata"),
            argv([
                "docker",
                "volume",
                "create",
                "--label",
                "provision.project=pg",
                "pgdata"
            ])
        );
        assert_eq!(
            data_container_create("pg", "pg-store", "debian:bookworm", &["/data".into()]),
            argv([
                "docker",
                "create",
                "--name",
                "pg-store",
                "--label",
                "provision.project=pg",
                "-v",
                "/data",
                "debian:bookworm",
                "true",
            ])
        );
    }

    #[test]
    fn shell_quotes_what_sh_or_bash_would_expand() {
        let line = shell(&argv([
            "x",
            "{a,b}",
            "~root",
            "!x",
            "",
            "a=b",
            "é",
            "-a_b./c:d,e+f@g",
        ]));
        assert_eq!(
            line,
            "x '{a,b}' '~root' '!x' '' 'a=b' 'é' '-a_b./c:d,e+f@g'"
        );
    }

    #[test]
    fn shell_quotes_hostile_values() {
        let line = shell(&argv(["echo", "a b", "$(rm -rf /)", "it's", "`x`"]));
        assert_eq!(line, r#"echo 'a b' '$(rm -rf /)' "it's" '`x`'"#);
    }

    #[test]
    fn untar_quotes_the_folder() {
        assert_eq!(untar_into("/var/lib/provision/p/build/x"), "rm -rf /var/lib/provision/p/build/x && mkdir -p /var/lib/provision/p/build/x && tar -x -p --no-same-owner -f - -C /var/lib/provision/p/build/x");
    }

    #[test]
    fn backup_arms_the_restart_before_stopping_and_leaves_staging_out() {
        let b = backup_volumes(&["pgdata".into(), "my vol".into()], "debian:bookworm", true);
        assert!(b.starts_with(
            "set -e\n\
             docker volume inspect pgdata >/dev/null 2>&1 || { echo 'no volume pgdata on this host' >&2; exit 3; }\n\
             docker volume inspect 'my vol' >/dev/null 2>&1 || { echo 'no volume my vol on this host' >&2; exit 3; }\n"
        ));
        assert!(
            b.contains("ids=$(docker ps -q --filter 'volume=pgdata' --filter 'volume=my vol')\n")
        );
        assert!(b.contains(
            "docker run --rm --log-driver none --volume pgdata:/volumes/pgdata:ro --volume 'my vol:/volumes/my vol:ro' \
             debian:bookworm tar -C /volumes --anchored '--exclude=pgdata/.provision-incoming' '--exclude=pgdata/.provision-old' \
             '--exclude=my vol/.provision-incoming' '--exclude=my vol/.provision-old' -cf - pgdata 'my vol'\n"
        ));
        // The watcher and the traps are in place before anything is stopped.
        let order = [
            "setsid sh -c",
            "exec 9>",
            "trap 'rc=$?;",
            "trap 'exit 129' HUP",
            "trap 'exit 141' PIPE",
            "trap 'exit 143' TERM",
            "docker stop $ids",
            "debian:bookworm tar",
            "finished=yes",
        ];
        let at: Vec<usize> = order.iter().map(|w| b.find(w).expect(w)).collect();
        assert!(at.windows(2).all(|p| p[0] < p[1]), "{b}");
        assert!(b.contains("; started_again; exit $rc' EXIT"));
        // Before a replacement: started again only if the copy failed.
        let pre = backup_volumes(&["d".into()], "img", false);
        assert!(pre.contains(
            "if [ $finished = yes ]; then told_done; else started_again; fi; exit $rc' EXIT"
        ));
    }

    /// The in-container script, run by the real sh and GNU tar on a folder
    /// standing for the volume.
    fn volume_script(args: &[&str], stdin: &[u8]) -> std::process::Output {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(VOLUME_IN_CONTAINER)
            .arg("provision-volume")
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        let _ = input.write_all(stdin);
        drop(input);
        child.wait_with_output().unwrap()
    }

    #[test]
    fn a_volume_is_swapped_only_for_the_verified_whole_stream() {
        use sha2::Digest;
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("vol");
        std::fs::create_dir(&vol).unwrap();
        std::fs::write(vol.join("old"), "old content").unwrap();
        let v = vol.to_str().unwrap();
        // A tar of folder `pgdata` with two members, as GNU tar writes it.
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in [("pgdata/a", &b"first"[..]), ("pgdata/b", &[7u8; 2000][..])] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, name, body).unwrap();
        }
        let whole = b.into_inner().unwrap();
        // Cut right after the first member's last block: GNU tar exits 0.
        let cut = &whole[..1024];
        let out = volume_script(&["stage", "pgdata", v], cut);
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{out:?}");
        let digest = said.trim().strip_prefix("@received ").unwrap().to_string();
        assert!(digest.starts_with("1024 "), "{digest}");
        // The sender knows the whole stream's digest: the swap is refused.
        let want = format!(
            "{} {}",
            whole.len(),
            hex::encode(sha2::Sha256::digest(&whole))
        );
        let out = volume_script(&["swap", "pgdata", v, &want], b"");
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("volume left as it was"));
        assert_eq!(
            std::fs::read_to_string(vol.join("old")).unwrap(),
            "old content"
        );
        assert!(!vol.join("a").exists());
        // A stream cut inside a member's data fails at once, also left as
        // it was. (Cut inside a header, GNU tar exits 0 again.)
        let out = volume_script(&["stage", "pgdata", v], &whole[..2000]);
        assert_eq!(out.status.code(), Some(4), "{out:?}");
        assert!(!vol.join(STAGING_DIR).exists());
        // The whole stream: staged, then swapped with its digest.
        let out = volume_script(&["stage", "pgdata", v], &whole);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("@received {want}")
        );
        let out = volume_script(&["swap", "pgdata", v, &want], b"");
        assert!(out.status.success(), "{out:?}");
        assert!(!vol.join("old").exists());
        assert_eq!(std::fs::read(vol.join("a")).unwrap(), b"first");
        assert_eq!(std::fs::read(vol.join("b")).unwrap(), vec![7u8; 2000]);
        assert!(!vol.join(STAGING_DIR).exists() && !vol.join(OLD_DIR).exists());
    }

    #[test]
    fn live_files_refuse_each_gateway_and_are_swapped_in_by_rename() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let staged = format!("{d}/.incoming-postgis");
        std::fs::create_dir(&staged).unwrap();
        let token = crate::templates::NETWORK_GATEWAY_TOKEN;
        std::fs::write(
            format!("{staged}/pg_hba.conf"),
            format!("local all all peer\nhost all all {token}  reject\nhost all all samenet scram-sha-256\n"),
        )
        .unwrap();
        let line = install_live(
            &staged,
            &format!("{d}/postgis"),
            &format!("{d}/postgis.hash"),
            &[LiveFile {
                name: "pg_hba.conf",
                gateway: true,
            }],
            "pg",
            "pg-postgis",
            "HUP",
            "postgis v1",
        );
        // The text logic only: Docker's answers stand in for the host's.
        let stub = "docker() { case \"$1\" in network) echo '172.18.0.1 fd00:1::1 ';; *) echo false;; esac; }";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{stub}\n{line}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read_to_string(format!("{d}/postgis/pg_hba.conf")).unwrap(),
            "local all all peer\nhost all all 172.18.0.1/32  reject\nhost all all fd00:1::1/128  reject\n\
             host all all samenet scram-sha-256\n"
        );
        assert_eq!(
            std::fs::read_to_string(format!("{d}/postgis.hash")).unwrap(),
            "postgis v1\n"
        );
        assert!(!std::path::Path::new(&staged).exists());
        // No gateway: the step fails and installs nothing that would admit it.
        std::fs::create_dir(&staged).unwrap();
        std::fs::write(format!("{staged}/pg_hba.conf"), format!("{token}\n")).unwrap();
        let stub = "docker() { echo ' '; }";
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{stub}\n{line}"))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(3), "{out:?}");
        assert!(std::fs::read_to_string(format!("{d}/postgis/pg_hba.conf"))
            .unwrap()
            .contains("172.18.0.1/32"));
    }

    #[test]
    fn lock_is_a_mkdir_with_info_and_release_checks_the_owner() {
        let take = lock_take("pg", "me@here (pid 1, run ab): provision up", false);
        assert_eq!(
            take,
            "mkdir -p /var/lib/provision/pg\n\
             if mkdir /var/lib/provision/pg/lock 2>/dev/null; then printf '%s since %s\\n' 'me@here (pid 1, run ab): provision up' \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" > /var/lib/provision/pg/lock/info; \
             else echo @locked; cat /var/lib/provision/pg/lock/info 2>/dev/null; exit 75; fi"
        );
        assert!(lock_take("pg", "x", true).contains("rm -rf /var/lib/provision/pg/lock; fi"));
        assert_eq!(
            lock_release("pg", "me (run ab)"),
            "case \"$(cat /var/lib/provision/pg/lock/info 2>/dev/null)\" in 'me (run ab)'*) rm -rf /var/lib/provision/pg/lock;; esac"
        );
        assert_eq!(
            audit_append("pg", "me\tprovision up\nx\tok"),
            "mkdir -p /var/lib/provision/pg && printf '%s\\t%s\\n' \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" 'me\tprovision up x\tok' >> /var/lib/provision/pg/audit.log"
        );
    }

    #[test]
    fn logs_argv_carries_each_option_and_ends_options_before_the_container() {
        assert_eq!(
            shell(&logs("pv-rails", &LogsOptions::default())),
            "docker logs -- pv-rails"
        );
        let opts = LogsOptions {
            follow: true,
            tail: Some(20),
            since: Some("10m; rm -rf /".into()),
        };
        assert_eq!(
            shell(&logs("pv-rails", &opts)),
            "docker logs --follow --tail 20 --since '10m; rm -rf /' -- pv-rails"
        );
    }

    #[test]
    fn exec_argv_quotes_a_hostile_argument_once_byte_for_byte() {
        let hostile = "it's \"$(id)\" `id` $HOME a  b\nline2\t\\ *";
        let cmd = argv(["printf", "%s", hostile]);
        let line = shell(&exec("pv-rails", false, false, &cmd));
        // The shell reads back exactly the words given: nothing expanded,
        // nothing split, nothing quoted twice.
        let words = shlex::split(&line).expect("one valid shell line");
        assert_eq!(words[..4], ["docker", "exec", "pv-rails", "printf"]);
        assert_eq!(words[4], "%s");
        assert_eq!(words[5], hostile);
        assert_eq!(words.len(), 6);
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(shell(&cmd))
            .output()
            .unwrap();
        assert_eq!(out.stdout, hostile.as_bytes());
    }

    #[test]
    fn exec_argv_flags_come_before_the_container() {
        let cmd = argv(["sh", "-c", "exit 7"]);
        assert_eq!(
            shell(&exec("pv-rails", true, false, &cmd)),
            "docker exec --interactive pv-rails sh -c 'exit 7'"
        );
        assert_eq!(
            shell(&exec("pv-rails", true, true, &argv(["bash"]))),
            "docker exec --interactive --tty pv-rails bash"
        );
    }
}
