//! The app tarball fetch of a one-service project, as the plan has it:
//! its plan and host folder, the build step's upload and fetch actions run
//! through a LocalTransport, and a GitHub-style tarball to serve.

#![allow(dead_code)] // each test file uses its own part

use std::path::PathBuf;

use provision::plan::{Action, Plan, StepKind};
use provision::secrets::Generate;
use provision::transport::{Exec, LocalTransport, Transport};

/// The plan's folder on "the host" (this machine), removed at the end.
pub struct HostRoot(pub PathBuf);

impl Drop for HostRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A hosts.toml whose app is the tarball at `url`, with the token
/// `REPO_TOKEN` when `token`.
pub fn hosts_toml(project: &str, url: &str, token: bool) -> String {
    format!(
        "[project]\nname = \"{project}\"\n\n[app]\nsource = \"{url}\"\n{}\n\
         [hosts.web]\naddress = \"127.0.0.1\"\n\n\
         [services.rails]\nhost = \"web\"\ntemplate = \"rails\"\nsecrets = [\"SECRET_KEY_BASE\"]\n",
        if token {
            "token = \"REPO_TOKEN\"\n"
        } else {
            ""
        }
    )
}

/// The plan of a one-service project fetching `url` (with `REPO_TOKEN`
/// set to `token`, if any), and its host folder.
pub fn plan_for(name: &str, url: &str, token: Option<&str>) -> (Plan, HostRoot, tempfile::TempDir) {
    let project = format!("fetch-{name}-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hosts.toml");
    std::fs::write(&path, hosts_toml(&project, url, token.is_some())).unwrap();
    let env = |n: &str| match n {
        "REPO_TOKEN" => token.map(str::to_string),
        "SECRET_KEY_BASE" => Some("kb-0123456789-abcdef".to_string()),
        _ => None,
    };
    let loaded = provision::load::load(&path, &env, Generate::Placeholder).unwrap();
    let plan = provision::cli::build_plan(&loaded).unwrap();
    let root = HostRoot(PathBuf::from(provision::commands::remote_root(&project)));
    (plan, root, dir)
}

/// The build step's uploads and fetch (not its `docker build`).
pub fn fetch_actions(plan: &Plan) -> Vec<Action> {
    let step = plan.hosts[0]
        .steps
        .iter()
        .find(|s| s.kind() == StepKind::Build)
        .unwrap();
    step.actions
        .iter()
        .filter(|a| !matches!(a, Action::Run { .. }))
        .cloned()
        .collect()
}

pub fn cfg_path(root: &HostRoot) -> PathBuf {
    root.0.join("fetch/rails/curl.cfg")
}

/// Upload what the step uploads; return the fetch line, checked to be
/// free of `secret`.
pub async fn upload(t: &LocalTransport, actions: &[Action], secret: &str) -> String {
    let mut fetch = None;
    for a in actions {
        match a {
            Action::Upload { dir, files, .. } => {
                let tar = provision::executor::tar_of(files).unwrap();
                let out = t
                    .exec(Exec::new(provision::commands::untar_into(dir)).stdin_bytes(tar))
                    .await
                    .unwrap();
                assert!(out.success(), "{}", out.stderr_str());
            }
            Action::Fetch { line, .. } => fetch = Some(line.clone()),
            other => panic!("unexpected {other:?}"),
        }
    }
    let line = fetch.expect("a fetch action");
    assert!(
        !line.contains(secret),
        "the token is in the fetch line: {line}"
    );
    line
}

/// An HTTP request's head (up to its blank line), or `None` when the
/// client goes away first.
pub fn request_head(conn: &mut impl std::io::Read) -> Option<String> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// A GitHub-style tarball: one top folder holding the app.
pub fn tarball() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (path, data) in [
        ("app-main/Gemfile", &b"gem 'rails'\n"[..]),
        ("app-main/config/app.yml", &b"x: 1\n"[..]),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}
