//! Everything that must be right before any host is touched: the
//! inventory, its templates and their variables, secrets, identity files.
//! All problems are collected and reported together.

use std::collections::BTreeMap;
use std::path::Path;

use crate::data_paths;
use crate::diagnostics::{suggest, Diagnostic};
use crate::inventory::{self, Inventory};
use crate::secrets::{self, Generate, Secrets};
use crate::templates::{self, Template};

/// A validated project, ready to plan.
#[derive(Debug)]
pub struct Loaded {
    pub inventory: Inventory,
    /// Each service's template, by service name.
    pub templates: BTreeMap<String, Template>,
    pub vars: BTreeMap<String, BTreeMap<String, minijinja::Value>>,
    pub secrets: Secrets,
}

pub fn load(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    generate: Generate,
) -> Result<Loaded, Vec<Diagnostic>> {
    let source = std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            file: path.to_path_buf(),
            line: 0,
            column: 0,
            key_path: String::new(),
            message: format!("cannot read: {e}"),
            hint: None,
        }]
    })?;
    let inv = inventory::parse(path, &source)?;
    let mut problems = Vec::new();

    let mut loaded_templates = BTreeMap::new();
    let mut vars = BTreeMap::new();
    for s in &inv.services {
        let base = format!("services.{}", s.name);
        let t = match templates::load(&s.template, &inv.root) {
            Ok(t) => t,
            Err(e) => {
                problems.push(inv.diagnostic(&format!("{base}.template"), e.to_string(), None));
                continue;
            }
        };
        match t.vars(&s.vars) {
            Ok(v) => {
                vars.insert(s.name.clone(), v);
            }
            Err(p) => {
                let known: Vec<&str> = t.manifest.vars.keys().map(String::as_str).collect();
                for u in &p.unknown {
                    let hint = suggest(u, known.iter().copied())
                        .unwrap_or_else(|| format!("its variables: {}", known.join(", ")));
                    problems.push(inv.diagnostic(
                        &format!("{base}.vars.{u}"),
                        format!("template `{}` has no variable `{u}`", t.name),
                        Some(hint),
                    ));
                }
                for (name, why) in &p.invalid {
                    let spec = &t.manifest.vars[name];
                    problems.push(inv.diagnostic(
                        &format!("{base}.vars.{name}"),
                        format!("`{name}` of template `{}` {why}", t.name),
                        (!spec.doc.is_empty()).then(|| format!("{name}: {}", spec.doc)),
                    ));
                }
                for (name, why) in &p.bad_defaults {
                    problems.push(inv.diagnostic(
                        &format!("{base}.template"),
                        format!("template `{}`: the default of `{name}` {why}", t.name),
                        Some(format!(
                            "give [{base}.vars] {name} = ... or fix the template's default"
                        )),
                    ));
                }
                for m in &p.missing {
                    let doc = &t.manifest.vars[m].doc;
                    problems.push(inv.diagnostic(
                        &base,
                        format!("template `{}` needs variable `{m}`", t.name),
                        Some(format!(
                            "add to [{base}.vars]: {m} = ...{}",
                            if doc.is_empty() {
                                String::new()
                            } else {
                                format!(" ({doc})")
                            }
                        )),
                    ));
                }
            }
        }
        // A secret the template reads from a file must be given, or the
        // container would start without it.
        for name in &t.manifest.secret_files {
            if !s.secrets.contains(name) {
                problems.push(inv.diagnostic(
                    &base,
                    format!(
                        "template `{}` reads the secret `{name}` (as the file /run/secrets/{name}), which the service does not get",
                        t.name
                    ),
                    Some(format!("add secrets = [\"{name}\"] to [{base}]")),
                ));
            }
        }
        // A secret the template needs ([needs] secrets), or the container
        // would only fail once it starts.
        let missing: Vec<&String> = t
            .manifest
            .needs
            .secrets
            .iter()
            .filter(|n| !s.secrets.contains(n) && !t.manifest.secret_files.contains(n))
            .collect();
        if !missing.is_empty() {
            let names: Vec<String> = missing.iter().map(|n| format!("`{n}`")).collect();
            problems.push(inv.diagnostic(
                &base,
                format!(
                    "template `{}` needs the secret{} {}, which the service does not get",
                    t.name,
                    if missing.len() == 1 { "" } else { "s" },
                    names.join(", ")
                ),
                Some(needed_secrets_hint(&inv, s, &base, &missing)),
            ));
        }
        // A service used from another host is reached on a published port
        // that maps to the port its template listens on.
        if let Some(port) = t.manifest.port {
            // A swarm's services reach each other on its overlay network.
            let cross_host_users = !inv.swarm()
                && inv.services.iter().any(|c| {
                    c.host != s.host
                        && (c.uses.contains(&s.name) || c.logs_to.as_ref() == Some(&s.name))
                });
            if cross_host_users
                && !s.publish.is_empty()
                && !s.publish.iter().any(|p| p.container_port == port)
            {
                problems.push(inv.diagnostic(
                    &format!("{base}.publish"),
                    format!(
                        "service `{}` listens on port {port}, which no entry publishes",
                        s.name
                    ),
                    Some(format!("publish = [\"{port}\"] or [\"HOST_PORT:{port}\"]")),
                ));
            }
        }
        loaded_templates.insert(s.name.clone(), t);
    }

    // A service that logs to another needs a log collector there.
    for s in &inv.services {
        if let (Some(l), Some(t)) = (
            &s.logs_to,
            s.logs_to.as_ref().and_then(|l| loaded_templates.get(l)),
        ) {
            if t.manifest.port.is_none() {
                problems.push(inv.diagnostic(
                    &format!("services.{}.logs_to", s.name),
                    format!("service `{l}` has no port to send logs to"),
                    None,
                ));
            }
        }
    }

    for h in &inv.hosts {
        if let Some(id) = &h.identity {
            let p = inv.resolve_path(&id.to_string_lossy());
            if let Err(e) = std::fs::File::open(&p) {
                problems.push(inv.diagnostic(
                    &format!("hosts.{}.identity", h.name),
                    format!("cannot read identity file {}: {e}", p.display()),
                    Some(
                        "give a readable private key, or remove `identity` to use ssh-agent".into(),
                    ),
                ));
            }
        }
    }

    if let inventory::AppSource::Folder(dir) = &inv.app {
        let uses_app = loaded_templates.values().any(|t| t.manifest.app);
        let p = inv.resolve_path(&dir.to_string_lossy());
        if uses_app && !p.is_dir() {
            problems.push(inv.diagnostic(
                "app.source",
                format!("app source folder {} does not exist", p.display()),
                Some("point app.source at your Rails app, or at a tarball URL".into()),
            ));
        }
    }

    let mut inv = inv;
    if problems.is_empty() {
        match data_paths::check(&inv, &loaded_templates) {
            Ok(implied) => {
                for v in implied {
                    if let Some(s) = inv.services.iter_mut().find(|s| s.name == v.service) {
                        s.volumes.push(v.mount);
                    }
                }
            }
            Err(mut d) => problems.append(&mut d),
        }
    }

    if problems.is_empty() && inv.swarm() {
        problems.extend(swarm_checks(&inv));
    }

    let secrets = match secrets::resolve(&inv, env, generate) {
        Ok(s) => Some(s),
        Err(mut d) => {
            problems.append(&mut d);
            None
        }
    };
    if !problems.is_empty() {
        problems.sort_by_key(|d| (d.line, d.column));
        return Err(problems);
    }
    Ok(Loaded {
        inventory: inv,
        templates: loaded_templates,
        vars,
        secrets: secrets.unwrap_or_default(),
    })
}

