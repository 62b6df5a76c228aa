//! Local state is private: the binary, run against a hosts.toml in a temp
//! folder whose state folder was left open (0755 folders, 0644 secrets,
//! keys, backups and logs), tightens it to 0700/0600 and says what it
//! changed; a dry run only warns; what a run creates there is private from
//! the start. A backup (also to a `-o` path of the user's choosing) is
//! 0600, written by the real backup code through the LocalTransport against
//! this machine's Docker engine.

use std::path::Path;
use std::process::{Command, Output};

mod support;

use support::local::{chmod, closed_port, mode};

const BIN: &str = env!("CARGO_BIN_EXE_provision");

fn project(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hosts.toml"),
        format!(
            "[project]\nname = \"statetest\"\n{extra}\n\
             [hosts.web]\naddress = \"127.0.0.1\"\nport = {}\nhost_key = \"off\"\n\n\
             [services.redis]\nhost = \"web\"\ntemplate = \"redis\"\nsecrets = [\"REDIS_PASSWORD\"]\n",
            closed_port()
        ),
    )
    .unwrap();
    dir
}

fn provision(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .current_dir(dir)
        .args(args)
        .env_remove("REDIS_PASSWORD")
        .output()
        .unwrap()
}

/// Every folder and file under `dir` with its mode, in path order.
fn modes(dir: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().display().to_string();
            out.push((rel, mode(&p)));
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn an_open_state_folder_is_made_private_with_a_message() {
    let dir = project("");
    let state = dir.path().join(".provision");
    std::fs::create_dir_all(state.join("backups")).unwrap();
    std::fs::create_dir_all(state.join("logs")).unwrap();
    let files = [
        ("secrets.env", "REDIS_PASSWORD=from-the-secrets-file\n"),
        ("id_ed25519", "-----BEGIN OPENSSH PRIVATE KEY-----\n"),
        ("known_hosts", "10.0.0.1 ssh-ed25519 AAAA\n"),
        ("backups/db-20250101T000000Z.tar", "data"),
        ("logs/run-1-1.log", "old log\n"),
    ];
    for (name, text) in files {
        std::fs::write(state.join(name), text).unwrap();
        chmod(&state.join(name), 0o644);
    }
    for d in ["", "backups", "logs"] {
        chmod(&state.join(d), 0o755);
    }

    // A dry run changes nothing here either; it warns.
    let out = provision(dir.path(), &["--hosts", "hosts.toml", "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("warning: the state folder is open to other users"),
        "{stderr}"
    );
    assert!(
        stderr.contains("./.provision/secrets.env: 0644 -> 0600"),
        "{stderr}"
    );
    assert_eq!(mode(&state), 0o755);
    assert_eq!(mode(&state.join("secrets.env")), 0o644);

    // A run tightens every folder and file, says so, then goes on (and
    // fails here only because no host answers).
    let out = provision(dir.path(), &["--hosts", "hosts.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the state folder was open to other users; made it private:"),
        "{stderr}"
    );
    for line in [
        "  ./.provision: 0755 -> 0700\n",
        "  ./.provision/backups: 0755 -> 0700\n",
        "  ./.provision/logs: 0755 -> 0700\n",
        "  ./.provision/secrets.env: 0644 -> 0600\n",
        "  ./.provision/id_ed25519: 0644 -> 0600\n",
        "  ./.provision/known_hosts: 0644 -> 0600\n",
        "  ./.provision/backups/db-20250101T000000Z.tar: 0644 -> 0600\n",
        "  ./.provision/logs/run-1-1.log: 0644 -> 0600\n",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in:\n{stderr}");
    }
    assert!(!stderr.contains("from-the-secrets-file"));
    let all = modes(&state);
    assert!(all.len() >= 8, "{all:?}");
    for (path, m) in &all {
        let wanted = if state.join(path).is_dir() {
            0o700
        } else {
            0o600
        };
        assert_eq!(*m, wanted, "{path}: {m:04o} (all: {all:?})");
    }
    assert_eq!(mode(&state), 0o700);
    // The run's own log is among them, 0600 from the start.
    assert!(
        all.iter()
            .any(|(p, _)| p.starts_with("logs/run-") && p != "logs/run-1-1.log"),
        "{all:?}"
    );

    // Nothing left to say the next time.
    let out = provision(dir.path(), &["--hosts", "hosts.toml", "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("made it private"), "{stderr}");
}

#[test]
fn a_new_state_folder_is_private_from_the_start() {
    let dir = project("\n[secrets.REDIS_PASSWORD]\ngenerate = true\n");
    let out = provision(dir.path(), &["--hosts", "hosts.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("made it private"), "{stderr}");
    let state = dir.path().join(".provision");
    assert_eq!(mode(&state), 0o700);
    let all = modes(&state);
    for name in ["secrets.env", ".gitignore", "logs"] {
        assert!(all.iter().any(|(p, _)| p == name), "no {name} in {all:?}");
    }
    for (path, m) in &all {
        let wanted = if state.join(path).is_dir() {
            0o700
        } else {
            0o600
        };
        assert_eq!(*m, wanted, "{path}: {m:04o}");
    }
}

/// The engine's CLI, for the volume this test backs up.
fn docker(args: &[&str]) -> Output {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

struct Volume(String);

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.0])
            .output();
    }
}

#[tokio::test]
async fn a_backup_is_private_also_at_a_path_of_the_users_choosing() {
    if Command::new("docker")
        .arg("info")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        panic!("this test needs the local Docker engine (docker info failed)");
    }
    let volume = Volume(format!(
        "provision-test-private-backup-{}",
        std::process::id()
    ));
    docker(&["volume", "create", &volume.0]);
    docker(&[
        "run",
        "--rm",
        "--volume",
        &format!("{}:/data", volume.0),
        provision::backup::DATA_IMAGE,
        "sh",
        "-c",
        "echo row > /data/table",
    ]);
    let t = provision::transport::LocalTransport::new("local");
    let dir = tempfile::tempdir().unwrap();

    // `-o` into a folder of the user's that exists (0755: not ours to change).
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    chmod(&mine, 0o755);
    let file = mine.join("pg.tar");
    // A leftover partial file of an earlier, older run, readable by all.
    std::fs::write(mine.join("pg.tar.partial"), "old").unwrap();
    chmod(&mine.join("pg.tar.partial"), 0o644);
    let origin = provision::backup::Origin::default();
    let written = provision::backup::backup_to_file(
        &t,
        std::slice::from_ref(&volume.0),
        &file,
        false,
        &origin,
    )
    .await
    .unwrap();
    assert!(written.manifest.size > 0);
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&written.manifest_path), 0o600);
    assert_eq!(mode(&mine), 0o755);

    // `-o` into folders that do not exist yet, as the state's backups/ is.
    let file = dir.path().join("new/backups/db.tar");
    provision::backup::backup_to_file(&t, std::slice::from_ref(&volume.0), &file, false, &origin)
        .await
        .unwrap();
    assert_eq!(mode(&file), 0o600);
    assert_eq!(mode(&dir.path().join("new/backups")), 0o700);
    assert_eq!(mode(&dir.path().join("new")), 0o700);
}
