//! A container that crash-loops while provision waits for it (issue 12),
//! on one light local machine (10.225.x.0/24): `crasher` prints
//! "SECRET_KEY_BASE: is not set" on stderr and exits 1 at once (restarted by
//! Docker as provision asks), its readiness command never passes, and
//! `app` uses it, so provision waits for it. The wait fails within seconds
//! (not after the 180 s deadline) with the container's exit code and its
//! own words; `app` is blocked; the run exits 1.

mod support;

use serde_json::Value;
use support::lab::Lab;

fn hosts(lab: &Lab) -> String {
    format!(
        r#"[project]
name = "{project}"

[hosts.a]
machine = "local"
address = "{a}"
init = "none"

[services.crasher]
host = "a"
template = "./crasher"

[services.app]
host = "a"
template = "./app"
uses = ["crasher"]
"#,
        project = lab.project,
        a = lab.addr(10),
    )
}

fn write_templates(lab: &Lab) {
    let crasher =
        r#"CMD ["sh", "-c", "echo starting >&2; echo 'SECRET_KEY_BASE: is not set' >&2; exit 1"]"#;
    for (name, cmd, ready) in [
        ("crasher", crasher, r#"ready = ["test", "-f", "/ready"]"#),
        ("app", r#"CMD ["sleep", "infinity"]"#, ""),
    ] {
        std::fs::create_dir_all(lab.path().join(name)).unwrap();
        lab.write(
            &format!("{name}/Dockerfile"),
            &format!("FROM debian:bookworm\n{cmd}\n"),
        );
        lab.write(
            &format!("{name}/template.toml"),
            &format!("description = \"{name}\"\nport = 8080\nupstream = false\n{ready}\n"),
        );
    }
}

#[test]
fn a_crash_looping_container_fails_its_wait_at_once_with_its_words() {
    let lab = Lab::new("pvcrash", 225);
    write_templates(&lab);
    lab.write("hosts.toml", &hosts(&lab));

    let run = lab.provision(&["--json"]).expect(1, "the wait fails");
    let evs: Vec<Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let ready = evs
        .iter()
        .find(|e| {
            e["event"] == "step_failed"
                && e["step"]["service"] == "crasher"
                && e["step"]["kind"] == "ready"
        })
        .unwrap_or_else(|| panic!("no failed wait for crasher:\n{}", run.text()));
    let error = ready["error"].as_str().unwrap();
    assert!(
        error.contains(&format!(
            "container {} exited with code 1",
            lab.container("crasher")
        )),
        "the exit code: {error}"
    );
    assert!(error.contains("restarted"), "{error}");
    assert!(
        error.contains("SECRET_KEY_BASE: is not set"),
        "the container's own words: {error}"
    );
    // The point of the fix: no waiting out the 180 s deadline.
    let waited = ready["elapsed_ms"].as_u64().unwrap();
    assert!(waited < 60_000, "the wait took {waited} ms");
    assert!(run.secs() < 170.0, "the run took {} s", run.secs());
    assert!(
        evs.iter().any(|e| e["event"] == "step_failed"
            && e["step"]["service"] == "app"
            && e["blocked"] == true),
        "app waits for crasher and is blocked:\n{}",
        run.stdout
    );
    // The human summary shows the words too.
    assert!(
        run.stderr.contains("SECRET_KEY_BASE: is not set"),
        "{}",
        run.stderr
    );
}
