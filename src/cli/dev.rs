//! `provision dev [SERVICE]`: the app folder on this computer, live in a
//! development container of the app on its host, until Ctrl-C.
//!
//! The dev container starts from the production image beside the serving
//! release, wired like it (same network, same Redis, PostGIS with its own
//! `_development` database), takes the service's place the way a release
//! does ([`releases::switch`]), and gets every edit of the app folder over
//! the SSH connection provision holds: by content hash against what the
//! container has, debounced, as a tar unpacked by the app's user. Ctrl-C
//! puts the production release back the same way; a later run changes
//! nothing. The host's lock is held meanwhile, so no run changes it under
//! dev mode's feet.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::commands;
use crate::dev::{self, After};
use crate::inventory::{AppSource, Service};
use crate::load::Loaded;
use crate::plan::{self, Action, Condition, Plan, StepKind};
use crate::releases::{self, Reresolve};
use crate::runtime::Replacement;
use crate::session::{LockPolicy, Session};
use crate::templates::ContextFile;
use crate::transport::{Exec, Transport};

use super::{EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK};

/// What dev mode needs of the plan for the app's service.
struct Production {
    image: String,
    env: String,
}

fn production(plan: &Plan, s: &Service) -> Option<Production> {
    let steps = &plan.hosts.iter().find(|h| h.host == s.host)?.steps;
    let of = |kind| {
        steps
            .iter()
            .find(|st| st.service() == Some(s.name.as_str()) && st.kind() == kind)
    };
    let image = match &of(StepKind::Build)?.when {
        Condition::ImageMissing { tag } => tag.clone(),
        _ => return None,
    };
    let run = of(StepKind::Run)?;
    let env = run.actions.iter().find_map(|a| match a {
        Action::Upload { files, .. } => files
            .iter()
            .find(|f| f.path == "env")
            .map(|f| String::from_utf8_lossy(&f.data).into_owned()),
        _ => None,
    })?;
    Some(Production { image, env })
}

fn input_error(msg: String) -> i32 {
    eprintln!("error: {msg}");
    eprintln!("provision: nothing was run on any host");
    EXIT_BAD_INPUT
}

async fn run(t: &dyn Transport, line: &str, stdin: Option<Vec<u8>>) -> Result<String, String> {
    let mut req = Exec::new(line).timeout(Duration::from_secs(600));
    if let Some(b) = stdin {
        req = req.stdin_bytes(b);
    }
    let out = t.exec(req).await.map_err(|e| e.to_string())?;
    if out.success() {
        Ok(out.stdout_str())
    } else {
        let err = out.stderr_str();
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        Err(format!(
            "`{}` failed: {}",
            crate::transport::command_label(line),
            lines[lines.len().saturating_sub(5)..].join("\n    ")
        ))
    }
}

/// The app folder's files now, keyed by their path in it.
fn read_app(
    loaded: &Loaded,
    dir: &std::path::Path,
    source: &str,
) -> Result<Vec<ContextFile>, String> {
    crate::app_folder::read(&loaded.inventory, dir, source)
        .map(|a| a.files)
        .map_err(|d| {
            d.iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("; ")
        })
}

