//! `plan` and `--dry-run`: the plan with its exact commands, touching no
//! host.

use crate::load::Loaded;
use crate::plan::{self, Plan};
use crate::plan_output;
use crate::secrets::Generate;

use super::{bad_input, load_plan, Cli, EXIT_BAD_INPUT, EXIT_OK};

pub(super) fn dry_run(cli: &Cli, json: bool, env: &dyn Fn(&str) -> Option<String>) -> i32 {
    // A dry run changes nothing, here either: it only warns.
    let (loaded, plan) = match load_plan(cli, env, Generate::Placeholder) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let only = cli.only.as_deref();
    if let Some(only) = only {
        if let Err(e) = loaded.inventory.host_named(only) {
            eprintln!("error: --only {only}: {e}");
            return EXIT_BAD_INPUT;
        }
    }
    let out = if json {
        plan_output::json(&plan, only)
    } else {
        plan_output::text(&plan, only)
    };
    // Belt and braces: nothing printed may hold a secret value.
    print!("{}", loaded.secrets.mask(&out));
    if json {
        println!();
    }
    EXIT_OK
}

pub fn build_plan(loaded: &Loaded) -> Result<Plan, i32> {
    let inv = &loaded.inventory;
    let mut app = None;
    if let crate::inventory::AppSource::Folder(dir) = &inv.app {
        if loaded.templates.values().any(|t| t.manifest.app) {
            let source = dir.to_string_lossy();
            let p = inv.resolve_path(&source);
            app = Some(crate::app_folder::read(inv, &p, &source).map_err(|d| bad_input(&d))?);
        }
    }
    let files = app.as_ref().map(|a| a.files.as_slice()).unwrap_or_default();
    let mut plan = plan::build(loaded, files).map_err(|d| bad_input(&d))?;
    plan.app_folder = app.map(|a| a.report);
    Ok(plan)
}
