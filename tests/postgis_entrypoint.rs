//! The PostGIS template's real entrypoint on the local Docker engine
//! (issue 10, items 6, 10, 12 and 13 where they live in the container):
//!
//! - hostile `db_name`/`db_user` values (quotes, `$(...)`, backticks,
//!   newlines, `'; rm -rf /;'`, unicode, connection-string look-alikes) are
//!   rendered into the image, and the database and role with exactly those
//!   names exist, the role logs in over TCP with the password, and nothing
//!   the values spell was run;
//! - the password comes from a read-only file: `docker inspect`, the
//!   server's environment and the logs never show it, user postgres cannot
//!   read it;
//! - a changed password file is rolled out at the next start: the new one
//!   logs in, the old one no longer does, every row and the cluster itself
//!   (its system identifier) stay;
//! - a data directory holding files but no PG_VERSION is never initialised
//!   over, and keeps every file;
//! - values that cannot be valid PostgreSQL names are refused at input
//!   (exit 2, hosts.toml line and key).
//!
//! The rendered images are built from `debian:bookworm` (which provision
//! builds with debootstrap when absent) under a tag that is the hash of the
//! build context: a rerun with the same templates builds nothing, and a new
//! entrypoint reuses the cached apt layer. Containers and volumes carry the
//! test's pid and are removed on drop. Traffic stays inside the containers.
//! Under CI=true a missing Docker engine fails.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use provision::inventory::{TemplateRef, VarValue};
use provision::templates::{self, RenderInput};

const BIN: &str = env!("CARGO_BIN_EXE_provision");
const IMAGE_REPO: &str = "provision-test-postgis";
const READY_LIMIT: Duration = Duration::from_secs(180);

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().unwrap()
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {} failed:\n{}",
        args.first().unwrap_or(&""),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The postgis template rendered with these variables, built once per
/// context hash.
fn image(db_name: &str, db_user: &str) -> String {
    let t = templates::load(&TemplateRef::Builtin("postgis".into()), Path::new(".")).unwrap();
    let user: BTreeMap<String, VarValue> = [
        ("db_name".to_string(), VarValue::String(db_name.into())),
        ("db_user".to_string(), VarValue::String(db_user.into())),
    ]
    .into();
    let vars = t
        .vars(&user)
        .unwrap_or_else(|p| panic!("{db_name:?}/{db_user:?} refused: {p:?}"));
    let mut files = t.render(&vars, &render_input()).unwrap();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let tag = format!(
        "{IMAGE_REPO}:{}",
        &provision::plan::context_hash(&files)[..12]
    );
    if docker(&["image", "inspect", &tag]).status.success() {
        return tag;
    }
    let dir = tempfile::tempdir().unwrap();
    for f in &files {
        let p = dir.path().join(&f.path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &f.data).unwrap();
    }
    let started = Instant::now();
    let out = Command::new("docker")
        .args(["build", "-q", "-t", &tag])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker build of the rendered postgis template failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("built {tag} in {:.1} s", started.elapsed().as_secs_f64());
    tag
}

/// What the postgis template is rendered with here: host `db`, no clients
/// and no same-host users.
fn render_input() -> RenderInput {
    RenderInput {
        service: [("name".to_string(), "postgis".to_string())].into(),
        host: [
            ("name".to_string(), "db".to_string()),
            ("address".to_string(), "127.0.0.1".to_string()),
        ]
        .into(),
        uses: BTreeMap::new(),
        clients: vec![],
        local_users: vec![],
    }
}

/// pg_hba.conf as the postgis template renders it for a host with no
/// clients and no same-host users.
fn rendered_pg_hba() -> Vec<u8> {
    let t = templates::load(&TemplateRef::Builtin("postgis".into()), Path::new(".")).unwrap();
    let vars = t.vars(&BTreeMap::new()).unwrap();
    t.render(&vars, &render_input())
        .unwrap()
        .into_iter()
        .find(|f| f.path == "pg_hba.conf")
        .expect("postgis renders pg_hba.conf")
        .data
}

fn base_image() {
    let state = tempfile::tempdir().unwrap();
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(provision::machines::Playground::new(state.path()).ensure_base_image())
        .expect("debian:bookworm (built with debootstrap when absent)");
}

/// Containers and volumes of this test, removed on drop.
struct Lab {
    tag: String,
    dir: tempfile::TempDir,
    containers: Vec<String>,
    volumes: Vec<String>,
}

