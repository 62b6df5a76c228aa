//! How a plan reads to a person (`--dry-run`) and to a machine (`--json`).
//! Secret values never reach either: env files show `***`, and the rest of
//! the plan never holds a secret.

use std::fmt::Write;

use crate::plan::{self, Action, Condition, OnlyReason, Plan, Selection, Step, StepKind};

/// The plan as text; with `only`, just what `--only HOST` would run: every
/// step of HOST and, on the other hosts, the steps that rule takes, each
/// saying why.
pub fn text(plan: &Plan, only: Option<&str>) -> String {
    let mut out = String::new();
    let steps: usize = plan.hosts.iter().map(|h| h.steps.len()).sum();
    let selection = only.map(|o| (o, selection(plan, o)));
    match &selection {
        None => {
            let _ = writeln!(
                out,
                "Plan for project `{}`: {} hosts, {steps} steps",
                plan.project,
                plan.hosts.len()
            );
        }
        Some((only, sel)) => {
            let _ = writeln!(
                out,
                "Plan for project `{}` with --only {only}: {} hosts, {} of {steps} steps",
                plan.project,
                plan.hosts.len(),
                sel.run.len()
            );
            let _ = writeln!(
                out,
                "Every step of {only}; on the other hosts only the steps that need {only} or write its address (and the readiness waits they need)."
            );
        }
    }
    let _ = writeln!(
        out,
        "Each step runs only when its condition holds on the host (checked in one probe per host)."
    );
    if let Some(app) = &plan.app_folder {
        out.push_str(&crate::app_folder::describe(app));
    }
    for h in &plan.hosts {
        let _ = writeln!(out, "\nhost {} ({})", h.host, h.address);
        if !h.ports.is_empty() {
            let _ = writeln!(out, "  published ports, and who may connect:");
            for r in &h.ports {
                let _ = writeln!(out, "    {}", crate::reach::describe(r));
            }
        }
        let shown = |s: &&Step| {
            selection
                .as_ref()
                .is_none_or(|(_, sel)| sel.run.contains(&s.id))
        };
        if !h.steps.iter().any(|s| shown(&s)) {
            if let Some((only, _)) = &selection {
                let _ = writeln!(out, "  nothing runs here under --only {only}");
            }
        }
        for (i, s) in h.steps.iter().enumerate() {
            if !shown(&s) {
                continue;
            }
            let _ = writeln!(
                out,
                "  {:>2}. {}{}",
                i + 1,
                s.summary,
                if s.upstream { "  [upstream image]" } else { "" }
            );
            let _ = writeln!(out, "      when: {}", condition(&s.when));
            if let Some((only, sel)) = &selection {
                if h.host != *only {
                    let _ = writeln!(
                        out,
                        "      runs under --only {only}: {}",
                        why(plan, sel, only, s)
                    );
                }
            }
            let foreign: Vec<String> = s
                .needs
                .iter()
                .filter(|n| n.host != h.host)
                .map(|n| n.to_string())
                .collect();
            if !foreign.is_empty() {
                let _ = writeln!(out, "      after: {}", foreign.join(", "));
            }
            for a in &s.actions {
                match a {
                    Action::Run { line } | Action::Fetch { line, .. } => {
                        let _ = writeln!(out, "      $ {line}");
                    }
                    Action::Script { line, .. } => {
                        let _ = writeln!(out, "      $ {line}  < install-docker.sh");
                    }
                    Action::Upload { dir, files, shown } => {
                        if files.len() == 1 && files[0].mode == 0o600 {
                            let _ =
                                writeln!(out, "      upload {dir}/{} (mode 0600):", files[0].path);
                            for l in shown.lines() {
                                let _ = writeln!(out, "        {l}");
                            }
                        } else {
                            let _ = writeln!(out, "      upload {dir} ({shown})");
                        }
                    }
                    Action::Relay { from, image } => {
                        let _ = writeln!(
                            out,
                            "      load {image} from {from} (docker save there | docker load here)"
                        );
                    }
                    Action::SwarmJoin {
                        manager,
                        remote,
                        advertise,
                        role,
                        name,
                    } => {
                        let _ = writeln!(
                            out,
                            "      join the swarm at {remote} as a {role}, advertising {advertise} (the join token is read from {manager} over SSH); then {manager} labels it provision.host={name} and removes an older node at {advertise} (a replaced machine's)"
                        );
                    }
                    Action::WaitReady {
                        line, timeout_secs, ..
                    } => {
                        let _ = writeln!(
                            out,
                            "      poll until it succeeds (deadline {timeout_secs} s): $ {line}"
                        );
                    }
                }
            }
        }
    }
    out
}

