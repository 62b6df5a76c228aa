//! Operating the two-host Rails stack (issues 12 and 13), end to end on one
//! playground, as a user runs the verbs one after another (one stand-up
//! for all of them: each part leaves the stack as a run leaves it):
//!
//! 1. provision web (redis, rails, nginx) and db (PostGIS) from blank
//!    machines, with a copy of the example app (later parts edit it);
//! 2. logs and exec: `logs rails` shows a request (`Started GET "/"`),
//!    `logs` shows every service prefixed `host/service | `, `--tail 1`,
//!    `logs -f` streams until Ctrl-C and exits 0; `exec rails -- bin/rails
//!    runner 'puts Visit.count'` prints PostGIS's row count, exit codes pass
//!    through, a hostile argument arrives byte for byte, `-i` streams stdin,
//!    `-t` gives a terminal; an unknown service exits 2 naming the known;
//! 3. dev mode: the app folder live in a development container of rails;
//!    an edit is on the page through nginx within 3 s (measured), a new file
//!    arrives and a deleted one goes, a Gemfile change runs `bundle install`
//!    and a restart; Ctrl-C gives production back, and with the edits undone
//!    a run says "Nothing changed";
//! 4. status and ssh: `status --json` says every service is running, ready
//!    and "up to date"; a changed nginx variable "would rebuild" nginx alone
//!    (status changes nothing), "up to date" after a run; redis stopped
//!    behind provision's back is "exited", "would restart"; `ssh web --
//!    hostname`, exit codes passed through, `ssh nosuch` exits 2;
//! 5. releases: a new heading ships while a client keeps requesting the
//!    page through nginx, with no failed request; `releases rails` lists both
//!    releases; a broken release (its /up answers 503) fails the run naming
//!    rails, the previous one goes on serving, nothing half-started is left;
//!    `rollback rails` serves the first release again;
//! 6. db's machine stopped: status exits 1, PostGIS is "unknown".
//!
//! Own project prefix `pvops` and a 10.224.x.0/24 subnet; the lab removes
//! its machines even when the test fails. Traffic goes only to the machines
//! this test creates. Under CI=true a missing engine fails.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use support::http::{http_get, http_until, Client};
use support::lab::{repo, Lab};
use support::run::{Run, BIN};
use support::stack::Stack;
use support::wait::{run_within, wait_until};

const HOSTILE: &str = "it's \"$(touch /tmp/pwned)\" `id` $HOME ; a  b\n\tline2 \\ * {x,y} ~";

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

fn set_heading(lab: &Lab, heading: &str) {
    let file = lab.path().join("app/app/controllers/visits_controller.rb");
    let text = std::fs::read_to_string(&file).unwrap();
    let start = text.find("<h1>").unwrap() + 4;
    let end = text.find("</h1>").unwrap();
    let text = format!("{}{heading}{}", &text[..start], &text[end..]);
    std::fs::write(&file, text).unwrap();
}

