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

/// Quote one word for sh and bash. Only words made of characters no shell
/// expands stay bare; everything else is single-quoted (`'` as `'\''`).
/// `shell_words::quote` leaves `{a,b}` (bash brace expansion) and a
/// leading `~` (tilde expansion) bare: a value such as `/srv/{a,b}` became
/// two words on a host.
pub fn quote(word: &str) -> std::borrow::Cow<'_, str> {
    let bare = |c: char| c.is_ascii_alphanumeric() || "-_./:,+@".contains(c);
    if !word.is_empty() && word.chars().all(bare) {
        return word.into();
    }
    format!("'{}'", word.replace('\'', r"'\''")).into()
}

/// Join shell lines so that each runs only if the previous succeeded.
pub fn and(lines: &[String]) -> String {
    lines.join(" && ")
}

/// The probe's fast path: one python3 process asking the Docker socket.
pub const PROBE_SCRIPT: &str = include_str!("scripts/probe.py");

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
/// Every `docker` call costs a process start (~22 ms of CPU on the lab's
/// hosts; `docker info` alone took 50-75 ms of wall time) and the probe
/// made five or more: ~240 ms on an idle host. So where python3 and the
/// default Docker socket are there (Debian, most VMs), one python3 process
/// asks the Docker API for the same report ([`PROBE_SCRIPT`], ~40 ms of
/// CPU). If that path fails in any way, the CLI calls run, concurrently,
/// each into its own file of a temporary folder, printed in a fixed order.
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
        &format!("{{{{.Names}}}}\t{{{{.State}}}}\t{{{{.Label \"{SPEC_LABEL}\"}}}}"),
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
        .enumerate()
        .map(|(i, b)| {
            let q = shell(std::slice::from_ref(b));
            format!("{{ docker image inspect {q} >/dev/null 2>&1 && echo {q}; }} >\"$d/b{i}\" & ")
        })
        .collect();
    let chain = firewall_chain(project);
    let firewall = format!(
        "{} 2>/dev/null | grep -o 'provision [0-9a-f]*'; {} 2>/dev/null && echo hooked",
        shell(&argv(["iptables", "-w", "-S", &chain])),
        shell(&argv(["iptables", "-w", "-C", "DOCKER-USER", "-j", &chain]))
    );
    let mut fast = argv(["python3", "-S", "-c", PROBE_SCRIPT, project]);
    fast.extend(bases.iter().cloned());
    let fast = shell(&fast);
    format!(
        "if ! command -v docker >/dev/null 2>&1; then echo '@docker missing'; exit 0; fi; \
         echo '@firewall'; {firewall}; \
         if [ -z \"$DOCKER_HOST\" ] && [ -S /var/run/docker.sock ] && command -v python3 >/dev/null 2>&1 \
         && out=$({fast} 2>/dev/null); then printf '%s\\n' \"$out\"; exit 0; fi; \
         d=$(mktemp -d) || exit 1; trap 'rm -rf \"$d\"' EXIT; \
         {{ {version} >\"$d/v\" 2>/dev/null || : >\"$d/down\"; }} & \
         {images} >\"$d/i\" 2>/dev/null & {containers} >\"$d/c\" 2>/dev/null & \
         {networks} >\"$d/n\" 2>/dev/null & {volumes} >\"$d/o\" 2>/dev/null & \
         {bases_check}wait; \
         if [ -e \"$d/down\" ]; then echo '@docker stopped'; exit 0; fi; \
         echo \"@docker $(cat \"$d/v\")\"; echo '@images'; cat \"$d/i\"; echo '@containers'; cat \"$d/c\"; \
         echo '@networks'; cat \"$d/n\"; echo '@volumes'; cat \"$d/o\"; \
         echo '@bases'; cat \"$d\"/b* 2>/dev/null; true"
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
    pub volumes_from: Vec<String>,
    pub env_file: Option<String>,
    /// `HOST:PORT` of a Fluentd for Docker's log driver.
    pub fluentd: Option<String>,
}

