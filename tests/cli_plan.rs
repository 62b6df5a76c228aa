//! The plan as a user sees it: `provision --dry-run` and `--json` on the
//! shipped hosts.toml, bad input rejected with exit code 2 before any
//! connection, and secrets that never show.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_provision");
const PG_PASSWORD: &str = "Sup3r-Secret-PG-Value";
const SECRET_KEY_BASE: &str = "kb-0123456789-secret-key-base";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A project folder holding `hosts_toml` and a link to the example app, so
/// no state of the developer's own checkout (.provision/) leaks in.
fn project(hosts_toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hosts.toml"), hosts_toml).unwrap();
    std::os::unix::fs::symlink(repo().join("examples"), dir.path().join("examples")).unwrap();
    dir
}

fn provision(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .env("PG_PASSWORD", PG_PASSWORD)
        .env("SECRET_KEY_BASE", SECRET_KEY_BASE)
        .output()
        .unwrap()
}

fn shipped() -> String {
    std::fs::read_to_string(repo().join("hosts.toml")).unwrap()
}

#[test]
fn dry_run_of_the_shipped_playground_covers_both_hosts() {
    let dir = project(&shipped());
    let out = provision(dir.path(), &["--hosts", "hosts.toml", "--dry-run"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("host web (192.168.33.10)"), "{text}");
    assert!(text.contains("host db (192.168.33.11)"), "{text}");
    for service in [
        "redis",
        "fluentd",
        "elasticsearch",
        "kibana",
        "postgis",
        "rails",
        "nginx",
    ] {
        assert!(
            text.contains(&format!("$ docker build --tag playground-{service}:")),
            "no docker build for {service}"
        );
    }
    // Rails reaches PostGIS on the other host, by its address and published port.
    assert!(
        text.contains("DATABASE_URL=postgres://app:***@192.168.33.11:5432/app"),
        "{text}"
    );
    assert!(text.contains("REDIS_URL=redis://redis:6379/0"), "{text}");
    // PostGIS takes its password as a read-only file, not as environment.
    assert!(
        text.contains("upload /var/lib/provision/playground/secrets/postgis/PG_PASSWORD (mode 0600):\n        PG_PASSWORD: ***\n"),
        "{text}"
    );
    assert!(text.contains("--mount 'type=bind,source=/var/lib/provision/playground/secrets/postgis/PG_PASSWORD,target=/run/secrets/PG_PASSWORD,readonly'"), "{text}");
    assert!(!text.contains("PG_PASSWORD=***"), "{text}");
    assert!(!text.contains(PG_PASSWORD) && !text.contains(SECRET_KEY_BASE));
    // PostGIS is ready before Rails starts.
    assert!(text.contains("after: db/postgis/ready"), "{text}");
    // The dry run created nothing: no secrets file.
    assert!(!dir.path().join(".provision").exists());
}

#[test]
fn plan_of_the_shipped_playground_is_stable() {
    let dir = project(&shipped());
    let out = provision(dir.path(), &["--hosts", "hosts.toml", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    insta::assert_snapshot!(
        "plan_shipped_playground",
        String::from_utf8(out.stdout).unwrap()
    );
}

#[test]
fn json_plan_has_the_same_steps_and_no_secret() {
    let dir = project(&shipped());
    let out = provision(
        dir.path(),
        &["--hosts", "hosts.toml", "--dry-run", "--json"],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(PG_PASSWORD) && !text.contains(SECRET_KEY_BASE));
    let plan: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hosts = plan["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2);
    let ids: Vec<&str> = hosts
        .iter()
        .flat_map(|h| h["steps"].as_array().unwrap())
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"db/postgis/ready") && ids.contains(&"web/rails/run"),
        "{ids:?}"
    );
    let rails_run = hosts[0]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "web/rails/run")
        .unwrap();
    assert!(rails_run["needs"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "db/postgis/ready"));
}

/// The step ids of each host in a JSON plan.
fn step_ids(plan: &serde_json::Value) -> Vec<(String, Vec<String>)> {
    plan["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            let ids = h["steps"].as_array().unwrap().iter();
            (
                h["host"].as_str().unwrap().to_string(),
                ids.map(|s| s["id"].as_str().unwrap().to_string()).collect(),
            )
        })
        .collect()
}