impl Lab {
    fn new(what: &str) -> Lab {
        Lab {
            tag: format!("pvtest-{what}-{}", std::process::id()),
            dir: tempfile::tempdir().unwrap(),
            containers: Vec::new(),
            volumes: Vec::new(),
        }
    }

    fn volume(&mut self, n: usize) -> String {
        let v = format!("{}-data{n}", self.tag);
        docker_ok(&["volume", "create", &v]);
        self.volumes.push(v.clone());
        v
    }

    /// The password file as provision uploads it: 0600, no newline.
    fn secret_file(&self, n: usize, password: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.path().join(format!("pg{n}"));
        std::fs::write(&p, password).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        p
    }

    /// Start the image on `volume` with the password file mounted as
    /// provision mounts it; `env` is extra environment.
    fn start(
        &mut self,
        n: usize,
        image: &str,
        volume: &str,
        secret: &Path,
        env: &[&str],
    ) -> String {
        let name = format!("{}-c{n}", self.tag);
        let _ = docker(&["rm", "-f", &name]);
        let mount = format!(
            "type=bind,source={},target=/run/secrets/PG_PASSWORD,readonly",
            secret.display()
        );
        let data = format!("{volume}:/var/lib/postgresql/data");
        // pg_hba.conf is a live file: provision installs it on the host and
        // mounts its folder read-only; so does this lab.
        let live = self.dir.path().join("live");
        std::fs::create_dir_all(&live).unwrap();
        std::fs::write(live.join("pg_hba.conf"), rendered_pg_hba()).unwrap();
        let hba = format!(
            "type=bind,source={},target=/etc/provision/live,readonly",
            live.display()
        );
        let mut args = vec![
            "run", "-d", "--name", &name, "--mount", &mount, "--mount", &hba, "-v", &data,
        ];
        for e in env {
            args.push("-e");
            args.push(e);
        }
        args.push(image);
        docker_ok(&args);
        if !self.containers.contains(&name) {
            self.containers.push(name.clone());
        }
        name
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = docker(&["rm", "-f", c]);
        }
        for v in &self.volumes {
            let _ = docker(&["volume", "rm", "-f", v]);
        }
    }
}

fn running(container: &str) -> bool {
    docker(&["inspect", "-f", "{{.State.Running}}", container])
        .stdout
        .starts_with(b"true")
}

