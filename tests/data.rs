//! Keeping data safe and bringing back one failed host, end to end on two
//! local playground machines (issue 6):
//!
//! 1. provision web + db, create rows through nginx -> rails -> postgis,
//!    `backup db` (with its manifest); pg_hba does not admit the Docker
//!    network's gateway; a copy cut exactly at a member boundary and one with
//!    a corrupted byte are refused by `restore` with every row kept; a
//!    backup whose copy is killed (its process group, SIGKILL) leaves
//!    PostGIS running again; a backup of an empty volume says so;
//! 2. destroy db (its machine and the volume holding its Docker data) and
//!    create a blank one at a new address;
//! 3. `--only db --restore-from FILE`: the old rows are served from the new
//!    db, rails was re-wired, nothing else on web restarted;
//! 4. `migrate` of a volume web -> db keeps every byte; a held lock is
//!    refused and `--break-lock` breaks it;
//! 5. db down during a full run: web does what does not need db (and backs
//!    up a volume before replacing its container), the run fails naming db;
//!    with db back, a rerun exits 0;
//! 6. web destroyed and replaced by a blank machine at a new address:
//!    `--only web` serves the old rows; db's firewall and pg_hba admit the
//!    new address and no longer the old one, PostgreSQL was not restarted.
//!
//! Own project name and a 10.214.x.0/24 subnet; a guard removes the
//! machines even when the test fails. Under CI=true a missing engine fails.
//! Traffic goes only to the machines this test creates.

mod support;

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::lab::Lab;
use support::local::mode;
use support::stack::{Db, Stack};
use support::wait::wait_until;

/// Hash of a volume's listing (names, types, modes, owners, sizes, link
/// targets) and of every file's content, read on the host.
fn volume_digest(lab: &Lab, addr: impl Display, volume: &str) -> String {
    let script = format!(
        "docker run --rm -v {volume}:/v:ro debian:bookworm sh -c \
         'cd /v && find . -printf \"%p %y %m %U %G %s %l\\n\" | LC_ALL=C sort | sha256sum && \
          find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum'"
    );
    lab.ssh_ok(addr, &script)
}

/// Where each member of a tar file ends (header and data blocks), and where
/// each member's data starts.
fn members(path: &Path) -> Vec<(u64, u64, u64)> {
    let mut a = tar::Archive::new(std::fs::File::open(path).unwrap());
    a.entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let size = e.header().entry_size().unwrap();
            let data = e.raw_file_position();
            (data, size, data + size.div_ceil(512) * 512)
        })
        .collect()
}

