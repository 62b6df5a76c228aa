//! Runs a plan: one probe per host, then each host's pending steps in
//! order (its builds next to each other side by side), hosts in parallel,
//! waiting across hosts where the wiring says so.
//! A failed step blocks only the steps that need it; everything else goes
//! on, and the report says what failed where.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::commands;
use crate::events::{Counts, Event, Events};
use crate::plan::{self, Action, HostPlan, Plan, Selection, Step, StepId, StepKind};
use crate::probe::HostState;
use crate::templates::ContextFile;
use crate::transport::{Exec, Stream, Transport};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Changed,
    Unchanged,
    /// Not run on purpose (an upstream image this host cannot get).
    Skipped(String),
    Failed(String),
    /// Not run because a step it needs did not succeed.
    Blocked(String),
}

impl Outcome {
    fn satisfies(&self) -> bool {
        matches!(self, Outcome::Changed | Outcome::Unchanged)
    }
}

#[derive(Debug, Clone, Default)]
pub struct HostReport {
    pub host: String,
    pub changed: Vec<String>,
    pub unchanged: usize,
    pub skipped: Vec<(String, String)>,
    pub failed: Vec<StepFailure>,
    pub blocked: Vec<StepFailure>,
    /// Things the user must know about (where an automatic backup went).
    pub notes: Vec<String>,
    pub elapsed: Duration,
    /// The steps that ran, when (for `PROVISION_TIMING`'s critical path).
    pub spans: Vec<crate::timing::Span>,
}

/// A step that failed, or did not run because one it needs did not
/// succeed.
#[derive(Debug, Clone)]
pub struct StepFailure {
    pub step: StepId,
    /// What the step does, as the plan says it.
    pub summary: String,
    pub why: String,
}

impl HostReport {
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.blocked.is_empty()
    }

    pub fn summary(&self) -> String {
        Counts::of(self).text()
    }
}

impl StepFailure {
    fn of(step: &Step, why: &str) -> StepFailure {
        StepFailure {
            step: step.id.clone(),
            summary: step.summary.clone(),
            why: why.to_string(),
        }
    }
}

/// Outcomes of finished steps, shared by all hosts.
#[derive(Default)]
struct Board {
    done: Mutex<HashMap<StepId, Outcome>>,
    notify: Notify,
}

impl Board {
    fn set(&self, id: &StepId, o: Outcome) {
        self.done.lock().unwrap().insert(id.clone(), o);
        self.notify.notify_waiters();
    }

    /// Whether every one of `ids` has ended (a wait on them returns at once).
    fn decided<'a>(&self, mut ids: impl Iterator<Item = &'a StepId>) -> bool {
        let done = self.done.lock().unwrap();
        ids.all(|id| done.contains_key(id))
    }

    async fn wait(&self, id: &StepId) -> Outcome {
        loop {
            let notified = self.notify.notified();
            if let Some(o) = self.done.lock().unwrap().get(id) {
                return o.clone();
            }
            notified.await;
        }
    }
}

/// A host that could not pull an image is not asked again for this long.
pub const RETRY_PULL_AFTER_SECS: u64 = 3600;

/// Per-step limits: a quiet build is never killed for silence, only for
/// running past these.
fn timeout_for(kind: StepKind) -> Duration {
    match kind {
        StepKind::Docker => Duration::from_secs(20 * 60),
        StepKind::Build => Duration::from_secs(60 * 60),
        _ => Duration::from_secs(5 * 60),
    }
}

/// What a run does beyond converging every host.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Converge this host; on the others run only the Run steps whose
    /// spec changed and that need something on it (plus their readiness
    /// waits). Every other pending step elsewhere is skipped.
    pub only: Option<String>,
    /// Where volumes are backed up before a container holding them is
    /// replaced. None: no automatic backup.
    pub backup_dir: Option<PathBuf>,
    /// Fill volumes created on a (blank) host from a backup file before its
    /// services start.
    pub restore: Option<Restore>,
}

#[derive(Debug, Clone)]
pub struct Restore {
    pub host: String,
    pub file: PathBuf,
    /// The volumes the file holds.
    pub volumes: Vec<String>,
    /// What every byte sent must add up to (checked before the run).
    pub checked: crate::backup::Checked,
}

pub struct Host {
    pub plan: HostPlan,
    pub transport: Result<Arc<dyn Transport>, String>,
    /// The host's state when the caller probed it already.
    pub probe: Option<Result<HostState, String>>,
}

/// One probe of a host: through Docker's API socket where the transport can
/// reach it, with commands otherwise. `extras`: the output of
/// [`commands::probe_extras`] when the lock's command ran it.
pub async fn probe_host(
    t: &dyn Transport,
    project: &str,
    plan: &HostPlan,
    extras: Option<crate::session::Rider>,
) -> Result<HostState, String> {
    let mut bases: BTreeSet<String> = plan
        .steps
        .iter()
        .flat_map(|s| s.bases.iter().cloned())
        .collect();
    bases.insert(crate::backup::DATA_IMAGE.to_string());
    let bases: Vec<String> = bases.into_iter().collect();
    // A swarm node also says where it stands in the swarm.
    let swarm = plan.steps.iter().any(|s| s.kind() == StepKind::Swarm);
    let also = if swarm {
        commands::swarm_probe(project)
    } else {
        "true".to_string()
    };
    if let Some(text) = crate::docker_api::probe(t, project, &bases, swarm, extras).await? {
        return Ok(HostState::parse(&text));
    }
    let line = format!("{}; {also}", commands::probe(project, &bases));
    match t
        .exec(
            Exec::new(line)
                .timeout(Duration::from_secs(60))
                .idempotent(true),
        )
        .await
    {
        Ok(out) if out.success() => Ok(HostState::parse(&out.stdout_str())),
        Ok(out) => Err(format!("probe failed: {}", out.stderr_str().trim())),
        Err(e) => Err(e.to_string()),
    }
}

