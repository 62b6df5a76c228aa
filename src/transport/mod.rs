//! How commands reach a host. Everything above this layer speaks shell lines
//! built by the pure command builders; this layer only carries them.
//!
//! - [`Transport`]: the one trait the executor uses (run a line, upload a tar).
//! - [`Exec`] / [`ExecOutput`]: one shell line and what came back.
//! - [`SshTransport`]: one russh connection per host, many channels on it.
//! - [`LocalTransport`]: the same over `sh -c` on this machine.

mod error;
mod exec;
pub mod local;
pub mod ssh;

pub use error::{command_label, TransportError};
pub use exec::{Exec, ExecOutput, LineCallback, Stdin, Stream};
pub use local::LocalTransport;
pub use ssh::{HostKeyPolicy, SshTarget, SshTransport};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

/// A way to run shell lines on one host.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Runs one shell line on the host and waits for it to finish.
    ///
    /// A non-zero exit status is not an error: it is in [`ExecOutput::status`].
    /// Errors are about the transport (connection, timeout, sudo).
    async fn exec(&self, req: Exec) -> Result<ExecOutput, TransportError>;

    /// Streams a tar archive into `mkdir -p DEST && tar -x -C DEST` on the
    /// host. Modes are kept (a 0600 file stays 0600) and the files belong to
    /// the user that extracts (root when the transport uses sudo).
    async fn upload_tar(
        &self,
        dest_dir: &str,
        archive: Box<dyn AsyncRead + Send + Unpin>,
    ) -> Result<(), TransportError>;

    /// The host's name, for messages.
    fn name(&self) -> &str;

    /// A byte stream to Docker's API socket `path` on the host. `None` when
    /// this transport cannot open one (forwarding refused, no socket).
    async fn unix_stream(&self, _path: &str) -> Result<Option<SocketStream>, TransportError> {
        Ok(None)
    }
}

/// A byte stream to a Unix socket on a host, and what opening it cost.
pub struct SocketStream {
    pub stream: Box<dyn DuplexStream>,
    /// Opened through a process on the host (a sudo user's
    /// `sudo docker system dial-stdio`) rather than as a channel of the
    /// connection: a caller with several requests keeps this one open and
    /// sends them in turn, starting one process instead of one per request.
    pub relayed: bool,
}

/// A two-way byte stream.
pub trait DuplexStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> DuplexStream for T {}

/// The shell line that extracts a tar read from stdin into `dest_dir`.
///
/// `--no-same-owner` makes the files belong to the extracting user (root
/// under sudo) whatever uid built the archive; `-p` keeps the archived modes
/// even for a non-root user.
pub fn untar_line(dest_dir: &str) -> String {
    let dir = crate::commands::quote(dest_dir);
    format!("mkdir -p {dir} && tar -x -p --no-same-owner -f - -C {dir}")
}

/// Runs [`untar_line`] through `transport` with `archive` as stdin and turns a
/// failed extraction into an error naming the host.
pub(crate) async fn upload_tar_with(
    transport: &dyn Transport,
    dest_dir: &str,
    archive: Box<dyn AsyncRead + Send + Unpin>,
) -> Result<(), TransportError> {
    let out = transport
        .exec(Exec::new(untar_line(dest_dir)).stdin_reader(archive))
        .await?;
    if out.success() {
        return Ok(());
    }
    Err(TransportError::CommandFailed {
        host: transport.name().to_string(),
        command: "tar".into(),
        status: out.status,
        stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untar_line_quotes_the_directory() {
        assert_eq!(
            untar_line("/srv/my app"),
            "mkdir -p '/srv/my app' && tar -x -p --no-same-owner -f - -C '/srv/my app'"
        );
    }
}
