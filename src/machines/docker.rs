//! Runs `docker` command lines built by `commands.rs` on the local engine.
//! This is the playground's only edge to the engine (besides `engine.rs`,
//! which may start it).

use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::Error;

/// What a finished docker command returned.
#[derive(Debug, Clone)]
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Run `docker ARGS`, feeding `stdin` if given. Errors only when docker
/// cannot be started at all; a failing command is `success: false`.
pub async fn output(args: &[String], stdin: Option<&[u8]>) -> Result<Output, Error> {
    let mut command = Command::new("docker");
    command
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|source| Error::Io {
        what: "cannot run the docker client".into(),
        source,
    })?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A command that exits early closes the pipe; its exit status tells why.
        let _ = pipe.write_all(input).await;
        drop(pipe);
    }
    let out = child.wait_with_output().await.map_err(|source| Error::Io {
        what: "docker client".into(),
        source,
    })?;
    Ok(Output {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Run `docker ARGS` and return its stdout; a non-zero exit is an error that
/// names the command and carries docker's message.
pub async fn run(args: &[String], stdin: Option<&[u8]>) -> Result<String, Error> {
    let out = output(args, stdin).await?;
    if out.success {
        Ok(out.stdout)
    } else {
        Err(failed(args, &out))
    }
}

/// The error for a failed docker command.
pub fn failed(args: &[String], out: &Output) -> Error {
    Error::Docker {
        command: shell_words::join(args),
        message: out.stderr.trim().to_string(),
    }
}

/// Whether a docker error message says the object does not exist.
pub fn is_missing(out: &Output) -> bool {
    let message = out.stderr.to_ascii_lowercase();
    message.contains("no such") || message.contains("not found")
}

/// Whether an image (any reference) exists on the engine.
pub async fn image_exists(reference: &str) -> Result<bool, Error> {
    let args = ["image", "inspect", "--format", "{{.Id}}", reference].map(String::from);
    Ok(output(&args, None).await?.success)
}

/// `GET /containers/NAME/json` straight from the engine's Unix socket,
/// without starting a `docker` process (~20 ms of CPU each). None when the
/// engine is not reached that way (DOCKER_HOST set elsewhere, no socket,
/// an unexpected answer): callers then use the CLI. `Some(None)`: no such
/// container.
pub async fn inspect_via_socket(name: &str) -> Option<Option<serde_json::Value>> {
    get_via_socket(&format!("/containers/{}/json", url_quote(name))).await
}

/// Whether the local engine has this image, asked on its socket; None
/// when the socket cannot tell (use `docker image inspect`).
pub async fn image_exists_via_socket(image: &str) -> Option<bool> {
    get_via_socket(&format!("/images/{}/json", url_quote(image)))
        .await
        .map(|found| found.is_some())
}

fn url_quote(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const KEEP: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(s, KEEP).to_string()
}

/// One GET on the engine's socket: `Some(Some(json))` for 200, `Some(None)`
/// for 404, None for anything else.
async fn get_via_socket(path: &str) -> Option<Option<serde_json::Value>> {
    let socket = match std::env::var("DOCKER_HOST") {
        Ok(h) => h.strip_prefix("unix://")?.to_string(),
        Err(_) => crate::docker_api::SOCKET.to_string(),
    };
    let local = crate::transport::LocalTransport::new("local");
    let talk = crate::docker_api::get_at(&local, &socket, path);
    tokio::time::timeout(std::time::Duration::from_secs(5), talk)
        .await
        .ok()?
        .ok()
}
