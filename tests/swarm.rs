//! Swarm mode (issue 14), end to end on 5 local machines, one manager (n1):
//! PostGIS pinned to n2, Redis to n3, Nginx to n1 (port 80 in host mode),
//! Rails with `replicas = 3` spread over the nodes. As a user sees it:
//!
//! 1. `provision` from blank machines exits 0; the swarm has 5 ready nodes,
//!    each labelled `provision.host=<its hosts.toml name>`;
//! 2. a page visit through Nginx on n1 stores a row in PostGIS on n2;
//! 3. the three Rails tasks run on three different nodes;
//! 4. a second run says "Nothing changed" and no task was replaced;
//!    `status` lists each service's tasks on their nodes, nothing drifting;
//! 5. while a client keeps requesting the page, the machine of one Rails
//!    task (n4 or n5: a node with Rails alone) is stopped: the task runs
//!    elsewhere within 120 s, the page is served after the reschedule, and
//!    at most 5% of the requests failed during the loss;
//! 6. a changed Rails template variable (`puma_threads`) rolls out (a new
//!    image, one task at a time, start-first) with no failed request;
//! 7. the lost node's machine is replaced by a blank one: `--only` it, it
//!    rejoins as one ready node (the old entry removed) with the Rails image;
//! 8. `backup n2` (PostGIS scaled to 0 for the copy, then back), n2's
//!    machine replaced by a blank one, `--only n2 --restore-from latest`:
//!    the new n2 serves the backup's rows and stores new ones.
//!
//! Own project prefix `pvswarm` and a 10.229.x.0/24 subnet; the lab removes
//! its machines even when the test fails. Traffic goes only to the machines
//! this test creates.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use support::http::{http_until, number_after, Client};
use support::lab::Lab;
use support::wait::wait_for;

/// Hosts of the swarm, in hosts.toml order, at `.11` to `.15`.
const NODES: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

/// hosts.toml of the swarm; `rails_vars` goes under `[services.rails]`.
fn hosts(lab: &Lab, rails_vars: &str) -> String {
    let machines: String = NODES
        .iter()
        .zip(11u8..)
        .map(|(name, last)| {
            let role = if *name == "n1" {
                "role = \"manager\"\n"
            } else {
                ""
            };
            format!(
                "[hosts.{name}]\nmachine = \"local\"\naddress = \"{}\"\n{role}\n",
                lab.addr(last)
            )
        })
        .collect();
    format!(
        r#"[project]
name = "{project}"
mode = "swarm"

[app]
source = "{app}"

[secrets.PG_PASSWORD]
generate = true

[secrets.SECRET_KEY_BASE]
generate = true

{machines}[services.postgis]
host = "n2"
template = "postgis"
volumes = ["pgdata:/var/lib/postgresql/data"]
secrets = ["PG_PASSWORD"]

[services.redis]
host = "n3"
template = "redis"
volumes = ["redis-data:/data"]

[services.rails]
template = "rails"
replicas = 3
uses = ["postgis", "redis"]
secrets = ["SECRET_KEY_BASE"]
env = {{ RAILS_ENV = "production", RAILS_LOG_TO_STDOUT = "1" }}
{rails_vars}
[services.nginx]
host = "n1"
template = "nginx"
publish = ["80"]
public = true
uses = ["rails"]
"#,
        project = lab.project,
        app = lab.stack().app,
    )
}

/// The swarm service of a hosts.toml service (`docker stack deploy`'s name).
fn service(lab: &Lab, name: &str) -> String {
    format!("{}_{name}", lab.project)
}

/// A node of the swarm as the manager sees it.
#[derive(Debug, Clone)]
struct Node {
    /// Its `provision.host` label (its hostname when it has none).
    name: String,
    /// `ready`, `down`, ...
    state: String,
}

/// The swarm's nodes by node ID, read on the manager.
fn nodes(lab: &Lab) -> BTreeMap<String, Node> {
    let script = "docker node inspect --format \
        '{{.ID}}|{{.Status.State}}|{{index .Spec.Labels \"provision.host\"}}|{{.Description.Hostname}}' \
        $(docker node ls -q)";
    lab.dexec_ok("n1", script)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), 4, "docker node inspect said {line:?}");
            let name = if f[2].is_empty() || f[2] == "<no value>" {
                f[3]
            } else {
                f[2]
            };
            let node = Node {
                name: name.to_string(),
                state: f[1].to_string(),
            };
            (f[0].to_string(), node)
        })
        .collect()
}

