//! Today's runtime: Docker's engine on each host, one container per
//! service on the project's bridge network, images built on the host that
//! runs them, a spec-hash label on each container telling whether it is
//! current.

use crate::commands::{self, shell, RunSpec};
use crate::plan::{self, Action, Condition, Step, StepId, StepKind};
use crate::releases;
use crate::secrets::MASK;
use crate::templates::ContextFile;

use super::{HostWork, Replacement, Runtime, ServiceWork};

/// The image of data containers: it only holds volumes, never runs.
pub const DATA_IMAGE: &str = "debian:bookworm";

pub fn container_name(project: &str, service: &str) -> String {
    format!("{project}-{service}")
}

pub fn data_container_name(project: &str, data: &str) -> String {
    format!("{project}-data-{data}")
}

/// One Docker engine per host.
#[derive(Debug, Clone, Copy, Default)]
pub struct Engine;

fn docker_source(host: &crate::inventory::Host) -> &'static str {
    match host.docker {
        crate::inventory::DockerSource::Distro => "distro",
        crate::inventory::DockerSource::Upstream => "upstream",
    }
}

impl Runtime for Engine {
    fn host_steps(&self, w: &HostWork) -> Vec<Step> {
        let (host, project) = (w.host.name.as_str(), w.project);
        let docker = StepId::host(host, StepKind::Docker);
        let mut steps = vec![Step::new(
            docker.clone(),
            format!("install and start Docker ({})", docker_source(w.host)),
            Condition::DockerNotRunning,
        )
        .action(Action::Script {
            line: shell(&commands::install_docker(docker_source(w.host))),
            script: commands::install_docker_script(),
        })];
        if !w.has_work {
            return steps;
        }
        steps.push(
            Step::new(
                StepId::host(host, StepKind::Network),
                format!("network {project}"),
                Condition::NetworkMissing {
                    name: project.to_string(),
                },
            )
            .needs([docker.clone()])
            .action(Action::Run {
                line: shell(&commands::network_create(project, project)),
            }),
        );
        for (v, summary) in &w.volumes {
            steps.push(
                Step::new(
                    StepId::named(host, StepKind::Volume, v),
                    summary.clone(),
                    Condition::VolumeMissing { name: v.clone() },
                )
                .needs([docker.clone()])
                .action(Action::Run {
                    line: shell(&commands::volume_create(project, v)),
                }),
            );
        }
        for (d, paths) in &w.data {
            let name = data_container_name(project, d);
            steps.push(
                Step::new(
                    StepId::named(host, StepKind::DataContainer, d),
                    format!("data container {name} ({})", paths.join(", ")),
                    Condition::ContainerMissing { name: name.clone() },
                )
                .needs([docker.clone()])
                .action(Action::Run {
                    line: shell(&commands::data_container_create(
                        project, &name, DATA_IMAGE, paths,
                    )),
                }),
            );
        }
        steps
    }

    fn service_steps(&self, s: &ServiceWork) -> (Vec<Step>, Vec<Step>) {
        let build = build_step(s);
        let config = config_step(s);
        let mut runs = vec![run_step(s, config.is_some())];
        if s.waited_for && !s.ready.is_empty() {
            let id = |kind| StepId::service(&s.host, &s.name, kind);
            let container = container_name(&s.project, &s.name);
            runs.push(
                Step::new(
                    id(StepKind::Ready),
                    format!("wait until {} is ready", s.name),
                    Condition::Always,
                )
                .needs([id(StepKind::Run)])
                .action(Action::WaitReady {
                    line: shell(&commands::exec_in(&container, &s.ready)),
                    timeout_secs: s.ready_timeout,
                    container: container.clone(),
                    discard: false,
                })
                .upstream(s.upstream),
            );
        }
        (vec![build].into_iter().chain(config).collect(), runs)
    }
}

pub(crate) fn image_tag(s: &ServiceWork) -> String {
    format!(
        "{}:{}",
        container_name(&s.project, &s.name),
        &s.context_hash[..12]
    )
}