pub(super) async fn dev(
    loaded: &Loaded,
    plan: &Plan,
    name: Option<&str>,
    yes: bool,
    lock: LockPolicy,
) -> i32 {
    let inv = &loaded.inventory;
    let s = match name {
        Some(n) => match inv.service_named(n) {
            Ok(s) => s,
            Err(e) => return input_error(e),
        },
        None => match inv
            .services
            .iter()
            .find(|s| loaded.templates[&s.name].manifest.app)
        {
            Some(s) => s,
            None => {
                return input_error(format!(
                    "no service in {} builds the app",
                    inv.file.display()
                ))
            }
        },
    };
    if !loaded.templates[&s.name].manifest.app {
        return input_error(format!(
            "{} does not build the app: dev mode has nothing to sync",
            s.name
        ));
    }
    let AppSource::Folder(folder) = &inv.app else {
        return input_error("dev mode syncs an app folder; [app] source is a URL".into());
    };
    let host = inv.host(&s.host).expect("validated host");
    if host.machine.is_none() && !yes {
        return input_error(format!(
            "dev mode changes what {} serves ({} on it becomes a development server): add --yes",
            s.host, s.name
        ));
    }
    let Some(prod) = production(plan, s) else {
        return input_error(format!("the plan has no build and run of {}", s.name));
    };
    let (port, reresolve) = match plan::replacement(loaded, s) {
        Replacement::StartFirst { port, reresolve } => (port, reresolve),
        Replacement::StopFirst { why } => {
            return input_error(format!(
                "{} is replaced stop-first{}: dev mode takes its place the start-first way",
                s.name,
                why.map(|w| format!(" ({w})")).unwrap_or_default()
            ))
        }
    };
    let project = inv.project.name.clone();
    let container = plan::container_name(&project, &s.name);
    let reresolve: Vec<Reresolve> = reresolve
        .iter()
        .map(|(svc, signal)| Reresolve {
            container: plan::container_name(&project, svc),
            signal: signal.clone(),
        })
        .collect();
    // PostGIS, for the development database.
    let postgis = s.uses.iter().filter_map(|u| inv.service(u)).find(|u| {
        loaded.templates[&u.name]
            .manifest
            .exports
            .contains_key("DATABASE_URL")
    });
    let mut names = vec![s.host.as_str()];
    if let Some(p) = postgis {
        if p.host != s.host {
            names.push(&p.host);
        }
    }
    let (session, hosts) = match Session::open_all(inv, &names, &lock).await {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: dev: {e}");
            return EXIT_FAILED;
        }
    };
    let t = hosts[0].clone();
    let db_t = hosts.get(1).cloned().unwrap_or_else(|| t.clone());
    let ctx = Ctx {
        t: t.clone(),
        container: container.clone(),
        port,
        reresolve,
        project: project.clone(),
        service: s.clone(),
        ready: loaded.templates[&s.name].manifest.ready.clone(),
    };
    let dir = inv.resolve_path(&folder.to_string_lossy());
    let source = folder.to_string_lossy().into_owned();
    let mut back = None;
    let result = async {
        let mut stop = Stop::new()?;
        // Ctrl-C while it starts ends it too (and puts production back).
        back = tokio::select! {
            b = start(&ctx, &prod, db_t.as_ref(), postgis) => b?,
            _ = stop.recv() => return Ok(()),
        };
        watch(loaded, &ctx, &dir, &source, &mut stop).await
    }
    .await;
    let restored = restore(&ctx, back.as_deref()).await;
    let code = match (&result, &restored) {
        (Ok(()), Ok(())) => EXIT_OK,
        _ => EXIT_FAILED,
    };
    if let Err(e) = &result {
        eprintln!("error: dev {}: {e}", s.name);
    }
    match &restored {
        Ok(()) => eprintln!(
            "dev mode ended: {} on {} serves its release again",
            s.name, s.host
        ),
        Err(e) => eprintln!(
            "error: dev {}: putting the production release back failed: {e}; a run of provision puts it back",
            s.name
        ),
    }
    session
        .close(|_| {
            if code == EXIT_OK {
                format!("dev {}", ctx.service.name)
            } else {
                format!("FAILED: dev {}", ctx.service.name)
            }
        })
        .await;
    code
}

struct Ctx {
    t: Arc<dyn Transport>,
    container: String,
    port: Option<u16>,
    reresolve: Vec<Reresolve>,
    project: String,
    service: Service,
    ready: Vec<String>,
}

impl Ctx {
    async fn wait_ready(&self, name: &str) -> Result<(), String> {
        let timeout = self
            .service
            .ready_timeout
            .unwrap_or(plan::READY_TIMEOUT_SECS);
        crate::readiness::wait(
            self.t.as_ref(),
            &commands::shell(&commands::exec_in(name, &self.ready)),
            name,
            Duration::from_secs(timeout),
        )
        .await
    }

    async fn switch_to(&self, candidate: &str) -> Result<(), String> {
        run(
            self.t.as_ref(),
            &releases::switch(&releases::Switch {
                project: &self.project,
                service: &self.service.name,
                container: &self.container,
                candidate,
                port: self.port,
                reresolve: &self.reresolve,
            }),
            None,
        )
        .await
        .map(drop)
    }
}

