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
         echo '@unpullable'; cat {unpullable} 2>/dev/null; echo \"@now $(date +%s)\"; true"
    )
}

/// The part of the probe the Docker API cannot answer: the firewall chain,
/// images the host failed to pull, and the host's clock.
pub fn probe_extras(project: &str) -> String {
    let chain = crate::firewall::forward_chain(project);
    format!(
        "echo '@firewall'; {} 2>/dev/null | grep -o 'provision [0-9a-f]*'; {} 2>/dev/null && echo hooked; \
         echo '@unpullable'; cat {} 2>/dev/null; echo \"@now $(date +%s)\"; true",
        shell(&argv(["iptables", "-w", "-S", &chain])),
        shell(&argv(["iptables", "-w", "-C", "DOCKER-USER", "-j", &chain])),
        shell(&[unpullable_file(project)])
    )
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

/// Where a volume is mounted inside the throwaway container that reads or
/// writes it: `/volumes/NAME`, so a tar made with `-C /volumes` holds one
/// top-level folder per volume.
pub fn volume_mount_point(volume: &str) -> String {
    format!("/volumes/{volume}")
}

/// Stream a tar of `volumes` to stdout, read through a throwaway container of
/// `image` (the seed's `docker run --rm --volumes-from ... tar`). Containers
/// that use the volumes are stopped for the copy so it is consistent (a
/// stopped PostgreSQL has checkpointed), and started again afterwards
/// (always when `restart`, else only if the copy failed: the caller is about
/// to replace them). A missing volume is an error, never an empty archive.
pub fn backup_volumes(volumes: &[String], image: &str, restart: bool) -> String {
    let mut lines = vec!["set -e".to_string()];
    for v in volumes {
        let q = shell(std::slice::from_ref(v));
        let msg = shell(&[format!("no volume {v} on this host")]);
        lines.push(format!(
            "docker volume inspect {q} >/dev/null 2>&1 || {{ echo {msg} >&2; exit 3; }}",
        ));
    }
    let mut ps = argv(["docker", "ps", "-q"]);
    for v in volumes {
        ps.push("--filter".into());
        ps.push(format!("volume={v}"));
    }
    lines.push(format!("ids=$({})", shell(&ps)));
    lines.push("[ -z \"$ids\" ] || docker stop $ids >/dev/null".into());
    let mut run = argv(["docker", "run", "--rm", "--log-driver", "none"]);
    for v in volumes {
        run.push("--volume".into());
        run.push(format!("{v}:{}:ro", volume_mount_point(v)));
    }
    run.extend(argv([image, "tar", "-C", "/volumes", "-cf", "-"]));
    run.extend(volumes.iter().cloned());
    lines.push("rc=0".into());
    lines.push(format!("{} || rc=$?", shell(&run)));
    let start = "[ -z \"$ids\" ] || docker start $ids >/dev/null";
    if restart {
        lines.push(start.into());
    } else {
        lines.push(format!("[ $rc -eq 0 ] || {{ {start}; }}"));
    }
    lines.push("exit $rc".into());
    lines.join("\n")
}

/// The script the throwaway container runs to replace a volume's content
/// with folder `$1` of the tar on stdin. It extracts beside the old content
/// first and swaps only when the whole archive was read: a truncated stream
/// leaves the old content untouched.
const RESTORE_IN_CONTAINER: &str = r#"set -e
m="$1"
cd "$2"
rm -rf .provision-incoming
mkdir .provision-incoming
if ! tar -C .provision-incoming --numeric-owner -xpf - "$m"; then
  rm -rf .provision-incoming
  echo "the archive is incomplete or has no folder $m: volume left as it was" >&2
  exit 4
fi
find . -mindepth 1 -maxdepth 1 ! -name .provision-incoming -exec rm -rf {} +
find ".provision-incoming/$m" -mindepth 1 -maxdepth 1 -exec mv -t . {} +
chown --reference=".provision-incoming/$m" .
chmod --reference=".provision-incoming/$m" .
rm -rf .provision-incoming"#;

/// Replace the content of `volume` with folder `member` of the tar read on
/// stdin (creating the volume when missing). Containers using the volume are
/// stopped meanwhile and started again.
pub fn restore_volume(project: &str, volume: &str, member: &str, image: &str) -> String {
    let q = shell(&[volume.to_string()]);
    let mount = volume_mount_point(volume);
    let run = argv([
        "docker".to_string(),
        "run".into(),
        "--rm".into(),
        "-i".into(),
        "--log-driver".into(),
        "none".into(),
        "--volume".into(),
        format!("{volume}:{mount}"),
        image.into(),
        "sh".into(),
        "-c".into(),
        RESTORE_IN_CONTAINER.into(),
        "restore".into(),
        member.into(),
        mount,
    ]);
    [
        "set -e".to_string(),
        format!(
            "docker volume inspect {q} >/dev/null 2>&1 || {} >/dev/null",
            shell(&volume_create(project, volume))
        ),
        format!(
            "ids=$({})",
            shell(&argv([
                "docker",
                "ps",
                "-q",
                "--filter",
                &format!("volume={volume}")
            ]))
        ),
        "[ -z \"$ids\" ] || docker stop $ids >/dev/null".into(),
        "rc=0".into(),
        format!("{} || rc=$?", shell(&run)),
        "[ -z \"$ids\" ] || docker start $ids >/dev/null".into(),
        "exit $rc".into(),
    ]
    .join("\n")
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
    fn backup_stops_users_copies_read_only_and_restarts() {
        let b = backup_volumes(&["pgdata".into(), "my vol".into()], "debian:bookworm", true);
        assert_eq!(
            b,
            "set -e\n\
             docker volume inspect pgdata >/dev/null 2>&1 || { echo 'no volume pgdata on this host' >&2; exit 3; }\n\
             docker volume inspect 'my vol' >/dev/null 2>&1 || { echo 'no volume my vol on this host' >&2; exit 3; }\n\
             ids=$(docker ps -q --filter 'volume=pgdata' --filter 'volume=my vol')\n\
             [ -z \"$ids\" ] || docker stop $ids >/dev/null\n\
             rc=0\n\
             docker run --rm --log-driver none --volume pgdata:/volumes/pgdata:ro --volume 'my vol:/volumes/my vol:ro' debian:bookworm tar -C /volumes -cf - pgdata 'my vol' || rc=$?\n\
             [ -z \"$ids\" ] || docker start $ids >/dev/null\n\
             exit $rc"
        );
        // Before a replacement: started again only if the copy failed.
        let pre = backup_volumes(&["d".into()], "img", false);
        assert!(
            pre.contains("[ $rc -eq 0 ] || { [ -z \"$ids\" ] || docker start $ids >/dev/null; }")
        );
    }

    #[test]
    fn restore_extracts_beside_and_swaps_only_when_complete() {
        let r = restore_volume("pg", "pgdata", "pgdata", "debian:bookworm");
        assert!(r.starts_with("set -e\ndocker volume inspect pgdata >/dev/null 2>&1 || docker volume create --label 'provision.project=pg' pgdata >/dev/null\n"));
        assert!(r.contains("ids=$(docker ps -q --filter 'volume=pgdata')"));
        assert!(r.contains("docker run --rm -i --log-driver none --volume pgdata:/volumes/pgdata debian:bookworm sh -c "));
        assert!(r.ends_with(" restore pgdata /volumes/pgdata || rc=$?\n[ -z \"$ids\" ] || docker start $ids >/dev/null\nexit $rc"));
        // The old content goes only after tar read the whole archive.
        let extract = RESTORE_IN_CONTAINER
            .find("tar -C .provision-incoming")
            .unwrap();
        let wipe = RESTORE_IN_CONTAINER
            .find("! -name .provision-incoming -exec rm")
            .unwrap();
        assert!(extract < wipe);
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
}
