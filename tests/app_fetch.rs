//! The app tarball (`[app] source` a URL) fetched on the host with curl and
//! a config file that carries the token: the plan's real upload and fetch
//! lines run through the LocalTransport (`sh -c` on this machine, as on a
//! host) against servers on 127.0.0.1. The config is gone after a fetch
//! that works, one that fails (refused, 404) and one stopped by TERM (what
//! the SSH transport sends on a timeout), and the fetch's exit code is
//! kept. A token over plain http:// is refused at input.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use provision::transport::{Exec, LocalTransport, Transport};

mod support;

use support::fetch::{
    cfg_path, fetch_actions, hosts_toml, plan_for, request_head, tarball, upload,
};
use support::local::{closed_port, mode};

const BIN: &str = env!("CARGO_BIN_EXE_provision");
const TOKEN: &str = "ghp-test-token-0123456789";

/// Serve one HTTP response on 127.0.0.1, then stop.
fn serve_once(status: &str, body: Vec<u8>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let status = status.to_string();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        if request_head(&mut conn).is_none() {
            return;
        }
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = conn.write_all(head.as_bytes());
        let _ = conn.write_all(&body);
    });
    port
}

#[tokio::test]
async fn a_failed_fetch_removes_the_curl_config_and_keeps_curls_exit_code() {
    let url = format!("https://127.0.0.1:{}/app.tar.gz", closed_port());
    let (plan, root, _dir) = plan_for("refused", &url, Some(TOKEN));
    let t = LocalTransport::new("host");
    let line = upload(&t, &fetch_actions(&plan), TOKEN).await;
    // The config is there, private, with the token, before the fetch.
    let cfg = cfg_path(&root);
    assert!(std::fs::read_to_string(&cfg).unwrap().contains(TOKEN));
    assert_eq!(mode(&cfg), 0o600);

    let out = t.exec(Exec::new(line)).await.unwrap();
    // curl's "could not connect".
    assert_eq!(out.status, Some(7), "{}", out.stderr_str());
    assert!(
        !cfg.exists(),
        "the curl config with the token was left behind"
    );
    assert!(!root.0.join("build/rails/app.tar.gz").exists());
}

#[tokio::test]
async fn a_refused_download_removes_the_config_too() {
    let port = serve_once("404 Not Found", b"no such tarball".to_vec());
    let url = format!("http://127.0.0.1:{port}/app.tar.gz");
    let (plan, root, _dir) = plan_for("missing", &url, None);
    let t = LocalTransport::new("host");
    let line = upload(&t, &fetch_actions(&plan), TOKEN).await;
    assert!(cfg_path(&root).exists());
    let out = t.exec(Exec::new(line)).await.unwrap();
    // `fail` in the config: curl's exit code for an HTTP error.
    assert_eq!(out.status, Some(22), "{}", out.stderr_str());
    assert!(!cfg_path(&root).exists());
}

#[tokio::test]
async fn a_fetch_that_works_unpacks_the_app_and_removes_the_config() {
    let port = serve_once("200 OK", tarball());
    let url = format!("http://127.0.0.1:{port}/app.tar.gz");
    let (plan, root, _dir) = plan_for("works", &url, None);
    let t = LocalTransport::new("host");
    let line = upload(&t, &fetch_actions(&plan), TOKEN).await;
    let out = t.exec(Exec::new(line)).await.unwrap();
    assert_eq!(out.status, Some(0), "{}", out.stderr_str());
    let app = root.0.join("build/rails/app");
    assert_eq!(
        std::fs::read_to_string(app.join("Gemfile")).unwrap(),
        "gem 'rails'\n"
    );
    assert!(app.join("config/app.yml").exists());
    assert!(!cfg_path(&root).exists());
    assert!(!root.0.join("build/rails/app.tar.gz").exists());
}

#[test]
fn a_fetch_stopped_by_term_removes_the_config() {
    // Accepts and never answers: curl waits for the TLS handshake.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (accepted, on_accept) = mpsc::channel();
    std::thread::spawn(move || {
        if let Ok((conn, _)) = listener.accept() {
            let _ = accepted.send(());
            // Held open until curl goes away.
            let mut conn = conn;
            let _ = conn.read(&mut [0u8; 1]);
        }
    });
    let url = format!("https://127.0.0.1:{port}/app.tar.gz");
    let (plan, root, _dir) = plan_for("stopped", &url, Some(TOKEN));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let line = runtime.block_on(upload(
        &LocalTransport::new("host"),
        &fetch_actions(&plan),
        TOKEN,
    ));
    assert!(cfg_path(&root).exists());

    // As the SSH transport runs a line: its own process group, stopped
    // with `kill -TERM -PGID`.
    use std::os::unix::process::CommandExt;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(&line)
        .process_group(0)
        .spawn()
        .unwrap();
    on_accept
        .recv_timeout(Duration::from_secs(30))
        .expect("curl connected");
    let pgid = child.id() as i32;
    // SAFETY: a signal to the process group this test started.
    assert_eq!(unsafe { libc::kill(-pgid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the fetch did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(143), "{status:?}");
    assert!(!cfg_path(&root).exists(), "the curl config outlived TERM");
}

#[test]
fn a_token_over_plain_http_is_an_input_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hosts.toml"),
        hosts_toml("plainhttp", "http://127.0.0.1:1/app.tar.gz", true),
    )
    .unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--hosts", "hosts.toml", "--dry-run"])
        .env("REPO_TOKEN", TOKEN)
        .env("SECRET_KEY_BASE", "kb-0123456789-abcdef")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty());
    assert!(
        stderr.contains("hosts.toml:5:10: app.source: a token is never sent over plain http://"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN));
    // Without a token a public http:// tarball is fine.
    std::fs::write(
        dir.path().join("hosts.toml"),
        hosts_toml("plainhttp", "http://127.0.0.1:1/app.tar.gz", false),
    )
    .unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--hosts", "hosts.toml", "--dry-run"])
        .env("SECRET_KEY_BASE", "kb-0123456789-abcdef")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