/// The dev container beside the serving release, its database, the first
/// sync, then the switch to it.
/// Returns the name the serving release is kept under meanwhile.
async fn start(
    ctx: &Ctx,
    prod: &Production,
    db_t: &dyn Transport,
    postgis: Option<&Service>,
) -> Result<Option<String>, String> {
    let t = ctx.t.as_ref();
    let root = commands::remote_root(&ctx.project);
    let name = &ctx.service.name;
    let (env, db) = dev::dev_env(&prod.env);
    if let (Some((user, database)), Some(p)) = (&db, postgis) {
        let pg = plan::container_name(&ctx.project, &p.name);
        eprintln!("{}: development database {database}", p.host);
        run(db_t, &dev::create_database(&pg, user, database), None).await?;
    }
    let env_dir = format!("{root}/env/{name}-dev");
    let tar = crate::executor::tar_of(&[ContextFile {
        path: "env".into(),
        mode: 0o600,
        data: env.into_bytes(),
    }])
    .map_err(|e| e.to_string())?;
    run(t, &commands::untar_into(&env_dir), Some(tar)).await?;
    run(t, &dev::image_present(&prod.image), None)
        .await
        .map_err(|_| {
            format!(
                "image {} is not on {}: run provision first",
                prod.image, ctx.service.host
            )
        })?;
    let devc = dev::container_name(&ctx.container);
    run(t, &dev::remove_container(&devc), None).await?;
    eprintln!(
        "{}: starting {devc} (development) from {}",
        ctx.service.host, prod.image
    );
    run(
        t,
        &dev::run(
            &ctx.project,
            name,
            &ctx.container,
            &prod.image,
            &format!("{env_dir}/env"),
        ),
        None,
    )
    .await?;
    ctx.wait_ready(&devc).await?;
    let back = serving_spec(ctx)
        .await?
        .map(|spec| releases::kept_name(&ctx.container, &spec));
    ctx.switch_to(&devc).await?;
    Ok(back)
}

/// The spec label of the container that serves now, if one does.
async fn serving_spec(ctx: &Ctx) -> Result<Option<String>, String> {
    let out = run(ctx.t.as_ref(), &dev::spec_of(&ctx.container), None).await?;
    let spec = out.trim();
    Ok((!spec.is_empty()).then(|| spec.to_string()))
}

/// Sync the folder now and on every change until Ctrl-C.
async fn watch(
    loaded: &Loaded,
    ctx: &Ctx,
    dir: &std::path::Path,
    source: &str,
    stop: &mut Stop,
) -> Result<(), String> {
    use notify::Watcher;
    let t = ctx.t.as_ref();
    // What the container has: the image's copy of the app at first.
    let there = dev::parse_hashes(&run(t, &dev::remote_hashes(&ctx.container), None).await?);
    let mut state = SyncState {
        there,
        here: BTreeSet::new(),
    };
    let first = Instant::now();
    sync(loaded, ctx, dir, source, &mut state, first, true).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        // Only what changes a file: reading one (the sync's own reads
        // included) is an event too, and would start a sync again.
        if let Ok(ev) = ev {
            use notify::event::ModifyKind;
            use notify::EventKind;
            let changes = match ev.kind {
                EventKind::Modify(ModifyKind::Metadata(_)) => false,
                EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
                _ => false,
            };
            if changes {
                let _ = tx.send(Instant::now());
            }
        }
    })
    .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    watcher
        .watch(dir, notify::RecursiveMode::Recursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    println!(
        "dev mode: {} on {} serves {} in development; edits arrive as you save; Ctrl-C ends it",
        ctx.service.name,
        ctx.service.host,
        dir.display()
    );
    loop {
        let edit = tokio::select! {
            e = rx.recv() => match e { Some(at) => at, None => return Ok(()) },
            _ = stop.recv() => return Ok(()),
        };
        // Debounce: an editor's save is several events.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(40), rx.recv()).await {}
        sync(loaded, ctx, dir, source, &mut state, edit, false).await?;
    }
}