#[test]
fn dry_run_only_db_shows_what_such_a_run_does() {
    let dir = project(&shipped());
    let json = |args: &[&str]| -> serde_json::Value {
        let out = provision(dir.path(), args);
        assert_eq!(out.status.code(), Some(0));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let all = step_ids(&json(&["--hosts", "hosts.toml", "--dry-run", "--json"]));
    let only = step_ids(&json(&[
        "--hosts",
        "hosts.toml",
        "--dry-run",
        "--json",
        "--only",
        "db",
    ]));
    let of = |ids: &[(String, Vec<String>)], host: &str| {
        ids.iter().find(|(h, _)| h == host).unwrap().1.clone()
    };
    // Every step of db, in plan order.
    assert_eq!(of(&only, "db"), of(&all, "db"));
    // On web: the Rails container, whose DATABASE_URL comes from db, and
    // the readiness waits around it; no build, no other container.
    assert_eq!(
        of(&only, "web"),
        ["web/redis/ready", "web/rails/run", "web/rails/ready"],
        "{only:?}"
    );

    let out = provision(
        dir.path(),
        &["--hosts", "hosts.toml", "--dry-run", "--only", "db"],
    );
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with("Plan for project `playground` with --only db: 2 hosts, 11 of 29 steps\n"),
        "{text}"
    );
    let (web, db) = text.split_once("\nhost db (").unwrap();
    // Each step of web says why it runs under --only db.
    assert!(
        web.contains("  19. run container playground-rails (spec ")
            && web.contains("      runs under --only db: it needs db/postgis/ready\n"),
        "{web}"
    );
    assert!(
        web.contains("  14. wait until redis is ready\n      when: always\n      runs under --only db: web/rails/run runs and waits for it\n"),
        "{web}"
    );
    assert!(
        web.contains("runs under --only db: web/rails/run runs\n"),
        "{web}"
    );
    assert_eq!(web.matches("runs under --only db").count(), 3, "{web}");
    assert!(!web.contains("build image") && !web.contains("install and start Docker"));
    assert!(!db.contains("runs under --only"), "{db}");
    for step in [
        "install and start Docker",
        "firewall: port 5432",
        "build image playground-postgis",
        "install pg_hba.conf",
        "run container playground-postgis",
        "wait until postgis is ready",
    ] {
        assert!(db.contains(step), "{step}: {db}");
    }

    let out = provision(
        dir.path(),
        &["--hosts", "hosts.toml", "--dry-run", "--only", "dbx"],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--only dbx: no such host dbx in"));
}

/// Run and dry-run `services` (TOML) on a host at a listener on 127.0.0.1
/// that would accept an SSH connection if one were ever tried: both must
/// exit 2 saying nothing ran, print nothing on stdout, and never connect.
/// Returns the two error outputs.
fn refused_before_any_host(services: &str) -> Vec<String> {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let toml = format!("[hosts.web]\naddress = \"127.0.0.1\"\nport = {port}\n\n{services}");
    let dir = project(&toml);
    let errs = [
        vec!["--hosts", "hosts.toml"],
        vec!["--hosts", "hosts.toml", "--dry-run"],
    ]
    .iter()
    .map(|args| {
        let out = provision(dir.path(), args);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("nothing was run on any host"), "{err}");
        assert!(out.stdout.is_empty());
        err
    })
    .collect();
    assert!(
        listener.accept().is_err(),
        "provision connected to a host despite bad input"
    );
    errs
}

#[test]
fn bad_input_exits_2_with_location_and_opens_no_connection() {
    for err in refused_before_any_host("[services.redis]\nhost = \"web\"\nprot = 1\n") {
        assert!(
            err.contains("hosts.toml:7:1: services.redis.prot: unknown key `prot`"),
            "{err}"
        );
    }
}

#[test]
fn a_rails_service_without_its_secret_is_refused_before_any_host_is_touched() {
    // Tried as a new user would (issue 12): rails placed without
    // SECRET_KEY_BASE built for minutes, then crash-looped.
    for err in refused_before_any_host("[services.rails]\nhost = \"web\"\ntemplate = \"rails\"\n") {
        assert!(
            err.contains("hosts.toml:5:1: services.rails: template `rails` needs the secret `SECRET_KEY_BASE`"),
            "{err}"
        );
        assert!(
            err.contains("in [services.rails]:\n          secrets = [\"SECRET_KEY_BASE\"]\n"),
            "the line to add: {err}"
        );
        assert!(
            err.contains("[secrets.SECRET_KEY_BASE]\n          generate = true"),
            "the table to add: {err}"
        );
    }
}