/// Upload the context (fetch the app tarball into it), `docker build`.
pub(crate) fn build_step(s: &ServiceWork) -> Step {
    let (root, project) = (&s.root, &s.project);
    let tag = image_tag(s);
    let build_dir = format!("{root}/build/{}", s.name);
    let mut actions = vec![Action::Upload {
        dir: build_dir.clone(),
        shown: format!(
            "{} files, context sha256 {}",
            s.context.len(),
            &s.context_hash[..12]
        ),
        files: s.context.clone(),
    }];
    if let Some(crate::runtime::AppFetch { url, token }) = &s.fetch {
        let q = commands::curl_config_quote;
        let mut cfg = format!(
            "url = {}\nlocation\nfail\nsilent\nshow-error\noutput = {}\n",
            q(url),
            q(&format!("{build_dir}/app.tar.gz"))
        );
        let mut shown = cfg.clone();
        if let Some((_, value)) = token {
            cfg.push_str(&format!(
                "user = {}\n",
                q(&format!("{value}:x-oauth-basic"))
            ));
            shown.push_str(&format!("user = {}\n", q(&format!("{MASK}:x-oauth-basic"))));
        }
        let fetch_dir = format!("{root}/fetch/{}", s.name);
        actions.push(Action::Upload {
            dir: fetch_dir.clone(),
            files: vec![ContextFile {
                path: "curl.cfg".into(),
                mode: 0o600,
                data: cfg.into_bytes(),
            }],
            shown,
        });
        actions.push(Action::Fetch {
            line: plan::fetch_line(
                &format!("{fetch_dir}/curl.cfg"),
                &format!("{build_dir}/app.tar.gz"),
                &format!("{build_dir}/app"),
            ),
            url: url.clone(),
            token: token.as_ref().map(|(name, _)| name.clone()),
        });
    }
    actions.push(Action::Run {
        line: shell(&commands::build(
            project,
            &s.name,
            &tag,
            &s.context_hash,
            &build_dir,
        )),
    });
    Step::new(
        StepId::service(&s.host, &s.name, StepKind::Build),
        format!("build image {tag}"),
        Condition::ImageMissing { tag: tag.clone() },
    )
    .needs([StepId::host(&s.host, StepKind::Network)])
    .actions(actions)
    .upstream(s.upstream)
    .bases(s.bases.clone())
}

/// Where the live files are mounted from: the run line names only the
/// folder, so the spec hash (and the container) does not change when they
/// do.
fn live_bind(s: &ServiceWork) -> Option<crate::inventory::VolumeMount> {
    let live = s.live.as_ref()?;
    Some(crate::inventory::VolumeMount {
        volume: plan::live_dir(&s.root, &s.name),
        path: live.mount.clone(),
        read_only: true,
        implied: false,
    })
}