/// Execute the plan. `hosts` come with their connections (or the reason
/// there is none); hosts of the plan missing from it are not touched.
pub async fn execute(plan: &Plan, hosts: Vec<Host>, events: Arc<Events>) -> Vec<HostReport> {
    execute_with(plan, hosts, events, &Options::default()).await
}

/// [`execute`] with [`Options`].
pub async fn execute_with(
    plan: &Plan,
    mut hosts: Vec<Host>,
    events: Arc<Events>,
    opts: &Options,
) -> Vec<HostReport> {
    let started = Instant::now();
    let opts = Arc::new(opts.clone());
    // Phase 1: probe every reachable host in parallel (unless the caller
    // already did, e.g. while taking the hosts' locks).
    let probes = futures::future::join_all(hosts.iter_mut().map(|h| {
        let events = events.clone();
        let project = plan.project.clone();
        let taken = h.probe.take();
        async move {
            let t = h.transport.as_ref().ok()?;
            let result = match taken {
                Some(r) => r,
                None => probe_host(t.as_ref(), &project, &h.plan, None).await,
            };
            if let Err(e) = &result {
                events.emit(Event::HostFailed {
                    host: h.plan.host.clone(),
                    error: format!("probe failed: {e}"),
                });
            }
            Some(result)
        }
    }))
    .await;

    crate::timing::mark("probes");
    // Phase 2: what is pending everywhere, so a readiness wait runs only
    // when something starts that needs it; and the pending steps left out
    // by --only.
    let states: HashMap<&str, &HostState> = hosts
        .iter()
        .zip(&probes)
        .filter_map(|(h, p)| match p {
            Some(Ok(s)) => Some((h.plan.host.as_str(), s)),
            _ => None,
        })
        .collect();
    let all_steps: Vec<&Step> = hosts.iter().flat_map(|h| h.plan.steps.iter()).collect();
    let Selection {
        run: pending,
        excluded,
    } = plan::select(&all_steps, opts.only.as_deref(), |s| {
        states.get(s.host()).is_some_and(|st| st.holds(&s.when))
    });
    let known: HashSet<StepId> = all_steps.iter().map(|s| s.id.clone()).collect();
    drop(states);

    // Phase 3: every host at once. A step may read from another host (a
    // swarm's join token, an image built there): the connections by name.
    let peers: Arc<HashMap<String, Arc<dyn Transport>>> = Arc::new(
        hosts
            .iter()
            .filter_map(|h| Some((h.plan.host.clone(), h.transport.as_ref().ok()?.clone())))
            .collect(),
    );
    let board = Arc::new(Board::default());
    let pending = Arc::new(pending);
    let excluded = Arc::new(excluded);
    let known = Arc::new(known);
    let runs = hosts.into_iter().zip(probes).map(|(h, probe)| {
        let board = board.clone();
        let events = events.clone();
        let pending = pending.clone();
        let excluded = excluded.clone();
        let known = known.clone();
        let opts = opts.clone();
        let project = plan.project.clone();
        let peers = peers.clone();
        async move {
            let mut ctx = HostRun {
                peers,
                host: h.plan.host.clone(),
                address: h.plan.address.clone(),
                project,
                board,
                events,
                opts,
                excluded,
                report: HostReport::default(),
            };
            ctx.report.host = h.plan.host.clone();
            let state = match (&h.transport, probe) {
                (Ok(t), Some(Ok(state))) => Ok((t.clone(), state)),
                (Err(e), _) => Err(e.clone()),
                (_, Some(Err(e))) => Err(e),
                (_, None) => Err("no connection".to_string()),
            };
            match state {
                Ok((t, state)) => ctx.run(&h.plan, t.as_ref(), &state, &pending, &known).await,
                Err(e) => {
                    for s in &h.plan.steps {
                        ctx.finish(s, Outcome::Failed(e.clone()));
                    }
                }
            }
            ctx.report.elapsed = started.elapsed();
            ctx.events.emit(Event::HostSummary {
                host: ctx.host.clone(),
                counts: Counts::of(&ctx.report),
            });
            ctx.report
        }
    });
    futures::future::join_all(runs).await
}

pub use crate::plan::only_includes;

/// A step started: what its events say of it.
struct Running {
    /// As started: with what it rotates.
    summary: String,
    started: Instant,
}

/// A pending step whose needs and base images are in place.
struct Ready {
    summary: String,
    /// The secrets a replaced container gets new values of.
    rotated: Vec<String>,
    /// Its time began before its base images (they are part of its span).
    began: Instant,
}

/// What a host's steps share while they are prepared: the base images it
/// has and those copied to it while its Docker was installed.
struct Bases {
    have: BTreeSet<String>,
    staging: Option<tokio::sync::oneshot::Receiver<HashSet<String>>>,
    staged: HashSet<String>,
}

/// How many image builds one host runs at once. Measured on two cores
/// (bench/builds.sh): three apt-heavy builds at once take 0.81x the time of
/// one after the other, since each waits on downloads and the layer store
/// part of the time. `PROVISION_BUILDS=1` builds one at a time (a small
/// host, or a build that needs all of its memory).
fn builds_at_once() -> usize {
    std::env::var("PROVISION_BUILDS")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .filter(|n: &usize| *n >= 1)
        .unwrap_or(3)
}

struct HostRun {
    /// Every connected host of the run, by name.
    peers: Arc<HashMap<String, Arc<dyn Transport>>>,
    host: String,
    address: String,
    project: String,
    board: Arc<Board>,
    events: Arc<Events>,
    opts: Arc<Options>,
    excluded: Arc<HashSet<StepId>>,
    report: HostReport,
}