fn logs(container: &str) -> String {
    let out = docker(&["logs", container]);
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Poll the template's own readiness probe until it answers; the
/// container exiting first fails at once, with its log.
fn wait_ready(container: &str) {
    let deadline = Instant::now() + READY_LIMIT;
    loop {
        let ok = docker(&[
            "exec",
            container,
            "pg_isready",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            "5432",
        ])
        .status
        .success();
        if ok && logs(container).contains("ready, owned by") {
            return;
        }
        assert!(
            running(container),
            "{container} stopped before it was ready:\n{}",
            logs(container)
        );
        assert!(
            Instant::now() < deadline,
            "{container} not ready after {} s:\n{}",
            READY_LIMIT.as_secs(),
            logs(container)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Poll until the container has exited.
fn wait_exited(container: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while running(container) {
        assert!(
            Instant::now() < deadline,
            "{container} still runs after 120 s:\n{}",
            logs(container)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// SQL text for a string literal that carries any bytes: hex, decoded by
/// the server, so the test itself quotes nothing.
fn lit(s: &str) -> String {
    format!("convert_from(decode('{}', 'hex'), 'UTF8')", hex(s))
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// One value of psql as the superuser over the Unix socket.
fn psql_admin(container: &str, db: &str, sql: &str) -> String {
    let out = docker(&[
        "exec",
        "-u",
        "postgres",
        "-e",
        &format!("PGDATABASE={db}"),
        container,
        "psql",
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "/run/postgresql",
        "-c",
        sql,
    ]);
    assert!(
        out.status.success(),
        "psql in {container}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// psql as `user` over TCP with `password` (scram-sha-256 in pg_hba); the
/// names and the password go in libpq's environment, never quoted here.
fn psql_login(container: &str, user: &str, db: &str, password: &str, sql: &str) -> Output {
    docker(&[
        "exec",
        "-e",
        "PGHOST=127.0.0.1",
        "-e",
        &format!("PGUSER={user}"),
        "-e",
        &format!("PGDATABASE={db}"),
        "-e",
        &format!("PGPASSWORD={password}"),
        container,
        "psql",
        "-X",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-c",
        sql,
    ])
}

fn system_identifier(container: &str) -> String {
    psql_admin(
        container,
        "postgres",
        "SELECT system_identifier FROM pg_control_system()",
    )
}

/// (db_name, db_user): each pair is one rendered image and one cluster.
const HOSTILE: &[(&str, &str)] = &[
    ("'; rm -rf /;'", "$(touch /tmp/pwned-dollar)"),
    (
        "`touch /tmp/pwned-backtick`",
        "\"double\" 'single' \\back\\\\slash",
    ),
    (
        "line one\nline two $HOME ${PATH}",
        "ünïcødé ☃ 名前 \u{200b}",
    ),
    (
        "host=127.0.0.1 dbname=postgres",
        "--set=x;DROP ROLE postgres",
    ),
    ("postgresql://evil.invalid/x", "a%20b {a,b} ~root !x #c"),
];

const PASSWORD: &str = "pw with 'quotes' \"dq\" $(id) `id` \\ ☃";
const NEW_PASSWORD: &str = "rotated 'pw' $(x) \\\\ ✓";

#[test]
fn hostile_names_reach_postgres_exactly_and_the_password_only_as_a_file() {
    if !support::lab::engine(false) {
        return;
    }
    base_image();
    let mut lab = Lab::new("pghostile");
    for (n, (db, user)) in HOSTILE.iter().enumerate() {
        let tag = image(db, user);
        let volume = lab.volume(n);
        let secret = lab.secret_file(n, PASSWORD);
        let c = lab.start(n, &tag, &volume, &secret, &[]);
        wait_ready(&c);

        // The database and the role hold exactly the names given.
        let owned = psql_admin(
            &c,
            "postgres",
            &format!(
                "SELECT count(*) FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba \
                 WHERE d.datname = {} AND r.rolname = {} AND r.rolcanlogin",
                lit(db),
                lit(user)
            ),
        );
        assert_eq!(owned, "1", "database {db:?} owned by {user:?}");
        // The role logs in over TCP with the file's password, in that
        // database, which has PostGIS.
        let out = psql_login(
            &c,
            user,
            db,
            PASSWORD,
            "SELECT encode(convert_to(current_user || '|' || current_database(), 'UTF8'), 'hex'), \
             postgis_lib_version() IS NOT NULL",
        );
        assert!(
            out.status.success(),
            "login as {user:?} to {db:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("{}|t", hex(&format!("{user}|{db}")))
        );
        // Nothing the values spell ran: no file made, the superuser is there.
        let tmp = docker_ok(&["exec", &c, "ls", "-A", "/tmp"]);
        assert!(
            !tmp.contains("pwned"),
            "a value was run as a command: /tmp has {tmp}"
        );
        assert_eq!(
            psql_admin(
                &c,
                "postgres",
                "SELECT count(*) FROM pg_roles WHERE rolname = 'postgres'"
            ),
            "1"
        );
        // The password is nowhere but in the mounted file, which the server's
        // user cannot read.
        let inspect = docker_ok(&["inspect", &c]);
        assert!(
            !inspect.contains("pw with"),
            "docker inspect shows the password"
        );
        // Read as its own user: root in `docker exec` has no CAP_SYS_PTRACE.
        let environ = docker_ok(&["exec", "-u", "postgres", &c, "cat", "/proc/1/environ"]);
        assert!(
            !environ.contains("pw with"),
            "the server's environment holds it"
        );
        assert!(!logs(&c).contains("pw with"), "the log shows the password");
        assert!(
            !docker(&[
                "exec",
                "-u",
                "postgres",
                &c,
                "cat",
                "/run/secrets/PG_PASSWORD"
            ])
            .status
            .success(),
            "user postgres can read the password file"
        );
    }

    // Rotation: rows in the first cluster, then a new password file and a
    // new container on the same volume.
    let (db, user) = HOSTILE[0];
    let c = format!("{}-c0", lab.tag);
    let rows = "CREATE TABLE kept (n int); INSERT INTO kept SELECT generate_series(1, 500)";
    let out = psql_login(&c, user, db, PASSWORD, rows);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let identifier = system_identifier(&c);
    docker_ok(&["stop", &c]);
    let secret = lab.secret_file(0, NEW_PASSWORD);
    let volume = lab.volumes[0].clone();
    let c = lab.start(0, &image(db, user), &volume, &secret, &[]);
    wait_ready(&c);
    let count = psql_login(&c, user, db, NEW_PASSWORD, "SELECT count(*) FROM kept");
    assert!(
        count.status.success(),
        "the new password does not log in: {}",
        String::from_utf8_lossy(&count.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&count.stdout).trim(), "500");
    let old = psql_login(&c, user, db, PASSWORD, "SELECT 1");
    assert!(!old.status.success(), "the old password still logs in");
    assert_eq!(
        system_identifier(&c),
        identifier,
        "the cluster was re-created"
    );
    assert!(
        !logs(&c).contains("creating the cluster"),
        "a second initdb ran"
    );
    assert!(
        !logs(&c).contains("rotated 'pw'"),
        "the log shows the new password"
    );
}

#[test]
fn a_data_directory_with_files_but_no_cluster_keeps_every_file() {
    if !support::lab::engine(false) {
        return;
    }
    base_image();
    let mut lab = Lab::new("pgforeign");
    let tag = image("app", "app");
    let secret = lab.secret_file(0, PASSWORD);
    // Someone's files, no PG_VERSION (a half-copied cluster, another
    // program's data), and one with an empty PG_VERSION.
    for (n, setup) in [
        "echo precious > /d/notes.txt && mkdir -p /d/base/1 && echo x > /d/base/1/rel",
        "echo precious > /d/notes.txt && : > /d/PG_VERSION",
    ]
    .iter()
    .enumerate()
    {
        let volume = lab.volume(n);
        docker_ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{volume}:/d"),
            "debian:bookworm",
            "sh",
            "-c",
            setup,
        ]);
        let before = docker_ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{volume}:/d"),
            "debian:bookworm",
            "sh",
            "-c",
            "cd /d && find . | sort && cat notes.txt",
        ]);
        // The environment carries the password too, so an entrypoint that
        // still read it from there would get as far as initdb.
        let c = lab.start(n, &tag, &volume, &secret, &["PG_PASSWORD=from-env-1234"]);
        wait_exited(&c);
        let after = docker_ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{volume}:/d"),
            "debian:bookworm",
            "sh",
            "-c",
            "cd /d && find . | sort && cat notes.txt",
        ]);
        assert_eq!(after, before, "the data directory changed:\n{}", logs(&c));
        assert!(
            logs(&c).contains("holds files but no PostgreSQL cluster"),
            "no clear message:\n{}",
            logs(&c)
        );
    }
}

/// Names PostgreSQL cannot hold as given are input errors: exit 2, the
/// hosts.toml line and key, nothing run.
#[test]
fn names_postgres_cannot_hold_are_refused_at_input() {
    let long = "x".repeat(64);
    for (var, value, why) in [
        ("db_name", long.as_str(), "1 to 63 bytes"),
        ("db_name", "", "1 to 63 bytes"),
        ("db_user", "pg_admin", "must not start with `pg_`"),
        (
            "base_image",
            "debian:bookworm\nRUN id",
            "Docker image reference",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let value = toml::Value::String(value.to_string()).to_string();
        let text = format!(
            "[project]\nname = \"pvinput\"\n\n[hosts.db]\naddress = \"127.0.0.1\"\n\n\
             [services.postgis]\nhost = \"db\"\ntemplate = \"postgis\"\nsecrets = [\"PG_PASSWORD\"]\n\
             vars = {{ {var} = {value} }}\n"
        );
        std::fs::write(dir.path().join("hosts.toml"), &text).unwrap();
        let out = Command::new(BIN)
            .current_dir(dir.path())
            .args(["--hosts", "hosts.toml", "--dry-run"])
            .env("PG_PASSWORD", "input-test-pw")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var} = {value}: {err}");
        let line = text.lines().position(|l| l.starts_with("vars = ")).unwrap() + 1;
        assert!(
            err.contains(&format!("hosts.toml:{line}:"))
                && err.contains(&format!("services.postgis.vars.{var}")),
            "{var}: no line and key in:\n{err}"
        );
        assert!(err.contains(why), "{var}: {err}");
    }
}

/// A secret the template reads from a file but the service does not get
/// would start PostGIS without a password: an input error naming the
/// service, nothing run.
#[test]
fn a_secret_file_the_service_does_not_get_is_refused_at_input() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[project]\nname = \"pvinput\"\n\n[hosts.db]\naddress = \"127.0.0.1\"\n\n\
                [services.postgis]\nhost = \"db\"\ntemplate = \"postgis\"\n";
    std::fs::write(dir.path().join("hosts.toml"), text).unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--hosts", "hosts.toml", "--dry-run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("hosts.toml:7:")
            && err.contains("services.postgis")
            && err.contains("reads the secret `PG_PASSWORD`")
            && err.contains("secrets = [\"PG_PASSWORD\"]"),
        "{err}"
    );
}
