//! `--json` on real runs (issue 11, item 5), as a script reading provision's
//! events meets them, on two light local machines (10.223.x.0/24):
//!
//! 1. `a` builds and runs a small image; `b` runs one too, and a second
//!    service whose build fails. Every line of stdout is one JSON object
//!    with `event` and an RFC 3339 `ts`; steps name their host, service and
//!    kind; the failed build's `step_failed` names host `b` and the build
//!    step with the build's own words; the last line is a `summary` whose
//!    exit code (1) is the process's; the human summary went to stderr; no
//!    secret value shows anywhere.
//! 2. `--only a --json`: a's steps are up to date, b's are left out (skipped
//!    with the reason), and the summary's exit code is again the process's.

mod support;

use serde_json::Value;
use support::lab::Lab;

const TEMPLATE_TOML: &str = r#"description = "Debian with one templated line, sleeps forever"
port = 8080
upstream = false

[vars.greeting]
default = "hello"
doc = "Written into /greeting at build time"
"#;

fn hosts(lab: &Lab) -> String {
    format!(
        r#"[project]
name = "{project}"

[secrets.API_TOKEN]
generate = true

[hosts.a]
machine = "local"
address = "{a}"
init = "none"

[hosts.b]
machine = "local"
address = "{b}"
init = "none"

[services.hello]
host = "a"
template = "./hello"
secrets = ["API_TOKEN"]
volumes = ["hello-data:/data"]

[services.hello2]
host = "b"
template = "./hello"
vars = {{ greeting = "hello from b" }}

[services.broken]
host = "b"
template = "./broken"
"#,
        project = lab.project,
        a = lab.addr(10),
        b = lab.addr(11),
    )
}

fn write_templates(lab: &Lab) {
    for (name, run) in [
        ("hello", "RUN echo '{{ greeting }}' > /greeting"),
        (
            "broken",
            "RUN echo 'the build of broken stops here' && exit 3",
        ),
    ] {
        std::fs::create_dir_all(lab.path().join(name)).unwrap();
        lab.write(
            &format!("{name}/Dockerfile"),
            &format!("FROM debian:bookworm\n{run}\nCMD [\"sleep\", \"infinity\"]\n"),
        );
        lab.write(&format!("{name}/template.toml"), TEMPLATE_TOML);
    }
}

/// Every stdout line parsed, failing on the first that is not one JSON
/// object with an `event` and an RFC 3339 `ts`.
fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\nstdout:\n{stdout}"));
            assert!(v.is_object(), "not an object: {l}");
            assert!(v["event"].is_string(), "no event: {l}");
            let ts = v["ts"].as_str().unwrap_or_else(|| panic!("no ts: {l}"));
            assert!(
                ts.len() >= 20 && &ts[4..5] == "-" && &ts[10..11] == "T" && ts.ends_with('Z'),
                "ts is not RFC 3339 UTC: {l}"
            );
            v
        })
        .collect()
}

fn of<'a>(evs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    evs.iter().filter(|e| e["event"] == kind).collect()
}

/// Fields every step event carries: a step object naming its host, which
/// is the event's host too.
fn check_steps(evs: &[Value]) {
    for e in evs.iter().filter(|e| e.get("step").is_some()) {
        let step = &e["step"];
        assert!(step.is_object(), "step is not an object: {e}");
        assert!(step["host"].is_string() && step["kind"].is_string(), "{e}");
        assert_eq!(step["host"], e["host"], "{e}");
        if e["event"] == "step_finished" || e["event"] == "step_failed" {
            assert!(e["elapsed_ms"].is_u64(), "no elapsed_ms: {e}");
        }
        if e["event"] == "step_failed" {
            assert!(e["error"].is_string(), "no error: {e}");
        }
    }
}

