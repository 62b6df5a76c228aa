//! "Host H has image I", in one place: asked of the host (unless its probe
//! already said no), else shipped from this computer's engine
//! (`docker save | docker load`, streamed), else pulled by the host. Used
//! for a run's base images, the data-container image and backups' helper.
//! (Images built from a template are plan steps, not this.)

use std::time::Duration;

use crate::commands;
use crate::transport::{Exec, Transport};

/// What is known before [`ensure`] and what it may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct Source<'a> {
    /// The host's probe already said it lacks the image: not asked again.
    pub known_missing: bool,
    /// A pull of this image failed on the host this many seconds ago, and
    /// is not tried again before `.1` seconds (the host remembers them).
    pub failed_pull: Option<(u64, u64)>,
    /// Remember a failed pull on the host, in this project's state.
    pub remember_for: Option<&'a str>,
}

/// What [`ensure`] is about to do, for the caller to say (the long ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `docker save` here into `docker load` on the host.
    Ship,
    /// `docker pull` on the host.
    Pull,
}

/// How the image came to be on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Got {
    /// It was there already.
    Present,
    Shipped,
    Pulled,
}

/// Make sure the host has `image` (see the module comment). `on_action` is
/// told before a ship or a pull starts.
pub async fn ensure(
    t: &dyn Transport,
    image: &str,
    source: &Source<'_>,
    on_action: &mut (dyn FnMut(Action) + Send),
) -> Result<Got, String> {
    if !source.known_missing && host_has(t, image).await? {
        return Ok(Got::Present);
    }
    if local_has(image).await {
        on_action(Action::Ship);
        return ship(t, image).await.map(|()| Got::Shipped);
    }
    if let Some((ago, retry_after)) = source.failed_pull {
        return Err(format!(
            "image {image} cannot be pulled on {} (tried {ago} s ago; tried again after {} min)",
            t.name(),
            retry_after / 60
        ));
    }
    on_action(Action::Pull);
    let line = commands::shell(&commands::argv(["docker", "pull", image]));
    match t
        .exec(Exec::new(line).timeout(Duration::from_secs(600)))
        .await
    {
        Ok(out) if out.success() => Ok(Got::Pulled),
        Ok(out) => {
            if let Some(project) = source.remember_for {
                let remember = commands::remember_unpullable(project, image);
                let _ = t
                    .exec(Exec::new(remember).timeout(Duration::from_secs(30)))
                    .await;
            }
            Err(format!(
                "image {image} cannot be pulled on {}: {}",
                t.name(),
                last_line(&out.stderr_str())
            ))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the host's engine has `image`.
pub async fn host_has(t: &dyn Transport, image: &str) -> Result<bool, String> {
    let check = commands::shell(&commands::argv(["docker", "image", "inspect", image]));
    t.exec(
        Exec::new(format!("{check} >/dev/null"))
            .timeout(Duration::from_secs(60))
            .idempotent(true),
    )
    .await
    .map(|out| out.success())
    .map_err(|e| e.to_string())
}

/// Whether this computer's engine has `image` (asked on its socket, else
/// with the docker command).
pub async fn local_has(image: &str) -> bool {
    if let Some(found) = crate::machines::local_image_exists(image).await {
        return found;
    }
    tokio::process::Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `docker save IMAGE` here streamed into `docker load` on the host.
pub async fn ship(t: &dyn Transport, image: &str) -> Result<(), String> {
    let mut child = tokio::process::Command::new("docker")
        .args(["save", image])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run docker save: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let out = t
        .exec(
            Exec::new("docker load")
                .stdin_reader(Box::new(stdout))
                .timeout(Duration::from_secs(900)),
        )
        .await
        .map_err(|e| e.to_string())?;
    let saved = child.wait().await.map_err(|e| e.to_string())?;
    if !saved.success() {
        return Err(format!("docker save {image} failed here"));
    }
    if !out.success() {
        return Err(format!(
            "docker load of {image} failed: {}",
            last_line(&out.stderr_str())
        ));
    }
    Ok(())
}

/// Where [`stage`] leaves an image's tar on a host, under the project's
/// state (one file per image; a name's `/` and `:` become `_`).
pub fn staged_path(project: &str, image: &str) -> String {
    let file: String = image
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("/var/lib/provision/{project}/images/{file}.tar")
}

/// `docker save IMAGE` here written to a file on the host, for a host whose
/// Docker is still being installed: the copy overlaps the install, and once
/// Docker answers only [`load_staged`] is left. The file appears whole or
/// not at all (written beside it, then renamed).
pub async fn stage(t: &dyn Transport, project: &str, image: &str) -> Result<(), String> {
    let path = staged_path(project, image);
    let dir = path.rsplit_once('/').map_or("/", |(d, _)| d);
    let part = format!("{path}.part");
    let line = format!(
        "mkdir -p {dir} && cat > {part} && mv -f {part} {path}",
        dir = commands::quote(dir),
        part = commands::quote(&part),
        path = commands::quote(&path),
    );
    let mut child = tokio::process::Command::new("docker")
        .args(["save", image])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run docker save: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let out = t
        .exec(
            Exec::new(line)
                .stdin_reader(Box::new(stdout))
                .timeout(Duration::from_secs(900)),
        )
        .await
        .map_err(|e| e.to_string())?;
    let saved = child.wait().await.map_err(|e| e.to_string())?;
    if !saved.success() || !out.success() {
        let _ = t
            .exec(
                Exec::new(format!("rm -f {}", commands::quote(&part)))
                    .timeout(Duration::from_secs(30)),
            )
            .await;
        return Err(format!(
            "copying {image} to {} failed: {}",
            t.name(),
            last_line(&out.stderr_str())
        ));
    }
    Ok(())
}

/// `docker load` of the file [`stage`] left on the host, then the file
/// removed (also when the load fails: the caller ships the image instead).
pub async fn load_staged(t: &dyn Transport, project: &str, image: &str) -> Result<(), String> {
    let path = commands::quote(&staged_path(project, image)).into_owned();
    let out = t
        .exec(
            Exec::new(format!(
                "docker load -i {path} >/dev/null; s=$?; rm -f {path}; exit $s"
            ))
            .timeout(Duration::from_secs(900)),
        )
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!(
            "docker load of {image} failed: {}",
            last_line(&out.stderr_str())
        ));
    }
    Ok(())
}

/// `docker save IMAGE` on the host behind `from` streamed into `docker
/// load` on the host behind `to` (through this computer, never to disk).
pub async fn relay(from: &dyn Transport, to: &dyn Transport, image: &str) -> Result<(), String> {
    let (writer, reader) = tokio::io::duplex(1 << 20);
    let save = from.exec(
        Exec::new(crate::commands::shell(&crate::commands::argv([
            "docker", "save", image,
        ])))
        .stdout_to(Box::new(writer))
        .timeout(Duration::from_secs(900)),
    );
    let load = to.exec(
        Exec::new("docker load")
            .stdin_reader(Box::new(reader))
            .timeout(Duration::from_secs(900)),
    );
    let (saved, loaded) = tokio::join!(save, load);
    let saved = saved.map_err(|e| format!("docker save {image} on {}: {e}", from.name()))?;
    if !saved.success() {
        return Err(format!(
            "docker save {image} on {} failed: {}",
            from.name(),
            last_line(&saved.stderr_str())
        ));
    }
    let loaded = loaded.map_err(|e| e.to_string())?;
    if !loaded.success() {
        return Err(format!(
            "docker load of {image} from {} failed: {}",
            from.name(),
            last_line(&loaded.stderr_str())
        ));
    }
    Ok(())
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use tokio::io::AsyncRead;

    use super::*;
    use crate::transport::{ExecOutput, TransportError};

    /// A host that answers each line with a status (by its first match).
    struct Scripted {
        answers: Vec<(&'static str, u32)>,
        lines: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Transport for Scripted {
        async fn exec(&self, req: Exec) -> Result<ExecOutput, TransportError> {
            self.lines.lock().unwrap().push(req.line.clone());
            let status = self
                .answers
                .iter()
                .find(|(w, _)| req.line.contains(w))
                .map_or(0, |a| a.1);
            Ok(ExecOutput {
                status: Some(status),
                signal: None,
                stdout: Vec::new(),
                stderr: b"no such host\n".to_vec(),
            })
        }
        async fn upload_tar(
            &self,
            _: &str,
            _: Box<dyn AsyncRead + Send + Unpin>,
        ) -> Result<(), TransportError> {
            Ok(())
        }
        fn name(&self) -> &str {
            "db"
        }
    }

    /// No engine here has it: it is only ever pulled.
    const ABSENT: &str = "provision-test/never-built:none";

    fn host(answers: Vec<(&'static str, u32)>) -> Scripted {
        Scripted {
            answers,
            lines: Mutex::new(Vec::new()),
        }
    }

    #[tokio::test]
    async fn an_image_the_host_has_is_neither_shipped_nor_pulled() {
        let t = host(vec![]);
        let mut said = Vec::new();
        let got = ensure(&t, ABSENT, &Source::default(), &mut |a| said.push(a)).await;
        assert_eq!(got, Ok(Got::Present));
        assert!(said.is_empty());
        assert_eq!(t.lines.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_failed_pull_is_remembered_and_not_tried_again_soon() {
        let t = host(vec![("docker pull", 1), ("docker image inspect", 1)]);
        let source = Source {
            remember_for: Some("shop"),
            ..Source::default()
        };
        let mut said = Vec::new();
        let e = ensure(&t, ABSENT, &source, &mut |a| said.push(a))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            format!("image {ABSENT} cannot be pulled on db: no such host")
        );
        assert_eq!(said, [Action::Pull]);
        assert_eq!(t.lines.lock().unwrap().len(), 3, "inspect, pull, remember");

        let t = host(vec![]);
        let source = Source {
            known_missing: true,
            failed_pull: Some((60, 3600)),
            remember_for: None,
        };
        let e = ensure(&t, ABSENT, &source, &mut |_| panic!("no action"))
            .await
            .unwrap_err();
        assert!(
            e.contains("(tried 60 s ago; tried again after 60 min)"),
            "{e}"
        );
        assert!(t.lines.lock().unwrap().is_empty(), "the host is not asked");
    }

    #[tokio::test]
    async fn a_staged_image_is_written_whole_then_loaded_and_removed() {
        assert_eq!(
            staged_path("shop", "provision/debian:bookworm"),
            "/var/lib/provision/shop/images/provision_debian_bookworm.tar"
        );
        let t = host(vec![]);
        load_staged(&t, "shop", "debian:bookworm").await.unwrap();
        let f = "/var/lib/provision/shop/images/debian_bookworm.tar";
        assert_eq!(
            t.lines.lock().unwrap().as_slice(),
            [format!(
                "docker load -i {f} >/dev/null; s=$?; rm -f {f}; exit $s"
            )]
        );
        let t = host(vec![("docker load", 1)]);
        let e = load_staged(&t, "shop", "debian:bookworm")
            .await
            .unwrap_err();
        assert_eq!(e, "docker load of debian:bookworm failed: no such host");
    }
}
