//! The planning of one service, for every runtime alike: its template
//! rendered, its environment and secrets, the wiring of what it `uses` and
//! where it `logs_to`, its live files, and the steps of other services it
//! waits for. The result is a [`ServiceWork`]; the runtime makes steps of it.

use std::collections::BTreeMap;

use crate::commands::SecretRef;
use crate::diagnostics::Diagnostic;
use crate::inventory::{AppSource, Service};
use crate::load::Loaded;
use crate::reach::{self, Reach};
use crate::runtime::{self, Live, Replacement, ServiceWork};
use crate::secrets::MASK;
use crate::templates::{ContextFile, RenderInput, Replace};

use super::{client_hosts, clients, context_hash, from_images, local_users, resolve_use};
use super::{StepId, StepKind};

pub(super) fn describe(
    loaded: &Loaded,
    s: &Service,
    app_files: &[ContextFile],
    root: &str,
) -> Result<ServiceWork, Diagnostic> {
    let inv = &loaded.inventory;
    let project = &inv.project.name;
    let host = inv.host(&s.host).expect("validated host");
    let t = &loaded.templates[&s.name];
    let vars = &loaded.vars[&s.name];

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
                let token = token.as_ref().map(|tok| {
                    let value = loaded.secrets.get(tok).unwrap_or_default().to_string();
                    (tok.clone(), value)
                });
                fetch = Some(crate::runtime::AppFetch {
                    url: url.clone(),
                    token,
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let bases = files
        .iter()
        .find(|f| f.path == "Dockerfile")
        .map(|f| from_images(&String::from_utf8_lossy(&f.data)))
        .unwrap_or_default();
    let hash = context_hash(&files);

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

    let logs_to = match &s.logs_to {
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
                // An unpinned swarm task runs on any node: the provider's
                // node address then.
                Some(p) if provider.host == s.host && s.pinned => {
                    Some(format!("127.0.0.1:{}", p.host_port))
                }
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
    let live = match (&t.manifest.live, live_files.is_empty()) {
        (Some(live), false) => {
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
            Some(Live {
                files: live_files,
                mount: live.mount.clone(),
                reload_signal: live.reload_signal.clone(),
                follows: client_hosts(inv, s),
            })
        }
        _ => None,
    };

    // What it waits for: each provider started (ready, where it says so)
    // and, across hosts, admitted by the provider's firewall and live files;
    // its own host's firewall when it publishes a guarded port.
    let mut after = Vec::new();
    for d in s.dependencies() {
        let p = inv.service(d).expect("validated");
        let pt = &loaded.templates[d];
        after.push(runtime::started(
            &p.host,
            &p.name,
            !pt.manifest.ready.is_empty(),
        ));
        if p.host != s.host && s.uses.contains(&p.name) && !p.publish.is_empty() {
            after.push(StepId::host(&p.host, StepKind::Firewall));
            if pt.manifest.live.is_some() {
                after.push(StepId::service(&p.host, &p.name, StepKind::Config));
            }
        }
    }
    let guarded = reach::of_service(inv, s)
        .map(|ports| ports.iter().any(|r| matches!(r.from, Reach::Only { .. })))
        .unwrap_or(false);
    let waited_for = inv
        .services
        .iter()
        .any(|c| c.dependencies().any(|d| d == &s.name));

    Ok(ServiceWork {
        project: project.clone(),
        root: root.to_string(),
        host: s.host.clone(),
        name: s.name.clone(),
        pinned: s.pinned,
        replicas: s.replicas.unwrap_or(1),
        context: files,
        context_hash: hash,
        bases,
        fetch,
        upstream: t.manifest.upstream,
        env_real,
        env_shown,
        secrets: secret_refs,
        secret_files,
        live,
        publish: s.publish.clone(),
        // Reported with the host's ports when it cannot be told.
        bind_address: reach::bind_address(inv, s).ok().flatten(),
        volumes: s.volumes.clone(),
        volumes_from: s.volumes_from.clone(),
        logs_to,
        ready: t.manifest.ready.clone(),
        waited_for,
        after,
        behind_firewall: guarded,
        replace: replacement(loaded, s),
        ready_timeout: s.ready_timeout.unwrap_or(super::READY_TIMEOUT_SECS),
    })
}

/// How a new container of `s` replaces the running one: start-first where
/// its template asks for it and nothing forbids two at once.
pub fn replacement(loaded: &Loaded, s: &Service) -> Replacement {
    let t = &loaded.templates[&s.name];
    match (s.replace, t.manifest.replace) {
        (Some(Replace::StopFirst), Replace::StartFirst) => {
            return Replacement::StopFirst {
                why: Some("hosts.toml asks for it".into()),
            }
        }
        (Some(Replace::StartFirst), _) | (None, Replace::StartFirst) => {}
        _ => return Replacement::StopFirst { why: None },
    }
    let why = if !s.volumes.is_empty() || !s.volumes_from.is_empty() {
        Some("it keeps data in a volume, which two containers must not write at once")
    } else if !s.publish.is_empty() {
        Some("it publishes a port, which two containers cannot share")
    } else if t.manifest.ready.is_empty() {
        Some("its template has no readiness probe to switch on")
    } else {
        None
    };
    if let Some(why) = why {
        return Replacement::StopFirst {
            why: Some(why.to_string()),
        };
    }
    let inv = &loaded.inventory;
    let reresolve = inv
        .services
        .iter()
        .filter(|c| c.host == s.host && c.uses.contains(&s.name))
        .filter_map(|c| {
            let signal = loaded.templates[&c.name]
                .manifest
                .reresolve_signal
                .clone()?;
            Some((c.name.clone(), signal))
        })
        .collect();
    Replacement::StartFirst {
        port: t.manifest.port,
        reresolve,
    }
}
