//! How a plan reads to a person (`--dry-run`) and to a machine (`--json`).
//! Secret values never reach either: env files show `***`, and the rest of
//! the plan never holds a secret.

use std::fmt::Write;

use crate::plan::{Action, Condition, Plan};

pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    let steps: usize = plan.hosts.iter().map(|h| h.steps.len()).sum();
    let _ = writeln!(
        out,
        "Plan for project `{}`: {} hosts, {steps} steps",
        plan.project,
        plan.hosts.len()
    );
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
        for (i, s) in h.steps.iter().enumerate() {
            let _ = writeln!(
                out,
                "  {:>2}. {}{}",
                i + 1,
                s.summary,
                if s.upstream { "  [upstream image]" } else { "" }
            );
            let _ = writeln!(out, "      when: {}", condition(&s.when));
            let foreign: Vec<&String> = s
                .needs
                .iter()
                .filter(|n| !n.starts_with(&format!("{}/", h.host)))
                .collect();
            if !foreign.is_empty() {
                let _ = writeln!(
                    out,
                    "      after: {}",
                    foreign
                        .iter()
                        .map(|s| s.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            for a in &s.actions {
                match a {
                    Action::Run { line } | Action::Fetch { line } => {
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
                    Action::WaitReady { line, timeout_secs } => {
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

fn condition(c: &Condition) -> String {
    match c {
        Condition::DockerNotRunning => "Docker is missing or not running".into(),
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

pub fn json(plan: &Plan) -> String {
    serde_json::to_string_pretty(plan).expect("a plan serializes")
}
