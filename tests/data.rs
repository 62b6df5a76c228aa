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

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_provision");
const MACHINE_LABEL: &str = "dev.provision.project";

struct Lab {
    dir: tempfile::TempDir,
    project: String,
    net: String,
    /// Last octet of web's current address.
    web_last: std::cell::Cell<u8>,
}

impl Lab {
    fn new() -> Option<Lab> {
        let ok = Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("CI=true: tests/data.rs needs a local Docker engine");
            }
            eprintln!("skipping: no local Docker engine; under CI=true this fails");
            return None;
        }
        let pid = std::process::id();
        let dir = tempfile::tempdir().unwrap();
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        std::os::unix::fs::symlink(repo.join("examples"), dir.path().join("examples")).unwrap();
        Some(Lab {
            dir,
            project: format!("pvdata-{pid}"),
            net: format!("10.214.{}", 20 + pid % 200),
            web_last: std::cell::Cell::new(10),
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn state(&self) -> PathBuf {
        self.path().join(".provision")
    }

    fn addr(&self, last: u8) -> String {
        format!("{}.{last}", self.net)
    }

    /// hosts.toml: web (local machine) and db (a local machine at `db_last`,
    /// or a plain SSH host there when `db_plain`); `redis_tz` is a harmless
    /// setting that changes redis' spec when changed.
    fn write_hosts(&self, db_last: u8, db_plain: bool, redis_tz: &str) {
        self.write_hosts_web(self.web_last.get(), db_last, db_plain, redis_tz)
    }

    /// [`Lab::write_hosts`] with web at `web_last`.
    fn write_hosts_web(&self, web_last: u8, db_last: u8, db_plain: bool, redis_tz: &str) {
        self.web_last.set(web_last);
        let db = if db_plain {
            format!(
                "[hosts.db]\naddress = \"{}\"\nidentity = \".provision/id_ed25519\"\n",
                self.addr(db_last)
            )
        } else {
            format!(
                "[hosts.db]\nmachine = \"local\"\naddress = \"{}\"\n",
                self.addr(db_last)
            )
        };
        let text = format!(
            r#"[project]
name = "{project}"

[app]
source = "examples/rails_app"

[secrets.PG_PASSWORD]
generate = true

[secrets.SECRET_KEY_BASE]
generate = true

[hosts.web]
machine = "local"
address = "{web}"

{db}
[services.postgis]
host = "db"
template = "postgis"
publish = ["5432"]
volumes = ["pgdata:/var/lib/postgresql/data"]
secrets = ["PG_PASSWORD"]

[services.redis]
host = "web"
template = "redis"
volumes = ["redis-data:/data"]
env = {{ TZ = "{redis_tz}" }}

[services.rails]
host = "web"
template = "rails"
uses = ["postgis", "redis"]
secrets = ["SECRET_KEY_BASE"]
env = {{ RAILS_ENV = "production", RAILS_LOG_TO_STDOUT = "1" }}

[services.nginx]
host = "web"
template = "nginx"
publish = ["80"]
public = true
uses = ["rails"]
"#,
            project = self.project,
            web = self.addr(web_last),
        );
        std::fs::write(self.path().join("hosts.toml"), text).unwrap();
    }

    fn provision(&self, args: &[&str]) -> Output {
        let started = Instant::now();
        let out = Command::new(BIN)
            .current_dir(self.path())
            .arg("--hosts")
            .arg("hosts.toml")
            .args(args)
            .output()
            .unwrap();
        eprintln!(
            "== provision {} -> {:?} in {:.1} s\n-- stdout:\n{}-- stderr (tail):\n{}",
            args.join(" "),
            out.status.code(),
            started.elapsed().as_secs_f64(),
            String::from_utf8_lossy(&out.stdout),
            tail(&String::from_utf8_lossy(&out.stderr), 25)
        );
        out
    }

    fn provision_ok(&self, args: &[&str]) -> String {
        let out = self.provision(args);
        assert_eq!(out.status.code(), Some(0), "provision {args:?} failed");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn ssh(&self, addr: &str, script: &str) -> Output {
        let state = self.state();
        Command::new("ssh")
            .args(["-o", "StrictHostKeyChecking=yes", "-o"])
            .arg(format!(
                "UserKnownHostsFile={}",
                state.join("known_hosts").display()
            ))
            .args(["-o", "GlobalKnownHostsFile=/dev/null", "-i"])
            .arg(state.join("id_ed25519"))
            .args([
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("root@{addr}"))
            .arg(script)
            .output()
            .unwrap()
    }

    fn ssh_ok(&self, addr: &str, script: &str) -> String {
        let out = self.ssh(addr, script);
        assert!(
            out.status.success(),
            "ssh {addr} {script:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn container(&self, service: &str) -> String {
        format!("{}-{service}", self.project)
    }

    fn started_at(&self, addr: &str, service: &str) -> String {
        self.ssh_ok(
            addr,
            &format!(
                "docker inspect -f '{{{{.State.StartedAt}}}}' {}",
                self.container(service)
            ),
        )
        .trim()
        .to_string()
    }

    /// GET / through nginx on web: the page records a visit; returns the
    /// total number of visits it shows. Polls until the app answers.
    fn visit(&self) -> u64 {
        let addr = format!("{}:80", self.addr(self.web_last.get()));
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(body) = http_get(&addr, "/", &mut last) {
                if let Some(n) = between(&body, "<span id=\"total\">", "</span>") {
                    return n.parse().unwrap();
                }
                last = body;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        panic!("the app did not answer on {addr} within 120 s; last: {last}");
    }

    fn backups(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.state().join("backups"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let filter = format!("label={MACHINE_LABEL}={}", self.project);
        let list = |args: &[&str]| -> Vec<String> {
            let out = Command::new("docker").args(args).output().unwrap();
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect()
        };
        let containers = list(&["ps", "-aq", "--filter", &filter]);
        if !containers.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "--force"])
                .args(&containers)
                .output();
        }
        let volumes = list(&["volume", "ls", "-q", "--filter", &filter]);
        if !volumes.is_empty() {
            let _ = Command::new("docker")
                .args(["volume", "rm", "--force"])
                .args(&volumes)
                .output();
        }
        for n in list(&["network", "ls", "-q", "--filter", &filter]) {
            let _ = Command::new("docker").args(["network", "rm", &n]).output();
        }
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n") + "\n"
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> Option<&'a str> {
    let start = s.find(a)? + a.len();
    let end = s[start..].find(b)? + start;
    Some(&s[start..end])
}

/// A plain HTTP/1.0 GET; Some(body) on a 200.
fn http_get(addr: &str, path: &str, last: &mut String) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_secs(5))
        .map_err(|e| *last = e.to_string())
        .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    if resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200") {
        Some(resp)
    } else {
        *last = resp.lines().next().unwrap_or("").to_string();
        None
    }
}

/// Hash of a volume's listing (names, types, modes, owners, sizes, link
/// targets) and of every file's content, read on the host.
fn volume_digest(lab: &Lab, addr: &str, volume: &str) -> String {
    let script = format!(
        "docker run --rm -v {volume}:/v:ro debian:bookworm sh -c \
         'cd /v && find . -printf \"%p %y %m %U %G %s %l\\n\" | LC_ALL=C sort | sha256sum && \
          find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum'"
    );
    lab.ssh_ok(addr, &script)
}

fn wait_for_ssh(lab: &Lab, addr: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if lab.ssh(addr, "docker info >/dev/null").status.success() {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{addr}: no ssh + docker within 90 s");
}

/// Rows of the app's visits table, counted in PostGIS on `addr`.
fn rows_in_db(lab: &Lab, addr: &str) -> u64 {
    lab.ssh_ok(
        addr,
        &format!(
            "docker exec -u postgres {} psql -X -d app -tAc 'select count(*) from visits'",
            lab.container("postgis")
        ),
    )
    .trim()
    .parse()
    .unwrap()
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

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Poll until `check` holds, or panic saying `what` after `secs`.
fn wait_until(secs: u64, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(Instant::now() < deadline, "{what} within {secs} s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn backup_replace_a_failed_host_migrate_and_partial_failure() {
    let Some(lab) = Lab::new() else { return };
    let web = lab.addr(10);

    // 1. Provision, create rows, back up db.
    lab.write_hosts(11, false, "UTC");
    let t = Instant::now();
    lab.provision_ok(&[]);
    eprintln!(
        "MEASURED cold provision: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    for _ in 0..3 {
        lab.visit();
    }
    let rows = lab.visit();
    assert!(rows >= 4, "{rows}");
    let t = Instant::now();
    let out = lab.provision_ok(&["backup", "db"]);
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
    assert_eq!(lab.visit(), rows + 1);
    let db0 = lab.addr(11);

    // pg_hba admits nothing through the Docker network's gateway (where
    // docker-proxy's connections come from): from db itself, a connection
    // to the container's own address is refused before any password.
    let from_gateway = lab.ssh(
        &db0,
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
    let rows_before = rows_in_db(&lab, &db0);
    for (f, why) in [("cut.tar", "truncated"), ("bad.tar", "corrupted")] {
        let out = lab.provision(&["restore", "db", f]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "restore {f}: {err}");
        assert!(
            err.contains(why) && err.contains("nothing was touched"),
            "restore {f}: {err}"
        );
    }
    assert_eq!(rows_in_db(&lab, &db0), rows_before);

    // A backup whose copy is killed with its whole process group (SIGKILL:
    // no trap runs; a timeout's escalation or a dropped connection that
    // takes the shell does the same) leaves PostGIS running again. A sparse
    // 2 GB file in the volume keeps the copy going long enough to catch it.
    let sparse = "/var/lib/docker/volumes/pgdata/_data/provision-test-sparse";
    lab.ssh_ok(&db0, &format!("truncate -s 2G {sparse}"));
    let killed = lab.path().join("killed.tar");
    let mut backup = Command::new(BIN)
        .current_dir(lab.path())
        .args(["--hosts", "hosts.toml", "backup", "db", "-o"])
        .arg(&killed)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let partial = lab.path().join("killed.tar.partial");
    wait_until(90, "the backup copy started", || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() > 1 << 20)
    });
    lab.ssh_ok(
        &db0,
        "pg=$(ps -eo pgid=,args= | awk '$2 == \"sh\" && $3 == \"-c\" && index($0, \"tar -C /volumes --anchored\") { print $1; exit }') && \
         [ -n \"$pg\" ] && kill -KILL -- -$pg",
    );
    let mut status = None;
    wait_until(60, "the killed backup ended", || {
        status = backup.try_wait().unwrap();
        status.is_some()
    });
    assert_eq!(status.unwrap().code(), Some(1));
    assert!(!killed.exists() && !partial.exists());
    let running = format!(
        "docker inspect -f '{{{{.State.Running}}}}' {}",
        lab.container("postgis")
    );
    wait_until(60, "PostGIS running again after the killed backup", || {
        lab.ssh_ok(&db0, &running).trim() == "true"
    });
    lab.ssh_ok(&db0, &format!("rm -f {sparse}"));
    assert_eq!(lab.visit(), rows + 2);
    // The backup holds `rows` rows: after restoring it, the next visit
    // shows `rows + 1`.
    let rows = rows + 1;

    // A volume with no file: the backup says so and keeps nothing, unless
    // asked to.
    lab.ssh_ok(&db0, "docker volume create empty-data >/dev/null");
    let out = lab.provision(&["backup", "db:empty-data"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
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
        .map(|s| (s.to_string(), lab.started_at(&web, s)))
        .collect();

    // 2. Destroy db completely; a blank machine at a new address.
    let machine = format!("{}-db", lab.project);
    let machine_volume = format!("{machine}-docker");
    for args in [
        vec!["rm", "--force", machine.as_str()],
        vec!["volume", "rm", machine_volume.as_str()],
    ] {
        let out = Command::new("docker").args(&args).output().unwrap();
        assert!(out.status.success(), "docker {args:?}: {out:?}");
    }
    lab.write_hosts(12, false, "UTC");

    // 3. Bring db back alone, its volume filled from the backup.
    let t = Instant::now();
    let file_arg = file.to_string_lossy().into_owned();
    let out = lab.provision_ok(&["--only", "db", "--restore-from", &file_arg]);
    eprintln!(
        "MEASURED --only db --restore-from (blank host): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert!(out.contains("volume pgdata restored from"), "{out}");
    // The old rows (all but the one added after the backup) are served.
    assert_eq!(lab.visit(), rows);
    let env = lab.ssh_ok(
        &web,
        &format!(
            "docker inspect -f '{{{{range .Config.Env}}}}{{{{println .}}}}{{{{end}}}}' {}",
            lab.container("rails")
        ),
    );
    let url = env
        .lines()
        .find(|l| l.starts_with("DATABASE_URL="))
        .expect("DATABASE_URL");
    assert!(url.contains(&format!("@{}:5432/", lab.addr(12))), "{url}");
    for (service, started) in &before {
        assert_eq!(
            &lab.started_at(&web, service),
            started,
            "{service} on web was restarted"
        );
    }
    // Every run left an audit line on each host it touched, and no lock.
    let audit = lab.ssh_ok(
        &web,
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
        &web,
        "docker volume create blob >/dev/null && docker run --rm -v blob:/v debian:bookworm sh -c \
         'head -c 30000000 /dev/urandom > /v/big && mkdir -p /v/d/e && echo hi > /v/d/x && \
          chmod 640 /v/d/x && chown 1234:5678 /v/d/x && ln -s d/x /v/link && touch /v/d/e/.hidden'",
    );
    let source = volume_digest(&lab, &web, "blob");
    let t = Instant::now();
    let out = lab.provision_ok(&["migrate", "blob", "--from", "web", "--to", "db"]);
    eprintln!(
        "MEASURED migrate 30 MB: {:.1} s ({})",
        t.elapsed().as_secs_f64(),
        out.trim()
    );
    assert_eq!(volume_digest(&lab, &db, "blob"), source);
    // A lock held by another run is refused; --break-lock breaks it.
    lab.ssh_ok(
        &db,
        &format!(
            "mkdir -p /var/lib/provision/{p}/lock && echo 'someone@elsewhere (pid 1): provision' > /var/lib/provision/{p}/lock/info",
            p = lab.project
        ),
    );
    let out = lab.provision(&["backup", "db:blob", "--no-wait"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("another run holds the lock"), "{err}");
    assert!(
        err.contains("someone@elsewhere") && err.contains("--break-lock"),
        "{err}"
    );
    // Without --no-wait a backup waits for the lock and goes on once it is
    // released.
    let mut waiting = Command::new(BIN)
        .current_dir(lab.path())
        .args(["--hosts", "hosts.toml", "backup", "db:blob"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (said, heard) = std::sync::mpsc::channel();
    let stderr = waiting.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = said.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = heard
            .recv_timeout(left)
            .expect("the backup never said it waits for the lock");
        if line.contains("waiting for the lock held by someone@elsewhere") {
            break;
        }
    }
    assert!(
        waiting.try_wait().unwrap().is_none(),
        "the backup did not wait"
    );
    lab.ssh_ok(
        &db,
        &format!("rm -rf /var/lib/provision/{}/lock", lab.project),
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = waiting.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the waiting backup did not finish"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(status.success(), "the waiting backup failed");
    // A stale lock is broken explicitly.
    lab.ssh_ok(
        &db,
        &format!(
            "mkdir -p /var/lib/provision/{p}/lock && echo 'someone@elsewhere (pid 1): provision' > /var/lib/provision/{p}/lock/info",
            p = lab.project
        ),
    );
    lab.provision_ok(&["backup", "db:blob", "--break-lock"]);

    // 5. db down during a full run (a plain SSH host now, so the run does
    // not start its machine); redis' spec changes on web.
    lab.write_hosts(12, true, "Europe/Rome");
    let stop = Command::new("docker")
        .args(["stop", &machine])
        .output()
        .unwrap();
    assert!(stop.status.success());
    let redis_before = lab.started_at(&web, "redis");
    let out = lab.provision(&[]);
    assert_eq!(out.status.code(), Some(1));
    let summary = String::from_utf8_lossy(&out.stdout);
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
    assert_ne!(lab.started_at(&web, "redis"), redis_before);
    assert!(summary.contains("backup of redis-data"), "{summary}");
    assert!(
        lab.backups()
            .iter()
            .any(|b| b.starts_with("web-") && b.ends_with("-redis.tar")),
        "{:?}",
        lab.backups()
    );
    // db back: the rerun converges.
    let start = Command::new("docker")
        .args(["start", &machine])
        .output()
        .unwrap();
    assert!(start.status.success());
    wait_for_ssh(&lab, &db);
    let t = Instant::now();
    lab.provision_ok(&[]);
    eprintln!(
        "MEASURED rerun after db is back: {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(lab.visit(), rows + 1);

    // 6. web destroyed too; a blank machine at a new address, alone.
    let old_web = lab.addr(10);
    let db_started = lab.started_at(&db, "postgis");
    let web_machine = format!("{}-web", lab.project);
    let web_volume = format!("{web_machine}-docker");
    for args in [
        vec!["rm", "--force", web_machine.as_str()],
        vec!["volume", "rm", web_volume.as_str()],
    ] {
        let out = Command::new("docker").args(&args).output().unwrap();
        assert!(out.status.success(), "docker {args:?}: {out:?}");
    }
    lab.write_hosts_web(13, 12, true, "Europe/Rome");
    let new_web = lab.addr(13);
    let t = Instant::now();
    lab.provision_ok(&["--only", "web"]);
    eprintln!(
        "MEASURED --only web (blank host, new address): {:.1} s",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(lab.visit(), rows + 2, "the old rows, served by the new web");
    assert_eq!(
        lab.started_at(&db, "postgis"),
        db_started,
        "PostgreSQL on db was restarted"
    );
    let hba = lab.ssh_ok(
        &db,
        &format!(
            "docker exec {} cat /etc/provision/live/pg_hba.conf",
            lab.container("postgis")
        ),
    );
    assert!(hba.contains(&format!(" {new_web}/32 ")), "{hba}");
    assert!(!hba.contains(&format!(" {old_web}/32 ")), "{hba}");
    let rules = lab.ssh_ok(&db, "iptables -w -S");
    assert!(rules.contains(&format!("-s {new_web}/32 ")), "{rules}");
    assert!(!rules.contains(&format!("{old_web}/32 ")), "{rules}");
}