/// What `--only HOST` runs, every condition taken as holding (as on a
/// blank host): the executor's own rule, [`plan::select`].
fn selection(plan: &Plan, only: &str) -> Selection {
    let steps: Vec<&Step> = plan.hosts.iter().flat_map(|h| h.steps.iter()).collect();
    plan::select(&steps, Some(only), |_| true)
}

/// Why a step of another host runs under `--only HOST`.
fn why(plan: &Plan, sel: &Selection, only: &str, s: &Step) -> String {
    match plan::only_reason(only, s) {
        Some(OnlyReason::OnHost) => format!("it is on {only}"),
        Some(OnlyReason::Follows) => format!("it writes {only}'s address"),
        Some(OnlyReason::Needs(n)) => format!("it needs {n}"),
        Some(OnlyReason::Waited) | None => {
            let run = s.id.sibling(StepKind::Run);
            let waiter = plan
                .hosts
                .iter()
                .flat_map(|h| h.steps.iter())
                .find(|d| d.needs.contains(&s.id) && sel.run.contains(&d.id))
                .map(|d| d.id.clone());
            match waiter {
                Some(d) => format!("{d} runs and waits for it"),
                None if sel.run.contains(&run) => format!("{run} runs"),
                None => "a step that runs waits for it".into(),
            }
        }
    }
}

fn condition(c: &Condition) -> String {
    match c {
        Condition::DockerNotRunning => "Docker is missing or not running".into(),
        Condition::SwarmInactive => "the node is in no swarm".into(),
        Condition::SwarmOutside { manager } => {
            format!("the node is not in the swarm of {manager}")
        }
        Condition::NodesDiffer { expected } => format!(
            "the swarm's nodes are not {} (each ready and labelled provision.host), or a replaced node is left",
            expected
                .iter()
                .map(|(a, n)| format!("{n} at {a}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Condition::SwarmObjectMissing { kind, name } => format!("the swarm has no {kind} {name}"),
        Condition::ServiceOutdated { name, spec } => {
            format!("service {name} is missing or not spec {spec}")
        }
        Condition::NetworkMissing { name } => format!("network {name} is missing"),
        Condition::VolumeMissing { name } => format!("volume {name} is missing"),
        Condition::ContainerMissing { name } => format!("container {name} is missing"),
        Condition::FirewallDiffers { marker } => {
            format!("the firewall rules are not version {marker}")
        }
        Condition::ConfigDiffers { service, hash } => {
            format!("the live files of {service} are not version {hash}")
        }
        Condition::ImageMissing { tag } => {
            format!("image {tag} is missing (its tag is the context hash)")
        }
        Condition::ContainerOutdated {
            name,
            spec,
            secrets,
        } => {
            let mut text = format!("container {name} is missing, stopped, or not spec {spec}");
            if !secrets.is_empty() {
                let names: Vec<&str> = secrets.keys().map(String::as_str).collect();
                text.push_str(&format!(
                    " (a changed {} is rotated: its digest is in the container's label)",
                    names.join(", ")
                ));
            }
            text
        }
        Condition::Always => "always".into(),
    }
}

/// The plan as JSON; with `only`, just the steps `--only HOST` would run.
pub fn json(plan: &Plan, only: Option<&str>) -> String {
    let restricted;
    let plan = match only {
        None => plan,
        Some(o) => {
            let sel = selection(plan, o);
            let mut p = plan.clone();
            for h in &mut p.hosts {
                h.steps.retain(|s| sel.run.contains(&s.id));
            }
            restricted = p;
            &restricted
        }
    };
    serde_json::to_string_pretty(plan).expect("a plan serializes")
}