/// The exact lines to add for secrets a service must get: its `secrets`
/// line with them, and a `[secrets.NAME]` table for each one not declared.
fn needed_secrets_hint(
    inv: &Inventory,
    s: &inventory::Service,
    base: &str,
    missing: &[&String],
) -> String {
    let list: Vec<String> = s
        .secrets
        .iter()
        .chain(missing.iter().copied())
        .map(|n| format!("\"{n}\""))
        .collect();
    let mut hint = format!("in [{base}]:\n          secrets = [{}]", list.join(", "));
    for n in missing {
        if !inv.secrets.iter().any(|d| &&d.name == n) {
            hint.push_str(&format!(
                "\n        and declare it (or set {n} in the environment):\n          [secrets.{n}]\n          generate = true"
            ));
        }
    }
    hint
}

/// What a swarm cannot do with a service as hosts.toml places it: its
/// volumes are local to one node, and a host-mode port is one per node.
fn swarm_checks(inv: &Inventory) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    for s in &inv.services {
        let base = format!("services.{}", s.name);
        let replicas = s.replicas.unwrap_or(1);
        if !s.volumes.is_empty() && !s.pinned {
            out.push(inv.diagnostic(
                &base,
                format!(
                    "service `{}` keeps data in volume {}, which lives on one node: pin it to that node",
                    s.name, s.volumes[0].volume
                ),
                Some(format!(
                    "add host = \"{}\" (or another host) to [{base}]",
                    inv.managers().first().map(|h| h.name.as_str()).unwrap_or("NODE")
                )),
            ));
        }
        if replicas > 1 && !s.volumes.is_empty() {
            out.push(inv.diagnostic(
                &format!("{base}.replicas"),
                format!(
                    "service `{}` keeps data in volume {}: two tasks must not write it at once",
                    s.name, s.volumes[0].volume
                ),
                Some("run one task of a stateful service (remove `replicas`)".into()),
            ));
        }
        if replicas > 1 && !s.publish.is_empty() {
            out.push(inv.diagnostic(
                &format!("{base}.replicas"),
                format!(
                    "service `{}` publishes port {} on its node, which one task can hold",
                    s.name, s.publish[0].host_port
                ),
                Some("publish the port of a one-task service in front of it (Nginx), or remove `replicas`".into()),
            ));
        }
        if !s.volumes_from.is_empty() {
            out.push(inv.diagnostic(
                &format!("{base}.volumes_from"),
                "a swarm service cannot mount a data container's volumes",
                Some("mount named volumes instead: volumes = [\"NAME:/path\"]".into()),
            ));
        }
        if let Some(l) = &s.logs_to {
            if inv.service(l).is_some_and(|p| !p.pinned) {
                out.push(inv.diagnostic(
                    &format!("{base}.logs_to"),
                    format!(
                        "Docker's log driver reaches `{l}` at a node's address: pin `{l}` to a node"
                    ),
                    Some(format!("add host = \"NODE\" to [services.{l}]")),
                ));
            }
        }
    }
    out
}
