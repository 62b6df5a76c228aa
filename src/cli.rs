//! Command line: parse arguments, run the pipeline, return an exit code.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::diagnostics::Diagnostic;
use crate::inventory::Inventory;
use crate::load::{self, Loaded};
use crate::plan::{self, Plan};
use crate::plan_output;
use crate::run;
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

    /// With --only: fill the host's new (missing) volumes from this backup
    /// file before its services start; `latest` takes the newest backup of
    /// that host in STATE_DIR/backups.
    #[arg(long, value_name = "FILE|latest")]
    pub restore_from: Option<PathBuf>,

    /// With `restore` or --restore-from: accept a backup that has no
    /// manifest (made by an older provision, or a tar made by hand). Only
    /// its tar structure is checked then, not its size and SHA-256.
    #[arg(long, global = true)]
    pub unverified: bool,

    /// Remove a stale run lock on the hosts first (the run that held it is gone).
    #[arg(long, global = true)]
    pub break_lock: bool,

    /// When another run holds a host's lock, fail at once naming it
    /// (the default is to wait for it, up to --lock-wait seconds).
    #[arg(long, global = true)]
    pub no_wait: bool,

    /// How long to wait for a lock another run holds.
    #[arg(long, global = true, value_name = "SECS", default_value_t = run::DEFAULT_LOCK_WAIT.as_secs())]
    pub lock_wait: u64,

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
    /// Stream a tar of a host's volumes (or one volume) to a local file, with
    /// its manifest (size, SHA-256, volumes) beside it as FILE.manifest.json.
    /// Containers using them are stopped for the copy and always started again.
    Backup {
        /// HOST (every volume its services mount) or HOST:VOLUME.
        target: String,
        /// Default: STATE_DIR/backups/HOST-YYYYMMDDTHHMMSSZ.tar
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Keep a backup even when a volume holds no file at all (by
        /// default that fails: the service's data is likely elsewhere).
        #[arg(long)]
        allow_empty: bool,
    },
    /// Stream a backup file back into a host's volumes (replacing their
    /// content), once the file matches its manifest; the host swaps only when
    /// what it received has the file's size and SHA-256.
    Restore {
        /// HOST (every volume in the file) or HOST:VOLUME.
        target: String,
        file: PathBuf,
    },
    /// Copy a volume from one host to another, streamed through this
    /// computer (no temporary file); the receiving host swaps only when the
    /// size and SHA-256 of what it received match what was sent.
    Migrate {
        volume: String,
        #[arg(long, value_name = "HOST")]
        from: String,
        #[arg(long, value_name = "HOST")]
        to: String,
    },
}

pub fn run() -> i32 {
    crate::timing::init();
    let cli = Cli::parse();
    let env = |name: &str| std::env::var(name).ok();
    match &cli.command {
        Some(Command::Plan { json }) => dry_run(&cli, *json, &env),
        None | Some(Command::Up) if cli.dry_run => dry_run(&cli, cli.json, &env),
        Some(Command::Down { volumes }) => {
            let volumes = *volumes;
            with_inventory(&cli, |inv| async move { down(&inv, volumes).await })
        }
        Some(Command::Status) => with_inventory(&cli, |inv| async move { status(&inv).await }),
        Some(Command::Backup {
            target,
            output,
            allow_empty,
        }) => {
            let lock = lock_policy(&cli);
            let allow_empty = *allow_empty;
            with_inventory(&cli, |inv| async move {
                crate::volume_cli::backup(&inv, target, output.as_deref(), allow_empty, lock).await
            })
        }
        Some(Command::Restore { target, file }) => {
            let lock = lock_policy(&cli);
            let unverified = cli.unverified;
            with_inventory(&cli, |inv| async move {
                crate::volume_cli::restore(&inv, target, file, unverified, lock).await
            })
        }
        Some(Command::Migrate { volume, from, to }) => {
            let lock = lock_policy(&cli);
            with_inventory(&cli, |inv| async move {
                crate::volume_cli::migrate(&inv, volume, from, to, lock).await
            })
        }
        None | Some(Command::Up) => {
            let loaded = match load::load(&cli.hosts, &env, Generate::Store) {
                Ok(l) => l,
                Err(d) => return bad_input(&d),
            };
            if let Err(code) = keep_state_private(&loaded.inventory, true) {
                return code;
            }
            let plan = match build_plan(&loaded) {
                Ok(p) => p,
                Err(code) => return code,
            };
            runtime().block_on(up(&cli, &loaded, plan))
        }
    }
}

