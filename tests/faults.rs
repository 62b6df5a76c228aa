//! Hardening (issue 7), end to end on two local playground machines: `web`
//! (systemd) runs redis, rails and nginx; `db` (no init system) runs
//! PostGIS. One provisioned playground is shared by every scenario, in order:
//!
//! 1. apt/dpkg lock held on the blank `db` while the cold run installs
//!    Docker: the install waits, the run completes once it is released;
//!    meanwhile `ps -eo args` is sampled on both hosts (and here), and all
//!    of provision's output, logs, the plan and `docker inspect` are checked
//!    for the DB password, SECRET_KEY_BASE and a repo token;
//! 2. faults, each with a clear error naming host and step, the other
//!    host's work intact, and a rerun that converges with every PostGIS row
//!    kept: db unreachable, authentication refused, host key changed,
//!    sshd killed during a docker build, the machine restarted during a
//!    run, dockerd stopped, Docker's disk full;
//! 3. two runs at once: one waits for the other's lock; `--no-wait` fails
//!    at once naming the holder.
//!
//! Own project name and a 10.218.x.0/24 subnet; a guard removes the
//! machines even when the test fails. Every wait has a deadline, every
//! provision run is killed past its own. Under CI=true a missing engine
//! fails. Traffic goes only to 127.0.0.1 and the machines this test creates.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::lab::Lab;
use support::run::Run;
use support::secrets::{Sampler, Secrets};
use support::stack::{Db, Stack};
use support::wait::wait_until;

/// hosts.toml: db a local machine with no init system when `db_local`, else
/// the same machine as a plain SSH host (so that no run starts it again when
/// the test stops it); secrets come from the environment, rails gets a
/// REPO_TOKEN. `redis_tz` and `nginx_workers` change one service's spec each.
fn write_hosts(lab: &Lab, db_local: bool, redis_tz: &str, nginx_workers: u32) {
    let db_as = if db_local {
        Db::MachineNoInit
    } else {
        Db::Plain
    };
    let stack = Stack {
        db_as,
        generate: false,
        repo_token: true,
        redis_tz: Some(redis_tz.into()),
        nginx_workers: Some(nginx_workers),
        ..lab.stack()
    };
    stack.write(lab);
}

/// The app works and PostGIS kept exactly `rows` rows (then one more).
fn assert_converged_with(lab: &Lab, rows: u64) {
    let (web, db) = (lab.addr(10), lab.addr(11));
    assert_eq!(lab.rows(db), rows, "PostGIS rows changed");
    assert_eq!(lab.visit(web), rows + 1);
    assert_eq!(lab.rows(db), rows + 1);
}