/// `docker run` with the spec hash as a label. Secret values never appear
/// here: they are in the env file.
pub fn run(spec: &RunSpec, spec_hash: &str) -> Vec<String> {
    let mut a = argv([
        "docker".to_string(),
        "run".into(),
        "--detach".into(),
        "--name".into(),
        spec.container.clone(),
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
    if let Some(f) = &spec.env_file {
        a.push("--env-file".into());
        a.push(f.clone());
    }
    for p in &spec.publish {
        a.push("--publish".into());
        a.push(match &spec.bind_address {
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
            format!("tag={}.{{{{.Name}}}}", spec.project),
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

/// The readiness probe of a template, run inside the container.
pub fn exec_in(container: &str, probe: &[String]) -> Vec<String> {
    let mut a = argv(["docker", "exec", container]);
    a.extend(probe.iter().cloned());
    a
}

/// Firewall for published ports used from other hosts: only the listed
/// client addresses may open connections to `host_address:port`. Rules go in
/// the project's own chain, hooked into Docker's DOCKER-USER chain, and are
/// rewritten whole each time, so a changed client address replaces the old.
/// `--ctdir ORIGINAL` keeps the container's replies flowing (see LAB.md).
pub fn firewall(
    project: &str,
    host_address: &str,
    ports: &[(u16, Vec<String>)],
    marker: &str,
) -> String {
    let chain = firewall_chain(project);
    let ipt = |rest: &[&str]| {
        let mut a = vec!["iptables".to_string(), "-w".into()];
        a.extend(rest.iter().map(|s| s.to_string()));
        shell(&a)
    };
    let mut lines = vec![
        format!("{} 2>/dev/null || true", ipt(&["-N", &chain])),
        ipt(&["-F", &chain]),
        // The probe reads this marker back to tell whether the rules are current.
        ipt(&[
            "-A",
            &chain,
            "-m",
            "comment",
            "--comment",
            &format!("provision {marker}"),
        ]),
    ];
    for (port, clients) in ports {
        let port = port.to_string();
        let base = [
            "-A",
            &chain,
            "-p",
            "tcp",
            "-m",
            "conntrack",
            "--ctorigdst",
            host_address,
            "--ctorigdstport",
            &port,
            "--ctdir",
            "ORIGINAL",
        ];
        for c in clients {
            let mut r: Vec<&str> = base.to_vec();
            r.extend(["-s", c.as_str(), "-j", "RETURN"]);
            lines.push(ipt(&r));
        }
        let mut r: Vec<&str> = base.to_vec();
        r.extend(["-j", "DROP"]);
        lines.push(ipt(&r));
    }
    lines.push(format!(
        "{{ {} 2>/dev/null || {}; }}",
        ipt(&["-C", "DOCKER-USER", "-j", &chain]),
        ipt(&["-I", "DOCKER-USER", "-j", &chain])
    ));
    and(&lines)
}

pub fn firewall_chain(project: &str) -> String {
    // iptables chain names are at most 28 characters.
    let mut c = format!("PV-{project}");
    c.truncate(28);
    c
}

#[cfg(test)]
mod tests {
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
            }],
            volumes_from: vec!["pg-store".into()],
            env_file: Some("/var/lib/provision/pg/env/rails.env".into()),
            fluentd: Some("127.0.0.1:24224".into()),
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
                "--env-file",
                "/var/lib/provision/pg/env/rails.env",
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
                "tag=pg.{{.Name}}",
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
        assert_eq!(line, "x '{a,b}' '~root' '!x' '' 'a=b' 'é' -a_b./c:d,e+f@g");
    }

    #[test]
    fn shell_quotes_hostile_values() {
        let line = shell(&argv(["echo", "a b", "$(rm -rf /)", "it's", "`x`"]));
        assert_eq!(line, r#"echo 'a b' '$(rm -rf /)' 'it'\''s' '`x`'"#);
    }

    #[test]
    fn untar_quotes_the_folder() {
        assert_eq!(untar_into("/var/lib/provision/p/build/x"), "rm -rf /var/lib/provision/p/build/x && mkdir -p /var/lib/provision/p/build/x && tar -x -p --no-same-owner -f - -C /var/lib/provision/p/build/x");
    }

    #[test]
    fn firewall_allows_clients_then_drops() {
        let f = firewall("pg", "10.0.0.2", &[(5432, vec!["10.0.0.1".into()])], "abc");
        assert_eq!(
            f,
            "iptables -w -N PV-pg 2>/dev/null || true && iptables -w -F PV-pg && \
             iptables -w -A PV-pg -m comment --comment 'provision abc' && \
             iptables -w -A PV-pg -p tcp -m conntrack --ctorigdst 10.0.0.2 --ctorigdstport 5432 --ctdir ORIGINAL -s 10.0.0.1 -j RETURN && \
             iptables -w -A PV-pg -p tcp -m conntrack --ctorigdst 10.0.0.2 --ctorigdstport 5432 --ctdir ORIGINAL -j DROP && \
             { iptables -w -C DOCKER-USER -j PV-pg 2>/dev/null || iptables -w -I DOCKER-USER -j PV-pg; }"
        );
    }
}