fn dry_run(cli: &Cli, json: bool, env: &dyn Fn(&str) -> Option<String>) -> i32 {
    let loaded = match load::load(&cli.hosts, env, Generate::Placeholder) {
        Ok(l) => l,
        Err(d) => return bad_input(&d),
    };
    // A dry run changes nothing, here either: it only warns.
    if let Err(code) = keep_state_private(&loaded.inventory, false) {
        return code;
    }
    let only = cli.only.as_deref();
    if let Some(only) = only.filter(|o| loaded.inventory.host(o).is_none()) {
        eprintln!(
            "error: --only {only}: no such host in {}",
            cli.hosts.display()
        );
        return EXIT_BAD_INPUT;
    }
    match build_plan(&loaded) {
        Ok(plan) => {
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
        Err(code) => code,
    }
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

/// Volume commands wait for a held lock like runs do, unless `--no-wait`.
fn lock_policy(cli: &Cli) -> crate::volume_cli::LockPolicy {
    crate::volume_cli::LockPolicy {
        break_lock: cli.break_lock,
        wait: (!cli.no_wait).then(|| std::time::Duration::from_secs(cli.lock_wait)),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Commands that need only the inventory (no secrets, no templates).
fn with_inventory<F, Fut>(cli: &Cli, f: F) -> i32
where
    F: FnOnce(Inventory) -> Fut,
    Fut: std::future::Future<Output = i32>,
{
    let source = match std::fs::read_to_string(&cli.hosts) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {}: cannot read: {e}", cli.hosts.display());
            return EXIT_BAD_INPUT;
        }
    };
    match crate::inventory::parse(&cli.hosts, &source) {
        Ok(inv) => {
            if let Err(code) = keep_state_private(&inv, true) {
                return code;
            }
            runtime().block_on(f(inv))
        }
        Err(d) => bad_input(&d),
    }
}

/// Before a command reads or writes local state: tighten (or, `apply`
/// false, only report) what of it other users could reach.
fn keep_state_private(inv: &Inventory, apply: bool) -> Result<(), i32> {
    match crate::private::check_state(inv, apply) {
        Ok(message) => {
            eprint!("{message}");
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(EXIT_FAILED)
        }
    }
}

async fn up(cli: &Cli, loaded: &Loaded, plan: Plan) -> i32 {
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
    let policy = run::LockPolicy {
        break_lock: cli.break_lock,
        wait: (!cli.no_wait).then(|| std::time::Duration::from_secs(cli.lock_wait)),
    };
    let reports = run::up_with(loaded, &plan, &opts, &policy).await;
    crate::timing::mark("done");
    print!("{}", loaded.secrets.mask(&run::summary(&reports, inv)));
    if reports.iter().all(|r| r.ok()) {
        EXIT_OK
    } else {
        EXIT_FAILED
    }
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
        if inv.host(only).is_none() {
            let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
            return Err(format!(
                "--only {only}: no such host in {} (hosts: {})",
                inv.file.display(),
                names.join(", ")
            ));
        }
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

async fn down(inv: &Inventory, volumes: bool) -> i32 {
    let specs = run::machine_specs(inv);
    if specs.is_empty() {
        eprintln!(
            "provision: no local machines in {}: nothing to remove",
            inv.file.display()
        );
        return EXIT_OK;
    }
    let p = match run::playground(inv) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    match p.down(&specs, volumes).await {
        Ok(()) => {
            for s in &specs {
                let extra = if volumes { " and its volumes" } else { "" };
                println!("removed machine {} ({}){extra}", s.name, s.address);
            }
            EXIT_OK
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_FAILED
        }
    }
}

async fn status(inv: &Inventory) -> i32 {
    use crate::transport::{Exec, SshTransport, Transport};
    let specs = run::machine_specs(inv);
    if !specs.is_empty() {
        if let Ok(p) = run::playground(inv) {
            match p.status(&specs).await {
                Ok(list) => {
                    for m in list {
                        println!("machine {:<10} {:<15} {:?}", m.name, m.address, m.state);
                    }
                }
                Err(e) => eprintln!("machines: {e}"),
            }
        }
    }
    let line = crate::commands::shell(&crate::commands::argv([
        "docker".to_string(),
        "ps".into(),
        "-a".into(),
        "--filter".into(),
        format!(
            "label={}={}",
            crate::commands::PROJECT_LABEL,
            inv.project.name
        ),
        "--format".into(),
        "{{.Names}}\t{{.Status}}".into(),
    ]));
    let mut code = EXIT_OK;
    for h in &inv.hosts {
        let out = match SshTransport::connect(run::ssh_target(inv, h)).await {
            Ok(t) => t
                .exec(
                    Exec::new(line.clone())
                        .timeout(std::time::Duration::from_secs(60))
                        .idempotent(true),
                )
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match out {
            Ok(o) if o.success() => {
                println!("host {} ({}):", h.name, h.address);
                for l in o.stdout_str().lines() {
                    println!("  {l}");
                }
            }
            Ok(o) => println!(
                "host {} ({}): docker: {}",
                h.name,
                h.address,
                o.stderr_str().trim()
            ),
            Err(e) => {
                println!("host {} ({}): unreachable: {e}", h.name, h.address);
                code = EXIT_FAILED;
            }
        }
    }
    code
}
