//! `up` (the default verb): local machines, then a run over a session.

use std::sync::Arc;

use crate::events::{Counts, Event, Events};
use crate::inventory::Inventory;
use crate::load::Loaded;
use crate::plan::Plan;
use crate::render::Audience;
use crate::run;

use super::{lock_policy, Cli, EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK};

pub(super) async fn up(cli: &Cli, loaded: &Loaded, plan: Plan) -> i32 {
    let inv = &loaded.inventory;
    crate::timing::mark("planned");
    let opts = match run_options(cli, inv) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_BAD_INPUT;
        }
    };
    if let Err(e) = run::machines_up_for(inv, cli.only.as_deref()).await {
        eprintln!("error: {e}");
        return EXIT_FAILED;
    }
    if cli.machines_only {
        for h in &inv.hosts {
            let login = run::login(h);
            println!(
                "{:<10} {} (ssh {}@{} -p {})",
                h.name, h.address, login.user, h.address, login.port
            );
        }
        return EXIT_OK;
    }
    crate::timing::mark("machines checked");
    let policy = lock_policy(cli);
    let names: Vec<String> = plan.hosts.iter().map(|h| h.host.clone()).collect();
    let audience = Audience::pick(cli.json);
    let events = Arc::new(Events::new(
        loaded.secrets.clone(),
        audience.renderer(&names),
    ));
    events.log_to(&run::run_log(inv));
    events.emit(Event::RunStarted {
        project: inv.project.name.clone(),
        hosts: names,
        only: cli.only.clone(),
    });
    let reports = run::up_with(loaded, &plan, &opts, &policy, &events).await;
    crate::timing::mark("done");
    let code = if reports.iter().all(|r| r.ok()) {
        EXIT_OK
    } else {
        EXIT_FAILED
    };
    let summary = loaded.secrets.mask(&run::summary(&reports, inv));
    // With --json, stdout holds events only.
    if audience == Audience::Json {
        eprint!("{summary}");
    } else {
        print!("{summary}");
    }
    events.emit(Event::Summary {
        hosts: reports
            .iter()
            .map(|r| (r.host.clone(), Counts::of(r)))
            .collect(),
        exit_code: code,
    });
    code
}

/// `--only`, `--restore-from` and the backup folder, checked before anything runs.
fn run_options(cli: &Cli, inv: &Inventory) -> Result<crate::executor::Options, String> {
    let backups = inv.project.state_dir.join("backups");
    let mut opts = crate::executor::Options {
        only: cli.only.clone(),
        backup_dir: Some(backups.clone()),
        restore: None,
    };
    if let Some(only) = &cli.only {
        inv.host_named(only)
            .map_err(|e| format!("--only {only}: {e}"))?;
    }
    if let Some(from) = &cli.restore_from {
        let Some(host) = &cli.only else {
            return Err("--restore-from needs --only HOST: the host whose volumes it fills".into());
        };
        let file = if from.as_os_str() == "latest" {
            crate::backup::latest_backup(&backups, host).ok_or_else(|| {
                format!(
                    "--restore-from latest: no backup of {host} in {}",
                    backups.display()
                )
            })?
        } else {
            from.clone()
        };
        // The whole file is checked before any host is touched.
        let checked = crate::backup::check_backup(&file, cli.unverified)?;
        if checked.manifest.is_none() {
            eprintln!(
                "warning: --restore-from: {} has no manifest: only its tar structure was checked (--unverified)",
                file.display()
            );
        }
        opts.restore = Some(crate::executor::Restore {
            host: host.clone(),
            file,
            volumes: checked.volumes.clone(),
            checked,
        });
    }
    Ok(opts)
}
