//! The SSH transport against a real OpenSSH server on 127.0.0.1.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use provision::transport::{
    Exec, HostKeyPolicy, SshTarget, SshTransport, Stream, Transport, TransportError,
};
use sha2::{Digest, Sha256};
use support::sshd::{ensure_user, Sshd, SudoRule};

const MB50: usize = 50 * 1024 * 1024;

/// A target for `sshd` as root with its client key, a known_hosts file that
/// knows it, and an empty fake `~/.ssh` (the real one is never read).
fn target(sshd: &Sshd) -> SshTarget {
    let mut t = SshTarget::new("testhost", "127.0.0.1");
    t.port = sshd.port;
    t.user = "root".into();
    t.identity = Some(sshd.client_key.clone());
    t.known_hosts = vec![sshd.known_hosts_file()];
    t.ssh_dir = Some(sshd.subdir(&format!("home-ssh-{}", rand::random::<u32>())));
    t.connect_timeout = Duration::from_secs(10);
    t
}

async fn connect(sshd: &Sshd) -> SshTransport {
    match SshTransport::connect(target(sshd)).await {
        Ok(t) => t,
        Err(e) => panic!("connect failed: {e}\nsshd log:\n{}", sshd.log()),
    }
}

/// A connection to `sshd` as the local user `name` (created if need be,
/// with sudo as `rule` says), lines run through sudo.
async fn connect_sudo_user(sshd: &Sshd, name: &str, rule: SudoRule) -> SshTransport {
    ensure_user(name, rule);
    sshd.authorize(name, &sshd.client_key.with_extension("pub"));
    let mut tg = target(sshd);
    tg.user = name.into();
    tg.sudo = true;
    SshTransport::connect(tg).await.unwrap()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn random_bytes(n: usize) -> Vec<u8> {
    use rand::RngCore;
    let mut v = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut v);
    v
}

