//! Command line: parse arguments, run the verb, return an exit code. One
//! file per verb family (`plan`, `up`, `machines`, `status`, `volumes`,
//! `ops`, `ssh`),
//! each over the session layer ([`crate::session`]) when it touches hosts.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::diagnostics::Diagnostic;
use crate::inventory::Inventory;
use crate::load;
use crate::secrets::Generate;
use crate::session::LockPolicy;

mod dev;
mod exit;
mod machines;
mod ops;
mod plan;
mod releases;
mod ssh;
mod status;
mod up;
mod volumes;

pub use exit::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK};
pub use plan::build_plan;

#[derive(Debug, Parser)]
#[command(
    name = "provision",
    version,
    about = "Provision the Rails on Docker stack on one or two hosts over SSH",
    after_help = "Example:\n  provision --hosts hosts.toml            # converge every host\n  provision --hosts hosts.toml --dry-run --only db\n  provision --hosts hosts.toml --json | jq -c 'select(.event == \"step_failed\")'"
)]
pub struct Cli {
    /// The inventory: hosts and the services placed on them.
    #[arg(long, default_value = "hosts.toml", global = true)]
    pub hosts: PathBuf,

    /// Print the plan with the exact commands; touch no host.
    #[arg(long)]
    pub dry_run: bool,

    /// With --dry-run: print the plan as JSON. On a run: print its events
    /// as JSON Lines on stdout (one object per line, the last a `summary`
    /// with the exit code); human text goes to stderr.
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
    #[arg(long, global = true, value_name = "SECS", default_value_t = crate::session::DEFAULT_LOCK_WAIT.as_secs())]
    pub lock_wait: u64,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print a shell completion script (bash, zsh or fish) on stdout.
    #[command(
        after_help = "Example:\n  provision completions bash > ~/.local/share/bash-completion/completions/provision"
    )]
    Completions { shell: clap_complete::Shell },
    /// Provision every host (the default).
    #[command(after_help = "Example:\n  provision --hosts hosts.toml up")]
    Up,
    /// Print the plan (same as --dry-run).
    #[command(after_help = "Example:\n  provision --hosts hosts.toml plan --json")]
    Plan {
        #[arg(long)]
        json: bool,
    },
    /// Remove the local playground machines.
    #[command(after_help = "Example:\n  provision --hosts hosts.toml down --volumes")]
    Down {
        /// Also remove their data volumes.
        #[arg(long)]
        volumes: bool,
    },
    /// Per service: its host, container state, health (the template's
    /// readiness probe, run once), uptime, published ports and who may
    /// reach them, and drift (what a run would do: "up to date", "would
    /// rebuild", "would restart", "would reload"). Changes nothing, takes
    /// no lock. Exits 1 when a host does not answer.
    #[command(
        after_help = "Example:\n  provision --hosts hosts.toml status\n  provision status --json | jq -r '.services[] | select(.drift != \"up to date\") | .name'"
    )]
    Status {
        /// One JSON document (the schema is in the README).
        #[arg(long)]
        json: bool,
    },
    /// A shell on a host through OpenSSH's `ssh`, with provision's settings
    /// for it (address, user, port, key, known_hosts, host-key policy);
    /// with `-- CMD...` that command runs instead, its exit code is ours.
    #[command(after_help = "Example:\n  provision ssh web\n  provision ssh db -- docker ps")]
    Ssh {
        /// The host, as hosts.toml names it.
        host: String,
        /// A command to run instead of a shell, after `--`.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// A service's container logs, from whichever host runs it; with no
    /// service, every service's, merged, each line prefixed `host/service | `.
    #[command(
        after_help = "Example:\n  provision logs rails -f --tail 100\n  provision logs --since 10m"
    )]
    Logs {
        /// Services (default: all of them).
        services: Vec<String>,
        /// Keep streaming new lines until Ctrl-C.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines of each service.
        #[arg(long, value_name = "N")]
        tail: Option<u64>,
        /// Only lines newer than this: 10m, 2h, or an RFC 3339 time.
        #[arg(long, value_name = "DURATION")]
        since: Option<String>,
    },
    /// Run a command in a service's container on its host; the command's
    /// exit code is provision's, its arguments arrive byte for byte.
    #[command(
        after_help = "Example:\n  provision exec rails -- bin/rails runner 'puts Visit.count'"
    )]
    Exec {
        /// The service, as hosts.toml names it.
        service: String,
        /// Stream this terminal's stdin to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Give the command a terminal (through OpenSSH's `ssh -t`, with
        /// the settings provision uses for the host).
        #[arg(short, long)]
        tty: bool,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// The releases of a start-first service (rails) kept on its host: the
    /// serving one and up to two before it, with their content hash and
    /// when they were deployed.
    #[command(after_help = "Example:\n  provision releases rails")]
    Releases {
        /// The service, as hosts.toml names it.
        service: String,
    },
    /// Serve the release before the current one again (or RELEASE, a
    /// prefix of an id `releases` shows): started beside the serving one,
    /// switched to once its readiness probe passes. The next run of
    /// provision deploys hosts.toml's release again.
    #[command(after_help = "Example:\n  provision rollback rails")]
    Rollback {
        /// The service, as hosts.toml names it.
        service: String,
        /// The release to go back to (default: the one before).
        release: Option<String>,
    },
    /// Develop against the stack: the app folder on this computer, live in
    /// a development container of the app (wired like production, its own
    /// `_development` database) that serves in its place until Ctrl-C.
    #[command(
        after_help = "Example:\n  provision dev            # edit app/ here, reload the page"
    )]
    Dev {
        /// The service that builds the app (default: the one whose
        /// template has `app = true`).
        service: Option<String>,
        /// Needed on hosts that are not local machines: dev mode changes
        /// what the host serves.
        #[arg(long)]
        yes: bool,
    },
    /// Stream a tar of a host's volumes (or one volume) to a local file, with
    /// its manifest (size, SHA-256, volumes) beside it as FILE.manifest.json.
    /// Containers using them are stopped for the copy and always started again.
    #[command(after_help = "Example:\n  provision backup db -o db.tar")]
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
    #[command(after_help = "Example:\n  provision restore db db.tar")]
    Restore {
        /// HOST (every volume in the file) or HOST:VOLUME.
        target: String,
        file: PathBuf,
    },
    /// Copy a volume from one host to another, streamed through this
    /// computer (no temporary file); the receiving host swaps only when the
    /// size and SHA-256 of what it received match what was sent.
    #[command(after_help = "Example:\n  provision migrate pgdata --from db --to db2")]
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
        Some(Command::Plan { json }) => plan::dry_run(&cli, *json, &env),
        None | Some(Command::Up) if cli.dry_run => plan::dry_run(&cli, cli.json, &env),
        Some(Command::Down { volumes }) => {
            let volumes = *volumes;
            with_inventory(
                &cli,
                |inv| async move { machines::down(&inv, volumes).await },
            )
        }
        Some(Command::Completions { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "provision", &mut script);
            // A closed pipe (`| head`) is the reader's choice, not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout(), &script);
            EXIT_OK
        }
        Some(Command::Status { json }) => status::status(&cli, *json || cli.json, &env),
        Some(Command::Ssh { host, command }) => {
            with_inventory(&cli, |inv| async move { ssh::ssh(&inv, host, command) })
        }
        Some(Command::Logs {
            services,
            follow,
            tail,
            since,
        }) => {
            let opts = crate::commands::LogsOptions {
                follow: *follow,
                tail: *tail,
                since: since.clone(),
            };
            with_inventory(
                &cli,
                |inv| async move { ops::logs(&inv, services, opts).await },
            )
        }
        Some(Command::Exec {
            service,
            interactive,
            tty,
            command,
        }) => {
            let (interactive, tty) = (*interactive, *tty);
            with_inventory(&cli, |inv| async move {
                ops::exec(&inv, service, interactive, tty, command).await
            })
        }
        Some(Command::Backup {
            target,
            output,
            allow_empty,
        }) => {
            let lock = lock_policy(&cli);
            let allow_empty = *allow_empty;
            with_inventory(&cli, |inv| async move {
                volumes::backup(&inv, target, output.as_deref(), allow_empty, lock).await
            })
        }
        Some(Command::Restore { target, file }) => {
            let lock = lock_policy(&cli);
            let unverified = cli.unverified;
            with_inventory(&cli, |inv| async move {
                volumes::restore(&inv, target, file, unverified, lock).await
            })
        }
        Some(Command::Migrate { volume, from, to }) => {
            let lock = lock_policy(&cli);
            with_inventory(&cli, |inv| async move {
                volumes::migrate(&inv, volume, from, to, lock).await
            })
        }
        Some(Command::Dev { service, yes }) => match load_plan(&cli, &env, Generate::Store) {
            Ok((loaded, plan)) => runtime().block_on(dev::dev(
                &loaded,
                &plan,
                service.as_deref(),
                *yes,
                lock_policy(&cli),
            )),
            Err(code) => code,
        },
        Some(Command::Releases { service }) => {
            match load::load(&cli.hosts, &env, Generate::Placeholder) {
                Ok(loaded) => runtime().block_on(releases::show(&loaded, service)),
                Err(d) => bad_input(&d),
            }
        }
        Some(Command::Rollback { service, release }) => {
            match load::load(&cli.hosts, &env, Generate::Placeholder) {
                Ok(loaded) => runtime().block_on(releases::rollback(
                    &loaded,
                    service,
                    release.as_deref(),
                    lock_policy(&cli),
                )),
                Err(d) => bad_input(&d),
            }
        }
        None | Some(Command::Up) => match load_plan(&cli, &env, Generate::Store) {
            Ok((loaded, plan)) => runtime().block_on(up::up(&cli, &loaded, plan)),
            Err(code) => code,
        },
    }
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