fn edit(lab: &Lab, file: &str, from: &str, to: &str) {
    let path = lab.path().join("app").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn the_stack_is_operated_with_logs_exec_dev_status_ssh_and_releases() {
    let Some(owned) = Lab::or_skip("pvops", 224) else {
        return;
    };
    let lab = &owned;
    let mut stack = lab.stack_with_app_copy();
    stack.write(lab);
    let up = lab.provision(&["--json"]).expect(0, "provision");
    eprintln!("provision: {:.1} s", up.secs());
    http_until(
        &format!("http://{}/", stack.web),
        "<h1>Rails on Docker</h1>",
        Duration::from_secs(120),
    );

    logs_and_exec(lab, &stack);
    dev_mode(lab, &stack);
    status_and_ssh(lab, &mut stack);
    releases(lab, &mut stack);
    status_with_db_down(lab);
}

/// Part 2: `logs` and `exec`.
fn logs_and_exec(lab: &Lab, stack: &Stack) {
    lab.visit(stack.web);

    // Logs of one service: the request, unprefixed.
    let rails = lab.provision(&["logs", "rails"]).expect(0, "logs rails");
    assert!(
        rails.stdout.contains("Started GET \"/\""),
        "logs rails:\n{}",
        rails.text()
    );
    assert!(!rails.stdout.contains("web/rails | "), "{}", rails.stdout);

    // Every service, merged, each line saying where it is from.
    let all = lab.provision(&["logs"]).expect(0, "logs");
    for from in ["web/redis", "web/rails", "web/nginx", "db/postgis"] {
        assert!(
            all.text()
                .lines()
                .any(|l| l.starts_with(&format!("{from} | "))),
            "no line from {from}:\n{}",
            all.text()
        );
    }
    let started = all
        .stdout
        .lines()
        .find(|l| l.contains("Started GET \"/\""))
        .unwrap_or_else(|| panic!("no request in:\n{}", all.stdout));
    assert!(started.starts_with("web/rails | "), "{started}");

    // --tail: the last line only.
    let last = lab.provision(&["logs", "nginx", "--tail", "1"]);
    let last = last.expect(0, "logs nginx --tail 1");
    assert_eq!(last.text().lines().count(), 1, "{}", last.text());

    // -f streams until Ctrl-C, then exits 0.
    let mut follow = lab.spawn(&["logs", "-f", "nginx", "rails"]);
    wait_until(
        "logs -f prints the request",
        Duration::from_secs(60),
        || follow.output_so_far().contains("web/rails | "),
    );
    assert!(!follow.finished(), "logs -f ended by itself");
    lab.visit(stack.web);
    wait_until(
        "logs -f streams a new request",
        Duration::from_secs(60),
        || follow.output_so_far().matches("Started GET \"/\"").count() >= 2,
    );
    let pid = follow.child.id() as i32;
    // SAFETY: a signal to the child this test spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let followed = follow.wait();
    assert_eq!(followed.code, Some(0), "after Ctrl-C:\n{}", followed.text());

    // A command in rails' container: the row count, as PostGIS has it.
    let rows = lab.rows(stack.db);
    let count = lab
        .provision(&[
            "exec",
            "rails",
            "--",
            "bin/rails",
            "runner",
            "puts Visit.count",
        ])
        .expect(0, "exec rails runner");
    assert_eq!(count.stdout.trim(), rows.to_string(), "{}", count.text());

    // Its exit code is provision's.
    lab.provision(&["exec", "rails", "--", "sh", "-c", "exit 7"])
        .expect(7, "exec sh -c 'exit 7'");

    // A hostile argument arrives unchanged, byte for byte.
    let echoed = lab
        .provision(&["exec", "rails", "--", "printf", "%s", HOSTILE])
        .expect(0, "exec printf");
    assert_eq!(echoed.stdout, HOSTILE);
    let pwned = lab.provision(&["exec", "rails", "--", "sh", "-c", "test -e /tmp/pwned"]);
    assert_eq!(pwned.code, Some(1), "the $(..) ran in the container");
    let on_host = lab.ssh(stack.web, "test -e /tmp/pwned");
    assert_eq!(on_host.status.code(), Some(1), "the $(..) ran on web");

    // -i: stdin streamed to the command, to its end.
    lab.write("input.txt", "first line\nsecond line\n");
    let mut piped = Command::new("sh");
    piped
        .arg("-c")
        .arg(format!(
            "exec {BIN} --hosts hosts.toml exec -i rails -- wc -l < input.txt"
        ))
        .current_dir(lab.path())
        .envs(lab.env.iter().map(|(k, v)| (k, v)));
    let out = run_within(piped, Duration::from_secs(120));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "2",
        "exec -i wc -l: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));

    // -t: a terminal (from OpenSSH's ssh -t), inside a terminal that
    // `script` gives this test; the command's exit code comes through.
    let mut tty = Command::new("script");
    tty.args(["-q", "-e", "-c"])
        .arg(format!(
            "{BIN} --hosts hosts.toml exec -t redis -- sh -c 'tty; exit 5'"
        ))
        .arg("/dev/null")
        .current_dir(lab.path())
        .envs(lab.env.iter().map(|(k, v)| (k, v)));
    let out = run_within(tty, Duration::from_secs(120));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("/dev/pts/"), "exec -t tty: {said}");
    assert_eq!(out.status.code(), Some(5), "exec -t: {said}");

    // An unknown service: an input error listing the known ones.
    let nosuch = lab
        .provision(&["exec", "nosuch", "--", "true"])
        .expect(2, "exec nosuch");
    assert!(nosuch.stderr.contains("\"nosuch\""), "{}", nosuch.stderr);
    assert!(nosuch.stderr.contains("rails"), "{}", nosuch.stderr);
    lab.provision(&["logs", "nosuch"]).expect(2, "logs nosuch");
}