#[test]
fn a_missing_secret_is_an_error_naming_where_it_is_needed() {
    let toml = shipped().replace("[secrets.PG_PASSWORD]\ngenerate = true\n", "");
    let dir = project(&toml);
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--hosts", "hosts.toml", "--dry-run"])
        .env_remove("PG_PASSWORD")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("services.postgis.secrets[0]: secret `PG_PASSWORD` is not set"),
        "{err}"
    );
}

#[test]
fn unknown_and_missing_template_variables_are_errors() {
    let toml = shipped().replace(
        "[services.nginx]\nhost = \"web\"\ntemplate = \"nginx\"\n",
        "[services.nginx]\nhost = \"web\"\ntemplate = \"nginx\"\nvars = { server_nme = \"x\" }\n",
    );
    let dir = project(&toml);
    let out = provision(dir.path(), &["--hosts", "hosts.toml", "--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            "services.nginx.vars.server_nme: template `nginx` has no variable `server_nme`"
        ),
        "{err}"
    );
    assert!(err.contains("did you mean `server_name`?"), "{err}");

    // A user's own template that needs a variable nobody gives.
    let dir = project(&shipped().replace(
        "[services.redis]\nhost = \"web\"\ntemplate = \"redis\"\n",
        "[services.redis]\nhost = \"web\"\ntemplate = \"./mine\"\n",
    ));
    std::fs::create_dir(dir.path().join("mine")).unwrap();
    std::fs::write(
        dir.path().join("mine/template.toml"),
        "port = 6379\n[vars.flavour]\ndoc = \"which\"\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("mine/Dockerfile"), "FROM {{ flavour }}\n").unwrap();
    let out = provision(dir.path(), &["--hosts", "hosts.toml", "--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("template `./mine` needs variable `flavour`"),
        "{err}"
    );
}

#[test]
fn a_template_using_an_undefined_variable_names_it() {
    let dir = project(&shipped().replace(
        "[services.redis]\nhost = \"web\"\ntemplate = \"redis\"\n",
        "[services.redis]\nhost = \"web\"\ntemplate = \"./mine\"\nbase = \"redis\"\n",
    ));
    std::fs::create_dir(dir.path().join("mine")).unwrap();
    std::fs::write(
        dir.path().join("mine/redis.conf"),
        "port 6379\nmaxmemory {{ max_memory }}\n",
    )
    .unwrap();
    let out = provision(dir.path(), &["--hosts", "hosts.toml", "--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("file redis.conf line 2: undefined variable `max_memory`"),
        "{err}"
    );
}

#[test]
fn a_mount_that_hides_a_data_path_is_refused_naming_both_paths() {
    // Tried as a new user would: the image keeps the cluster in
    // /var/lib/postgresql/data, so a volume one level up stays empty while
    // the data goes to an anonymous volume.
    let text = shipped().replace(
        "volumes = [\"pgdata:/var/lib/postgresql/data\"]",
        "volumes = [\"pgdata:/var/lib/postgresql\"]",
    );
    let line = text
        .lines()
        .position(|l| l.contains("pgdata:/var/lib/postgresql\""))
        .unwrap()
        + 1;
    let dir = project(&text);
    let out = provision(dir.path(), &["--hosts", "hosts.toml", "--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(out.stdout.is_empty());
    assert!(
        err.contains(&format!("hosts.toml:{line}:")),
        "line {line}: {err}"
    );
    assert!(err.contains("services.postgis.volumes[0]"), "{err}");
    assert!(
        err.contains("`/var/lib/postgresql` is a parent of `/var/lib/postgresql/data`"),
        "{err}"
    );
    assert!(err.contains("anonymous volume"), "{err}");

    // A mount inside the data path hides part of it just the same.
    let inside = shipped().replace(
        "volumes = [\"pgdata:/var/lib/postgresql/data\"]",
        "volumes = [\"pgdata:/var/lib/postgresql/data/base\"]",
    );
    let dir = project(&inside);
    let out = provision(dir.path(), &["--hosts", "hosts.toml", "--dry-run"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("is inside `/var/lib/postgresql/data`"),
        "{err}"
    );
}

#[test]
fn a_data_path_nothing_mounts_gets_a_named_volume_and_the_plan_says_so() {
    let text = shipped().replace("volumes = [\"pgdata:/var/lib/postgresql/data\"]\n", "");
    let dir = project(&text);
    let out = provision(dir.path(), &["--hosts", "hosts.toml", "--dry-run"]);
    let plan = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        plan.contains(
            "volume postgis-data (for postgis's data at /var/lib/postgresql/data, which hosts.toml does not mount)"
        ),
        "{plan}"
    );
    assert!(
        plan.contains("--volume postgis-data:/var/lib/postgresql/data"),
        "{plan}"
    );
    // Volumes the user mounts are left as they are.
    assert!(plan.contains("--volume redis-data:/data"), "{plan}");
    assert!(!plan.contains("redis-data-auto"), "{plan}");
}

#[test]
fn every_verb_help_ends_with_an_example_and_completions_cover_three_shells() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    for verb in [
        "up",
        "plan",
        "down",
        "status",
        "logs",
        "exec",
        "ssh",
        "backup",
        "restore",
        "migrate",
        "completions",
    ] {
        let help = run(&[verb, "--help"]);
        let tail = help.trim_end().rsplit("Example:").next().unwrap();
        assert!(
            help.contains("\nExample:\n") && tail.contains("provision "),
            "`provision {verb} --help` ends with an example:\n{help}"
        );
    }
    assert!(run(&["--help"]).contains("\nExample:\n"));
    for (shell, marker) in [
        ("bash", "_provision()"),
        ("zsh", "#compdef provision"),
        ("fish", "complete -c provision"),
    ] {
        let script = run(&["completions", shell]);
        assert!(script.contains(marker), "{shell}:\n{script}");
        assert!(
            script.contains("backup") && script.contains("--dry-run"),
            "{shell}"
        );
    }
}

/// The Run step's summary of rails in the dry run of the shipped file with
/// `extra` lines added under `[services.rails]`.
fn rails_replacement(extra: &str) -> String {
    let toml = shipped().replace(
        "logs_to = \"fluentd\"\n\n[services.nginx]",
        &format!("logs_to = \"fluentd\"\n{extra}\n[services.nginx]"),
    );
    let dir = project(&toml);
    let out = provision(dir.path(), &["--hosts", "hosts.toml", "--dry-run"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text.lines()
        .find(|l| l.contains("run container playground-rails "))
        .unwrap_or_else(|| panic!("no rails run step:\n{text}"))
        .to_string()
}

#[test]
fn the_plan_says_which_kind_of_replacement_each_service_gets() {
    assert!(
        rails_replacement("").contains("start-first: the new one starts beside the old one"),
        "{}",
        rails_replacement("")
    );
    let asked = rails_replacement("replace = \"stop-first\"\n");
    assert!(
        asked.contains("stop-first: hosts.toml asks for it"),
        "{asked}"
    );
    let published = rails_replacement("publish = [\"3000\"]\n");
    assert!(
        published.contains("stop-first: it publishes a port, which two containers cannot share"),
        "{published}"
    );
    let dir = project(&shipped());
    let plan = provision(dir.path(), &["--hosts", "hosts.toml", "--dry-run"]);
    let text = String::from_utf8(plan.stdout).unwrap();
    let postgis = text
        .lines()
        .find(|l| l.contains("run container playground-postgis "))
        .unwrap();
    assert!(postgis.ends_with("; stop-first)"), "{postgis}");
}

#[test]
fn an_unknown_replacement_or_ready_timeout_is_an_input_error() {
    let errs = refused_before_any_host(
        "[services.redis]\nhost = \"web\"\ntemplate = \"redis\"\nreplace = \"sideways\"\nready_timeout = 0\n",
    );
    for err in errs {
        assert!(
            err.contains("hosts.toml:8:11: services.redis.replace: unknown replacement `sideways`"),
            "{err}"
        );
        assert!(
            err.contains(
                "hosts.toml:9:17: services.redis.ready_timeout: 0 s is out of range 1-3600"
            ),
            "{err}"
        );
    }
}

#[test]
fn dev_mode_on_a_host_that_is_not_a_local_machine_asks_for_yes() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let toml = format!(
        "[app]\nsource = \"examples/rails_app\"\n\n[secrets.SECRET_KEY_BASE]\n\n\
         [hosts.web]\naddress = \"127.0.0.1\"\nport = {port}\n\n\
         [services.rails]\nhost = \"web\"\ntemplate = \"rails\"\nsecrets = [\"SECRET_KEY_BASE\"]\n"
    );
    let dir = project(&toml);
    let out = provision(dir.path(), &["--hosts", "hosts.toml", "dev"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("dev mode changes what web serves") && err.contains("add --yes"),
        "{err}"
    );
    assert!(err.contains("nothing was run on any host"), "{err}");
    assert!(listener.accept().is_err(), "dev connected without --yes");
}
