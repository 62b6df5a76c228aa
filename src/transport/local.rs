//! Runs the same [`Exec`] values with `sh -c` on this machine (the local
//! machine engine, and unit tests of the executor).

use std::process::Stdio;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::error::command_label;
use super::exec::OutputCollector;
use super::{Exec, ExecOutput, Stdin, Transport, TransportError};

/// Runs lines with `sh -c` locally, as the current user.
#[derive(Debug, Clone)]
pub struct LocalTransport {
    name: String,
    /// Set on every spawned shell, never written into its line: a test
    /// standing in for a host's own settings (`CURL_CA_BUNDLE` trusting the
    /// test's CA) leaves the plan's lines exactly as a host runs them.
    env: Vec<(String, String)>,
}

impl LocalTransport {
    pub fn new(name: impl Into<String>) -> Self {
        LocalTransport {
            name: name.into(),
            env: Vec::new(),
        }
    }

    /// The same, with `key=value` in the environment of every line it runs.
    pub fn with_env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

impl Default for LocalTransport {
    fn default() -> Self {
        LocalTransport::new("local")
    }
}

#[async_trait]
impl Transport for LocalTransport {
    async fn unix_stream(&self, path: &str) -> Result<Option<super::SocketStream>, TransportError> {
        Ok(tokio::net::UnixStream::connect(path)
            .await
            .ok()
            .map(|s| super::SocketStream {
                stream: Box::new(s),
                relayed: false,
            }))
    }

    async fn exec(&self, req: Exec) -> Result<ExecOutput, TransportError> {
        let label = command_label(&req.line);
        let io_err = |e: std::io::Error| TransportError::Channel {
            host: self.name.clone(),
            command: label.clone(),
            message: e.to_string(),
        };
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&req.line)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(if req.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(io_err)?;

        let stdin_pipe = child.stdin.take();
        let mut stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let mut sink = req.stdout_sink;
        let mut collector = OutputCollector::new(req.capture, req.on_line);
        let stdin = req.stdin;

        let write_stdin = async move {
            if let (Some(mut pipe), Some(stdin)) = (stdin_pipe, stdin) {
                // A command that does not read its stdin closes the pipe: fine.
                let _ = match stdin {
                    Stdin::Bytes(b) => pipe.write_all(&b).await,
                    Stdin::Reader(r) => {
                        let mut r: Box<dyn AsyncRead + Send + Unpin> = r;
                        let mut buf = BufReader::with_capacity(256 * 1024, &mut r);
                        tokio::io::copy_buf(&mut buf, &mut pipe).await.map(drop)
                    }
                };
            }
        };

        let pump = async {
            let mut obuf = vec![0u8; 64 * 1024];
            let mut ebuf = vec![0u8; 16 * 1024];
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                tokio::select! {
                    n = stdout.read(&mut obuf), if out_open => {
                        let n = n?;
                        if n == 0 { out_open = false; continue; }
                        match sink.as_mut() {
                            Some(s) => s.write_all(&obuf[..n]).await?,
                            None => collector.stdout(&obuf[..n]),
                        }
                    }
                    n = stderr.read(&mut ebuf), if err_open => {
                        let n = n?;
                        if n == 0 { err_open = false; continue; }
                        collector.stderr(&ebuf[..n]);
                    }
                }
            }
            if let Some(s) = sink.as_mut() {
                s.flush().await?;
            }
            let status = child.wait().await?;
            Ok::<_, std::io::Error>(status)
        };

        let run = async {
            let (status, ()) = tokio::join!(pump, write_stdin);
            status
        };
        let status = match req.timeout {
            Some(t) => match tokio::time::timeout(t, run).await {
                Ok(s) => s.map_err(io_err)?,
                Err(_) => {
                    return Err(TransportError::Timeout {
                        host: self.name.clone(),
                        command: label,
                        after: t,
                    })
                }
            },
            None => run.await.map_err(io_err)?,
        };
        let (mut output, _) = collector.finish();
        use std::os::unix::process::ExitStatusExt;
        output.status = status.code().map(|c| c as u32);
        output.signal = status.signal().map(signal_name);
        Ok(output)
    }

    async fn upload_tar(
        &self,
        dest_dir: &str,
        archive: Box<dyn AsyncRead + Send + Unpin>,
    ) -> Result<(), TransportError> {
        super::upload_tar_with(self, dest_dir, archive).await
    }

    fn name(&self) -> &str {
        &self.name
    }
}

/// The SSH name of a signal number (`9` -> `"KILL"`).
fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGABRT => "ABRT",
        libc::SIGALRM => "ALRM",
        libc::SIGFPE => "FPE",
        libc::SIGHUP => "HUP",
        libc::SIGILL => "ILL",
        libc::SIGINT => "INT",
        libc::SIGKILL => "KILL",
        libc::SIGPIPE => "PIPE",
        libc::SIGQUIT => "QUIT",
        libc::SIGSEGV => "SEGV",
        libc::SIGTERM => "TERM",
        libc::SIGUSR1 => "USR1",
        libc::SIGUSR2 => "USR2",
        other => return other.to_string(),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Stream;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[tokio::test]
    async fn runs_a_line_with_stdin_and_streams_lines() {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines.clone();
        let out = LocalTransport::default()
            .exec(
                Exec::new("cat; echo oops >&2; exit 3")
                    .stdin_bytes(b"a\nb".to_vec())
                    .on_line(move |s, l| l2.lock().unwrap().push((s, l.to_string()))),
            )
            .await
            .unwrap();
        assert_eq!(out.status, Some(3));
        assert_eq!(out.stdout, b"a\nb");
        assert_eq!(out.stderr, b"oops\n");
        let lines = lines.lock().unwrap();
        assert!(lines.contains(&(Stream::Stdout, "b".into())));
        assert!(lines.contains(&(Stream::Stderr, "oops".into())));
    }

    #[tokio::test]
    async fn timeout_names_the_first_word() {
        let err = LocalTransport::default()
            .exec(Exec::new("sleep 5").timeout(Duration::from_millis(100)))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Timeout { ref command, .. } if command == "sleep"));
    }

    #[tokio::test]
    async fn upload_tar_keeps_modes() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o600);
        h.set_size(4);
        b.append_data(&mut h, "sub/app.env", &b"A=1\n"[..]).unwrap();
        let archive = b.into_inner().unwrap();
        let dest = dir.path().join("new dir");
        LocalTransport::default()
            .upload_tar(
                dest.to_str().unwrap(),
                Box::new(std::io::Cursor::new(archive)),
            )
            .await
            .unwrap();
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(dest.join("sub/app.env")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn its_env_reaches_every_line() {
        let out = LocalTransport::default()
            .with_env("PROVISION_TEST_VALUE", "a b")
            .exec(Exec::new("printf %s \"$PROVISION_TEST_VALUE\""))
            .await
            .unwrap();
        assert_eq!(out.stdout, b"a b");
    }

    #[tokio::test]
    async fn signal_is_reported() {
        let out = LocalTransport::default()
            .exec(Exec::new("kill -TERM $$"))
            .await
            .unwrap();
        assert_eq!(out.status, None);
        assert_eq!(out.signal.as_deref(), Some("TERM"));
    }
}