impl HostRun {
    /// A step that did not run (up to date, skipped, blocked, failed
    /// before it started).
    fn finish(&mut self, step: &Step, o: Outcome) {
        self.announce(step, &o, None);
        self.record(step, o);
    }

    /// Tells everyone how `step` ended: its event, and the board other
    /// steps wait on.
    fn announce(&self, step: &Step, o: &Outcome, running: Option<&Running>) {
        let (summary, elapsed_ms) = match running {
            Some(r) => (
                r.summary.clone(),
                crate::events::millis(r.started.elapsed()),
            ),
            None => (step.summary.clone(), 0),
        };
        let host = self.host.clone();
        let sref = step.id.clone();
        let event = match o {
            Outcome::Changed | Outcome::Unchanged => Event::StepFinished {
                host,
                step: sref,
                summary,
                changed: *o == Outcome::Changed,
                up_to_date: running.is_none(),
                elapsed_ms,
            },
            Outcome::Skipped(why) => Event::StepSkipped {
                host,
                step: sref,
                summary,
                reason: why.clone(),
            },
            Outcome::Failed(why) | Outcome::Blocked(why) => Event::StepFailed {
                host,
                step: sref,
                summary,
                error: why.clone(),
                blocked: matches!(o, Outcome::Blocked(_)),
                elapsed_ms,
            },
        };
        self.events.emit(event);
        self.board.set(&step.id, o.clone());
    }

    /// `step`'s outcome in the host's report.
    fn record(&mut self, step: &Step, o: Outcome) {
        match o {
            Outcome::Changed => self.report.changed.push(step.summary.clone()),
            Outcome::Unchanged => self.report.unchanged += 1,
            // Skips are reported per service: one line for its three steps.
            Outcome::Skipped(why) => self.report.skipped.push((
                step.service()
                    .map(str::to_string)
                    .unwrap_or_else(|| step.summary.clone()),
                why,
            )),
            Outcome::Failed(why) => self.report.failed.push(StepFailure::of(step, &why)),
            Outcome::Blocked(why) => self.report.blocked.push(StepFailure::of(step, &why)),
        }
    }

    /// The step ran from `began` (its base images included) until `end`.
    fn ran(&mut self, step: &Step, began: Instant, end: Instant) {
        self.report.spans.push(crate::timing::Span {
            id: step.id.clone(),
            summary: step.summary.clone(),
            needs: step.needs.clone(),
            start: began,
            end,
        });
    }

    /// A step that ran, once it ended: its span, what it rotated, its
    /// outcome in the report (its event was announced when it ended).
    fn settle(&mut self, step: &Step, ready: &Ready, o: Outcome, end: Instant) {
        if !ready.rotated.is_empty() && matches!(o, Outcome::Changed | Outcome::Unchanged) {
            self.report.notes.push(format!(
                "{}: rotates {} (the new value was set when the container started)",
                step.service()
                    .map(str::to_string)
                    .unwrap_or_else(|| step.id.to_string()),
                ready.rotated.join(", ")
            ));
        }
        self.ran(step, ready.began, end);
        self.record(step, o);
    }

    /// Something the user must know about this host.
    fn notice(&self, text: impl Into<String>) {
        self.events.notice(Some(&self.host), text);
    }

    async fn run(
        &mut self,
        plan: &HostPlan,
        t: &dyn Transport,
        state: &HostState,
        pending: &HashSet<StepId>,
        known: &HashSet<StepId>,
    ) {
        let images = self.to_stage(plan, state, pending).await;
        if images.is_empty() {
            return self.run_steps(plan, t, state, pending, known, None).await;
        }
        // Docker is about to be installed: the base images go to the host
        // meanwhile, so that once it answers only their load is left.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let project = self.project.clone();
        let staging = async move {
            let mut staged = HashSet::new();
            for image in images {
                if crate::images::stage(t, &project, &image).await.is_ok() {
                    staged.insert(image);
                }
            }
            let _ = tx.send(staged);
        };
        let steps = self.run_steps(plan, t, state, pending, known, Some(rx));
        futures::future::join(staging, steps).await;
    }

    /// The base images to copy to the host while its Docker is installed:
    /// those its pending steps need that this computer's engine has. None
    /// when Docker already runs (a ship is as fast then) or is not to be
    /// installed by this run.
    async fn to_stage(
        &self,
        plan: &HostPlan,
        state: &HostState,
        pending: &HashSet<StepId>,
    ) -> BTreeSet<String> {
        let installs = plan
            .steps
            .iter()
            .any(|s| s.kind() == StepKind::Docker && pending.contains(&s.id));
        if state.docker_running() || !installs {
            return BTreeSet::new();
        }
        let mut images = BTreeSet::new();
        for s in plan.steps.iter().filter(|s| pending.contains(&s.id)) {
            for b in &s.bases {
                if !images.contains(b) && crate::images::local_has(b).await {
                    images.insert(b.clone());
                }
            }
        }
        images
    }