/// Part 3: dev mode, and production given back.
fn dev_mode(lab: &Lab, stack: &Stack) {
    let url = format!("http://{}/", stack.web);

    // 1. Dev mode.
    let mut dev = lab.spawn(&["dev"]);
    wait_until("dev mode serves", Duration::from_secs(300), || {
        assert!(!dev.finished(), "dev mode ended:\n{}", dev.output_so_far());
        dev.output_so_far()
            .contains("dev mode: rails on web serves")
    });

    // 2. An edit on the page.
    let t = Instant::now();
    edit(
        lab,
        "app/controllers/visits_controller.rb",
        "<h1>Rails on Docker</h1>",
        "<h1>Edited in dev mode</h1>",
    );
    http_until(&url, "<h1>Edited in dev mode</h1>", Duration::from_secs(10));
    let visible = t.elapsed();
    eprintln!("MEASURED edit to page: {} ms", visible.as_millis());
    assert!(
        visible <= Duration::from_secs(3),
        "the edit took {visible:?} to show (acceptance: within 3 s)"
    );
    wait_until("the sync line", Duration::from_secs(10), || {
        dev.output_so_far().contains("after the edit")
    });

    // 3. A new file arrives; deleted here, it is gone there.
    let extra = lab.path().join("app/public/extra.txt");
    std::fs::create_dir_all(extra.parent().unwrap()).unwrap();
    std::fs::write(&extra, "extra\n").unwrap();
    let there = |lab: &Lab| {
        lab.provision(&["exec", "rails", "--", "test", "-f", "/app/public/extra.txt"])
            .code
    };
    wait_until(
        "the new file is in the container",
        Duration::from_secs(10),
        || there(lab) == Some(0),
    );
    let owner = lab
        .provision(&[
            "exec",
            "rails",
            "--",
            "stat",
            "-c",
            "%U",
            "/app/public/extra.txt",
        ])
        .expect(0, "stat");
    assert_eq!(
        owner.stdout.trim(),
        "rails",
        "files land owned by the app's user"
    );
    std::fs::remove_file(&extra).unwrap();
    wait_until("the deleted file is gone", Duration::from_secs(10), || {
        there(lab) == Some(1)
    });

    // 4. A Gemfile change: bundle install, then the server again.
    let gemfile = lab.path().join("app/Gemfile");
    let mut text = std::fs::read_to_string(&gemfile).unwrap();
    text.push_str("# a change dev mode must act on\n");
    std::fs::write(&gemfile, text).unwrap();
    wait_until("bundle install ran", Duration::from_secs(120), || {
        dev.output_so_far().contains("Bundle complete")
    });
    http_until(
        &url,
        "<h1>Edited in dev mode</h1>",
        Duration::from_secs(120),
    );

    // 5. Ctrl-C: production is back, and a run changes nothing.
    let pid = dev.child.id() as i32;
    // SAFETY: a signal to the child this test spawned.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let ended = dev.wait();
    assert_eq!(ended.code, Some(0), "after Ctrl-C:\n{}", ended.text());
    assert!(ended.text().contains("dev mode ended"), "{}", ended.text());
    let page = http_get(&url, None).expect("the page after dev mode");
    assert!(
        page.contains("<h1>Rails on Docker</h1>"),
        "production again: {page}"
    );
    // The edits undone here: production was never touched.
    for f in ["app/controllers/visits_controller.rb", "Gemfile"] {
        std::fs::copy(
            repo().join("examples/rails_app").join(f),
            lab.path().join("app").join(f),
        )
        .unwrap();
    }
    let again = lab.provision(&[]).expect(0, "a run after dev mode");
    assert!(again.text().contains("Nothing changed"), "{}", again.text());
}

