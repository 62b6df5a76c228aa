//! The app folder sent to a host, through the binary's dry run: it honours
//! `.dockerignore` (Docker's rules: top-level patterns, `**`, `!`), never
//! carries the state folder, `.env*`, Rails keys or private keys unless
//! `[app] include` names them, and the plan (text and JSON) says what was
//! left out and why, with names and counts, never contents.

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_provision");
const ENV_SECRET: &str = "env-file-secret-4711";
const MASTER_KEY: &str = "0123456789abcdef0123456789abcdef";

fn write(root: &Path, rel: &str, text: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A Rails app that is also the project folder (hosts.toml at its top,
/// `[app] source = "."`), so the state folder lies inside the app folder.
fn app(app_section: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "hosts.toml",
        &format!(
            "[project]\nname = \"appdir\"\n\n[app]\n{app_section}\n\n\
             [hosts.web]\naddress = \"127.0.0.1\"\n\n\
             [services.rails]\nhost = \"web\"\ntemplate = \"rails\"\nsecrets = [\"SECRET_KEY_BASE\"]\n"
        ),
    );
    write(
        root,
        ".provision/secrets.env",
        "SECRET_KEY_BASE=kb-from-the-file-1234\n",
    );
    write(
        root,
        "Gemfile",
        "source 'https://rubygems.org'\ngem 'rails'\n",
    );
    write(root, "config/app.yml", "name: demo\n");
    write(root, "config/master.key", MASTER_KEY);
    write(root, "config/credentials/production.key", MASTER_KEY);
    write(root, "config/credentials.yml.enc", "encrypted\n");
    write(root, ".env", &format!("DB_PASSWORD={ENV_SECRET}\n"));
    write(root, ".env.production", &format!("API_KEY={ENV_SECRET}\n"));
    write(
        root,
        "certs/server.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
    );
    write(root, "certs/ca.crt", "-----BEGIN CERTIFICATE-----\nMIIB\n");
    write(
        root,
        "notes/deploy_key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n",
    );
    write(
        root,
        "node_modules/left-pad/index.js",
        "module.exports = 1;\n",
    );
    write(root, "node_modules/left-pad/package.json", "{}\n");
    write(root, "web/node_modules/x.js", "1\n");
    write(root, "docs/guide.md", "# guide\n");
    write(root, "docs/README.md", "# readme\n");
    write(root, "CHANGES.md", "# changes\n");
    write(root, "log/development.log", "log line\n");
    write(
        root,
        ".dockerignore",
        "# dependencies\nnode_modules\ndocs/*.md\n!docs/README.md\n*.md\n",
    );
    dir
}

fn dry_run(dir: &Path, json: bool) -> Output {
    let mut args = vec!["--hosts", "hosts.toml", "--dry-run"];
    if json {
        args.push("--json");
    }
    Command::new(BIN)
        .current_dir(dir)
        .args(&args)
        .env_remove("SECRET_KEY_BASE")
        .output()
        .unwrap()
}

fn ok_stdout(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// The paths under `app/` in the rails build context, from the JSON plan.
fn sent(plan: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for h in plan["hosts"].as_array().unwrap() {
        for s in h["steps"].as_array().unwrap() {
            for a in s["actions"].as_array().unwrap() {
                for f in a["files"].as_array().into_iter().flatten() {
                    let p = f["path"].as_str().unwrap();
                    if let Some(rel) = p.strip_prefix("app/") {
                        out.push(rel.to_string());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn dockerignore_and_private_files_stay_here_and_the_plan_says_so() {
    let dir = app("source = \".\"");
    let text = ok_stdout(&dry_run(dir.path(), false));
    for line in [
        "  .env: private: an environment file (.env*)\n",
        "  .env.production: private: an environment file (.env*)\n",
        "  .provision/ (1 file): provision's state folder (keys, secrets, backups, logs): never sent\n",
        "  config/master.key: private: the Rails master key\n",
        "  config/credentials/production.key: private: a Rails credentials key\n",
        "  certs/server.pem: private: a key or certificate file (*.pem)\n",
        "  notes/deploy_key: private: it holds a private key\n",
        "  node_modules/ (2 files): .dockerignore line 2: `node_modules`\n",
        "  docs/guide.md: .dockerignore line 3: `docs/*.md`\n",
        "  CHANGES.md: .dockerignore line 5: `*.md`\n",
        "  log/ (1 file): built-in rule `log`\n",
        "  ([app] include = [\"PATH\"] sends a private file anyway)\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert!(
        text.contains(
            "App folder .: 8 files sent; left out 12 files (names only, never contents):"
        ),
        "{text}"
    );
    // Names only: no content of a left-out file reaches the plan.
    assert!(
        !text.contains(ENV_SECRET) && !text.contains(MASTER_KEY),
        "{text}"
    );

    let json = ok_stdout(&dry_run(dir.path(), true));
    assert!(!json.contains(ENV_SECRET) && !json.contains(MASTER_KEY));
    let plan: serde_json::Value = serde_json::from_str(&json).unwrap();
    let mut files = sent(&plan);
    files.sort();
    let expected = [
        ".dockerignore",
        "Gemfile",
        "certs/ca.crt",
        "config/app.yml",
        "config/credentials.yml.enc",
        "docs/README.md",
        "hosts.toml",
        // `node_modules` is the top folder's only, as in Docker.
        "web/node_modules/x.js",
    ];
    assert_eq!(files, expected, "{json}");
    let report = &plan["app_folder"];
    assert_eq!(report["source"], ".");
    assert_eq!(report["sent"], 8);
    let env = report["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["path"] == ".env")
        .unwrap();
    assert_eq!(env["private"], true);
    assert_eq!(env["files"], 1);
}

#[test]
fn include_sends_named_private_files_and_nothing_else() {
    let dir = app("source = \".\"\ninclude = [\".env.production\", \"config/credentials/*.key\"]");
    let json = ok_stdout(&dry_run(dir.path(), true));
    let plan: serde_json::Value = serde_json::from_str(&json).unwrap();
    let files = sent(&plan);
    assert!(files.contains(&".env.production".to_string()), "{files:?}");
    assert!(files.contains(&"config/credentials/production.key".to_string()));
    for private in [".env", "config/master.key", "notes/deploy_key"] {
        assert!(!files.contains(&private.to_string()), "{private} was sent");
    }
    let left_out: Vec<&str> = plan["app_folder"]["left_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["path"].as_str().unwrap())
        .collect();
    assert!(!left_out.contains(&".env.production"), "{left_out:?}");
    assert!(left_out.contains(&".env"), "{left_out:?}");
    // The plan stays free of contents, also of the files it sends.
    assert!(!json.contains(ENV_SECRET));
}

#[test]
fn bad_includes_are_input_errors_with_their_line() {
    let dir = app(
        "source = \".\"\ninclude = [\n  \"config/nothing.key\",\n  \"/etc/passwd\",\n  \"../x\",\n  \"!x\",\n  \"Gemfile\",\n]",
    );
    let out = dry_run(dir.path(), false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    for expected in [
        "hosts.toml:8:3: app.include[1]: `/etc/passwd` must be relative to the app folder",
        "hosts.toml:9:3: app.include[2]: `../x` must stay inside the app folder (no `..`)",
        "hosts.toml:10:3: app.include[3]: an include names files to send",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }

    // Well-formed but matching no private file (a typo, or a file that is
    // sent anyway): also refused, once the folder is read.
    let dir = app("source = \".\"\ninclude = [\n  \"config/nothing.key\",\n  \"Gemfile\",\n]");
    let out = dry_run(dir.path(), false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(
            "hosts.toml:7:3: app.include[0]: `config/nothing.key` matches no private file"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("hosts.toml:8:3: app.include[1]: `Gemfile` matches no private file"),
        "{stderr}"
    );

    let dir = app("source = \"https://example.invalid/app.tar.gz\"\ninclude = [\".env\"]");
    let out = dry_run(dir.path(), false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("hosts.toml:6:11: app.include: `include` only applies when the source is a local folder"),
        "{stderr}"
    );
}

#[test]
fn a_bad_dockerignore_line_is_an_input_error_naming_the_file_and_line() {
    let dir = app("source = \".\"");
    write(dir.path(), ".dockerignore", "node_modules\nfile[0-9.txt\n");
    let out = dry_run(dir.path(), false);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(".dockerignore:2:1: bad pattern `file[0-9.txt`"),
        "{stderr}"
    );
}