    /// The host's steps in order. Builds next to each other whose needs
    /// have all ended run side by side (at most [`builds_at_once`]); every
    /// other step runs alone.
    async fn run_steps(
        &mut self,
        plan: &HostPlan,
        t: &dyn Transport,
        state: &HostState,
        pending: &HashSet<StepId>,
        known: &HashSet<StepId>,
        staging: Option<tokio::sync::oneshot::Receiver<HashSet<String>>>,
    ) {
        let mut bases = Bases {
            have: state.bases.clone(),
            staging,
            staged: HashSet::new(),
        };
        let mut state = state.clone();
        let mut pending = pending.clone();
        let mut next = 0;
        while let Some(step) = plan.steps.get(next) {
            next += 1;
            let Some(ready) = self
                .prepare(step, t, &state, &pending, known, &mut bases)
                .await
            else {
                continue;
            };
            let mut group = vec![(step, ready)];
            if step.kind() == StepKind::Build && builds_at_once() > 1 {
                while let Some(other) = plan.steps.get(next) {
                    let needs = other.needs.iter().filter(|n| known.contains(*n));
                    if other.kind() != StepKind::Build || !self.board.decided(needs) {
                        break;
                    }
                    next += 1;
                    if let Some(ready) = self
                        .prepare(other, t, &state, &pending, known, &mut bases)
                        .await
                    {
                        group.push((other, ready));
                    }
                }
            }
            if group.len() > 1 {
                self.run_side_by_side(t, &state, group).await;
                continue;
            }
            let (step, ready) = group.pop().expect("the step itself");
            let running = self.start(step, &ready.summary);
            let mut result = self
                .backup_before_replace(t, step, &state, &mut bases.have)
                .await;
            if result.is_ok() {
                result = self.run_step(t, step, &state).await;
            }
            if result.is_ok() {
                result = self.restore_after_create(t, step, &mut bases.have).await;
            }
            let o = outcome(step, result);
            let restarted =
                step.kind() == StepKind::Docker && o == Outcome::Changed && !state.docker_running();
            self.announce(step, &o, Some(&running));
            self.settle(step, &ready, o, Instant::now());
            if restarted {
                // The daemon was not answering (stopped, or not installed),
                // so the probe saw no images, containers, networks or
                // volumes: look again now that it answers, or every later
                // step would redo (and trip over) what is already there.
                match probe_host(t, &self.project, plan, None).await {
                    Ok(fresh) => {
                        for s in plan.steps.iter().filter(|s| s.kind() != StepKind::Ready) {
                            if fresh.holds(&s.when) && only_includes(self.opts.only.as_deref(), s) {
                                pending.insert(s.id.clone());
                            } else {
                                pending.remove(&s.id);
                            }
                        }
                        bases.have.extend(fresh.bases.iter().cloned());
                        state = fresh;
                    }
                    Err(e) => self.notice(format!("probe after starting Docker failed: {e}")),
                }
            }
        }
    }

    /// Steps that neither back up nor restore (builds), at most
    /// [`builds_at_once`] at a time, started in plan order; each announced
    /// the moment it ends.
    async fn run_side_by_side(
        &mut self,
        t: &dyn Transport,
        state: &HostState,
        group: Vec<(&Step, Ready)>,
    ) {
        use futures::StreamExt;
        let this = &*self;
        let ended: Vec<(Outcome, Instant)> = futures::stream::iter(&group)
            .map(|(step, ready)| async move {
                let running = this.start(step, &ready.summary);
                let o = outcome(step, this.run_step(t, step, state).await);
                this.announce(step, &o, Some(&running));
                (o, Instant::now())
            })
            .buffered(builds_at_once())
            .collect()
            .await;
        for ((step, ready), (o, end)) in group.iter().zip(ended) {
            self.settle(step, ready, o, end);
        }
    }

    /// Everything before `step` may run: `None` when it has ended already
    /// (left out, blocked, up to date, a base image missing), announced and
    /// recorded.
    async fn prepare(
        &mut self,
        step: &Step,
        t: &dyn Transport,
        state: &HostState,
        pending: &HashSet<StepId>,
        known: &HashSet<StepId>,
        bases: &mut Bases,
    ) -> Option<Ready> {
        if self.excluded.contains(&step.id) {
            let only = self.opts.only.clone().unwrap_or_default();
            self.finish(
                step,
                Outcome::Skipped(format!(
                    "left out by --only {only} (it does not depend on {only})"
                )),
            );
            return None;
        }
        // Wait for what this step needs, here or on other hosts.
        for need in step.needs.iter().filter(|n| known.contains(*n)) {
            let o = self.board.wait(need).await;
            if !o.satisfies() {
                let outcome = match o {
                    // An upstream service skipped takes its own later steps along.
                    Outcome::Skipped(why) if step.upstream => Outcome::Skipped(why),
                    _ => Outcome::Blocked(format!("needs {need}, which did not succeed")),
                };
                self.finish(step, outcome);
                return None;
            }
        }
        if !pending.contains(&step.id) {
            self.finish(step, Outcome::Unchanged);
            return None;
        }
        let began = Instant::now();
        // Base images first: shipped from this computer's engine when the
        // host lacks them, pulled by the host otherwise.
        if let Err(e) = self.ensure_bases(step, t, state, bases).await {
            let o = if step.upstream {
                let service = step.service().map(str::to_string).unwrap_or_default();
                self.notice(format!("skipping {service}: {e}"));
                Outcome::Skipped(e)
            } else {
                Outcome::Failed(e)
            };
            self.ran(step, began, Instant::now());
            self.finish(step, o);
            return None;
        }
        // A replaced container whose secret changed gets the new value:
        // say so, it is not an ordinary restart.
        let rotated = state.rotated(&step.when);
        let summary = if rotated.is_empty() {
            step.summary.clone()
        } else {
            format!("{}, rotates {}", step.summary, rotated.join(", "))
        };
        Some(Ready {
            summary,
            rotated,
            began,
        })
    }

    async fn ensure_bases(
        &self,
        step: &Step,
        t: &dyn Transport,
        state: &HostState,
        bases: &mut Bases,
    ) -> Result<(), String> {
        let wanted: Vec<&String> = step
            .bases
            .iter()
            .filter(|b| !bases.have.contains(*b))
            .collect();
        for b in wanted {
            if let Some(rx) = bases.staging.take() {
                bases.staged = rx.await.unwrap_or_default();
            }
            if bases.staged.remove(b) {
                self.notice(format!(
                    "loading image {b} (copied to the host while Docker was installed)"
                ));
                match crate::images::load_staged(t, &self.project, b).await {
                    Ok(()) => {
                        bases.have.insert(b.clone());
                        continue;
                    }
                    Err(e) => self.notice(format!("{e}: shipping it instead")),
                }
            }
            self.ensure_base(t, b, state).await?;
            bases.have.insert(b.clone());
        }
        Ok(())
    }

