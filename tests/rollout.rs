//! Zero-downtime releases of Rails (issue 12), end to end on the two-host
//! stack, as a user ships app code:
//!
//! 1. provision; the page through nginx says "Rails on Docker";
//! 2. change the page's heading in the app folder and provision again while
//!    a client keeps requesting the page through nginx: every request
//!    succeeds (the test counts them), and the new heading is served;
//!    `releases rails` lists both releases, the new one serving;
//! 3. a broken release (its /up answers 503, so its readiness probe never
//!    passes) fails the run naming rails, the previous release goes on
//!    serving, and no half-started container is left;
//! 4. `rollback rails` serves the first release's page again.
//!
//! Own project prefix `pvroll` and a 10.227.x.0/24 subnet; the lab removes
//! its machines even when the test fails. Traffic goes only to the machines
//! this test creates.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::http::{http_get, http_until};
use support::lab::Lab;

/// Requests sent through nginx, and the failures among them.
#[derive(Default)]
struct Load {
    sent: u64,
    failed: Vec<String>,
}

/// Request `url` back to back until `stop` is set.
fn load(url: String, stop: Arc<AtomicBool>, seen: Arc<Mutex<Load>>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            let r = http_get(&url, None);
            let mut l = seen.lock().unwrap();
            l.sent += 1;
            match r {
                Ok(body) if body.contains("Total visits") => {}
                Ok(body) => l.failed.push(format!("unexpected page: {body}")),
                Err(e) => l.failed.push(e),
            }
        }
    })
}

fn set_heading(lab: &Lab, heading: &str) {
    let file = lab.path().join("app/app/controllers/visits_controller.rb");
    let text = std::fs::read_to_string(&file).unwrap();
    let start = text.find("<h1>").unwrap() + 4;
    let end = text.find("</h1>").unwrap();
    let text = format!("{}{heading}{}", &text[..start], &text[end..]);
    std::fs::write(&file, text).unwrap();
}

#[test]
fn a_new_release_takes_over_without_a_failed_request_and_can_be_rolled_back() {
    let lab = Lab::new("pvroll", 227);
    let mut stack = lab.stack_with_app_copy();
    // A broken release must fail in seconds, not after the default 180 s.
    stack.rails_extra = "ready_timeout = 25\n".into();
    stack.write(&lab);
    let url = format!("http://{}/", stack.web);

    // 1. The first release.
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

    // 2. A new release under load.
    set_heading(&lab, "Release two");
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Load::default()));
    let client = load(url.clone(), stop.clone(), seen.clone());
    let up = lab.provision(&[]).expect(0, "the second release");
    http_until(&url, "<h1>Release two</h1>", Duration::from_secs(30));
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    let l = seen.lock().unwrap();
    eprintln!(
        "MEASURED rollout: {} requests during the run ({:.1} s), {} failed",
        l.sent,
        up.secs(),
        l.failed.len()
    );
    assert!(
        l.sent > 20,
        "the client kept requesting: {} requests",
        l.sent
    );
    assert!(
        l.failed.is_empty(),
        "{} of {} requests failed during the rollout, e.g. {:?}",
        l.failed.len(),
        l.sent,
        &l.failed[..l.failed.len().min(3)]
    );
    drop(l);
    let releases = lab.provision(&["releases", "rails"]).expect(0, "releases");
    let lines: Vec<&str> = releases.stdout.lines().skip(1).collect();
    assert_eq!(lines.len(), 2, "two releases:\n{}", releases.stdout);
    assert!(lines[0].contains(" serving "), "{}", releases.stdout);
    assert!(lines[1].contains(" exited "), "{}", releases.stdout);
    let again = lab.provision(&[]).expect(0, "a rerun");
    assert!(again.text().contains("Nothing changed"), "{}", again.text());

    // 3. A release whose readiness probe never passes.
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
    set_heading(&lab, "Broken release");
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

    // 4. Back to the first release.
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