/// A tar with `dir/` (0750), `dir/app.env` (0600, `data`) and `run.sh`
/// (0755), all claiming uid/gid 4242.
fn tar_with(data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, mode: u32, kind: tar::EntryType, body: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(4242);
        h.set_gid(4242);
        h.set_size(body.len() as u64);
        h.set_mtime(1_700_000_000);
        b.append_data(&mut h, path, body).unwrap();
    };
    add("dir/", 0o750, tar::EntryType::Directory, b"");
    add("dir/app.env", 0o600, tar::EntryType::Regular, data);
    add(
        "run.sh",
        0o755,
        tar::EntryType::Regular,
        b"#!/bin/sh\necho hi\n",
    );
    b.into_inner().unwrap()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn remote_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "provision-upload-{tag}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_status_stderr_signal_and_streams_lines() {
    let sshd = Sshd::start();
    let t = connect(&sshd).await;
    assert_eq!(t.name(), "testhost");

    let lines = Arc::new(Mutex::new(Vec::new()));
    let l2 = lines.clone();
    let out = t
        .exec(
            Exec::new("echo out1; echo err1 >&2; printf 'out2'; exit 7")
                .on_line(move |s, l| l2.lock().unwrap().push((s, l.to_string()))),
        )
        .await
        .unwrap();
    assert_eq!(out.status, Some(7));
    assert!(!out.success());
    assert_eq!(out.stdout, b"out1\nout2");
    assert_eq!(out.stderr, b"err1\n");
    let lines = lines.lock().unwrap().clone();
    for want in [
        (Stream::Stdout, "out1"),
        (Stream::Stderr, "err1"),
        (Stream::Stdout, "out2"),
    ] {
        assert!(
            lines.contains(&(want.0, want.1.to_string())),
            "{want:?} not in {lines:?}"
        );
    }

    let out = t.exec(Exec::new("true")).await.unwrap();
    assert!(out.success());

    // stdin bytes reach the command; capture can be turned off.
    let out = t
        .exec(Exec::new("wc -c").stdin_bytes(vec![b'x'; 100_000]))
        .await
        .unwrap();
    assert_eq!(out.stdout_str().trim(), "100000");
    let out = t
        .exec(Exec::new("echo quiet").capture(false))
        .await
        .unwrap();
    assert!(out.success() && out.stdout.is_empty());
    // A command that ignores a large stdin still finishes.
    let out = t
        .exec(Exec::new("true").stdin_bytes(vec![0u8; 8 << 20]))
        .await
        .unwrap();
    assert!(out.success());

    let out = t.exec(Exec::new("kill -KILL $$")).await.unwrap();
    assert_eq!(out.status, None);
    assert_eq!(out.signal.as_deref(), Some("KILL"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_of_output_arrive_intact() {
    let sshd = Sshd::start();
    let t = connect(&sshd).await;
    let src = remote_dir("out");
    std::fs::create_dir_all(&src).unwrap();
    let file = src.join("blob");
    std::fs::write(&file, random_bytes(MB50)).unwrap();
    let want = sha256_hex(&std::fs::read(&file).unwrap());

    let line = format!("cat {}", shell_words::quote(&file.display().to_string()));
    let out = t.exec(Exec::new(line.clone())).await.unwrap();
    assert!(out.success());
    assert_eq!(out.stdout.len(), MB50);
    assert_eq!(sha256_hex(&out.stdout), want);

    // The same through a stdout sink (how tars are streamed out of a host).
    let copy = src.join("copy");
    let sink = tokio::fs::File::create(&copy).await.unwrap();
    let out = t
        .exec(Exec::new(line).stdout_to(Box::new(sink)))
        .await
        .unwrap();
    assert!(out.success() && out.stdout.is_empty());
    assert_eq!(sha256_hex(&std::fs::read(&copy).unwrap()), want);
    std::fs::remove_dir_all(&src).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_upload_keeps_content_and_modes() {
    let sshd = Sshd::start();
    let t = connect(&sshd).await;
    let data = random_bytes(MB50);
    let archive = tar_with(&data);
    let dest = remote_dir("up");
    t.upload_tar(
        &dest.display().to_string(),
        Box::new(std::io::Cursor::new(archive)),
    )
    .await
    .unwrap();
    let out = t
        .exec(Exec::new(format!(
            "sha256sum {}",
            shell_words::quote(&dest.join("dir/app.env").display().to_string())
        )))
        .await
        .unwrap();
    assert_eq!(
        out.stdout_str().split_whitespace().next(),
        Some(sha256_hex(&data).as_str())
    );
    assert_eq!(mode(&dest.join("dir/app.env")), 0o600);
    assert_eq!(mode(&dest.join("dir")), 0o750);
    assert_eq!(mode(&dest.join("run.sh")), 0o755);
    std::fs::remove_dir_all(&dest).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_commands_in_flight_on_one_connection() {
    let sshd = Sshd::start();
    let t = connect(&sshd).await;
    let dir = remote_dir("flight");
    std::fs::create_dir_all(dir.join("seen")).unwrap();
    std::fs::create_dir_all(dir.join("run")).unwrap();
    let d = shell_words::quote(&dir.display().to_string()).into_owned();
    // A rendezvous, no timing: each command waits until 8 have started, so
    // the first 8 finish only if 8 run at once. Each reports how many were
    // running when it started (the semaphore allows at most 8).
    let runs = (0..30).map(|i| {
        let t = t.clone();
        let line = format!(
            "touch {d}/seen/{i} {d}/run/{i}; n=$(ls {d}/run | wc -l); \
             while [ $(ls {d}/seen | wc -l) -lt 8 ]; do sleep 0.02; done; \
             rm {d}/run/{i}; echo {i} $n"
        );
        async move {
            t.exec(Exec::new(line).timeout(Duration::from_secs(60)))
                .await
        }
    });
    let results = futures::future::join_all(runs).await;
    for (i, r) in results.into_iter().enumerate() {
        let out = r.unwrap_or_else(|e| panic!("command {i}: {e}\n{}", sshd.log()));
        let words: Vec<usize> = out
            .stdout_str()
            .split_whitespace()
            .map(|w| w.parse().unwrap())
            .collect();
        assert_eq!(words[0], i);
        assert!((1..=8).contains(&words[1]), "{words:?}");
    }
    // All on one connection.
    let log = sshd.log();
    assert_eq!(log.matches("Accepted publickey").count(), 1, "{log}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_refused_and_the_keys_tried_are_listed() {
    let sshd = Sshd::start();
    let wrong = sshd.new_key("wrong_ed25519", "ed25519", "");
    let mut tg = target(&sshd);
    tg.identity = Some(wrong.clone());
    let err = SshTransport::connect(tg).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, TransportError::AuthFailed { .. }), "{err:?}");
    assert!(msg.contains(&wrong.display().to_string()), "{msg}");
    assert!(
        msg.contains("testhost") && msg.contains("\"root\""),
        "{msg}"
    );
    assert!(msg.contains("publickey"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_key_under_each_policy() {
    let sshd = Sshd::start();
    let kh = sshd.dir.path().join("project_known_hosts");

    // Strict: refused, with a command that accepts the key.
    let mut tg = target(&sshd);
    tg.known_hosts = vec![kh.clone()];
    let err = SshTransport::connect(tg.clone()).await.unwrap_err();
    let TransportError::UnknownHostKey {
        ref accept_command,
        ref fingerprint,
        ..
    } = err
    else {
        panic!("{err:?}")
    };
    assert!(fingerprint.starts_with("SHA256:"), "{fingerprint}");
    assert!(
        accept_command.contains(&format!("-p {}", sshd.port)),
        "{accept_command}"
    );
    assert!(err.to_string().contains(accept_command.as_str()));
    // The command really accepts it.
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(accept_command)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let t = SshTransport::connect(tg.clone()).await.unwrap();
    assert!(t.exec(Exec::new("true")).await.unwrap().success());
    std::fs::remove_file(&kh).unwrap();

    // AcceptNew: learns the key into the project file...
    tg.host_key_policy = HostKeyPolicy::AcceptNew;
    let t = SshTransport::connect(tg.clone()).await.unwrap();
    assert!(t.exec(Exec::new("true")).await.unwrap().success());
    let text = std::fs::read_to_string(&kh).unwrap();
    assert!(text.contains(&sshd.known_hosts_line()), "{text}");
    // ...and the next strict connect succeeds.
    tg.host_key_policy = HostKeyPolicy::Strict;
    SshTransport::connect(tg.clone()).await.unwrap();

    // Off: connects with no known_hosts at all.
    let mut off = target(&sshd);
    off.known_hosts = vec![sshd.dir.path().join("never_written")];
    off.host_key_policy = HostKeyPolicy::Off;
    let t = SshTransport::connect(off).await.unwrap();
    assert!(t.exec(Exec::new("true")).await.unwrap().success());
    assert!(!sshd.dir.path().join("never_written").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_host_key_is_refused_naming_file_and_line() {
    let sshd = Sshd::start();
    let other = sshd.new_key("impostor", "ed25519", "");
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let other_pub: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    let kh = sshd.dir.path().join("changed_known_hosts");
    std::fs::write(
        &kh,
        format!(
            "# project hosts\nexample.org {}\n[127.0.0.1]:{} {}\n",
            other_pub.join(" "),
            sshd.port,
            other_pub.join(" ")
        ),
    )
    .unwrap();
    let mut tg = target(&sshd);
    tg.known_hosts = vec![kh.clone()];
    tg.host_key_policy = HostKeyPolicy::AcceptNew; // never overrides a change
    let err = SshTransport::connect(tg).await.unwrap_err();
    let TransportError::HostKeyChanged { ref file, line, .. } = err else {
        panic!("{err:?}")
    };
    assert_eq!((file.as_path(), line), (kh.as_path(), 3));
    let msg = err.to_string();
    assert!(msg.contains(&format!("{}:3", kh.display())), "{msg}");
    assert!(
        msg.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_known_hosts_entries_match() {
    let sshd = Sshd::start();
    let tg = target(&sshd);
    let kh = tg.known_hosts[0].clone();
    let st = std::process::Command::new("ssh-keygen")
        .arg("-q")
        .arg("-H")
        .arg("-f")
        .arg(&kh)
        .output()
        .unwrap();
    assert!(st.status.success());
    let text = std::fs::read_to_string(&kh).unwrap();
    assert!(text.starts_with("|1|"), "{text}");
    let t = SshTransport::connect(tg).await.unwrap();
    assert!(t.exec(Exec::new("true")).await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sshd_session_fails_clearly_and_the_next_exec_reconnects() {
    let sshd = Sshd::start();
    let t = connect(&sshd).await;
    // Runs `line` in a task; the receiver fires at its first "ready" line.
    let spawn = |line: &str, idempotent: bool| {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let tx = Mutex::new(Some(tx));
        let req = Exec::new(line).idempotent(idempotent).on_line(move |_, l| {
            if l == "ready" {
                if let Some(tx) = tx.lock().unwrap().take() {
                    let _ = tx.send(());
                }
            }
        });
        let t = t.clone();
        (tokio::spawn(async move { t.exec(req).await }), rx)
    };
    let (plain, plain_ready) = spawn("echo ready; sleep 60", false);
    let (retried, retried_ready) = spawn("echo ready; sleep 1; echo done", true);
    for rx in [plain_ready, retried_ready] {
        tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .expect("the command started")
            .unwrap();
    }
    assert!(sshd.kill_sessions() > 0);

    let res = tokio::time::timeout(Duration::from_secs(10), plain)
        .await
        .expect("no hang: the exec ends soon after the connection dies")
        .unwrap();
    let err = res.unwrap_err();
    assert!(err.is_connection_lost(), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("testhost") && msg.contains("`echo`"), "{msg}");
    assert!(!msg.contains("sleep 60"), "{msg}");

    // The idempotent one was run again on a new connection.
    let out = tokio::time::timeout(Duration::from_secs(10), retried)
        .await
        .expect("no hang")
        .unwrap()
        .unwrap();
    assert_eq!(out.stdout_str(), "ready\ndone\n");

    // And later execs use the new connection.
    let out = tokio::time::timeout(Duration::from_secs(10), t.exec(Exec::new("echo back")))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(out.stdout_str(), "back\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fires_and_closes_the_channel() {
    let sshd = Sshd::start();
    let t = connect(&sshd).await;
    // More timeouts than MaxSessions (10): leaked channels would make sshd
    // refuse the later ones.
    for i in 0..12 {
        let started = Instant::now();
        let err = t
            .exec(Exec::new("sleep 987 # TOKEN=secret").timeout(Duration::from_millis(300)))
            .await
            .unwrap_err();
        if i == 0 {
            // Later ones may first wait for a slot still held by a stopping one.
            assert!(started.elapsed() < Duration::from_secs(3));
        }
        let TransportError::Timeout { ref command, .. } = err else {
            panic!("{err:?}\n{}", sshd.log())
        };
        assert_eq!(command, "sleep");
        assert!(!err.to_string().contains("secret"));
    }
    let out = t.exec(Exec::new("echo alive")).await.unwrap();
    assert_eq!(out.stdout_str(), "alive\n");
    // The remote commands were stopped and their sessions ended.
    wait_gone(&sshd, "sleep 987").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_root_user_with_passwordless_sudo_uploads_root_owned_files() {
    let sshd = Sshd::start();
    let t = connect_sudo_user(&sshd, "provtest_nopw", SudoRule::NoPassword).await;
    let out = t.exec(Exec::new("id -un")).await.unwrap();
    assert_eq!(out.stdout_str().trim(), "root", "{out:?}");

    let dest = remote_dir("sudo");
    t.upload_tar(
        &dest.display().to_string(),
        Box::new(std::io::Cursor::new(tar_with(b"SECRET=1\n"))),
    )
    .await
    .unwrap();
    let env = dest.join("dir/app.env");
    let meta = std::fs::metadata(&env).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(mode(&env), 0o600);
    assert_eq!(mode(&dest.join("dir")), 0o750);
    assert_eq!(std::fs::read(&env).unwrap(), b"SECRET=1\n");
    std::fs::remove_dir_all(&dest).unwrap();

    // A timed-out command running as root through sudo is stopped too.
    let err = t
        .exec(Exec::new("sleep 988").timeout(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err:?}");
    wait_gone(&sshd, "sleep 988").await;
}

/// A sudo user may not open root's Docker socket over the connection: the
/// API goes through `sudo docker system dial-stdio`, and several requests
/// share that one stream (one process on the host, not one per request).
/// A sudo user in the docker group opens the socket as root does.
/// Where sudo asks for a password the stream gives no answer, so the probe
/// falls back to commands, which name the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sudo_users_docker_api_goes_through_one_relay() {
    if !support::lab::engine(false) {
        return;
    }
    let sshd = Sshd::start();
    let t = connect_sudo_user(&sshd, "provtest_nopw", SudoRule::NoPassword).await;
    let socket = provision::docker_api::SOCKET;
    let opened = t.unix_stream(socket).await.unwrap().expect("a stream");
    assert!(opened.relayed);
    // The relay is socat where the host has it (CI installs it; the
    // playground's machines have none and take the docker CLI's).
    let socat = std::path::Path::new("/usr/bin/socat").exists();
    assert!(
        socat || std::env::var("CI").as_deref() != Ok("true"),
        "CI has no /usr/bin/socat: .ci/run installs it"
    );
    let relay = if socat {
        "socat - UNIX-CONNECT:"
    } else {
        "docker -H unix://"
    };
    support::wait::eventually(
        &format!("a process `{relay}...` under sshd"),
        Duration::from_secs(60),
        || {
            sshd.descendants()
                .iter()
                .any(|(_, c)| c.starts_with(relay))
                .then_some(())
        },
    )
    .await;
    drop(opened);
    let version = provision::docker_api::get_at(&t, socket, "/version")
        .await
        .unwrap()
        .expect("an answer");
    assert!(version["Version"].is_string(), "{version}");
    // The whole probe (its calls in turn on one relay) answers.
    let text =
        provision::docker_api::probe(&t, "provtest-relay", &["debian:none".into()], false, None)
            .await
            .unwrap()
            .expect("the probe through the API");
    assert!(text.starts_with("@docker "), "{text}");
    // The relay ends with its stream.
    wait_gone(&sshd, "dial-stdio").await;

    // A sudo user in the socket's group (docker) opens it directly, as root
    // does: no process starts on the host.
    ensure_user("provtest_dockergrp", SudoRule::NoPassword);
    let added = std::process::Command::new("gpasswd")
        .args(["-a", "provtest_dockergrp", "docker"])
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");
    let t = connect_sudo_user(&sshd, "provtest_dockergrp", SudoRule::NoPassword).await;
    let opened = t.unix_stream(socket).await.unwrap().expect("a stream");
    assert!(!opened.relayed);
    drop(opened);
    assert!(provision::docker_api::get_at(&t, socket, "/version")
        .await
        .unwrap()
        .is_some());

    let t = connect_sudo_user(&sshd, "provtest_pw", SudoRule::Password).await;
    let err = provision::docker_api::get_at(&t, socket, "/version")
        .await
        .unwrap_err();
    assert!(err.contains("docker API"), "{err}");
    wait_gone(&sshd, "dial-stdio").await;
}

/// Polls (with a deadline) until no process under `sshd` has `pattern` in
/// its command line.
async fn wait_gone(sshd: &Sshd, pattern: &str) {
    // Generous: on a loaded 2-core machine root's .bashrc alone takes seconds.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<_> = sshd
            .descendants()
            .into_iter()
            .filter(|(_, c)| c.contains(pattern))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still running: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await; // poll interval
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sudo_that_wants_a_password_is_a_clear_error() {
    let sshd = Sshd::start();
    let t = connect_sudo_user(&sshd, "provtest_pw", SudoRule::Password).await;
    let err = t.exec(Exec::new("apt-get update")).await.unwrap_err();
    assert!(
        matches!(err, TransportError::SudoNeedsPassword { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("provtest_pw") && msg.contains("testhost"),
        "{msg}"
    );
    // The message names the command's first word only.
    assert!(
        msg.contains("`apt-get`") && !msg.contains("update"),
        "{msg}"
    );
    // Detected also when the output is not captured.
    let err = t.exec(Exec::new("true").capture(false)).await.unwrap_err();
    assert!(
        matches!(err, TransportError::SudoNeedsPassword { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_and_ecdsa_keys_authenticate() {
    let sshd = Sshd::start();
    for kind in ["rsa", "ecdsa"] {
        let key = sshd.new_key(&format!("id_{kind}"), kind, "");
        sshd.authorize("root", &key.with_extension("pub"));
        let mut tg = target(&sshd);
        tg.identity = Some(key);
        let t = SshTransport::connect(tg)
            .await
            .unwrap_or_else(|e| panic!("{kind}: {e}\n{}", sshd.log()));
        assert!(t.exec(Exec::new("true")).await.unwrap().success());
    }
    // RSA signed with SHA-2, as OpenSSH 9 requires.
    assert!(sshd.log().contains("RSA SHA256:"), "{}", sshd.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passphrase_protected_key_via_env_var() {
    let sshd = Sshd::start();
    let key = sshd.new_key("id_locked", "ed25519", "correct horse");
    sshd.authorize("root", &key.with_extension("pub"));
    let var = format!("PROVTEST_PASSPHRASE_{}", std::process::id());
    std::env::set_var(&var, "correct horse");
    let mut tg = target(&sshd);
    tg.identity = Some(key.clone());
    tg.passphrase_env = Some(var.clone());
    let t = SshTransport::connect(tg.clone()).await.unwrap();
    assert!(t.exec(Exec::new("true")).await.unwrap().success());

    // A wrong or missing passphrase is named in the error (no TTY in tests).
    let wrong = format!("{var}_WRONG");
    std::env::set_var(&wrong, "nope");
    tg.passphrase_env = Some(wrong);
    let msg = SshTransport::connect(tg.clone())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("wrong passphrase"), "{msg}");
    assert!(!msg.contains("nope"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_config_alias_and_proxy_jump() {
    let sshd = Sshd::start();
    let home = sshd.subdir("alias-home");
    std::fs::write(
        home.join("config"),
        format!(
            "Host web-alias\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {key}\n\n\
             Host behind\n  HostName 127.0.0.1\n  Port {port}\n  User root\n  IdentityFile {key}\n  ProxyJump root@127.0.0.1:{port}\n\n\
             Host 127.0.0.1\n  IdentityFile {key}\n",
            port = sshd.port,
            key = sshd.client_key.display()
        ),
    )
    .unwrap();
    for alias in ["web-alias", "behind"] {
        let mut tg = SshTarget::new(alias, alias);
        tg.known_hosts = vec![sshd.known_hosts_file()];
        tg.ssh_dir = Some(home.clone());
        let t = SshTransport::connect(tg)
            .await
            .unwrap_or_else(|e| panic!("{alias}: {e}\n{}", sshd.log()));
        assert_eq!(t.user(), "root");
        let out = t.exec(Exec::new("echo $SSH_CONNECTION")).await.unwrap();
        assert!(out.stdout_str().starts_with("127.0.0.1 "), "{out:?}");
    }
    // Two logins for "behind": the jump host, then the target through it.
    assert_eq!(sshd.log().matches("Accepted publickey").count(), 3);
}

/// A port on 127.0.0.1 that refuses connections and that no parallel test
/// can take: a socket bound to it but not listening (closed on drop).
struct RefusingPort {
    fd: i32,
    port: u16,
}

impl RefusingPort {
    fn new() -> Self {
        // SAFETY: plain socket/bind/getsockname calls on a fresh fd with
        // correctly sized sockaddr_in buffers.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            assert_eq!(
                libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
                0
            );
            let mut len2 = len;
            libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len2);
            RefusingPort {
                fd,
                port: u16::from_be(addr.sin_port),
            }
        }
    }
}

impl Drop for RefusingPort {
    fn drop(&mut self) {
        // SAFETY: closing the fd this value owns.
        unsafe {
            libc::close(self.fd);
        }
    }
}

#[tokio::test]
async fn connection_refused_names_host_and_address() {
    let closed = RefusingPort::new();
    let mut tg = SshTarget::new("nohost", "127.0.0.1");
    tg.port = closed.port;
    tg.user = "root".into();
    let err = SshTransport::connect(tg).await.unwrap_err();
    assert!(
        matches!(err, TransportError::ConnectRefused { .. }),
        "{err:?}"
    );
    assert!(err.to_string().starts_with(&format!(
        "nohost: cannot connect to 127.0.0.1:{}",
        closed.port
    )));
}

#[tokio::test]
async fn a_server_that_never_speaks_ssh_times_out_clearly() {
    // Accepts TCP (the kernel's backlog) but never sends a banner.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let mut tg = SshTarget::new("mute", "127.0.0.1");
    tg.port = port;
    tg.user = "root".into();
    tg.connect_timeout = Duration::from_millis(500);
    let started = Instant::now();
    let err = SshTransport::connect(tg).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("mute: SSH handshake with 127.0.0.1:{port} failed")),
        "{msg}"
    );
    assert!(msg.contains("no answer within 0.5s"), "{msg}");
}

// ---- issue 10, items 14-17: ~/.ssh/config, known_hosts, locks, deadlines ----

const BIN: &str = env!("CARGO_BIN_EXE_provision");

/// The first two fields (`type base64`) of a `.pub` file.
fn pub_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Item 14: `address = "alias"` with no `port` and no `user` connects with
/// the alias's Port and User (a non-root User implies sudo, as `user` in
/// hosts.toml does); a `port` in hosts.toml still wins over the alias.
#[test]
fn hosts_toml_silent_on_port_and_user_takes_them_from_the_ssh_config_alias() {
    let sshd = Sshd::start();
    let user = "provtest_alias";
    ensure_user(user, SudoRule::NoPassword);
    sshd.authorize(user, &sshd.client_key.with_extension("pub"));
    let home = sshd.subdir("alias-user-home");
    let dot_ssh = home.join(".ssh");
    std::fs::create_dir_all(&dot_ssh).unwrap();
    let refusing = RefusingPort::new();
    std::fs::write(
        dot_ssh.join("config"),
        format!(
            "Host dbalias webalias\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n  IdentityFile {key}\n",
            port = sshd.port,
            key = sshd.client_key.display()
        ),
    )
    .unwrap();
    let project = home.join("project");
    std::fs::create_dir_all(&project).unwrap();
    std::fs::write(
        project.join("hosts.toml"),
        format!(
            "[project]\nname = \"aliastest\"\nknown_hosts = \"{kh}\"\n\n\
             [hosts.db]\naddress = \"dbalias\"\n\n\
             [hosts.web]\naddress = \"webalias\"\nport = {refused}\n\n\
             [services.redis]\nhost = \"db\"\ntemplate = \"redis\"\n",
            kh = sshd.known_hosts_file().display(),
            refused = refusing.port,
        ),
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .current_dir(&project)
        .env("HOME", &home)
        .args(["--hosts", "hosts.toml", "status"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let log = sshd.log();
    assert!(
        stdout.contains("host db (dbalias): reachable\n"),
        "db must connect through the alias's Port:\n{stdout}\n{stderr}\n{log}"
    );
    assert!(
        log.contains(&format!("Accepted publickey for {user} ")),
        "the alias's User logs in:\n{log}"
    );
    // `docker ps` ran as root through sudo: no permission error on the socket.
    assert!(!stdout.contains("permission denied"), "{stdout}");
    // hosts.toml's port beats the alias's.
    assert!(
        stdout.contains(&format!(
            "host web (webalias): unreachable: web: cannot connect to 127.0.0.1:{}",
            refusing.port
        )),
        "{stdout}"
    );
}

/// Item 15: `@revoked` in ~/.ssh/known_hosts refuses the key although the
/// project's known_hosts records it as a normal entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_in_one_known_hosts_file_is_refused_though_another_records_it() {
    let sshd = Sshd::start();
    let tg = target(&sshd);
    let user_file = tg.ssh_dir.clone().unwrap().join("known_hosts");
    std::fs::write(
        &user_file,
        format!("# revoked after a leak\n@revoked * {}\n", sshd.host_pubkey),
    )
    .unwrap();
    let err = match SshTransport::connect(tg).await {
        Ok(_) => panic!("a revoked host key was accepted"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(msg.contains("revoked"), "{msg}");
    assert!(
        msg.contains(&format!("{}:2", user_file.display())),
        "names the file and line: {msg}"
    );
}

/// Item 15: runs that learn a key at once under `accept-new` record it
/// once, as whole lines, in a file of mode 0600 (created with its folder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_new_from_parallel_runs_records_the_key_once_in_a_private_file() {
    let sshd = Sshd::start();
    let kh = sshd.subdir("learn").join("state").join("known_hosts");
    let conns = futures::future::join_all((0..6).map(|_| {
        let mut tg = target(&sshd);
        tg.known_hosts = vec![kh.clone()];
        tg.host_key_policy = HostKeyPolicy::AcceptNew;
        SshTransport::connect(tg)
    }))
    .await;
    for c in conns {
        let t = c.unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
        assert!(t.exec(Exec::new("true")).await.unwrap().success());
    }
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap(),
        format!("{}\n", sshd.known_hosts_line())
    );
    assert_eq!(mode(&kh), 0o600);
    // A later learner keeps the file private.
    let other = sshd.subdir("learn2").join("known_hosts");
    std::fs::write(&other, "other ssh-ed25519 AAAA\n").unwrap();
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut tg = target(&sshd);
    tg.known_hosts = vec![other.clone()];
    tg.host_key_policy = HostKeyPolicy::AcceptNew;
    SshTransport::connect(tg).await.unwrap();
    assert_eq!(mode(&other), 0o600);
    assert!(std::fs::read_to_string(&other)
        .unwrap()
        .ends_with(&format!("\n{}\n", sshd.known_hosts_line())));
}

/// Item 15: a host with ed25519 and ecdsa keys, of which known_hosts holds
/// only the ecdsa one, is reached under strict checking (the recorded type
/// is preferred in the key exchange, as OpenSSH does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_key_type_that_known_hosts_records_is_preferred() {
    let keys = tempfile::tempdir().unwrap();
    let ecdsa = keys.path().join("host_ecdsa");
    support::sshd::keygen(&ecdsa, "ecdsa", "");
    let sshd = Sshd::start_with(&format!("HostKey {}", ecdsa.display()));
    let kh = sshd.subdir("ecdsa-only").join("known_hosts");
    std::fs::write(
        &kh,
        format!(
            "[127.0.0.1]:{} {}\n",
            sshd.port,
            pub_line(&ecdsa.with_extension("pub"))
        ),
    )
    .unwrap();
    let mut tg = target(&sshd);
    tg.known_hosts = vec![kh];
    let t = SshTransport::connect(tg)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", sshd.log()));
    assert!(t.exec(Exec::new("true")).await.unwrap().success());
    // With nothing recorded for it the usual order holds: the ed25519 key.
    let mut tg = target(&sshd);
    tg.known_hosts = vec![];
    let err = SshTransport::connect(tg).await.unwrap_err();
    assert!(err.to_string().contains("(ssh-ed25519 "), "{err}");
}

/// Field 22 of /proc/PID/stat: the start time in clock ticks since boot.
fn start_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// A lock as another run would have left it on the host (this machine,
/// reached through the test sshd).
fn plant_lock(project: &str, info: Option<&str>) {
    let dir = Path::new("/var/lib/provision").join(project).join("lock");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    if let Some(info) = info {
        std::fs::write(dir.join("info"), format!("{info}\n")).unwrap();
    }
}

/// Item 16: a lock names its holder by machine id, boot id and start time;
/// only a holder of this machine that is provably gone is stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_holder_is_known_by_machine_boot_and_start_time() {
    use provision::host_lock::{self, RunId, TakeError};
    use std::os::unix::process::CommandExt;
    let sshd = Sshd::start();
    let t = connect(&sshd).await;
    let project = format!("locktest-{}-{}", std::process::id(), rand::random::<u32>());
    let _cleanup = RemoveOnDrop(Path::new("/var/lib/provision").join(&project));
    let me = RunId::current();
    let machine = read_trimmed("/etc/machine-id");
    let boot = read_trimmed("/proc/sys/kernel/random/boot_id");
    let ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let ns = ns.to_string_lossy();
    let ns = ns.trim_start_matches("pid:[").trim_end_matches(']');
    let info = me.lock_info();
    assert!(
        info.contains(&machine) && info.contains(&boot),
        "the lock names machine and boot: {info}"
    );
    assert!(
        info.contains(&format!("started {}", start_ticks(std::process::id()))),
        "{info}"
    );

    // A live process whose command line says provision, as a run's does.
    let mut live = std::process::Command::new("sleep")
        .arg0("provision")
        .arg("120")
        .spawn()
        .unwrap();
    let (pid, started) = (live.id(), start_ticks(live.id()));
    let owner = &me.owner;
    let other_machine = "0123456789abcdef0123456789abcdef";
    let other_boot = "00000000-1111-2222-3333-444444444444";
    let cases = [
        (
            format!("{owner} (pid 4194304999, started 5, boot {boot}, machine {other_machine}, ns {ns}, run a1): provision up"),
            false,
            "a run on another machine with this hostname (its pid is not ours to look at)",
        ),
        (
            format!("{owner} (pid {pid}, started {}, boot {boot}, machine {machine}, ns {ns}, run b2): provision up", started + 7),
            true,
            "a gone run whose pid another process uses now",
        ),
        (
            format!("{owner} (pid {pid}, started {started}, boot {other_boot}, machine {machine}, ns {ns}, run c3): provision up"),
            true,
            "a run of this machine before its last reboot",
        ),
        (
            format!("{owner} (pid {pid}, started {started}, boot {boot}, machine {machine}, ns {ns}, run d4): provision up"),
            false,
            "a live run of this machine",
        ),
    ];
    for (holder, stale, what) in &cases {
        plant_lock(
            &project,
            Some(&format!("{holder} since 2025-01-01T00:00:00Z")),
        );
        let r = host_lock::try_take(&t, &project, &me, false).await;
        if *stale {
            let said = match r {
                Ok(Some(said)) => said,
                other => panic!("{what}: stale, yet {other:?}"),
            };
            assert!(said.contains("that run is gone"), "{what}: {said}");
            host_lock::release(&t, &project, &me).await.unwrap();
        } else {
            assert!(
                matches!(r, Err(TakeError::Held { .. })),
                "{what}: not stale, yet {r:?}"
            );
        }
    }
    let _ = live.kill();
    let _ = live.wait();

    // --break-lock says what it removed: holder, since when, command.
    plant_lock(
        &project,
        Some(
            "someone@elsewhere (pid 77, run ab): provision up --only db since 2025-01-01T00:00:00Z",
        ),
    );
    let said = host_lock::try_take(&t, &project, &me, true)
        .await
        .unwrap()
        .expect("a broken lock is reported");
    assert_eq!(
        said,
        "someone@elsewhere (pid 77), running `provision up --only db` since 2025-01-01T00:00:00Z"
    );
    host_lock::release(&t, &project, &me).await.unwrap();
    plant_lock(&project, None);
    let said = host_lock::try_take(&t, &project, &me, true)
        .await
        .unwrap()
        .expect("a broken lock is reported");
    assert!(said.contains("no holder information"), "{said}");
    host_lock::release(&t, &project, &me).await.unwrap();
}

/// Removes a folder the test made on this machine, also when it fails.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Item 17: a login shell whose rc file prints `1` before the process-group
/// line: a timed-out command is still stopped by its own group, and no
/// other process of the user is signalled (today's `kill -TERM -1`).
/// The user is not root and has no sudo here, so even a wrong kill reaches
/// only that user's processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_shell_that_prints_1_first_never_turns_a_timeout_into_kill_minus_1() {
    let sshd = Sshd::start();
    let user = "provtest_chatty";
    support::sshd::ensure_user_with_shell(user, SudoRule::NoPassword, "/bin/bash");
    let home = PathBuf::from(format!("/home/{user}"));
    std::fs::write(home.join(".bashrc"), "echo 1\n").unwrap();
    sshd.authorize(user, &sshd.client_key.with_extension("pub"));
    // Another process of that user, in no group of a command of ours.
    let mut bystander = std::process::Command::new("setpriv")
        .args([
            "--reuid",
            user,
            "--regid",
            user,
            "--clear-groups",
            "sleep",
            "120",
        ])
        .spawn()
        .unwrap();
    let mut tg = target(&sshd);
    tg.user = user.into();
    tg.sudo = false;
    let t = SshTransport::connect(tg).await.unwrap();
    let err = t
        .exec(Exec::new("sleep 989").timeout(Duration::from_millis(500)))
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::Timeout { .. }), "{err:?}");
    wait_gone(&sshd, "sleep 989").await;
    let alive = bystander.try_wait().unwrap().is_none();
    let _ = bystander.kill();
    let _ = bystander.wait();
    assert!(alive, "a process outside the command's group was killed");
    // The rc's `1` does come first: it goes to stderr, and neither it nor
    // the group line reaches the command's stdout.
    let out = t.exec(Exec::new("echo still")).await.unwrap();
    assert_eq!(out.stdout_str(), "still\n");
    assert_eq!(out.stderr_str(), "1\n");
}

/// Item 17: a Docker API socket that accepts and never answers fails the
/// call within its deadline, naming the host and the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_api_socket_that_never_answers_fails_within_its_deadline() {
    let sshd = Sshd::start();
    let t = connect(&sshd).await;
    let sock = sshd.subdir("hung-docker").join("docker.sock");
    let _never_accepts = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(40),
        provision::docker_api::get_at(&t, &sock.display().to_string(), "/version"),
    )
    .await
    .expect("a hung Docker API socket hung the call");
    let err = r.unwrap_err();
    assert!(
        err.contains("testhost")
            && err.contains("GET /version")
            && err.contains("no answer within"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}