    /// `step` starts now: its event, and what its end will say of it.
    fn start(&self, step: &Step, summary: &str) -> Running {
        self.events.emit(Event::StepStarted {
            host: self.host.clone(),
            step: step.id.clone(),
            summary: summary.to_string(),
        });
        Running {
            summary: summary.to_string(),
            started: Instant::now(),
        }
    }

    /// Before a Run step replaces an existing container (its spec changed),
    /// back up the named volumes it mounts. One `docker inspect` when the
    /// container exists; nothing at all otherwise.
    async fn backup_before_replace(
        &mut self,
        t: &dyn Transport,
        step: &Step,
        state: &HostState,
        bases: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        let Some(dir) = self.opts.backup_dir.clone() else {
            return Ok(());
        };
        let crate::plan::Condition::ContainerOutdated { name, .. } = &step.when else {
            return Ok(());
        };
        if step.kind() != StepKind::Run
            || !state.containers.contains_key(name)
            || state.only_stopped(&step.when)
        {
            return Ok(());
        }
        let out = t
            .exec(
                Exec::new(commands::shell(&commands::container_volumes(name)))
                    .timeout(Duration::from_secs(60))
                    .idempotent(true),
            )
            .await
            .map_err(|e| e.to_string())?;
        if !out.success() {
            return Ok(()); // gone meanwhile: nothing to keep
        }
        let volumes: Vec<String> = out
            .stdout_str()
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect();
        if volumes.is_empty() {
            return Ok(());
        }
        self.ensure_data_image(t, bases).await?;
        let service = step
            .service()
            .map(str::to_string)
            .unwrap_or_else(|| name.clone());
        let path = dir.join(crate::backup::backup_file_name(
            &self.host,
            crate::backup::now_secs(),
            Some(&service),
        ));
        self.notice(format!(
            "backing up volume(s) {} of {name} before replacing it",
            volumes.join(", ")
        ));
        let origin = crate::backup::Origin {
            host: self.host.clone(),
            address: self.address.clone(),
            services: vec![service.clone()],
        };
        let written = match crate::backup::backup_to_file(t, &volumes, &path, false, &origin).await
        {
            Ok(w) => w,
            Err(e) => {
                // The host starts them again when its copy failed; when the
                // failure was here (the file), it reported success and left
                // them stopped for the replacement that will not come now.
                let start = commands::shell(&commands::start_container(name));
                let _ = t
                    .exec(Exec::new(start).timeout(Duration::from_secs(120)))
                    .await;
                return Err(format!(
                    "automatic backup before replacing {name} failed: {e}"
                ));
            }
        };
        let note = format!(
            "backup of {} (before replacing {name}): {} ({} bytes)",
            volumes.join(", "),
            path.display(),
            written.manifest.size
        );
        self.notice(note.clone());
        self.report.notes.push(note);
        if !written.manifest.empty_volumes.is_empty() {
            let warning = format!(
                "WARNING: {}",
                crate::backup::empty_volumes_message(&self.host, &written.manifest.empty_volumes)
            );
            self.notice(warning.clone());
            self.report.notes.push(warning);
        }
        Ok(())
    }

    /// After a Volume step created a volume on the host being restored,
    /// fill it from the backup file (before any service mounts it).
    async fn restore_after_create(
        &mut self,
        t: &dyn Transport,
        step: &Step,
        bases: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        let Some(r) = self.opts.restore.clone() else {
            return Ok(());
        };
        let crate::plan::Condition::VolumeMissing { name } = &step.when else {
            return Ok(());
        };
        if r.host != self.host || !r.volumes.contains(name) {
            return Ok(());
        }
        self.ensure_data_image(t, bases).await?;
        let started = Instant::now();
        self.notice(format!("restoring volume {name} from {}", r.file.display()));
        crate::backup::restore_from_file(t, &self.project, name, name, &r.file, &r.checked).await?;
        let note = format!(
            "volume {name} restored from {} in {:.1} s",
            r.file.display(),
            started.elapsed().as_secs_f64()
        );
        self.notice(note.clone());
        self.report.notes.push(note);
        Ok(())
    }

    async fn ensure_data_image(
        &self,
        t: &dyn Transport,
        bases: &mut BTreeSet<String>,
    ) -> Result<(), String> {
        let image = crate::backup::DATA_IMAGE;
        if !bases.contains(image) {
            // The probe already said the image is missing; no pull memory
            // applies to the base image shipped from this computer.
            self.ensure_base(t, image, &HostState::blank()).await?;
            bases.insert(image.to_string());
        }
        Ok(())
    }

