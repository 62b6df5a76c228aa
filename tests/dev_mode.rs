//! `provision dev` (issue 13) end to end on the two-host stack: the app
//! folder on this computer live in a development container of rails on
//! web, served through nginx, until Ctrl-C:
//!
//! 1. provision; start dev mode in the background; it says it serves;
//! 2. an edit of the page's heading is on the page through nginx within
//!    seconds (measured and printed);
//! 3. a new file arrives, and once deleted here it is gone in the container;
//! 4. a Gemfile change runs `bundle install` (Debian's gems) and a restart;
//! 5. Ctrl-C ends dev mode (exit 0), the production page is back, and with
//!    the edits undone the next run says "Nothing changed".
//!
//! Own project prefix `pvdev` and a 10.228.x.0/24 subnet; the lab removes
//! its machines even when the test fails.

mod support;

use std::time::{Duration, Instant};

use support::http::{http_get, http_until};
use support::lab::{repo, Lab};
use support::wait::wait_until;

fn edit(lab: &Lab, file: &str, from: &str, to: &str) {
    let path = lab.path().join("app").join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "{file} has no {from:?}");
    std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

#[test]
fn dev_mode_serves_the_app_folder_and_gives_production_back() {
    let lab = Lab::new("pvdev", 228);
    let stack = lab.stack_with_app_copy();
    stack.write(&lab);
    let url = format!("http://{}/", stack.web);
    lab.provision_ok(&[]);
    http_until(&url, "<h1>Rails on Docker</h1>", Duration::from_secs(120));

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
        &lab,
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
        || there(&lab) == Some(0),
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
        there(&lab) == Some(1)
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