/// Part 4: `status` (drift) and `ssh`.
fn status_and_ssh(lab: &Lab, stack: &mut Stack) {
    // A status that finds nothing to do.
    let doc = status(lab, 0);
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

    // A template variable of nginx: it is in nginx.conf, in the image.
    stack.nginx_workers = Some(512);
    stack.write(lab);
    let doc = status(lab, 0);
    let mut expected = all("up to date");
    expected[3] = "nginx=would rebuild".into();
    assert_eq!(drifts(&doc), expected, "{doc:#}");
    // Status changed nothing: the old container still runs.
    assert_eq!(service(&doc, "nginx")["state"], "running");
    lab.provision(&[]).expect(0, "provision after the change");
    assert_eq!(drifts(&status(lab, 0)), all("up to date"));

    // Redis stopped behind provision's back.
    lab.dexec_ok(
        "web",
        &format!("docker stop -t 5 {}", lab.container("redis")),
    );
    let doc = status(lab, 0);
    let redis = service(&doc, "redis");
    assert_eq!(redis["state"], "exited", "{redis:#}");
    assert_eq!(redis["drift"], "would restart", "{redis:#}");
    assert_eq!(redis["uptime_secs"], Value::Null, "{redis:#}");

    // ssh: the machine's own shell, exit codes passed through.
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
}

/// Part 5: a release under load, a broken one, a rollback.
fn releases(lab: &Lab, stack: &mut Stack) {
    // A broken release must fail in seconds, not after the default 180 s
    // (the readiness wait's deadline is not part of the container's spec:
    // no new release for it).
    stack.rails_extra = "ready_timeout = 25\n".into();
    stack.write(lab);
    let url = format!("http://{}/", stack.web);

    // The first release runs already (this run starts the redis that part 4
    // stopped).
    let plan = lab.provision(&["--dry-run"]).expect(0, "dry run");
    assert!(
        plan.stdout
            .contains("start-first: the new one starts beside the old one"),
        "the plan says how rails is replaced:\n{}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("stop-first"),
        "postgis: {}",
        plan.stdout
    );
    lab.provision_ok(&[]);
    http_until(&url, "<h1>Rails on Docker</h1>", Duration::from_secs(120));

    // A new release under load.
    set_heading(lab, "Release two");
    let client = Client::start(&url);
    let up = lab.provision(&[]).expect(0, "the second release");
    http_until(&url, "<h1>Release two</h1>", Duration::from_secs(30));
    let l = client.finish();
    eprintln!(
        "MEASURED rollout: {} requests during the run ({:.1} s), {} failed",
        l.sent,
        up.secs(),
        l.failed.len()
    );
    l.assert_none_failed("the rollout");
    let releases = lab.provision(&["releases", "rails"]).expect(0, "releases");
    let lines: Vec<&str> = releases.stdout.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "two releases:\n{}", releases.stdout);
    assert!(lines[0].contains(" serving "), "{}", releases.stdout);
    assert!(lines[1].contains(" exited "), "{}", releases.stdout);
    let again = lab.provision(&[]).expect(0, "a rerun");
    assert!(again.text().contains("Nothing changed"), "{}", again.text());

    // A release whose readiness probe never passes.
    let health = lab.path().join("app/app/controllers/health_controller.rb");
    let text = std::fs::read_to_string(&health).unwrap();
    std::fs::write(
        &health,
        text.replace(
            "render plain: \"ok\\n\"",
            "render plain: \"broken\\n\", status: 503",
        ),
    )
    .unwrap();
    set_heading(lab, "Broken release");
    let broken = lab.provision(&[]).expect(1, "a broken release");
    let said = broken.text();
    assert!(said.contains("rails"), "{said}");
    assert!(
        said.contains("the new release never got ready and was removed"),
        "{said}"
    );
    assert!(said.contains("not ready after 25 s"), "{said}");
    let page = http_get(&url, None).expect("the page is still served");
    assert!(page.contains("<h1>Release two</h1>"), "{page}");
    let left = lab.ssh_ok(
        stack.web,
        "docker ps -a --format '{{.Names}}' | grep -c -- '-rails-next$' || true",
    );
    assert_eq!(left.trim(), "0", "no half-started release is left");

    // Back to the first release.
    let back = lab.provision(&["rollback", "rails"]).expect(0, "rollback");
    assert!(back.stdout.contains("serves again"), "{}", back.text());
    http_until(&url, "<h1>Rails on Docker</h1>", Duration::from_secs(30));
    let releases = lab.provision(&["releases", "rails"]).expect(0, "releases");
    assert_eq!(
        releases.stdout.lines().skip(1).count(),
        2,
        "{}",
        releases.stdout
    );
}

/// Part 6: a host that does not answer.
fn status_with_db_down(lab: &Lab) {
    // A host that does not answer: exit 1, its services unknown.
    lab.docker(&["stop", "-t", "1", &lab.machine("db")]);
    let doc = status(lab, 1);
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