/// A task of a swarm service whose desired state is running.
#[derive(Debug, Clone)]
struct Task {
    id: String,
    /// The hosts.toml name of its node.
    node: String,
    /// Whether its node is `ready`.
    node_ready: bool,
    /// `running`, `starting`, `preparing`, ...
    state: String,
    image: String,
}

impl Task {
    fn up(&self) -> bool {
        self.node_ready && self.state == "running"
    }
}

/// The tasks of `name` (a hosts.toml service) that should run, read on the
/// manager: `docker service ps` for their IDs, `docker inspect` of each for
/// its node ID, state and image (node IDs, not hostnames: a node that
/// rejoined has a new ID under the same hostname).
fn tasks(lab: &Lab, name: &str) -> Vec<Task> {
    let script = format!(
        "ids=$(docker service ps -q --no-trunc --filter desired-state=running {}) && \
         {{ [ -z \"$ids\" ] || docker inspect --type task \
         --format '{{{{.ID}}}}|{{{{.NodeID}}}}|{{{{.Status.State}}}}|{{{{.Spec.ContainerSpec.Image}}}}' $ids; }}",
        service(lab, name)
    );
    let out = lab.dexec_ok("n1", &script);
    let nodes = nodes(lab);
    out.lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            assert_eq!(f.len(), 4, "docker inspect of a task said {line:?}");
            let node = nodes.get(f[1]);
            Task {
                id: f[0].to_string(),
                node: node.map_or_else(|| format!("?{}", f[1]), |n| n.name.clone()),
                node_ready: node.is_some_and(|n| n.state == "ready"),
                state: f[2].to_string(),
                image: f[3].to_string(),
            }
        })
        .collect()
}

/// The running Rails tasks on ready nodes, polled until there are 3.
fn three_rails_tasks(lab: &Lab, what: &str, limit: Duration) -> Vec<Task> {
    three_rails_tasks_off(lab, None, what, limit)
}

/// [`three_rails_tasks`], none of them on `lost` (a stopped node the swarm
/// may still call ready for a few seconds).
fn three_rails_tasks_off(lab: &Lab, lost: Option<&str>, what: &str, limit: Duration) -> Vec<Task> {
    wait_for(what, limit, || {
        let up: Vec<Task> = tasks(lab, "rails")
            .into_iter()
            .filter(Task::up)
            .filter(|t| Some(t.node.as_str()) != lost)
            .collect();
        (up.len() == 3).then_some(up)
    })
}

/// A `docker service inspect --format` value of a hosts.toml service.
fn service_field(lab: &Lab, name: &str, format: &str) -> String {
    lab.dexec_ok(
        "n1",
        &format!(
            "docker service inspect --format '{format}' {}",
            service(lab, name)
        ),
    )
}

/// Rows of the app's visits table, counted inside the PostGIS task's
/// container on n2 (as the postgres user: local connections are `peer`).
fn rows(lab: &Lab) -> u64 {
    let line = lab.dexec_ok("n2", &count_visits(lab));
    line.parse()
        .unwrap_or_else(|_| panic!("psql in the postgis task on n2 said {line:?}"))
}

fn count_visits(lab: &Lab) -> String {
    format!(
        "docker exec -u postgres \
         $(docker ps -q -f label=com.docker.swarm.service.name={} | head -n 1) \
         psql -X -d app -tAc 'select count(*) from visits'",
        service(lab, "postgis")
    )
}

/// A node's machine gone with its Docker data; the next `provision`
/// makes a blank one at the same address.
fn replace_with_blank(lab: &Lab, node: &str) {
    let machine = lab.machine(node);
    lab.docker(&["rm", "--force", &machine]);
    lab.docker(&["volume", "rm", &format!("{machine}-docker")]);
}

/// [`rows`] once PostGIS's task on n2 answers (it is being rescheduled).
fn rows_once_up(lab: &Lab, what: &str) -> u64 {
    let script = count_visits(lab);
    wait_for(what, Duration::from_secs(120), || {
        let out = lab.dexec("n2", &script);
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    })
}