#[test]
fn backup_replace_a_failed_host_migrate_and_partial_failure() {
    let Some(lab) = Lab::or_skip("pvdata", 214) else {
        return;
    };
    let web = lab.addr(10);

    // 1. Provision, create rows, back up db.
    let mut stack = Stack {
        redis_tz: Some("UTC".into()),
        ..lab.stack()
    };
    stack.write(&lab);
    let t = Instant::now();
    lab.provision_ok(&[]);
    eprintln!(
        "MEASURED cold provision: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for _ in 0..3 {
        lab.visit(stack.web);
    }
    let rows = lab.visit(stack.web);
    assert!(rows >= 4, "{rows}");
    let t = Instant::now();
    let out = lab.provision_ok(&["backup", "db"]).stdout;
    eprintln!("MEASURED backup db: {:.1} s", t.elapsed().as_secs_f64());
    assert!(out.contains("backup of db (pgdata)"), "{out}");
    let backups = lab.backups();
    let file = backups
        .iter()
        .find(|b| b.starts_with("db-") && b.ends_with("Z.tar"))
        .unwrap_or_else(|| panic!("no db backup in {backups:?}"))
        .clone();
    let file = lab.state().join("backups").join(file);
    // Its manifest beside it: size and SHA-256 of the file; both private.
    let manifest_path = PathBuf::from(format!("{}.manifest.json", file.display()));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    assert_eq!(
        manifest["size"].as_u64(),
        Some(std::fs::metadata(&file).unwrap().len())
    );
    assert_eq!(manifest["volumes"], serde_json::json!(["pgdata"]));
    assert_eq!(manifest["services"], serde_json::json!(["postgis"]));
    assert_eq!((mode(&file), mode(&manifest_path)), (0o600, 0o600));
    // The backup restarted postgis: the app still works.
    assert_eq!(lab.visit(stack.web), rows + 1);
    let db0 = lab.addr(11);

    // pg_hba admits nothing through the Docker network's gateway (where
    // docker-proxy's connections come from): from db itself, a connection
    // to the container's own address is refused before any password.
    let from_gateway = lab.ssh(
        db0,
        &format!(
            "ip=$(docker inspect -f '{{{{range .NetworkSettings.Networks}}}}{{{{.IPAddress}}}}{{{{end}}}}' {c}) && \
             img=$(docker inspect -f '{{{{.Config.Image}}}}' {c}) && \
             docker run --rm --network host --entrypoint psql \"$img\" \
               \"host=$ip port=5432 user=app dbname=app password=not-the-password sslmode=disable connect_timeout=5\" -c 'select 1'",
            c = lab.container("postgis")
        ),
    );
    let said = String::from_utf8_lossy(&from_gateway.stderr);
    assert!(
        !from_gateway.status.success() && said.contains("no pg_hba.conf entry"),
        "the gateway got past pg_hba: {said}"
    );

    // A copy cut exactly at a member boundary (GNU tar reads it without a
    // word) and a copy with one corrupted byte, each with the manifest:
    // `restore` refuses both before touching db, every row is kept.
    let whole = std::fs::read(&file).unwrap();
    let list = members(&file);
    let (_, _, cut_at) = list[list.len() / 2];
    std::fs::write(lab.path().join("cut.tar"), &whole[..cut_at as usize]).unwrap();
    let (data_at, _, _) = *list.iter().rev().find(|(_, size, _)| *size > 0).unwrap();
    let mut bad = whole.clone();
    bad[data_at as usize] ^= 0x20;
    std::fs::write(lab.path().join("bad.tar"), &bad).unwrap();
    for f in ["cut.tar", "bad.tar"] {
        std::fs::copy(
            &manifest_path,
            lab.path().join(format!("{f}.manifest.json")),
        )
        .unwrap();
    }
    let rows_before = lab.rows(db0);
    for (f, why) in [("cut.tar", "truncated"), ("bad.tar", "corrupted")] {
        let out = lab.provision(&["restore", "db", f]);
        let err = &out.stderr;
        assert_eq!(out.code, Some(2), "restore {f}: {err}");
        assert!(
            err.contains(why) && err.contains("nothing was touched"),
            "restore {f}: {err}"
        );
    }
    assert_eq!(lab.rows(db0), rows_before);

    // A backup whose copy is killed with its whole process group (SIGKILL:
    // no trap runs; a timeout's escalation or a dropped connection that
    // takes the shell does the same) leaves PostGIS running again. A sparse
    // 2 GB file in the volume keeps the copy going long enough to catch it.
    let sparse = "/var/lib/docker/volumes/pgdata/_data/provision-test-sparse";
    lab.ssh_ok(db0, &format!("truncate -s 2G {sparse}"));
    let killed = lab.path().join("killed.tar");
    let mut backup = lab.spawn(&["backup", "db", "-o", killed.to_str().unwrap()]);
    let partial = lab.path().join("killed.tar.partial");
    wait_until("the backup copy started", Duration::from_secs(90), || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() > 1 << 20)
    });
    lab.ssh_ok(
        db0,
        "pg=$(ps -eo pgid=,args= | awk '$2 == \"sh\" && $3 == \"-c\" && index($0, \"tar -C /volumes --anchored\") { print $1; exit }') && \
         [ -n \"$pg\" ] && kill -KILL -- -$pg",
    );
    wait_until("the killed backup ended", Duration::from_secs(60), || {
        backup.finished()
    });
    assert_eq!(backup.wait().code, Some(1));
    assert!(!killed.exists() && !partial.exists());
    let running = format!(
        "docker inspect -f '{{{{.State.Running}}}}' {}",
        lab.container("postgis")
    );
    wait_until(
        "PostGIS running again after the killed backup",
        Duration::from_secs(60),
        || lab.ssh_ok(db0, &running).trim() == "true",
    );
    lab.ssh_ok(db0, &format!("rm -f {sparse}"));
    assert_eq!(lab.visit(stack.web), rows + 2);
    // The backup holds `rows` rows: after restoring it, the next visit
    // shows `rows + 1`.
    let rows = rows + 1;

    // A volume with no file: the backup says so and keeps nothing, unless
    // asked to.
    lab.ssh_ok(db0, "docker volume create empty-data >/dev/null");
    let out = lab.provision(&["backup", "db:empty-data"]);
    let err = &out.stderr;
    assert_eq!(out.code, Some(1), "{err}");
    assert!(err.contains("empty-data on db holds no file"), "{err}");
    assert!(
        !lab.backups().iter().any(|b| b.contains("empty-data")),
        "{:?}",
        lab.backups()
    );
    let kept = lab.path().join("empty.tar");
    let kept_arg = kept.to_string_lossy().into_owned();
    lab.provision_ok(&["backup", "db:empty-data", "--allow-empty", "-o", &kept_arg]);
    assert!(kept.exists() && PathBuf::from(format!("{kept_arg}.manifest.json")).exists());
    let before: Vec<(String, String)> = ["redis", "nginx"]
        .iter()
        .map(|s| (s.to_string(), lab.started_at(web, s)))
        .collect();

    // 2. Destroy db completely; a blank machine at a new address.
    let machine = lab.machine("db");
    lab.docker(&["rm", "--force", &machine]);
    lab.docker(&["volume", "rm", &format!("{machine}-docker")]);
    stack.db = lab.addr(12);
    stack.write(&lab);

    // 3. Bring db back alone, its volume filled from the backup.
    let t = Instant::now();
    let file_arg = file.to_string_lossy().into_owned();
    let out = lab
        .provision_ok(&["--only", "db", "--restore-from", &file_arg])
        .stdout;
    eprintln!(
        "MEASURED --only db --restore-from (blank host): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(out.contains("volume pgdata restored from"), "{out}");
    // The old rows (all but the one added after the backup) are served.
    assert_eq!(lab.visit(stack.web), rows);
    let env = lab.container_env(web, "rails");
    let url = env
        .lines()
        .find(|l| l.starts_with("DATABASE_URL="))
        .expect("DATABASE_URL");
    assert!(url.contains(&format!("@{}:5432/", lab.addr(12))), "{url}");
    for (service, started) in &before {
        assert_eq!(
            &lab.started_at(web, service),
            started,
            "{service} on web was restarted"
        );
    }
    // Every run left an audit line on each host it touched, and no lock.
    let audit = lab.ssh_ok(
        web,
        &format!(
            "cat /var/lib/provision/{p}/audit.log; test ! -e /var/lib/provision/{p}/lock",
            p = lab.project
        ),
    );
    assert!(audit.contains("--only db"), "{audit}");
    assert!(audit.contains("\tok: "), "{audit}");

    // 4. Migrate a volume web -> db: every byte, mode, owner and link.
    let db = lab.addr(12);
    lab.ssh_ok(
        web,
        "docker volume create blob >/dev/null && docker run --rm -v blob:/v debian:bookworm sh -c \
         'head -c 30000000 /dev/urandom > /v/big && mkdir -p /v/d/e && echo hi > /v/d/x && \
          chmod 640 /v/d/x && chown 1234:5678 /v/d/x && ln -s d/x /v/link && touch /v/d/e/.hidden'",
    );
    let source = volume_digest(&lab, web, "blob");
    let t = Instant::now();
    let out = lab
        .provision_ok(&["migrate", "blob", "--from", "web", "--to", "db"])
        .stdout;
    eprintln!(
        "MEASURED migrate 30 MB: {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        out.trim()
    );
    assert_eq!(volume_digest(&lab, db, "blob"), source);
    // A lock held by another run is refused; --break-lock breaks it.
    lab.ssh_ok(
        db,
        &format!(
            "mkdir -p /var/lib/provision/{p}/lock && echo 'someone@elsewhere (pid 1): provision' > /var/lib/provision/{p}/lock/info",
            p = lab.project
        ),
    );
    let out = lab.provision(&["backup", "db:blob", "--no-wait"]);
    assert_eq!(out.code, Some(1));
    let err = &out.stderr;
    assert!(err.contains("another run holds the lock"), "{err}");
    assert!(
        err.contains("someone@elsewhere") && err.contains("--break-lock"),
        "{err}"
    );
    // Without --no-wait a backup waits for the lock and goes on once it is
    // released.
    let mut waiting = lab.spawn(&["backup", "db:blob"]);
    wait_until(
        "the backup says it waits for the lock",
        Duration::from_secs(60),
        || {
            let said = waiting.output_so_far();
            said.contains("waiting for the lock held by someone@elsewhere")
        },
    );
    assert!(!waiting.finished(), "the backup did not wait");
    lab.ssh_ok(
        db,
        &format!("rm -rf /var/lib/provision/{}/lock", lab.project),
    );
    assert_eq!(waiting.wait().code, Some(0), "the waiting backup failed");
    // A stale lock is broken explicitly.
    lab.ssh_ok(
        db,
        &format!(
            "mkdir -p /var/lib/provision/{p}/lock && echo 'someone@elsewhere (pid 1): provision' > /var/lib/provision/{p}/lock/info",
            p = lab.project
        ),
    );
    lab.provision_ok(&["backup", "db:blob", "--break-lock"]);

    // 5. db down during a full run (a plain SSH host now, so the run does
    // not start its machine); redis' spec changes on web.
    stack.db_as = Db::Plain;
    stack.redis_tz = Some("Europe/Rome".into());
    stack.write(&lab);
    lab.docker(&["stop", &machine]);
    let redis_before = lab.started_at(web, "redis");
    let out = lab.provision(&[]);
    assert_eq!(out.code, Some(1));
    let summary = &out.stdout;
    let db_line = summary.lines().find(|l| l.starts_with("db ")).unwrap();
    assert!(
        db_line.contains("failed") && !db_line.contains(" 0 failed"),
        "{summary}"
    );
    assert!(
        summary.contains("FAILED") && summary.contains("cannot connect"),
        "{summary}"
    );
    // web replaced redis (it needs nothing on db), backing its volume up first.
    assert_ne!(lab.started_at(web, "redis"), redis_before);
    assert!(summary.contains("backup of redis-data"), "{summary}");
    assert!(
        lab.backups()
            .iter()
            .any(|b| b.starts_with("web-") && b.ends_with("-redis.tar")),
        "{:?}",
        lab.backups()
    );
    // db back: the rerun converges.
    lab.docker(&["start", &machine]);
    lab.wait_for_ssh(db, "docker info >/dev/null", Duration::from_secs(90));
    let t = Instant::now();
    lab.provision_ok(&[]);
    eprintln!(
        "MEASURED rerun after db is back: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(lab.visit(stack.web), rows + 1);

    // 6. web destroyed too; a blank machine at a new address, alone.
    let old_web = lab.addr(10);
    let db_started = lab.started_at(db, "postgis");
    let web_machine = lab.machine("web");
    lab.docker(&["rm", "--force", &web_machine]);
    lab.docker(&["volume", "rm", &format!("{web_machine}-docker")]);
    stack.web = lab.addr(13);
    stack.write(&lab);
    let new_web = lab.addr(13);
    let t = Instant::now();
    lab.provision_ok(&["--only", "web"]);
    eprintln!(
        "MEASURED --only web (blank host, new address): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(
        lab.visit(stack.web),
        rows + 2,
        "the old rows, served by the new web"
    );
    assert_eq!(
        lab.started_at(db, "postgis"),
        db_started,
        "PostgreSQL on db was restarted"
    );
    let hba = lab.ssh_ok(
        db,
        &format!(
            "docker exec {} cat /etc/provision/live/pg_hba.conf",
            lab.container("postgis")
        ),
    );
    assert!(hba.contains(&format!(" {new_web}/32 ")), "{hba}");
    assert!(!hba.contains(&format!(" {old_web}/32 ")), "{hba}");
    let rules = lab.ssh_ok(db, "iptables -w -S");
    assert!(rules.contains(&format!("-s {new_web}/32 ")), "{rules}");
    assert!(!rules.contains(&format!("{old_web}/32 ")), "{rules}");
}
