//! Malformed hosts.toml files: each gives its error with line, column and
//! key path, and all errors of a file are reported together.

use std::path::Path;

use provision::diagnostics::Diagnostic;
use provision::inventory;

const VALID: &str = r#"
[hosts.web]
address = "10.0.0.10"

[hosts.db]
address = "10.0.0.11"

[services.postgis]
host = "db"
template = "postgis"
publish = ["5432"]
volumes = ["pgdata:/var/lib/postgresql/data"]
secrets = ["PG_PASSWORD"]

[services.rails]
host = "web"
template = "rails"
uses = ["postgis"]
"#;

fn errors(src: &str) -> Vec<Diagnostic> {
    inventory::parse(Path::new("hosts.toml"), src).expect_err("must be rejected")
}

/// (file text, expected line, key path, message fragment)
fn cases() -> Vec<(String, usize, &'static str, &'static str)> {
    let with = |extra: &str| format!("{VALID}{extra}");
    vec![
        ("[hosts.web\naddress = 1".into(), 1, "", "invalid TOML"),
        ("hosts = 3\n[services.a]\nhost='x'\ntemplate='redis'\n".into(), 1, "hosts", "expected a table"),
        (with("\n[hosts.cache]\nadress = \"10.0.0.12\"\n"), 21, "hosts.cache.adress", "unknown key `adress`"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\nprot = 22\n"), 22, "hosts.cache.prot", "did you mean `port`?"),
        (with("\n[hosts.Web2]\naddress = \"10.0.0.12\"\n"), 20, "hosts.Web2", "invalid host name `Web2`"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\nport = 70000\n"), 22, "hosts.cache.port", "out of range"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\nport = \"22\"\n"), 22, "hosts.cache.port", "expected a port number"),
        (with("\n[hosts.cache]\nuser = \"x\"\n"), 20, "hosts.cache.address", "missing required key `address`"),
        (with("\n[hosts.cache]\naddress = \"\"\n"), 21, "hosts.cache.address", "must not be empty"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\nhost_key = \"strickt\"\n"), 22, "hosts.cache.host_key", "did you mean `strict`?"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\nsudo = \"yes\"\n"), 22, "hosts.cache.sudo", "expected true or false"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\ninit = \"none\"\n"), 22, "hosts.cache.init", "only applies to local playground machines"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\nmachine = \"vbox\"\n"), 22, "hosts.cache.machine", "unknown value `vbox`"),
        (with("\n[hosts.cache]\naddress = \"cache.example\"\nmachine = \"local\"\n"), 21, "hosts.cache.address", "needs an IPv4 address"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\nmachine = \"local\"\nforward = [\"80\"]\nforward2 = 1\n"), 24, "hosts.cache.forward2", "unknown key"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\nmachine = \"local\"\nforward = [\"eighty:80\"]\n"), 23, "hosts.cache.forward[0]", "invalid forward"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.10\"\n"), 21, "hosts.cache.address", "already uses 10.0.0.10:22"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\ndocker = \"snap\"\n"), 22, "hosts.cache.docker", "unknown value `snap`"),
        (with("\n[services.redis]\nhost = \"web\"\ntemplate = \"rediss\"\n"), 22, "services.redis.template", "did you mean `redis`?"),
        (with("\n[services.cache]\nhost = \"web\"\n"), 20, "services.cache.template", "missing required key `template`"),
        (with("\n[services.redis]\ntemplate = \"redis\"\n"), 20, "services.redis.host", "missing required key `host`"),
        (with("\n[services.redis]\nhost = \"wbe\"\n"), 21, "services.redis.host", "unknown host `wbe`"),
        (with("\n[services.redis]\nhost = \"web\"\nuses = [\"postgres\"]\n"), 22, "services.redis.uses[0]", "did you mean `postgis`?"),
        (with("\n[services.redis]\nhost = \"web\"\nuses = [\"redis\"]\n"), 22, "services.redis.uses[0]", "cannot depend on itself"),
        (with("\n[services.redis]\nhost = \"db\"\npublish = [\"5432\"]\n"), 22, "services.redis.publish[0]", "already published by service `postgis`"),
        (with("\n[services.redis]\nhost = \"web\"\npublish = [\"http\"]\n"), 22, "services.redis.publish[0]", "invalid port `http`"),
        (with("\n[services.redis]\nhost = \"db\"\n[services.nginx]\nhost = \"web\"\nuses = [\"redis\"]\n"), 24, "services.nginx.uses[0]", "publishes no port"),
        (with("\n[services.redis]\nhost = \"web\"\nvolumes = [\"/srv/data:/data\"]\n"), 22, "services.redis.volumes[0]", "host folders are not portable"),
        (with("\n[services.redis]\nhost = \"web\"\nvolumes = [\"data:relative\"]\n"), 22, "services.redis.volumes[0]", "must be an absolute path"),
        (with("\n[services.redis]\nhost = \"db\"\nvolumes = [\"pgdata:/data\"]\n"), 22, "services.redis.volumes[0]", "already written by service `postgis`"),
        (with("\n[services.redis]\nhost = \"web\"\nsecrets = [\"pg-password\"]\n"), 22, "services.redis.secrets[0]", "invalid secret name"),
        (with("\n[services.redis]\nhost = \"web\"\nenv = { A = \"1\" }\nsecrets = [\"A\"]\n"), 22, "services.redis.env.A", "both a plain env value and a secret"),
        (with("\n[services.redis]\nhost = \"web\"\nenv = { A = [1] }\n"), 22, "services.redis.env.A", "expected a string"),
        (with("\n[services.redis]\nhost = \"web\"\nvars = { x = { y = 1 } }\n"), 22, "services.redis.vars.x", "expected a string, integer or boolean"),
        (with("\n[services.redis]\nhost = \"web\"\nvolumes_from = [\"store\"]\n"), 22, "services.redis.volumes_from[0]", "unknown data container `store`"),
        (with("\n[data.store]\nhost = \"db\"\npaths = [\"/data\"]\n[services.redis]\nhost = \"web\"\nvolumes_from = [\"store\"]\n"), 25, "services.redis.volumes_from[0]", "is on host `db`"),
        (with("\n[data.store]\nhost = \"web\"\npaths = [\"data\"]\n"), 22, "data.store.paths[0]", "must be an absolute path"),
        (with("\n[services.redis]\nhost = \"web\"\nlogs_to = \"fluent\"\n"), 22, "services.redis.logs_to", "unknown service `fluent`"),
        (with("\n[services.a]\nhost = \"web\"\ntemplate = \"redis\"\nafter = [\"b\"]\n[services.b]\nhost = \"web\"\ntemplate = \"redis\"\nafter = [\"a\"]\n"), 23, "services.a.after[0]", "dependency cycle: a -> b -> a"),
        (with("\n[secrets.pg_password]\ngenerate = true\n"), 20, "secrets.pg_password", "invalid secret name"),
        (with("\n[secrets.PG_PASSWORD]\ngenerate = \"yes\"\n"), 21, "secrets.PG_PASSWORD.generate", "expected true or false"),
        (with("\n[app]\nsource = \"examples/rails_app\"\ntoken = \"REPO_TOKEN\"\n"), 22, "app.token", "only used with a tarball URL"),
        (with("\n[project]\nname = \"My Project\"\n"), 21, "project.name", "invalid project name"),
        (with("\n[projet]\nname = \"x\"\n"), 20, "projet", "did you mean `project`?"),
        (with("\n[services.redis]\nhost = \"web\"\ntemplate = \"./mine\"\nbase = \"nginxx\"\n"), 23, "services.redis.base", "did you mean `nginx`?"),
        (with("\n[services.redis]\nhost = \"web\"\nbase = \"nginx\"\n"), 22, "services.redis.base", "only applies when `template` is a folder"),
        ("[hosts.web]\naddress = \"10.0.0.1\"\n".into(), 1, "services", "no services defined"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\nuser = \"bob smith\"\n"), 22, "hosts.cache.user", "invalid user name"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\npassphrase_env = \"my-pass\"\n"), 22, "hosts.cache.passphrase_env", "invalid environment variable name"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\ncpus = 1\n"), 22, "hosts.cache.cpus", "only applies to local playground machines"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\nmachine = \"local\"\ncpus = \"two\"\n"), 23, "hosts.cache.cpus", "expected a number of CPUs"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\nmachine = \"local\"\ncpus = 0\n"), 23, "hosts.cache.cpus", "0 CPUs is not a share Docker can give"),
        (with("\n[hosts.cache]\naddress = \"10.0.0.12\"\nmachine = \"local\"\ncpus = 0.125\n"), 23, "hosts.cache.cpus", "at most two decimals"),
        (with("\n[hosts.a]\naddress = \"10.0.0.12\"\nmachine = \"local\"\nforward = [\"8080:80\"]\n[hosts.b]\naddress = \"10.0.0.13\"\nmachine = \"local\"\nforward = [\"8080:80\"]\n"), 27, "hosts.b.forward[0]", "already forwarded to host `a`"),
    ]
}

