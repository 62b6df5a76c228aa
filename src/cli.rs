//! Command line: parse arguments, run the pipeline, return an exit code.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::diagnostics::Diagnostic;
use crate::load::{self, Loaded};
use crate::plan::{self, Plan};
use crate::plan_output;
use crate::secrets::Generate;

/// Exit codes: 0 done, 1 a host failed, 2 bad input (nothing was run).
pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "provision",
    version,
    about = "Provision the Rails on Docker stack on one or two hosts over SSH"
)]
pub struct Cli {
    /// The inventory: hosts and the services placed on them.
    #[arg(long, default_value = "hosts.toml", global = true)]
    pub hosts: PathBuf,

    /// Print the plan with the exact commands; touch no host.
    #[arg(long)]
    pub dry_run: bool,

    /// With --dry-run: print the plan as JSON.
    #[arg(long)]
    pub json: bool,

    /// Converge this host alone (and what on other hosts depends on it).
    #[arg(long, value_name = "HOST")]
    pub only: Option<String>,

    /// Create the local playground machines, provision no service.
    #[arg(long)]
    pub machines_only: bool,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Provision every host (the default).
    Up,
    /// Print the plan (same as --dry-run).
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// Remove the local playground machines.
    Down {
        /// Also remove their data volumes.
        #[arg(long)]
        volumes: bool,
    },
    /// Show each machine and service.
    Status,
}

pub fn run() -> i32 {
    let cli = Cli::parse();
    let env = |name: &str| std::env::var(name).ok();
    match &cli.command {
        Some(Command::Plan { json }) => dry_run(&cli, *json, &env),
        None | Some(Command::Up) if cli.dry_run => dry_run(&cli, cli.json, &env),
        _ => {
            let loaded = match load::load(&cli.hosts, &env, Generate::Store) {
                Ok(l) => l,
                Err(d) => return bad_input(&d),
            };
            if let Err(code) = build_plan(&loaded) {
                return code;
            }
            eprintln!(
                "provision: running on hosts is not available in this build yet; use --dry-run"
            );
            EXIT_FAILED
        }
    }
}

fn dry_run(cli: &Cli, json: bool, env: &dyn Fn(&str) -> Option<String>) -> i32 {
    let loaded = match load::load(&cli.hosts, env, Generate::Placeholder) {
        Ok(l) => l,
        Err(d) => return bad_input(&d),
    };
    match build_plan(&loaded) {
        Ok(plan) => {
            let out = if json {
                plan_output::json(&plan)
            } else {
                plan_output::text(&plan)
            };
            // Belt and braces: nothing printed may hold a secret value.
            print!("{}", loaded.secrets.mask(&out));
            if json {
                println!();
            }
            EXIT_OK
        }
        Err(code) => code,
    }
}

pub fn build_plan(loaded: &Loaded) -> Result<Plan, i32> {
    let inv = &loaded.inventory;
    let mut app_files = Vec::new();
    if let crate::inventory::AppSource::Folder(dir) = &inv.app {
        if loaded.templates.values().any(|t| t.manifest.app) {
            let p = inv.resolve_path(&dir.to_string_lossy());
            match plan::read_app_folder(&p) {
                Ok(f) => app_files = f,
                Err(e) => {
                    return Err(bad_input(&[inv.diagnostic(
                        "app.source",
                        format!("cannot read app folder {}: {e}", p.display()),
                        None,
                    )]))
                }
            }
        }
    }
    plan::build(loaded, &app_files).map_err(|d| bad_input(&d))
}

pub fn bad_input(diags: &[Diagnostic]) -> i32 {
    for d in diags {
        eprintln!("error: {d}");
    }
    let n = diags.len();
    eprintln!(
        "provision: {n} error{} in the input; nothing was run on any host",
        if n == 1 { "" } else { "s" }
    );
    EXIT_BAD_INPUT
}
