//! Makes sure a local Docker engine answers: on Debian/Ubuntu as root it
//! installs docker.io and starts dockerd; elsewhere it says what to install.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use super::Error;

/// How long a freshly started engine may take to answer `docker info`.
const ENGINE_START_DEADLINE: Duration = Duration::from_secs(60);
const DOCKERD_LOG: &str = "/var/log/dockerd.log";

/// Return once `docker info` answers, installing or starting the engine if
/// this computer allows it. Says on stderr what it does.
pub async fn ensure_engine() -> Result<(), Error> {
    if engine_answers().await {
        return Ok(());
    }
    let root = unsafe { libc::geteuid() } == 0;
    let debian_like = Path::new("/etc/debian_version").exists();
    if !on_path("dockerd") || !on_path("docker") {
        if !(root && debian_like) {
            return Err(Error::Engine(
                "no local Docker engine: install Docker Engine \
                 (Debian/Ubuntu: `apt-get install docker.io`; others: \
                 https://docs.docker.com/engine/install/), start it, and run again"
                    .into(),
            ));
        }
        eprintln!("provision: no Docker engine here; installing docker.io with apt-get");
        apt(&["update", "-qq"]).await?;
        apt(&["install", "-y", "-qq", "docker.io"]).await?;
    }
    if !root {
        return Err(Error::Engine(
            "the Docker engine is installed but not answering `docker info`: \
             start it (e.g. `sudo systemctl start docker`) or add your user to the docker group"
                .into(),
        ));
    }
    if Path::new("/run/systemd/system").exists() {
        eprintln!("provision: starting the Docker engine with systemctl");
        let status = Command::new("systemctl")
            .args(["start", "docker"])
            .status()
            .await;
        if !matches!(status, Ok(s) if s.success()) {
            return Err(Error::Engine("`systemctl start docker` failed".into()));
        }
    } else {
        eprintln!("provision: starting dockerd in the background (log: {DOCKERD_LOG})");
        start_dockerd()?;
    }
    let deadline = Instant::now() + ENGINE_START_DEADLINE;
    while Instant::now() < deadline {
        if engine_answers().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(Error::Engine(format!(
        "dockerd did not answer within {}s; see {DOCKERD_LOG}",
        ENGINE_START_DEADLINE.as_secs()
    )))
}

/// Whether `docker info` answers.
pub async fn engine_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Start dockerd detached in its own process group so it outlives provision
/// and ignores the terminal's Ctrl-C.
fn start_dockerd() -> Result<(), Error> {
    use std::os::unix::process::CommandExt;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(DOCKERD_LOG)
        .map_err(|source| Error::Io {
            what: format!("cannot open {DOCKERD_LOG}"),
            source,
        })?;
    let err = log.try_clone().map_err(|source| Error::Io {
        what: format!("cannot open {DOCKERD_LOG}"),
        source,
    })?;
    std::process::Command::new("dockerd")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|source| Error::Io {
            what: "cannot start dockerd".into(),
            source,
        })?;
    Ok(())
}

async fn apt(args: &[&str]) -> Result<(), Error> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .status()
        .await
        .map_err(|source| Error::Io {
            what: "cannot run apt-get".into(),
            source,
        })?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::Engine(format!(
            "`apt-get {}` failed",
            args.join(" ")
        )))
    }
}

/// Whether an executable named `name` is on PATH.
pub fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}