/// hosts.toml with its templates and secrets, its local state checked, and
/// the plan. `Generate::Store` is a run: it may write (generated secrets,
/// tightened state); otherwise nothing is written, only warned about.
fn load_plan(
    cli: &Cli,
    env: &dyn Fn(&str) -> Option<String>,
    generate: Generate,
) -> Result<(load::Loaded, crate::plan::Plan), i32> {
    let writes = matches!(generate, Generate::Store);
    let loaded = load::load(&cli.hosts, env, generate).map_err(|d| bad_input(&d))?;
    for w in loaded.inventory.warnings() {
        eprintln!("warning: {w}");
    }
    keep_state_private(&loaded.inventory, writes)?;
    let plan = build_plan(&loaded)?;
    Ok((loaded, plan))
}

/// What `--break-lock`, `--no-wait` and `--lock-wait` say, for every verb
/// that locks hosts.
fn lock_policy(cli: &Cli) -> LockPolicy {
    LockPolicy {
        break_lock: cli.break_lock,
        wait: (!cli.no_wait).then(|| std::time::Duration::from_secs(cli.lock_wait)),
    }
}

pub(super) fn runtime() -> tokio::runtime::Runtime {
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
pub(super) fn keep_state_private(inv: &Inventory, apply: bool) -> Result<(), i32> {
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