/// IDs of every running task of the stack (all four services), sorted.
fn stack_tasks(lab: &Lab) -> BTreeSet<String> {
    ["postgis", "redis", "rails", "nginx"]
        .iter()
        .flat_map(|s| tasks(lab, s))
        .map(|t| format!("{}@{}", t.id, t.node))
        .collect()
}

#[test]
fn a_swarm_of_five_serves_the_stack_survives_a_lost_node_and_rolls_out() {
    let lab = Lab::new("pvswarm", 229);
    lab.write("hosts.toml", &hosts(&lab, ""));
    let url = format!("http://{}/", lab.addr(11));

    // 1. From blank machines (provision creates them from `machine = "local"`).
    let cold = lab
        .provision(&[])
        .expect(0, "the first run, from blank machines");
    eprintln!(
        "MEASURED swarm cold stand-up (5 machines): {:.1} s",
        cold.secs()
    );
    let swarm = nodes(&lab);
    let ready: BTreeSet<&str> = swarm
        .values()
        .filter(|n| n.state == "ready")
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(
        ready,
        BTreeSet::from(NODES),
        "the swarm's ready nodes, by their provision.host label: {swarm:?}"
    );

    // 2. A visit through nginx on n1 stores a row in PostGIS on n2.
    let first = number_after(&lab.page(lab.addr(11)), "total");
    let before = rows(&lab);
    let second = number_after(&lab.page(lab.addr(11)), "total");
    let after = rows(&lab);
    assert!(
        second > first,
        "the page's total visits grew: {first} then {second}"
    );
    assert!(
        after > before,
        "a visit through nginx stored a row in PostGIS on n2: {before} then {after} rows"
    );

    // 3. Three Rails tasks on three different nodes.
    let rails = three_rails_tasks(&lab, "3 running rails tasks", Duration::from_secs(120));
    let on: BTreeSet<&str> = rails.iter().map(|t| t.node.as_str()).collect();
    assert_eq!(
        on.len(),
        3,
        "the three rails tasks run on three different nodes: {rails:?}"
    );

    // 4. A second run changes nothing.
    let running = stack_tasks(&lab);
    let again = lab.provision(&[]).expect(0, "the second run");
    eprintln!("MEASURED swarm no-op rerun: {:.2} s", again.secs());
    assert!(
        again.text().contains("Nothing changed"),
        "a second run says \"Nothing changed\":\n{}",
        again.text()
    );
    assert_eq!(
        stack_tasks(&lab),
        running,
        "a no-op run replaced a task (task@node before vs after)"
    );

    // 4b. `status` as a user reads it: per service its tasks and their
    //     nodes, the pinned ones where hosts.toml put them, nothing drifts.
    let doc = lab
        .provision(&["status", "--json"])
        .expect(0, "status --json");
    let doc: serde_json::Value = serde_json::from_str(&doc.stdout)
        .unwrap_or_else(|e| panic!("status --json is one document ({e}):\n{}", doc.text()));
    let entry = |name: &str| -> serde_json::Value {
        doc["services"]
            .as_array()
            .and_then(|l| l.iter().find(|s| s["name"] == name))
            .unwrap_or_else(|| panic!("status has no {name}: {doc}"))
            .clone()
    };
    for (name, host) in [("postgis", "n2"), ("redis", "n3"), ("nginx", "n1")] {
        let e = entry(name);
        assert_eq!(
            (
                e["host"].as_str(),
                e["state"].as_str(),
                e["replicas"].as_str()
            ),
            (Some(host), Some("running"), Some("1/1")),
            "status of {name}: {e}"
        );
        assert_eq!(e["tasks"][0]["node"].as_str(), Some(host), "{e}");
    }
    let e = entry("rails");
    assert_eq!(
        (e["state"].as_str(), e["replicas"].as_str()),
        (Some("running"), Some("3/3")),
        "{e}"
    );
    let status_nodes: BTreeSet<&str> = e["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["node"].as_str())
        .collect();
    let ps_nodes: BTreeSet<&str> = rails.iter().map(|t| t.node.as_str()).collect();
    assert_eq!(status_nodes, ps_nodes, "status names the tasks' nodes: {e}");
    for s in doc["services"].as_array().unwrap() {
        assert_eq!(s["drift"], "up to date", "after a run nothing drifts: {s}");
    }
    let table = lab.provision_ok(&["status"]).stdout;
    assert!(
        table.contains("rails.1") && table.contains("running 3/3"),
        "the table lists the tasks:\n{table}"
    );

    // 5. The machine of one Rails task stops, under load. The scheduler may
    //    have put every task beside a pinned service; a forced update
    //    spreads them again (start-first: the new tasks go where the
    //    service has none), until one runs on n4 or n5.
    let mut rails = rails;
    for _ in 0..3 {
        if rails.iter().any(|t| t.node == "n4" || t.node == "n5") {
            break;
        }
        lab.dexec_ok(
            "n1",
            &format!(
                "docker service update --force --quiet {} >/dev/null",
                service(&lab, "rails")
            ),
        );
        rails = three_rails_tasks(
            &lab,
            "3 rails tasks after a forced update",
            Duration::from_secs(180),
        );
    }
    let on: BTreeSet<String> = rails.iter().map(|t| t.node.clone()).collect();
    let victim = ["n4", "n5"]
        .into_iter()
        .find(|n| on.contains(*n))
        .unwrap_or_else(|| {
            panic!(
                "no rails task on n4 or n5 (the nodes without a pinned service), \
                 so stopping any node would also stop postgis, redis or nginx: {rails:?}"
            )
        });
    let client = Client::start(&url);
    wait_for(
        "the load thread's first request",
        Duration::from_secs(30),
        || (client.seen.lock().unwrap().sent > 0).then_some(()),
    );
    let lost = Instant::now();
    lab.docker(&["stop", &lab.machine(victim)]);
    let moved = three_rails_tasks_off(
        &lab,
        Some(victim),
        &format!("3 rails tasks running on ready nodes after {victim} stopped"),
        Duration::from_secs(120),
    );
    let rescheduled = lost.elapsed();
    assert!(
        moved.iter().all(|t| t.node != victim),
        "no rails task runs on the stopped {victim}: {moved:?}"
    );
    let page = http_until(&url, "Total visits", Duration::from_secs(30));
    assert!(page.contains("Total visits"), "{page}");
    let l = client.finish();
    eprintln!(
        "MEASURED swarm node loss ({victim} stopped): rails rescheduled in {:.1} s; \
         {} requests, {} failed, e.g. {:?}",
        rescheduled.as_secs_f64(),
        l.sent,
        l.failed.len(),
        &l.failed[..l.failed.len().min(3)]
    );
    assert!(
        l.sent > 20,
        "the client kept requesting during the loss: {} requests",
        l.sent
    );
    assert!(
        l.failed.len() as u64 * 20 <= l.sent,
        "at most 5% of the requests may fail while {victim} is lost: {} of {} failed, e.g. {:?}",
        l.failed.len(),
        l.sent,
        &l.failed[..l.failed.len().min(3)]
    );

    // 6. A changed Rails template variable rolls out under load. (The run
    //    finds the stopped machine; whether it starts it again or not, 3
    //    tasks fit on the 4 nodes left.)
    let old_image = service_field(&lab, "rails", "{{.Spec.TaskTemplate.ContainerSpec.Image}}");
    lab.write("hosts.toml", &hosts(&lab, "vars = { puma_threads = 4 }\n"));
    let client = Client::start(&url);
    wait_for(
        "the load thread's first request",
        Duration::from_secs(30),
        || (client.seen.lock().unwrap().sent > 0).then_some(()),
    );
    let rollout = lab
        .provision(&[])
        .expect(0, "the run with puma_threads = 4");
    let new_image = service_field(&lab, "rails", "{{.Spec.TaskTemplate.ContainerSpec.Image}}");
    let rolled = three_rails_tasks(
        &lab,
        "3 rails tasks running after the rollout",
        Duration::from_secs(60),
    );
    http_until(&url, "Total visits", Duration::from_secs(30));
    let l = client.finish();
    eprintln!(
        "MEASURED swarm rollout (puma_threads = 4): {:.1} s; {} requests, {} failed, e.g. {:?}",
        rollout.secs(),
        l.sent,
        l.failed.len(),
        &l.failed[..l.failed.len().min(3)]
    );
    assert_ne!(
        new_image, old_image,
        "a changed rails variable gives the rails service a new image"
    );
    assert!(
        rolled.iter().all(|t| t.image == new_image),
        "every running rails task runs the new image {new_image}: {rolled:?}"
    );
    let update = service_field(
        &lab,
        "rails",
        "{{.Spec.UpdateConfig.Parallelism}} {{.Spec.UpdateConfig.Order}} \
         {{.Spec.UpdateConfig.FailureAction}}",
    );
    assert_eq!(
        update, "1 start-first rollback",
        "rails updates one task at a time, start-first, rolled back on failure"
    );
    if !l.failed.is_empty() {
        // Why Nginx answered 502: its own account of the upstreams it tried.
        let errors = lab.dexec(
            "n1",
            &format!(
                "docker service logs --timestamps --raw {} 2>&1 | grep -E '\\[(error|crit|alert)\\]' | tail -40",
                service(&lab, "nginx")
            ),
        );
        eprintln!(
            "nginx's errors:\n{}",
            String::from_utf8_lossy(&errors.stdout)
        );
    }
    l.assert_none_failed("the rollout");

    // 7. The lost node's machine is replaced by a blank one at the same
    //    address: `--only` it rejoins (its old node entry removed), and it
    //    gets the Rails image, since Rails may run anywhere.
    replace_with_blank(&lab, victim);
    let back = lab
        .provision(&["--only", victim])
        .expect(0, &format!("--only {victim} on a blank machine"));
    eprintln!(
        "MEASURED swarm --only {victim} (blank replacement): {:.1} s",
        back.secs()
    );
    let entries: Vec<Node> = nodes(&lab)
        .into_values()
        .filter(|n| n.name == victim)
        .collect();
    assert_eq!(
        entries.iter().map(|n| n.state.as_str()).collect::<Vec<_>>(),
        ["ready"],
        "one node entry for {victim}, ready (the replaced one removed): {entries:?}"
    );
    lab.dexec_ok(
        victim,
        &format!("docker image inspect --format '{{{{.Id}}}}' {new_image}"),
    );
    http_until(&url, "Total visits", Duration::from_secs(30));

    // 8. PostGIS's node: `backup n2` (Swarm scales the service to 0 for
    //    the copy and back), its machine replaced by a blank one, and
    //    `--only n2 --restore-from latest` serves the old rows there.
    let kept = rows(&lab);
    let saved = lab
        .provision(&["backup", "n2"])
        .expect(0, "backup n2 (PostGIS's node)");
    eprintln!("MEASURED swarm backup n2: {:.1} s", saved.secs());
    assert!(
        saved.text().contains("backup of n2 (pgdata)"),
        "{}",
        saved.text()
    );
    assert_eq!(
        rows_once_up(&lab, "PostGIS back after the backup"),
        kept,
        "the backup gave PostGIS back with its rows"
    );
    assert_eq!(
        service_field(&lab, "postgis", "{{.Spec.Mode.Replicated.Replicas}}"),
        "1",
        "postgis has its one task again"
    );
    replace_with_blank(&lab, "n2");
    let back = lab
        .provision(&["--only", "n2", "--restore-from", "latest"])
        .expect(0, "--only n2 --restore-from latest on a blank machine");
    eprintln!(
        "MEASURED swarm --only n2 --restore-from latest (blank replacement): {:.1} s",
        back.secs()
    );
    assert!(
        back.text().contains("volume pgdata restored from"),
        "{}",
        back.text()
    );
    assert_eq!(
        rows_once_up(&lab, "PostGIS on the new n2"),
        kept,
        "the new n2 serves the rows of the backup"
    );
    let before = number_after(
        &http_until(&url, "Total visits", Duration::from_secs(60)),
        "total",
    );
    let after = number_after(&lab.page(lab.addr(11)), "total");
    assert!(
        after > before,
        "a visit after the restore counts: {before} then {after}"
    );
    assert!(rows(&lab) > kept, "and is stored in PostGIS on the new n2");
}