#[test]
fn run_events_as_json_lines() {
    let lab = Lab::new("pvjson", 223);
    write_templates(&lab);
    lab.write("hosts.toml", &hosts(&lab));

    // 1. A run with one failing host.
    let run = lab.provision(&["--json"]);
    let stdout = run.stdout.clone();
    let evs = events(&stdout);
    check_steps(&evs);
    let names: Vec<&str> = evs.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names.first(), Some(&"run_started"), "{stdout}");
    assert_eq!(names.last(), Some(&"summary"), "{stdout}");
    for kind in [
        "host_connected",
        "step_started",
        "step_output",
        "step_finished",
        "step_failed",
        "host_summary",
    ] {
        assert!(names.contains(&kind), "no {kind} event:\n{stdout}");
    }
    let failed = of(&evs, "step_failed");
    let build = failed
        .iter()
        .find(|e| e["step"]["service"] == "broken")
        .unwrap_or_else(|| panic!("no failed event for broken:\n{stdout}"));
    assert_eq!(build["host"], "b", "{build}");
    assert_eq!(build["step"]["kind"], "build", "{build}");
    assert_eq!(build["blocked"], false, "{build}");
    assert!(
        build["error"]
            .as_str()
            .unwrap()
            .contains("the build of broken stops here"),
        "the failure shows the build's own words: {build}"
    );
    // b's two builds ran side by side: each started before either ended,
    // and each one's output lines name it, not the other.
    let at = |event: &str, service: &str| {
        evs.iter()
            .position(|e| {
                e["event"] == event
                    && e["host"] == "b"
                    && e["step"]["service"] == service
                    && e["step"]["kind"] == "build"
            })
            .unwrap_or_else(|| panic!("no {event} of {service}'s build on b:\n{stdout}"))
    };
    let last_start = at("step_started", "hello2").max(at("step_started", "broken"));
    let first_end = at("step_finished", "hello2").min(at("step_failed", "broken"));
    assert!(
        last_start < first_end,
        "b's builds ran one after the other:\n{stdout}"
    );
    let outputs = of(&evs, "step_output");
    let words: Vec<_> = outputs
        .iter()
        .filter(|e| {
            e["line"]
                .as_str()
                .is_some_and(|l| l.contains("the build of broken stops here"))
        })
        .collect();
    assert!(!words.is_empty(), "no output of broken's build:\n{stdout}");
    for e in words {
        assert_eq!(e["step"]["service"], "broken", "{e}");
    }
    // What needed the failed build is blocked, and says so.
    assert!(
        failed.iter().any(|e| e["step"]["service"] == "broken"
            && e["step"]["kind"] == "run"
            && e["blocked"] == true),
        "{stdout}"
    );
    // a, and b's other service, finished despite b's failure.
    let finished = of(&evs, "step_finished");
    for (host, service) in [("a", "hello"), ("b", "hello2")] {
        assert!(
            finished.iter().any(|e| e["host"] == host
                && e["step"]["service"] == service
                && e["step"]["kind"] == "run"
                && e["changed"] == true),
            "{host}/{service} ran:\n{stdout}"
        );
    }
    let summary = evs.last().unwrap();
    assert_eq!(summary["exit_code"], 1, "{summary}");
    assert_eq!(Some(1), run.code, "{}", run.text());
    assert_eq!(summary["hosts"]["a"]["failed"], 0, "{summary}");
    assert_eq!(summary["hosts"]["a"]["ok"], true, "{summary}");
    assert!(
        summary["hosts"]["b"]["failed"].as_u64() >= Some(1),
        "{summary}"
    );
    // The human summary is on stderr in this mode.
    let stderr = run.stderr.clone();
    assert!(stderr.contains("FAILED"), "{stderr}");
    // The secret never shows.
    let secrets = std::fs::read_to_string(lab.state().join("secrets.env")).unwrap();
    let token = secrets
        .lines()
        .find_map(|l| l.strip_prefix("API_TOKEN="))
        .expect("the generated token is kept")
        .trim_matches('\'');
    assert!(token.len() >= 16, "{secrets}");
    assert!(
        !run.text().contains(token),
        "the token leaked:\n{}",
        run.text()
    );

    // 2. --only a: a is up to date; b's steps are left out.
    let run = lab.provision(&["--only", "a", "--json"]);
    let stdout = run.stdout.clone();
    let evs = events(&stdout);
    check_steps(&evs);
    assert_eq!(evs[0]["only"], "a", "{stdout}");
    assert!(
        of(&evs, "step_finished")
            .iter()
            .filter(|e| e["host"] == "a")
            .all(|e| e["up_to_date"] == true),
        "a changed nothing:\n{stdout}"
    );
    let skipped = of(&evs, "step_skipped");
    assert!(
        skipped.iter().any(|e| e["host"] == "b"
            && e["step"]["service"] == "broken"
            && e["reason"].as_str().unwrap().contains("--only a")),
        "b's pending steps are skipped with the reason:\n{stdout}"
    );
    let summary = evs.last().unwrap();
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["exit_code"].as_i64(), run.code.map(i64::from));
    assert!(run.code.is_some(), "{}", run.text());
}