#[test]
fn faults_secrets_and_concurrent_runs() {
    let Some(mut lab) = Lab::or_skip("pvfault", 218) else {
        return;
    };
    let secrets = Secrets::new();
    lab.env = secrets.env();
    let total = Instant::now();
    let (web, db) = (lab.addr(10), lab.addr(11));

    // ---- 1. Blank machines; the dpkg lock held on db during the cold run.
    write_hosts(&lab, true, "UTC", 768);
    lab.provision_ok(&["--machines-only"]);
    write_hosts(&lab, false, "UTC", 768);
    // apt takes fcntl locks (flock(1) would not conflict): a perl one-liner
    // holds lock-frontend the way apt itself does, until a file goes away.
    lab.dexec_ok("db", "touch /run/hold-dpkg");
    let holder = Command::new("docker")
        .args(["exec", "-d", &lab.machine("db"), "perl", "-MFcntl", "-e"])
        .arg(
            r#"open(my $f, ">>", "/var/lib/dpkg/lock-frontend") or die "open: $!";
               my $l = pack("s s x4 q q i x4", F_WRLCK, 0, 0, 0, 0);
               fcntl($f, F_SETLKW, $l) or die "lock: $!";
               open(my $h, ">", "/run/dpkg-held"); close $h;
               for (1..3000) { last unless -e "/run/hold-dpkg"; select(undef, undef, undef, 0.1) }"#,
        )
        .output()
        .unwrap();
    assert!(holder.status.success(), "{holder:?}");
    wait_until("the dpkg lock held on db", Duration::from_secs(30), || {
        lab.dexec("db", "test -e /run/dpkg-held").status.success()
    });

    let samplers = [
        Sampler::remote(&lab, web),
        Sampler::remote(&lab, db),
        Sampler::local(),
    ];
    let mut cold = lab.spawn(&[]);
    // db's apt-get install waits on the lock; web goes on meanwhile.
    wait_until(
        "apt-get install waiting on db",
        Duration::from_secs(300),
        || {
            assert!(!cold.finished(), "{}", cold.output_so_far());
            lab.dexec("db", "pgrep -f '[a]pt-get .*install' >/dev/null")
                .status
                .success()
        },
    );
    let waiting_since = Instant::now();
    // It keeps waiting (no failure) for as long as the lock is held: web
    // installs Docker and builds meanwhile.
    wait_until("web's Docker installed", Duration::from_secs(300), || {
        lab.dexec("web", "docker info >/dev/null 2>&1")
            .status
            .success()
    });
    assert!(!cold.finished(), "{}", cold.output_so_far());
    assert!(
        lab.dexec(
            "db",
            "pgrep -f '[a]pt-get .*install' >/dev/null && ! command -v dockerd"
        )
        .status
        .success(),
        "db's install stopped waiting while the lock was held"
    );
    eprintln!(
        "MEASURED db's install waited {:.1} s on the dpkg lock (and counting)",
        waiting_since.elapsed().as_secs_f64()
    );
    lab.dexec_ok("db", "rm -f /run/hold-dpkg");
    let cold = cold.wait();
    assert_eq!(cold.code, Some(0), "cold run:\n{}", cold.text());
    eprintln!(
        "MEASURED cold run with the dpkg lock held: {:.1} s",
        cold.secs()
    );
    let sampled: Vec<(String, usize)> = samplers.into_iter().map(Sampler::finish).collect();
    for _ in 0..3 {
        lab.visit(web);
    }
    let mut rows = lab.rows(db);
    assert!(rows >= 3, "{rows}");

    // ---- Secrets: nowhere in argv (both hosts, here), output, logs, plan,
    // docker inspect or image history; env files 0600 root.
    for ((text, n), what) in sampled.iter().zip(["web", "db", "this computer"]) {
        eprintln!("MEASURED ps samples on {what}: {n}");
        assert!(*n >= 10, "too few ps samples on {what}: {n}");
        secrets.assert_absent(&format!("`ps -eo args` on {what}"), text);
    }
    // Sanity: the samples did see provision's work.
    assert!(sampled[0].0.contains("docker"), "web samples saw no docker");
    for args in [vec!["--dry-run"], vec!["--dry-run", "--json"]] {
        let d = lab.provision_ok(&args);
        assert!(d.stdout.contains("***"), "the plan masks secrets");
    }
    let env = lab.ssh_ok(
        web,
        &format!(
            "docker inspect -f '{{{{range .Config.Env}}}}{{{{println .}}}}{{{{end}}}}' {}",
            lab.container("rails")
        ),
    );
    assert!(
        env.contains(&format!("REPO_TOKEN={}", secrets.token)),
        "the token reaches the container through its env file"
    );
    for addr in [&web, &db] {
        let inspect = lab.ssh_ok(
            addr,
            "docker inspect -f '{{.Name}} {{json .Path}} {{json .Args}} {{json .Config.Cmd}} \
             {{json .Config.Entrypoint}}' $(docker ps -aq)",
        );
        secrets.assert_absent(&format!("docker inspect on {addr}"), &inspect);
        let history = lab.ssh_ok(
            addr,
            "for i in $(docker images -q); do docker history --no-trunc $i; done",
        );
        secrets.assert_absent(&format!("docker history on {addr}"), &history);
        let files = lab.ssh_ok(
            addr,
            &format!(
                "stat -c '%a %U %n' /var/lib/provision/{}/env/*/env",
                lab.project
            ),
        );
        for l in files.lines() {
            assert!(l.starts_with("600 root "), "env file on {addr}: {l}");
        }
    }
    let mut logs = String::new();
    for e in std::fs::read_dir(lab.state().join("logs")).unwrap() {
        logs.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap());
    }
    assert!(
        logs.contains("docker"),
        "the logs hold the commands' output"
    );
    secrets.assert_absent(".provision/logs/*", &logs);
    secrets.assert_absent("provision's output", &lab.printed());

    // ---- 2. Faults.

    // 2a. db unreachable (its machine stopped); redis' spec changes on web.
    write_hosts(&lab, false, "Europe/Rome", 768);
    let redis_before = lab.started_at(web, "redis");
    lab.docker(&["stop", "-t", "2", &lab.machine("db")]);
    let d = lab.provision(&[]);
    assert_eq!(d.code, Some(1));
    let line = d.host_line("db");
    assert!(!line.contains(" 0 failed"), "{line}");
    assert!(
        d.stdout.contains(&format!("db: cannot connect to {db}")),
        "{}",
        d.stdout
    );
    assert!(
        d.stdout.contains("FAILED  install and start Docker"),
        "{}",
        d.stdout
    );
    // web did its own work; only what needs db is blocked.
    assert_ne!(lab.started_at(web, "redis"), redis_before);
    let blocked: Vec<&str> = d.stdout.lines().filter(|l| l.contains("BLOCKED")).collect();
    assert!(
        blocked.iter().any(|l| l.contains("needs db/")),
        "{}",
        d.stdout
    );
    for l in &blocked {
        assert!(l.contains("rails") || l.contains("nginx"), "{l}");
    }
    lab.docker(&["start", &lab.machine("db")]);
    lab.wait_for_ssh(db, "true", Duration::from_secs(120));
    // No init system on db: dockerd is down after the restart; the run
    // starts it and converges.
    let d = lab.provision_ok(&[]);
    eprintln!("MEASURED rerun after db is back: {:.1} s", d.secs());
    assert!(d.host_line("db").contains(" 0 failed"));
    assert_converged_with(&lab, rows);
    rows += 1;

    // 2b. Authentication refused on db.
    lab.dexec_ok(
        "db",
        "mv /root/.ssh/authorized_keys /root/.ssh/authorized_keys.off",
    );
    write_hosts(&lab, false, "UTC", 768);
    let redis_before = lab.started_at(web, "redis");
    let d = lab.provision(&[]);
    assert_eq!(d.code, Some(1));
    assert!(
        d.stdout.contains("db: authentication as \"root\" failed"),
        "{}",
        d.stdout
    );
    assert_ne!(lab.started_at(web, "redis"), redis_before, "web's work");
    lab.dexec_ok(
        "db",
        "mv /root/.ssh/authorized_keys.off /root/.ssh/authorized_keys",
    );
    lab.provision_ok(&[]);
    assert_converged_with(&lab, rows);
    rows += 1;

    // 2c. db's host key changed: refused naming the file and line; the
    // printed `ssh-keygen -R`, then the printed accept command, fix it.
    lab.dexec_ok(
        "db",
        "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null",
    );
    // sshd is PID 1 there: HUP makes it re-exec with the new keys.
    lab.docker(&["kill", "-s", "HUP", &lab.machine("db")]);
    let known = lab.state().join("known_hosts");
    let d = wait_for_changed_key(&lab);
    let offending = d
        .stdout
        .lines()
        .find(|l| l.starts_with("Offending "))
        .unwrap_or_else(|| panic!("no Offending line:\n{}", d.stdout));
    let (file, line) = offending.rsplit_once(':').unwrap();
    assert!(file.ends_with("known_hosts"), "{offending}");
    assert!(line.trim().parse::<usize>().is_ok(), "{offending}");
    assert!(
        std::fs::canonicalize(lab.path().join(file.rsplit(' ').next().unwrap())).unwrap()
            == std::fs::canonicalize(&known).unwrap(),
        "{offending}"
    );
    let fix = d
        .stdout
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("ssh-keygen -f"))
        .unwrap_or_else(|| panic!("no ssh-keygen line:\n{}", d.stdout))
        .to_string();
    assert!(fix.ends_with(&format!("-R {db}")), "{fix}");
    assert!(d.host_line("web").contains(" 0 failed") || d.stdout.contains("needs db/"));
    let out = Command::new("sh")
        .args(["-c", &fix])
        .current_dir(lab.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{fix}: {out:?}");
    let d = lab.provision(&[]);
    assert_eq!(d.code, Some(1), "strict refuses the now unknown key");
    assert!(d.stdout.contains("unknown host key"), "{}", d.stdout);
    let accept = d
        .stdout
        .lines()
        .skip_while(|l| !l.contains("accept it with:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no accept command:\n{}", d.stdout))
        .trim()
        .to_string();
    let out = Command::new("sh")
        .args(["-c", &accept])
        .current_dir(lab.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{accept}: {out:?}");
    lab.provision_ok(&[]);
    assert_converged_with(&lab, rows);
    rows += 1;

    // 2d. sshd killed on web during a docker build (nginx' config changes).
    write_hosts(&lab, false, "UTC", 640);
    let postgis_before = lab.started_at(db, "postgis");
    let run = lab.spawn(&[]);
    lab.dexec_ok(
        "web",
        "timeout 300 sh -c 'until pgrep -f \"^docker build\" >/dev/null; do sleep 0.05; done' \
         && pkill -x sshd",
    );
    let d = run.wait();
    assert_eq!(d.code, Some(1));
    assert!(
        d.stdout
            .lines()
            .any(|l| l.contains("FAILED  build image") && l.contains("web:")),
        "{}",
        d.stdout
    );
    assert!(d.host_line("db").contains(" 0 failed"), "{}", d.stdout);
    lab.dexec_ok("web", "systemctl start ssh");
    // That run could not release web's lock; it is gone, so the next run
    // removes the lock instead of waiting for it.
    let d = lab.provision_ok(&[]);
    assert!(d.stderr.contains("(that run is gone)"), "{}", d.stderr);
    assert_eq!(lab.started_at(db, "postgis"), postgis_before);
    assert!(lab
        .ssh_ok(
            web,
            &format!(
                "docker exec {} cat /etc/nginx/nginx.conf",
                lab.container("nginx")
            )
        )
        .contains("worker_connections 640"));
    assert_converged_with(&lab, rows);
    rows += 1;

    // 2e. web's machine restarted during a run (a build again).
    write_hosts(&lab, false, "UTC", 700);
    let run = lab.spawn(&[]);
    lab.dexec_ok(
        "web",
        "timeout 300 sh -c 'until pgrep -f \"^docker build\" >/dev/null; do sleep 0.05; done'",
    );
    lab.docker(&["restart", "-t", "2", &lab.machine("web")]);
    let d = run.wait();
    assert_eq!(d.code, Some(1));
    assert!(
        d.stdout
            .lines()
            .any(|l| l.contains("FAILED") && l.contains("web:")),
        "{}",
        d.stdout
    );
    assert!(d.host_line("db").contains(" 0 failed"), "{}", d.stdout);
    lab.wait_for_ssh(web, "true", Duration::from_secs(120));
    lab.provision_ok(&[]);
    assert_eq!(lab.started_at(db, "postgis"), postgis_before);
    assert_converged_with(&lab, rows);
    rows += 1;

    // 2f. dockerd stopped on web (systemd, socket activation off too): the
    // run starts it and converges in one go.
    lab.dexec_ok("web", "systemctl stop docker.socket docker.service");
    let d = lab.provision_ok(&[]);
    assert!(d.stdout.contains("web "), "{}", d.stdout);
    assert_converged_with(&lab, rows);
    rows += 1;
    // ... and on db (no init system): dockerd killed.
    lab.dexec_ok("db", "pkill -x dockerd; timeout 60 sh -c 'while pgrep -x dockerd >/dev/null; do sleep 0.1; done'");
    lab.provision_ok(&[]);
    assert_converged_with(&lab, rows);
    rows += 1;

    // 2g. db's Docker disk full: dockerd restarted on a 300 MB tmpfs (the
    // real /var/lib/docker, with the data, is only hidden under it).
    lab.dexec_ok(
        "db",
        "pkill -x dockerd; timeout 60 sh -c 'while pgrep -x dockerd >/dev/null; do sleep 0.1; done' \
         && mount -t tmpfs -o size=300m provision-test-small /var/lib/docker",
    );
    start_dockerd_on_db(&lab);
    let redis_before = lab.started_at(web, "redis");
    let d = lab.provision(&[]);
    assert_eq!(d.code, Some(1));
    let failed: Vec<&str> = d.stdout.lines().filter(|l| l.contains("FAILED")).collect();
    // Docker's own write fails, or apt checks the free space first.
    let said = d.stdout.to_lowercase();
    assert!(
        said.contains("no space left on device") || said.contains("enough free space"),
        "{}",
        d.stdout
    );
    assert!(
        failed
            .iter()
            .any(|l| l.contains("db") || d.host_line("db").contains("failed")),
        "{}",
        d.stdout
    );
    assert_eq!(lab.started_at(web, "redis"), redis_before, "web intact");
    lab.dexec_ok(
        "db",
        "pkill -x dockerd; timeout 60 sh -c 'while pgrep -x dockerd >/dev/null; do sleep 0.1; done' \
         && (umount /var/lib/docker || umount -l /var/lib/docker)",
    );
    start_dockerd_on_db(&lab);
    lab.provision_ok(&[]);
    assert_converged_with(&lab, rows);
    rows += 1;

    // ---- 3. Two runs at once (nginx changes again): one waits for the
    // other's lock, then finds nothing left to do.
    write_hosts(&lab, false, "UTC", 800);
    let a = lab.spawn(&[]);
    let b = lab.spawn(&[]);
    let (a, b) = (a.wait(), b.wait());
    assert_eq!((a.code, b.code), (Some(0), Some(0)));
    let waited: Vec<&Run> = [&a, &b]
        .into_iter()
        .filter(|d| d.stderr.contains("waiting for the lock held by"))
        .collect();
    assert!(
        !waited.is_empty(),
        "neither run waited:\n{}\n{}",
        a.text(),
        b.text()
    );
    let idle: Vec<&Run> = [&a, &b]
        .into_iter()
        .filter(|d| d.stdout.contains("Nothing changed"))
        .collect();
    assert_eq!(idle.len(), 1, "exactly one run did the work");
    for d in &waited {
        assert!(
            d.stderr.matches("web: waiting for the lock").count() <= 1,
            "the holder is printed once per host:\n{}",
            d.stderr
        );
    }
    // --no-wait: fails at once, naming the holder.
    write_hosts(&lab, false, "Asia/Tokyo", 900);
    let mut a = lab.spawn(&[]);
    let lock = format!("/var/lib/provision/{}/lock", lab.project);
    wait_until(
        "the first run holds web's lock",
        Duration::from_secs(120),
        || {
            assert!(!a.finished(), "{}", a.output_so_far());
            lab.dexec("web", &format!("test -d {lock}"))
                .status
                .success()
        },
    );
    let b = lab.provision(&["--no-wait"]);
    assert_eq!(b.code, Some(1));
    assert!(b.secs() < 30.0, "--no-wait took {:.1} s", b.secs());
    assert!(
        b.text().contains("another run holds the lock")
            && b.text().contains(&format!("(pid {})", a.child.id())),
        "{}",
        b.text()
    );
    let a = a.wait();
    assert_eq!(a.code, Some(0), "{}", a.text());
    let d = lab.provision_ok(&[]);
    assert!(d.stdout.contains("Nothing changed"), "{}", d.stdout);
    assert_converged_with(&lab, rows);

    // Nothing printed by any run (errors included) showed a secret.
    secrets.assert_absent("provision's output", &lab.printed());
    eprintln!(
        "MEASURED whole fault test: {:.1} s",
        total.elapsed().as_secs_f64()
    );
}

/// The run after db's host key changed. sshd re-executes on HUP: the first
/// runs may still meet the old key.
fn wait_for_changed_key(lab: &Lab) -> Run {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = lab.provision(&[]);
        assert_eq!(d.code, Some(1), "a changed host key was accepted");
        if d.stdout.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
            assert!(d.stdout.contains("db: WARNING"), "{}", d.stdout);
            return d;
        }
        assert!(Instant::now() < deadline, "{}", d.text());
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// No init system on db: dockerd is started by hand, as the run would.
fn start_dockerd_on_db(lab: &Lab) {
    lab.docker(&[
        "exec",
        "-d",
        &lab.machine("db"),
        "sh",
        "-c",
        "exec setsid dockerd >/var/log/dockerd.log 2>&1 </dev/null",
    ]);
    wait_until("dockerd on db", Duration::from_secs(60), || {
        lab.dexec("db", "docker info >/dev/null 2>&1")
            .status
            .success()
    });
}