#[test]
fn every_malformed_file_names_line_and_key() {
    let cases = cases();
    assert!(
        cases.len() >= 50,
        "keep at least 50 cases, have {}",
        cases.len()
    );
    for (i, (src, line, key, fragment)) in cases.iter().enumerate() {
        let errs = errors(src);
        let hit = errs.iter().find(|d| d.key_path == *key);
        let Some(d) = hit else {
            panic!(
                "case {i}: no error for key `{key}`; got:\n{}",
                render(&errs)
            );
        };
        assert_eq!(d.line, *line, "case {i}: wrong line for `{key}`: {d}");
        assert!(d.column >= 1, "case {i}: column");
        let full = d.to_string();
        assert!(
            full.contains(fragment),
            "case {i}: `{fragment}` not in:\n{full}"
        );
        assert!(
            full.starts_with(&format!("hosts.toml:{}:{}: ", d.line, d.column)),
            "case {i}: {full}"
        );
    }
}

/// The same files through the command line: exit code 2, the message on
/// stderr, nothing on stdout.
#[test]
fn every_malformed_file_exits_2_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (src, line, key, _)) in cases().iter().enumerate() {
        std::fs::write(dir.path().join("hosts.toml"), src).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_provision"))
            .current_dir(dir.path())
            .args(["--hosts", "hosts.toml", "--dry-run"])
            .env_remove("PG_PASSWORD")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "case {i}: {err}");
        assert!(
            err.contains(&format!("hosts.toml:{line}:")),
            "case {i}: no line {line} in {err}"
        );
        assert!(err.contains(key), "case {i}: no key {key} in {err}");
        assert!(out.stdout.is_empty(), "case {i}: printed a plan");
    }
}

#[test]
fn all_errors_are_reported_not_only_the_first() {
    let src = format!("{VALID}\n[hosts.cache]\nadress = \"x\"\n[services.redis]\nhost = \"nope\"\nuses = [\"nada\"]\n");
    let errs = errors(&src);
    let keys: Vec<&str> = errs.iter().map(|d| d.key_path.as_str()).collect();
    for k in [
        "hosts.cache.adress",
        "hosts.cache.address",
        "services.redis.host",
        "services.redis.uses[0]",
    ] {
        assert!(keys.contains(&k), "missing {k} in {keys:?}");
    }
}

#[test]
fn the_valid_file_parses() {
    let inv = inventory::parse(Path::new("hosts.toml"), VALID).unwrap();
    assert_eq!(inv.hosts.len(), 2);
    // Unset: ~/.ssh/config or the defaults decide when connecting.
    assert_eq!(inv.hosts[0].user, None);
    assert_eq!(inv.hosts[0].port, None);
    assert_eq!(inv.hosts[0].sudo, None);
    assert_eq!(inv.services[1].uses, vec!["postgis"]);
}

fn render(errs: &[Diagnostic]) -> String {
    errs.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}