/// Install the live files beside the container; a change is a reload.
fn config_step(s: &ServiceWork) -> Option<Step> {
    let live = s.live.as_ref()?;
    let (root, project) = (&s.root, &s.project);
    let container = container_name(project, &s.name);
    let dir = plan::live_dir(root, &s.name);
    let token = crate::templates::NETWORK_GATEWAY_TOKEN.as_bytes();
    let listed: Vec<commands::LiveFile> = live
        .files
        .iter()
        .map(|f| commands::LiveFile {
            name: &f.path,
            gateway: f.data.windows(token.len()).any(|w| w == token),
        })
        .collect();
    let hash = plan::context_hash(&live.files);
    // The marker changes with the content and with where and how it is
    // applied.
    let version = plan::hash_str(&format!(
        "{hash} {project} {} {}",
        live.mount, live.reload_signal
    ))[..16]
        .to_string();
    let staged = format!("{root}/live/.incoming-{}", s.name);
    let names: Vec<&str> = live.files.iter().map(|f| f.path.as_str()).collect();
    Some(
        Step::new(
            StepId::service(&s.host, &s.name, StepKind::Config),
            format!(
                "install {} of {} (mounted read-only at {}; a change is a reload: SIG{})",
                names.join(", "),
                s.name,
                live.mount,
                live.reload_signal
            ),
            Condition::ConfigDiffers {
                service: s.name.clone(),
                hash: version.clone(),
            },
        )
        .needs([StepId::host(&s.host, StepKind::Network)])
        .actions([
            Action::Upload {
                dir: staged.clone(),
                shown: format!("{}, sha256 {}", names.join(", "), &hash[..12]),
                files: live.files.clone(),
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
        ])
        .upstream(s.upstream)
        .follows(live.follows.clone()),
    )
}

/// Write the env (and secret) files, replace the container when its spec
/// hash changed.
fn run_step(s: &ServiceWork, has_config: bool) -> Step {
    let (root, project) = (&s.root, &s.project);
    let id = |kind| StepId::service(&s.host, &s.name, kind);
    let container = container_name(project, &s.name);
    let env_dir = format!("{root}/env/{}", s.name);
    let secrets_dir = format!("{root}/secrets/{}", s.name);
    let spec = RunSpec {
        project: project.clone(),
        service: s.name.clone(),
        container: container.clone(),
        image: image_tag(s),
        network: project.clone(),
        bind_address: s.bind_address.clone(),
        publish: s.publish.clone(),
        volumes: s.volumes.clone(),
        binds: live_bind(s).into_iter().collect(),
        volumes_from: s
            .volumes_from
            .iter()
            .map(|d| data_container_name(project, d))
            .collect(),
        env_file: Some(format!("{env_dir}/env")),
        fluentd: s.logs_to.clone(),
        secrets: s.secrets.clone(),
    };
    // The hash covers the run line (with the secrets' digests), the env file
    // (with real values: a new password must restart the service) and
    // nothing else.
    let spec_hash = plan::hash_str(&format!(
        "{}\n{}",
        shell(&commands::run(&spec, "")),
        s.env_real
    ))[..16]
        .to_string();
    let mut needs = vec![id(StepKind::Build)];
    needs.extend(s.after.iter().cloned());
    if has_config {
        needs.push(id(StepKind::Config));
    }
    for v in &s.volumes {
        needs.push(StepId::named(&s.host, StepKind::Volume, &v.volume));
    }
    for d in &s.volumes_from {
        needs.push(StepId::named(&s.host, StepKind::DataContainer, d));
    }
    if s.behind_firewall {
        needs.push(StepId::host(&s.host, StepKind::Firewall));
    }
    let mut actions = vec![Action::Upload {
        dir: env_dir,
        files: vec![ContextFile {
            path: "env".into(),
            mode: 0o600,
            data: s.env_real.clone().into_bytes(),
        }],
        shown: s.env_shown.clone(),
    }];
    if !s.secret_files.is_empty() {
        actions.push(Action::Upload {
            dir: secrets_dir,
            shown: s
                .secret_files
                .iter()
                .map(|f| format!("{}: {MASK}", f.path))
                .collect::<Vec<_>>()
                .join(", "),
            files: s.secret_files.clone(),
        });
    }
    match &s.replace {
        Replacement::StartFirst { port, reresolve } => {
            // Beside the serving one; it takes over only once ready.
            let next = releases::next_name(&container);
            actions.push(Action::Run {
                line: format!(
                    "{} 2>/dev/null || true",
                    shell(&commands::remove_container(&next))
                ),
            });
            actions.push(Action::Run {
                line: shell(&commands::run_as(&spec, &spec_hash, &next)),
            });
            actions.push(Action::WaitReady {
                line: shell(&commands::exec_in(&next, &s.ready)),
                timeout_secs: s.ready_timeout,
                container: next.clone(),
                discard: true,
            });
            let reresolve: Vec<releases::Reresolve> = reresolve
                .iter()
                .map(|(service, signal)| releases::Reresolve {
                    container: container_name(project, service),
                    signal: signal.clone(),
                })
                .collect();
            actions.push(Action::Run {
                line: releases::switch(&releases::Switch {
                    project,
                    service: &s.name,
                    container: &container,
                    candidate: &next,
                    port: *port,
                    reresolve: &reresolve,
                }),
            });
        }
        Replacement::StopFirst { .. } => {
            actions.push(Action::Run {
                line: format!(
                    "{} 2>/dev/null || true",
                    shell(&commands::remove_container(&container))
                ),
            });
            actions.push(Action::Run {
                line: shell(&commands::run(&spec, &spec_hash)),
            });
        }
    }
    Step::new(
        id(StepKind::Run),
        format!(
            "run container {container} (spec {spec_hash}; {})",
            s.replace.describe()
        ),
        Condition::ContainerOutdated {
            name: container.clone(),
            spec: spec_hash.clone(),
            secrets: s
                .secrets
                .iter()
                .map(|r| (r.name.clone(), r.digest.clone()))
                .collect(),
        },
    )
    .needs(needs)
    .actions(actions)
    .upstream(s.upstream)
}
