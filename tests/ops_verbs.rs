//! `provision logs` and `provision exec` on the two-host Rails stack (issue
//! 12), end to end, as a user runs them:
//!
//! 1. provision web (redis, rails, nginx) and db (PostGIS), visit the page
//!    through nginx;
//! 2. `logs rails` shows that request (`Started GET "/"`), `logs` shows
//!    lines from every running service, each prefixed `host/service | `;
//!    `logs -f` streams until Ctrl-C and then exits 0;
//! 3. `exec rails -- bin/rails runner 'puts Visit.count'` prints the rows of
//!    the visits table, `exec rails -- sh -c 'exit 7'` exits 7, a hostile
//!    argument reaches the container byte for byte, `-i` streams stdin, `-t`
//!    gives the command a terminal;
//! 4. an unknown service exits 2 naming the known ones, nothing run.
//!
//! Own project prefix `pvops` and a 10.224.x.0/24 subnet; the lab removes
//! its machines even when the test fails. Traffic goes only to the machines
//! this test creates. Under CI=true a missing engine fails.

mod support;

use std::process::Command;
use std::time::Duration;

use support::lab::Lab;
use support::run::BIN;
use support::wait::{run_within, wait_until};

const HOSTILE: &str = "it's \"$(touch /tmp/pwned)\" `id` $HOME ; a  b\n\tline2 \\ * {x,y} ~";

#[test]
fn logs_and_exec_reach_each_service_on_its_host() {
    let Some(lab) = Lab::or_skip("pvops", 224) else {
        return;
    };
    let stack = lab.stack();
    stack.write(&lab);

    // 1. The stack, and a visit through nginx.
    let up = lab.provision(&[]).expect(0, "provision");
    eprintln!("provision: {:.1} s", up.secs());
    lab.visit(stack.web);

    // 2. Logs of one service: the request, unprefixed.
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

    // 3. A command in rails' container: the row count, as PostGIS has it.
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

    // 4. An unknown service: an input error listing the known ones.
    let nosuch = lab
        .provision(&["exec", "nosuch", "--", "true"])
        .expect(2, "exec nosuch");
    assert!(nosuch.stderr.contains("\"nosuch\""), "{}", nosuch.stderr);
    assert!(nosuch.stderr.contains("rails"), "{}", nosuch.stderr);
    lab.provision(&["logs", "nosuch"]).expect(2, "logs nosuch");
}
