//! Swarm mode's plan as a user sees it (`--dry-run`, `--json`), and its
//! input errors (exit 2, file, line and key, nothing contacted). No host is
//! needed: the plan is pure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_provision");
const PG_PASSWORD: &str = "Swarm-PG-Secret-Value-41";
const SECRET_KEY_BASE: &str = "swarm-key-base-secret-0987";

fn project(hosts_toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hosts.toml"), hosts_toml).unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    std::os::unix::fs::symlink(repo.join("examples"), dir.path().join("examples")).unwrap();
    dir
}

fn provision(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(["--hosts", "hosts.toml"])
        .args(args)
        .env("PG_PASSWORD", PG_PASSWORD)
        .env("SECRET_KEY_BASE", SECRET_KEY_BASE)
        .output()
        .unwrap()
}

/// Three nodes (documentation addresses: nothing is contacted), the DB
/// pinned to the second, Rails on three tasks anywhere.
fn swarm(services_extra: &str) -> String {
    format!(
        r#"[project]
name = "shop"
mode = "swarm"

[app]
source = "examples/rails_app"

[secrets.PG_PASSWORD]
[secrets.SECRET_KEY_BASE]

[hosts.n1]
address = "192.0.2.11"
[hosts.n2]
address = "192.0.2.12"
[hosts.n3]
address = "192.0.2.13"

[services.postgis]
host = "n2"
volumes = ["pgdata:/var/lib/postgresql/data"]
secrets = ["PG_PASSWORD"]

[services.redis]
host = "n3"
volumes = ["redis-data:/data"]

[services.rails]
replicas = 3
uses = ["postgis", "redis"]
secrets = ["SECRET_KEY_BASE"]

[services.nginx]
host = "n1"
publish = ["80"]
public = true
uses = ["rails"]
{services_extra}"#
    )
}

#[test]
fn the_swarm_plan_builds_once_ships_to_the_others_and_deploys_from_the_manager() {
    let dir = project(&swarm(""));
    let out = provision(dir.path(), &["--dry-run", "--json"]);
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_str(&stdout).expect("the plan as JSON");
    let hosts = plan["hosts"].as_array().unwrap();
    let steps = |host: &str| -> Vec<Value> {
        hosts
            .iter()
            .find(|h| h["host"] == host)
            .unwrap_or_else(|| panic!("no host {host}"))["steps"]
            .as_array()
            .unwrap()
            .clone()
    };
    let ids = |host: &str| -> Vec<String> {
        steps(host)
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    };

    // Each host runs its steps in order: a step never waits for a later
    // step of its own host (that would never finish).
    for h in ["n1", "n2", "n3"] {
        let list = ids(h);
        for (i, s) in steps(h).iter().enumerate() {
            for need in s["needs"].as_array().unwrap() {
                let need = need.as_str().unwrap();
                if let Some(j) = list.iter().position(|x| x == need) {
                    assert!(j < i, "{h}: {} waits for the later {need}", list[i]);
                }
            }
        }
    }
    let n1 = ids("n1");
    let has = |list: &[String], id: &str| list.iter().any(|x| x == id);
    assert!(has(&n1, "n1/swarm"), "the manager inits: {n1:?}");
    assert!(has(&n1, "n1/nodes"), "{n1:?}");
    // A node is labelled (its pinned tasks may start there) only once its
    // volumes are made or restored: Swarm would make an empty one itself.
    let labelled_after: Vec<String> = steps("n1").iter().find(|s| s["id"] == "n1/nodes").unwrap()
        ["needs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    for v in ["n2/volume/pgdata", "n3/volume/redis-data"] {
        assert!(
            has(&labelled_after, v),
            "n1/nodes waits for {v}: {labelled_after:?}"
        );
    }
    assert!(has(&n1, "n1/network"), "{n1:?}");
    for s in ["postgis", "redis", "rails", "nginx"] {
        assert!(
            has(&n1, &format!("n1/{s}/run")),
            "every service deploys from the manager: {n1:?}"
        );
        assert!(has(&n1, &format!("n1/{s}/ready")), "{n1:?}");
    }
    // Dependency order on the manager.
    let pos = |id: &str| n1.iter().position(|x| x == id).unwrap();
    assert!(pos("n1/postgis/ready") < pos("n1/rails/run"));
    assert!(pos("n1/rails/ready") < pos("n1/nginx/run"));
    // Pinned images are built on their node; Rails once, then shipped.
    assert!(has(&ids("n2"), "n2/postgis/build"), "{:?}", ids("n2"));
    assert!(has(&ids("n3"), "n3/redis/build"), "{:?}", ids("n3"));
    assert!(has(&n1, "n1/rails/build"));
    for h in ["n2", "n3"] {
        assert!(has(&ids(h), &format!("{h}/rails/ship")), "{:?}", ids(h));
        assert!(!has(&ids(h), &format!("{h}/rails/build")));
        assert!(has(&ids(h), &format!("{h}/swarm")), "{h} joins");
        assert!(
            has(&ids(h), &format!("{h}/firewall")),
            "{h} guards the swarm's ports"
        );
    }
    assert!(
        !has(&n1, "n1/postgis/ship"),
        "a pinned image goes nowhere else"
    );

    let text = provision(dir.path(), &["--dry-run"]);
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("\"endpoint_mode\": \"dnsrr\""), "{text}");
    assert!(text.contains("\"target\": \"provision.env\""), "{text}");
    assert!(
        text.contains("\"REDIS_URL\": \"redis://redis:6379/0\""),
        "{text}"
    );
    assert!(text.contains("node.labels.provision.host == n2"), "{text}");
    assert!(
        text.contains("--advertise-addr 192.0.2.11"),
        "the manager advertises its hosts.toml address: {text}"
    );
    assert!(
        text.contains("2377/tcp, 7946/tcp+udp, 4789/udp only from 192.0.2.12, 192.0.2.13"),
        "{text}"
    );
    assert!(
        !text.contains("5432:"),
        "the DB port is published nowhere: {text}"
    );
    for secret in [PG_PASSWORD, SECRET_KEY_BASE] {
        assert!(
            !text.contains(secret) && !stdout.contains(secret),
            "a secret value in the plan"
        );
    }
}

