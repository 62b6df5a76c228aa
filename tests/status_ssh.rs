//! `provision status` and `provision ssh` on the two-host Rails stack
//! (issue 12), end to end, as a user runs them:
//!
//! 1. provision web (redis, rails, nginx) and db (PostGIS): `status --json`
//!    says every service is running and "up to date";
//! 2. a template variable of nginx changes in hosts.toml (worker_connections
//!    goes into nginx.conf, which is in its image): before any run, nginx
//!    "would rebuild" and nothing else drifts; after a run, all "up to date";
//! 3. redis' container stopped behind provision's back: "exited", "would
//!    restart";
//! 4. `ssh web -- hostname` prints the machine's hostname, `ssh web -- sh -c
//!    'exit 3'` exits 3, `ssh nosuch` exits 2 naming the known hosts;
//! 5. db's machine stopped: status exits 1, PostGIS is "unknown".
//!
//! Own project prefix `pvstat` and a 10.226.x.0/24 subnet; the lab removes
//! its machines even when the test fails. Traffic goes only to the machines
//! this test creates. Under CI=true a missing engine fails.

mod support;

use serde_json::Value;

use support::lab::Lab;
use support::run::Run;

/// `status --json` parsed, with the exit code it must have.
fn status(lab: &Lab, code: i32) -> Value {
    let run: Run = lab.provision(&["status", "--json"]).expect(code, "status");
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json is not one JSON document ({e}):\n{}",
            run.text()
        )
    })
}

/// A service's entry of a status document.
fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no service {name} in {doc:#}"))
}

/// Each service's drift, `name=drift`, in the document's order.
fn drifts(doc: &Value) -> Vec<String> {
    doc["services"]
        .as_array()
        .expect("services")
        .iter()
        .map(|s| {
            format!(
                "{}={}",
                s["name"].as_str().unwrap(),
                s["drift"].as_str().unwrap()
            )
        })
        .collect()
}

const SERVICES: [&str; 4] = ["postgis", "redis", "rails", "nginx"];

fn all(drift: &str) -> Vec<String> {
    SERVICES.iter().map(|s| format!("{s}={drift}")).collect()
}

#[test]
fn status_tells_drift_and_ssh_reaches_each_host() {
    let Some(lab) = Lab::or_skip("pvstat", 226) else {
        return;
    };
    let mut stack = lab.stack();
    stack.write(&lab);

    // 1. The stack, then a status that finds nothing to do.
    let up = lab.provision(&["--json"]).expect(0, "provision");
    eprintln!("provision: {:.1} s", up.secs());
    let doc = status(&lab, 0);
    assert_eq!(drifts(&doc), all("up to date"), "{doc:#}");
    for s in SERVICES {
        let s = service(&doc, s);
        assert_eq!(s["state"], "running", "{s:#}");
        assert_eq!(s["health"], "ready", "{s:#}");
        assert!(s["uptime_secs"].as_u64().is_some(), "{s:#}");
        assert_eq!(s["releases"], 1, "{s:#}");
    }
    assert_eq!(service(&doc, "postgis")["host"], "db");
    let nginx = service(&doc, "nginx");
    assert_eq!(nginx["container"], lab.container("nginx"));
    assert_eq!(nginx["ports"][0]["host_port"], 80, "{nginx:#}");
    assert!(
        nginx["reach"][0].as_str().unwrap().contains("anyone"),
        "{nginx:#}"
    );
    for h in doc["hosts"].as_array().unwrap() {
        assert_eq!(h["reachable"], true, "{h:#}");
    }
    // The plain table: one line per service.
    let table = lab.provision(&["status"]).expect(0, "status");
    for s in SERVICES {
        let line = table
            .stdout
            .lines()
            .find(|l| l.starts_with(&format!("{s} ")))
            .unwrap_or_else(|| panic!("no line for {s}:\n{}", table.stdout));
        assert!(
            line.contains("running") && line.contains("up to date"),
            "{line}"
        );
    }

    // 2. A template variable of nginx: it is in nginx.conf, in the image.
    stack.nginx_workers = Some(512);
    stack.write(&lab);
    let doc = status(&lab, 0);
    let mut expected = all("up to date");
    expected[3] = "nginx=would rebuild".into();
    assert_eq!(drifts(&doc), expected, "{doc:#}");
    // Status changed nothing: the old container still runs.
    assert_eq!(service(&doc, "nginx")["state"], "running");
    lab.provision(&[]).expect(0, "provision after the change");
    assert_eq!(drifts(&status(&lab, 0)), all("up to date"));

    // 3. Redis stopped behind provision's back.
    lab.dexec_ok(
        "web",
        &format!("docker stop -t 5 {}", lab.container("redis")),
    );
    let doc = status(&lab, 0);
    let redis = service(&doc, "redis");
    assert_eq!(redis["state"], "exited", "{redis:#}");
    assert_eq!(redis["drift"], "would restart", "{redis:#}");
    assert_eq!(redis["uptime_secs"], Value::Null, "{redis:#}");

    // 4. ssh: the machine's own shell, exit codes passed through.
    let hostname = lab.ssh_ok(stack.web, "hostname");
    let out = lab
        .provision(&["ssh", "web", "--", "hostname"])
        .expect(0, "ssh web -- hostname");
    assert_eq!(out.stdout.trim(), hostname, "{}", out.text());
    lab.provision(&["ssh", "web", "--", "sh", "-c", "exit 3"])
        .expect(3, "ssh web -- sh -c 'exit 3'");
    let nosuch = lab.provision(&["ssh", "nosuch"]).expect(2, "ssh nosuch");
    assert!(
        nosuch.stderr.contains("nosuch") && nosuch.stderr.contains("web, db"),
        "{}",
        nosuch.stderr
    );

    // 5. A host that does not answer: exit 1, its services unknown.
    lab.docker(&["stop", "-t", "1", &lab.machine("db")]);
    let doc = status(&lab, 1);
    let postgis = service(&doc, "postgis");
    assert_eq!(postgis["state"], "unknown", "{postgis:#}");
    let db = doc["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["name"] == "db")
        .unwrap();
    assert_eq!(db["reachable"], false, "{db:#}");
    assert!(db["error"].is_string(), "{db:#}");
    assert_eq!(service(&doc, "nginx")["state"], "running");
}