    async fn run_step(
        &self,
        t: &dyn Transport,
        step: &Step,
        state: &HostState,
    ) -> Result<(), String> {
        let deadline = timeout_for(step.kind());
        // A stopped container whose spec is current only needs a start.
        if step.kind() == StepKind::Run && state.only_stopped(&step.when) {
            if let crate::plan::Condition::ContainerOutdated { name, .. } = &step.when {
                return self
                    .exec(
                        t,
                        &step.id,
                        &commands::shell(&commands::start_container(name)),
                        None,
                        deadline,
                    )
                    .await;
            }
        }
        for a in &step.actions {
            match a {
                Action::Run { line } => self.exec(t, &step.id, line, None, deadline).await?,
                Action::Fetch { line, url, token } => {
                    let out = self.exec_output(t, &step.id, line, None, deadline).await?;
                    if !out.success() {
                        return Err(fetch_failure(
                            url,
                            token.as_deref(),
                            &out.stderr_str(),
                            out.status,
                        ));
                    }
                }
                Action::Script { line, script } => {
                    self.exec(
                        t,
                        &step.id,
                        line,
                        Some(script.as_bytes().to_vec()),
                        deadline,
                    )
                    .await?
                }
                Action::Upload { dir, files, .. } => {
                    let tar = tar_of(files).map_err(|e| format!("cannot pack {dir}: {e}"))?;
                    self.exec(t, &step.id, &commands::untar_into(dir), Some(tar), deadline)
                        .await?
                }
                Action::Relay { from, image } => {
                    let source = self.peers.get(from).ok_or_else(|| {
                        format!("cannot load {image} from {from}: no connection to {from}")
                    })?;
                    crate::images::relay(source.as_ref(), t, image).await?
                }
                Action::SwarmJoin {
                    manager,
                    remote,
                    advertise,
                    role,
                    name,
                } => {
                    let m = self.peers.get(manager).ok_or_else(|| {
                        format!("cannot join the swarm: no connection to its manager {manager}")
                    })?;
                    crate::swarm_join::join(m.as_ref(), t, remote, advertise, role).await?;
                    crate::swarm_join::claim(m.as_ref(), t, advertise, name).await?
                }
                Action::WaitReady {
                    line,
                    timeout_secs,
                    container,
                    discard,
                } => {
                    let waited = crate::readiness::wait(
                        t,
                        line,
                        container,
                        Duration::from_secs(*timeout_secs),
                    )
                    .await;
                    if let (Err(why), true) = (&waited, *discard) {
                        let rm = commands::shell(&commands::remove_container(container));
                        let _ = self.exec(t, &step.id, &rm, None, deadline).await;
                        return Err(format!(
                            "the new release never got ready and was removed; the previous one goes on serving: {why}"
                        ));
                    }
                    waited?
                }
            }
        }
        Ok(())
    }