/// Ctrl-C (SIGINT) and SIGTERM, listened for from the start: one that
/// arrives while a sync runs is kept for the next wait, never lost.
struct Stop {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Stop {
    fn new() -> Result<Stop, String> {
        use tokio::signal::unix::{signal, SignalKind};
        let e = |e: std::io::Error| format!("cannot listen for Ctrl-C: {e}");
        Ok(Stop {
            int: signal(SignalKind::interrupt()).map_err(e)?,
            term: signal(SignalKind::terminate()).map_err(e)?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.int.recv() => {}
            _ = self.term.recv() => {}
        }
    }
}

struct SyncState {
    /// What the container has, as far as this session knows.
    there: BTreeMap<String, String>,
    /// The app folder's files at the last sync.
    here: BTreeSet<String>,
}

async fn sync(
    loaded: &Loaded,
    ctx: &Ctx,
    dir: &std::path::Path,
    source: &str,
    state: &mut SyncState,
    edit: Instant,
    first: bool,
) -> Result<(), String> {
    let t = ctx.t.as_ref();
    let files = read_app(loaded, dir, source)?;
    let here = dev::local_hashes(&files);
    let here_hashes: BTreeMap<String, String> = here
        .iter()
        .map(|(p, (h, _))| (p.clone(), h.clone()))
        .collect();
    // Removed there: what was here before and is gone now. A file only
    // the container has (db/schema.rb written by a migration, the image's
    // Gemfile.lock) stays.
    let plan = dev::diff(&here_hashes, &state.there, &state.here);
    state.here = here_hashes.keys().cloned().collect();
    if plan.send.is_empty() && plan.remove.is_empty() {
        return Ok(());
    }
    let mut bytes = 0usize;
    if !plan.send.is_empty() {
        let batch: Vec<ContextFile> = plan
            .send
            .iter()
            .map(|p| {
                let f = here[p].1;
                bytes += f.data.len();
                ContextFile {
                    path: p.clone(),
                    mode: f.mode,
                    data: f.data.clone(),
                }
            })
            .collect();
        let tar = crate::executor::tar_of(&batch).map_err(|e| e.to_string())?;
        run(t, &dev::untar(&ctx.container), Some(tar)).await?;
    }
    if !plan.remove.is_empty() {
        run(t, &dev::remove(&ctx.container, &plan.remove), None).await?;
    }
    let took = edit.elapsed();
    for p in &plan.send {
        state.there.insert(p.clone(), here_hashes[p].clone());
    }
    for p in &plan.remove {
        state.there.remove(p);
    }
    let changed: Vec<String> = plan.send.iter().chain(&plan.remove).cloned().collect();
    println!(
        "synced {} file{} ({} bytes){} in {} ms{}",
        plan.send.len(),
        if plan.send.len() == 1 { "" } else { "s" },
        bytes,
        if plan.remove.is_empty() {
            String::new()
        } else {
            format!(", removed {}", plan.remove.len())
        },
        took.as_millis(),
        if first {
            " (first pass, by content hash)"
        } else {
            " after the edit"
        }
    );
    match dev::after(&changed) {
        After::Nothing => {}
        After::Restart => restart(ctx, "config/ changed").await?,
        After::Bundle => {
            println!("Gemfile changed: bundle install");
            let out = run(t, &dev::bundle(&ctx.container), None).await?;
            for l in out.lines().filter(|l| l.contains("Bundle complete")) {
                println!("  {l}");
            }
            restart(ctx, "the bundle changed").await?
        }
    }
    Ok(())
}

async fn restart(ctx: &Ctx, why: &str) -> Result<(), String> {
    println!("{why}: restarting the server");
    run(
        ctx.t.as_ref(),
        &commands::shell(&commands::argv([
            "docker",
            "restart",
            "--time",
            "10",
            &ctx.container,
        ])),
        None,
    )
    .await?;
    ctx.wait_ready(&ctx.container).await
}

/// The release that served before serves again (`back`); the dev
/// container is removed.
async fn restore(ctx: &Ctx, back: Option<&str>) -> Result<(), String> {
    let t = ctx.t.as_ref();
    let devc = dev::container_name(&ctx.container);
    if let (Some(kept), Some(dev::DEV_SPEC)) = (back, serving_spec(ctx).await?.as_deref()) {
        run(t, &releases::start(kept), None).await?;
        ctx.wait_ready(kept).await?;
        ctx.switch_to(kept).await?;
    }
    run(t, &dev::remove_container(&devc), None).await.map(drop)
}