fn rejected(toml: &str, wanted: &[&str]) {
    let dir = project(toml);
    let out = provision(dir.path(), &["--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "exit 2 for bad input:\n{err}");
    for w in wanted {
        assert!(err.contains(w), "the message says {w:?}:\n{err}");
    }
}

#[test]
fn swarm_keys_are_input_errors_where_they_cannot_work() {
    // replicas and role outside swarm mode.
    let plain = swarm("").replace("mode = \"swarm\"\n", "");
    let plain = plain.replace("[services.rails]\n", "[services.rails]\nhost = \"n1\"\n");
    rejected(
        &plain.replace(
            "[hosts.n1]\naddress = \"192.0.2.11\"",
            "[hosts.n1]\naddress = \"192.0.2.11\"\nrole = \"manager\"",
        ),
        &[
            "hosts.toml:",
            "hosts.n1.role",
            "add mode = \"swarm\" to [project]",
        ],
    );
    rejected(
        &plain,
        &["services.rails.replicas", "this project is not a swarm"],
    );
    // A stateful service not pinned, or with several tasks.
    rejected(
        &swarm("").replace(
            "[services.postgis]\nhost = \"n2\"\n",
            "[services.postgis]\n",
        ),
        &[
            "services.postgis",
            "lives on one node: pin it",
            "add host = \"n1\"",
        ],
    );
    rejected(
        &swarm("").replace("host = \"n3\"\n", "host = \"n3\"\nreplicas = 2\n"),
        &[
            "services.redis.replicas",
            "two tasks must not write it at once",
        ],
    );
    rejected(
        &swarm("").replace(
            "host = \"n1\"\npublish",
            "host = \"n1\"\nreplicas = 2\npublish",
        ),
        &["services.nginx.replicas", "which one task can hold"],
    );
    rejected(
        &swarm("").replace("mode = \"swarm\"", "mode = \"swam\""),
        &["project.mode", "unknown value `swam`", "\"swarm\""],
    );
    rejected(
        &swarm("").replace("replicas = 3", "replicas = 0"),
        &["services.rails.replicas", "out of range 1-1000"],
    );
}

#[test]
fn an_even_number_of_managers_is_a_warning_not_an_error() {
    let two = swarm("").replace(
        "[hosts.n2]\naddress = \"192.0.2.12\"",
        "[hosts.n2]\naddress = \"192.0.2.12\"\nrole = \"manager\"",
    );
    let two = two.replace(
        "[hosts.n1]\naddress = \"192.0.2.11\"",
        "[hosts.n1]\naddress = \"192.0.2.11\"\nrole = \"manager\"",
    );
    let dir = project(&two);
    let out = provision(dir.path(), &["--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("warning:") && err.contains("2 managers") && err.contains("odd number"),
        "the dry run warns of the quorum:\n{err}"
    );
    // One manager (the default) says nothing of it.
    let dir = project(&swarm(""));
    let out = provision(dir.path(), &["--dry-run"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("managers"));
}

#[test]
fn only_a_replaced_node_rejoins_is_labelled_and_gets_its_services_back() {
    let dir = project(&swarm(""));
    let out = provision(dir.path(), &["--dry-run", "--only", "n3"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The step lines under each host, as the dry run prints them.
    let mut host = String::new();
    let mut steps: Vec<String> = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix("host ") {
            host = h.split(' ').next().unwrap_or("").to_string();
        } else if let Some((n, rest)) = line.trim_start().split_once(". ") {
            if n.chars().all(|c| c.is_ascii_digit()) && !n.is_empty() {
                steps.push(format!("{host}: {rest}"));
            }
        }
    }
    let has = |want: &str| steps.iter().any(|s| s.starts_with(want));
    for want in [
        "n3: join the swarm of n1",
        "n3: build image shop-redis:",
        "n3: load image shop-rails:",
        "n1: label the nodes n1, n2, n3",
        "n1: deploy service shop_redis",
    ] {
        assert!(
            has(want),
            "--only n3 takes \"{want}\" (a blank n3 joins, is labelled, gets its images and redis): {steps:#?}"
        );
    }
    assert!(
        !has("n2: build") && !has("n1: deploy service shop_postgis"),
        "--only n3 leaves the other nodes' own work: {steps:#?}"
    );
}