    async fn exec(
        &self,
        t: &dyn Transport,
        step: &StepId,
        line: &str,
        stdin: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<(), String> {
        let out = self.exec_output(t, step, line, stdin, timeout).await?;
        if out.success() {
            Ok(())
        } else {
            Err(failure(
                line,
                &out.stderr_str(),
                &out.stdout_str(),
                out.status,
            ))
        }
    }

    /// Runs `line` with its output streamed as the step's; a failed
    /// command is the caller's to word, only the transport's errors are
    /// errors here.
    async fn exec_output(
        &self,
        t: &dyn Transport,
        step: &StepId,
        line: &str,
        stdin: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<crate::transport::ExecOutput, String> {
        let events = self.events.clone();
        let host = self.host.clone();
        let step = step.clone();
        let mut req = Exec::new(line)
            .timeout(timeout)
            .on_line(move |_s: Stream, l: &str| {
                events.emit(Event::StepOutput {
                    host: host.clone(),
                    step: step.clone(),
                    line: l.to_string(),
                })
            });
        if let Some(b) = stdin {
            req = req.stdin_bytes(b);
        }
        t.exec(req).await.map_err(|e| e.to_string())
    }

    /// [`crate::images::ensure`] for an image the probe found missing,
    /// with the host's memory of failed pulls.
    async fn ensure_base(
        &self,
        t: &dyn Transport,
        image: &str,
        state: &HostState,
    ) -> Result<(), String> {
        let source = crate::images::Source {
            known_missing: true,
            failed_pull: state
                .recently_unpullable(image, RETRY_PULL_AFTER_SECS)
                .map(|when| (state.now.saturating_sub(when), RETRY_PULL_AFTER_SECS)),
            remember_for: Some(&self.project),
        };
        let mut say = |a: crate::images::Action| {
            let what = match a {
                crate::images::Action::Ship => {
                    format!("shipping image {image} from this computer (docker save | docker load)")
                }
                crate::images::Action::Pull => format!("pulling image {image} on the host"),
            };
            self.notice(what);
        };
        crate::images::ensure(t, image, &source, &mut say)
            .await
            .map(drop)
    }
}

/// What a step that ran came to. A readiness wait changes nothing on the
/// host.
fn outcome(step: &Step, result: Result<(), String>) -> Outcome {
    match result {
        Ok(()) if step.kind() == StepKind::Ready => Outcome::Unchanged,
        Ok(()) => Outcome::Changed,
        Err(e) => Outcome::Failed(e),
    }
}

/// A failure message: the command's first word and the tail of its error
/// output (never the whole line, which may be long). Where the cause went
/// to stdout (`docker build` prints a RUN's own errors there, and only
/// "returned a non-zero code" on stderr), its last error lines come first.
fn failure(line: &str, stderr: &str, stdout: &str, status: Option<u32>) -> String {
    let what = crate::transport::command_label(line);
    let mut tail: Vec<&str> = Vec::new();
    if !stderr.trim().is_empty() {
        let errorish = |l: &&str| {
            let l = without_colours(l).trim().to_ascii_lowercase();
            l.starts_with("e:")
                || l.starts_with("err:")
                || l.contains("error")
                || l.contains("no space left")
                || l.contains("failed")
        };
        let printed: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
        let mut causes: Vec<&str> = printed.iter().copied().filter(errorish).collect();
        if causes.is_empty() {
            causes = printed; // no line says error: what it printed last
        }
        tail.extend(&causes[causes.len().saturating_sub(3)..]);
    }
    let text = if stderr.trim().is_empty() {
        stdout
    } else {
        stderr
    };
    // BuildKit prints everything on stderr and ends with the Dockerfile
    // excerpt: the failed RUN's own last lines are in its `------` block.
    tail.extend(buildkit_failed_step(stderr));
    let rest: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    tail.extend(&rest[rest.len().saturating_sub(5)..]);
    let tail = tail
        .iter()
        .map(|l| without_colours(l))
        .collect::<Vec<_>>()
        .join("\n    ");
    format!(
        "`{what}` exited with {}{}",
        status
            .map(|s| s.to_string())
            .unwrap_or_else(|| "a signal".into()),
        if tail.is_empty() {
            String::new()
        } else {
            format!(":\n    {tail}")
        }
    )
}

/// A failed fetch of the app tarball (a [`plan::fetch_line`]) in the
/// user's words: the URL without credentials, what went wrong, and for a
/// refused token the secret's name. Built from the URL, the name and
/// curl's or tar's own complaint only: the token's value is in no input
/// here (curl reads it from its config and never prints it), so it cannot
/// leak even where the event hub's masking does not reach.
pub fn fetch_failure(url: &str, token: Option<&str>, stderr: &str, status: Option<u32>) -> String {
    let url = without_credentials(url);
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    // `curl: (22) The requested URL returned error: 401`
    let curl = lines.iter().rev().find_map(|l| {
        let rest = l.strip_prefix("curl: (")?;
        let (code, text) = rest.split_once(") ")?;
        Some((code.parse::<u32>().ok()?, text))
    });
    let why = match (curl, status) {
        (Some((22, text)), _) => {
            let http = text
                .rsplit_once("returned error: ")
                .and_then(|(_, c)| c.split_whitespace().next())
                .and_then(|c| c.parse::<u16>().ok());
            match (http, token) {
                (Some(c @ (401 | 403)), Some(name)) => {
                    format!("HTTP {c}: the token {name} was refused")
                }
                (Some(c @ (401 | 403)), None) => format!(
                    "HTTP {c}: the server wants credentials; `token` in [app] names the secret to send"
                ),
                // GitHub answers 404, not 403, to a token that may not see a
                // private repository.
                (Some(404), Some(name)) => {
                    format!("HTTP 404: no tarball there, or the token {name} may not read it")
                }
                (Some(404), None) => "HTTP 404: no tarball there".to_string(),
                (Some(c), _) => format!("HTTP {c}"),
                (None, _) => format!("curl: {text}"),
            }
        }
        // 60: the chain is not trusted; 35, 51, 58, 77, 83: other TLS
        // failures, said in curl's words.
        (Some((60, text)), _) => {
            format!("the server's certificate is not trusted (curl: {text})")
        }
        (Some((_, text)), _) => format!("curl: {text}"),
        (None, None) => "it was stopped by a signal".to_string(),
        (None, Some(129 | 130 | 143)) => "it was stopped (the step was ended)".to_string(),
        (None, Some(code)) => {
            let tail = &lines[lines.len().saturating_sub(3)..];
            format!(
                "the tarball could not be unpacked (exit {code}){}",
                if tail.is_empty() {
                    String::new()
                } else {
                    format!(":\n    {}", tail.join("\n    "))
                }
            )
        }
    };
    format!("fetching the app from {url} failed: {why}")
}

/// `url` without a `user:password@` part, should one be written there.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

/// The last lines of the step BuildKit says failed: its block
/// `------` / ` > [2/3] RUN ...:` / the step's output / `------`
/// (at most the block's last 10 lines, the header included).
fn buildkit_failed_step(stderr: &str) -> Vec<&str> {
    let lines: Vec<&str> = stderr.lines().collect();
    let Some(start) = lines
        .iter()
        .rposition(|l| l.trim_start().starts_with("> [") && l.trim_end().ends_with(':'))
    else {
        return Vec::new();
    };
    let body: Vec<&str> = lines[start + 1..]
        .iter()
        .take_while(|l| l.trim() != "------")
        .copied()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let mut out = vec![lines[start].trim()];
    out.extend(&body[body.len().saturating_sub(9)..]);
    out
}

/// `l` without terminal colour codes (`ESC [ 91 m`: docker build colours
/// a RUN's stderr).
pub(crate) fn without_colours(l: &str) -> String {
    let mut out = String::with_capacity(l.len());
    let mut chars = l.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' && chars.peek() == Some(&'[') {
            chars.next();
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A tar of context files: fixed owner and times, so equal contexts give
/// equal archives.
pub fn tar_of(files: &[ContextFile]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for f in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(f.data.len() as u64);
        h.set_mode(f.mode);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        b.append_data(&mut h, &f.path, f.data.as_slice())?;
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Condition;

    #[test]
    fn a_buildkit_failure_shows_the_failed_steps_own_lines() {
        let stderr = "#5 [2/2] RUN ./setup\n#5 0.2 step 1\n#5 0.3 SECRET_KEY_BASE: is not set\n#5 ERROR: process \"/bin/sh -c ./setup\" did not complete successfully: exit code: 3\n------\n > [2/2] RUN ./setup:\n0.2 step 1\n0.3 SECRET_KEY_BASE: is not set\n------\nDockerfile:2\n--------------------\n   1 |     FROM debian:bookworm\n   2 | >>> RUN ./setup\n   3 |     CMD [\"sleep\", \"infinity\"]\n--------------------\nERROR: failed to solve: process \"/bin/sh -c ./setup\" did not complete successfully: exit code: 3\n";
        let f = failure("docker build .", stderr, "", Some(1));
        assert!(
            f.contains(":\n    > [2/2] RUN ./setup:\n    0.2 step 1\n    0.3 SECRET_KEY_BASE: is not set\n"),
            "{f}"
        );
        assert!(f.ends_with("exit code: 3"), "{f}");
        // Without such a block nothing is added.
        assert!(buildkit_failed_step("E: no space\n").is_empty());
    }

    #[test]
    fn a_build_failure_shows_the_cause_its_run_printed() {
        let apt = "After this operation, 539 MB of additional disk space will be used.\n\x1b[91mE: You don't have enough free space in /var/cache/apt/archives/.\n\x1b[0m\n";
        let f = failure(
            "docker build .",
            "The command 'x' returned a non-zero code: 100\n",
            apt,
            Some(100),
        );
        assert!(
            f.contains("\n    E: You don't have enough free space"),
            "{f}"
        );
        assert!(!f.contains('\x1b'), "{f}");
        let stdout = "Unpacking libllvm14 ...\ndpkg: error processing archive x.deb (--unpack):\n cannot copy extracted data for './usr/lib/x.so' to '/usr/lib/x.so.dpkg-new': failed to write (No space left on device)\nErrors were encountered while processing:\n x.deb\n";
        let stderr = "The command '/bin/sh -c apt-get install postgresql-15' returned a non-zero code: 100\n";
        let f = failure("docker build --tag x .", stderr, stdout, Some(100));
        assert!(f.contains("No space left on device"), "{f}");
        assert!(f.ends_with("returned a non-zero code: 100"), "{f}");
        assert!(f.starts_with("`docker` exited with 100"), "{f}");
    }

    const URL: &str = "https://git.example/acme/app/archive/main.tar.gz";

    #[test]
    fn a_refused_token_is_named_by_its_secret_and_the_url_shown() {
        let stderr = "curl: (22) The requested URL returned error: 401\n";
        let f = fetch_failure(URL, Some("REPO_TOKEN"), stderr, Some(22));
        assert_eq!(
            f,
            format!(
                "fetching the app from {URL} failed: HTTP 401: the token REPO_TOKEN was refused"
            )
        );
        // Older curl adds the reason phrase.
        let f = fetch_failure(
            URL,
            Some("REPO_TOKEN"),
            "curl: (22) The requested URL returned error: 403 Forbidden",
            Some(22),
        );
        assert!(
            f.ends_with("HTTP 403: the token REPO_TOKEN was refused"),
            "{f}"
        );
        let f = fetch_failure(URL, None, stderr, Some(22));
        assert!(
            f.ends_with("`token` in [app] names the secret to send"),
            "{f}"
        );
        let f = fetch_failure(
            URL,
            Some("REPO_TOKEN"),
            "curl: (22) The requested URL returned error: 404",
            Some(22),
        );
        assert!(
            f.ends_with("or the token REPO_TOKEN may not read it"),
            "{f}"
        );
    }

    #[test]
    fn a_fetch_failure_keeps_no_credentials_of_the_url() {
        let f = fetch_failure(
            "https://bot:s3cret@git.example/a.tar.gz?ref=main",
            None,
            "curl: (7) Failed to connect to git.example port 443",
            Some(7),
        );
        assert_eq!(
            f,
            "fetching the app from https://git.example/a.tar.gz?ref=main failed: \
             curl: Failed to connect to git.example port 443"
        );
        assert_eq!(without_credentials(URL), URL);
        assert_eq!(
            without_credentials("https://h.example/p?q=a@b"),
            "https://h.example/p?q=a@b"
        );
    }

    #[test]
    fn an_untrusted_certificate_and_a_bad_tarball_say_so() {
        let f = fetch_failure(
            URL,
            Some("REPO_TOKEN"),
            "curl: (60) SSL certificate problem: unable to get local issuer certificate\nMore details here: https://curl.se/docs/sslcerts.html\n",
            Some(60),
        );
        assert!(
            f.ends_with("the server's certificate is not trusted (curl: SSL certificate problem: unable to get local issuer certificate)"),
            "{f}"
        );
        let f = fetch_failure(
            URL,
            None,
            "gzip: stdin: not in gzip format\ntar: Child returned status 1\ntar: Error is not recoverable: exiting now\n",
            Some(2),
        );
        assert!(
            f.contains("failed: the tarball could not be unpacked (exit 2):\n    gzip: stdin: not in gzip format"),
            "{f}"
        );
        let f = fetch_failure(URL, None, "", Some(143));
        assert!(f.ends_with("it was stopped (the step was ended)"), "{f}");
    }

    /// `host/service/kind` or `host/kind` written out as a [`StepId`].
    fn id(host: &str, service: Option<&str>, kind: StepKind) -> StepId {
        match service {
            Some(s) => StepId::service(host, s, kind),
            None => StepId::host(host, kind),
        }
    }

    fn step(id: StepId, needs: Vec<StepId>) -> Step {
        let summary = id.to_string();
        Step::new(id, summary, Condition::Always).needs(needs)
    }

    #[test]
    fn only_keeps_its_host_and_runs_elsewhere_that_need_it() {
        use StepKind::*;
        let only = Some("db");
        let rails = step(
            id("web", Some("rails"), Run),
            vec![
                id("web", Some("rails"), Build),
                id("db", Some("postgis"), Ready),
                id("web", Some("redis"), Ready),
            ],
        );
        let redis = step(
            id("web", Some("redis"), Run),
            vec![id("web", Some("redis"), Build)],
        );
        let build = step(
            id("web", Some("rails"), Build),
            vec![id("db", None, Network)],
        );
        assert!(only_includes(only, &step(id("db", None, Docker), vec![])));
        assert!(only_includes(only, &rails));
        assert!(!only_includes(only, &redis));
        assert!(!only_includes(only, &build), "never a build elsewhere");
        assert!(only_includes(None, &redis));
        // `db` is not a prefix of `dbx`.
        assert!(!only_includes(Some("d"), &rails));
        // The firewall and pg_hba on db follow web's address: --only web
        // runs them, --only db leaves other hosts' such steps alone.
        let firewall = step(id("db", None, Firewall), vec![id("db", None, Docker)])
            .follows(vec!["web".into()]);
        let hba = step(
            id("db", Some("postgis"), Config),
            vec![id("db", None, Network)],
        )
        .follows(vec!["web".into()]);
        let postgis_build = step(
            id("db", Some("postgis"), Build),
            vec![id("db", None, Network)],
        );
        assert!(only_includes(Some("web"), &firewall));
        assert!(only_includes(Some("web"), &hba));
        assert!(!only_includes(Some("web"), &postgis_build));
        assert!(!only_includes(Some("cache"), &hba));
    }
}
