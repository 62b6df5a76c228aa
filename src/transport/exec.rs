//! One shell line to run, and what came back.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Called with each complete line (without its `\n`) as it arrives.
pub type LineCallback = Arc<dyn Fn(Stream, &str) + Send + Sync>;

/// What a command reads on its standard input.
pub enum Stdin {
    /// Bytes known up front (a rendered file, a secret). Never logged.
    Bytes(Vec<u8>),
    /// A stream (a tar archive being built, another host's output).
    Reader(Box<dyn AsyncRead + Send + Unpin>),
}

/// One shell line to run on a host.
///
/// ```
/// use provision::transport::Exec;
/// use std::time::Duration;
/// let req = Exec::new("cat > /etc/app.env")
///     .stdin_bytes(b"SECRET=1\n".to_vec())
///     .timeout(Duration::from_secs(30));
/// assert_eq!(req.line, "cat > /etc/app.env");
/// ```
pub struct Exec {
    /// The shell line, already quoted by the caller (shell-words).
    pub line: String,
    /// Standard input; stdin is closed (EOF) when this is `None`.
    pub stdin: Option<Stdin>,
    /// Receives stdout and stderr line by line as they arrive.
    pub on_line: Option<LineCallback>,
    /// Receives the raw stdout bytes (a tar streamed out of the host);
    /// stdout then goes neither to the capture nor to the line callback.
    pub stdout_sink: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    /// Keep stdout and stderr in [`ExecOutput`] (default true).
    pub capture: bool,
    /// Fail with [`crate::transport::TransportError::Timeout`] after this
    /// long (the command is stopped on the host). [`Exec::new`] sets
    /// [`Exec::DEFAULT_TIMEOUT`], so a command whose caller sets no
    /// deadline of its own still ends: a hung host never hangs a run.
    pub timeout: Option<Duration>,
    /// Safe to run twice: after a dropped connection it is retried once on
    /// a new connection (only when its stdin can be replayed and nothing was
    /// written to its stdout sink yet).
    pub idempotent: bool,
}

impl Exec {
    /// The deadline of a command that sets none: longer than any step
    /// (the longest, a build, has 60 min of its own) and an upload or
    /// `docker load` of a large image over a slow link.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2 * 3600);

    pub fn new(line: impl Into<String>) -> Self {
        Exec {
            line: line.into(),
            stdin: None,
            on_line: None,
            stdout_sink: None,
            capture: true,
            timeout: Some(Self::DEFAULT_TIMEOUT),
            idempotent: false,
        }
    }

    pub fn stdin_bytes(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(Stdin::Bytes(bytes.into()));
        self
    }

    pub fn stdin_reader(mut self, reader: Box<dyn AsyncRead + Send + Unpin>) -> Self {
        self.stdin = Some(Stdin::Reader(reader));
        self
    }

    pub fn on_line(mut self, f: impl Fn(Stream, &str) + Send + Sync + 'static) -> Self {
        self.on_line = Some(Arc::new(f));
        self
    }

    pub fn stdout_to(mut self, sink: Box<dyn AsyncWrite + Send + Unpin>) -> Self {
        self.stdout_sink = Some(sink);
        self
    }

    pub fn capture(mut self, capture: bool) -> Self {
        self.capture = capture;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub fn idempotent(mut self, idempotent: bool) -> Self {
        self.idempotent = idempotent;
        self
    }
}

/// Debug never shows stdin content: it may be a secret.
impl fmt::Debug for Exec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exec")
            .field("line", &self.line)
            .field(
                "stdin",
                &match &self.stdin {
                    None => "none".to_string(),
                    Some(Stdin::Bytes(b)) => format!("<{} bytes>", b.len()),
                    Some(Stdin::Reader(_)) => "<stream>".to_string(),
                },
            )
            .field("on_line", &self.on_line.is_some())
            .field("stdout_sink", &self.stdout_sink.is_some())
            .field("capture", &self.capture)
            .field("timeout", &self.timeout)
            .field("idempotent", &self.idempotent)
            .finish()
    }
}

/// How a command ended and what it printed (when captured).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Exit status; `None` when the command was killed by a signal.
    pub status: Option<u32>,
    /// The signal that killed the command (`"KILL"`, `"TERM"`...).
    pub signal: Option<String>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ExecOutput {
    /// Exited with status 0.
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Splits a byte stream into lines for a [`LineCallback`]; a trailing
/// partial line is kept until more bytes or [`LineSplitter::finish`].
pub(crate) struct LineSplitter {
    stream: Stream,
    pending: Vec<u8>,
}

impl LineSplitter {
    pub(crate) fn new(stream: Stream) -> Self {
        LineSplitter {
            stream,
            pending: Vec::new(),
        }
    }

    pub(crate) fn push(&mut self, data: &[u8], cb: &LineCallback) {
        let mut rest = data;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&rest[..pos]);
            self.emit(cb);
            rest = &rest[pos + 1..];
        }
        self.pending.extend_from_slice(rest);
    }

    pub(crate) fn finish(&mut self, cb: &LineCallback) {
        if !self.pending.is_empty() {
            self.emit(cb);
        }
    }

    fn emit(&mut self, cb: &LineCallback) {
        if self.pending.last() == Some(&b'\r') {
            self.pending.pop();
        }
        cb(self.stream, &String::from_utf8_lossy(&self.pending));
        self.pending.clear();
    }
}

/// Output handling shared by the SSH and local transports: capture, line
/// callback, a bounded tail of stderr (for sudo detection and messages).
pub(crate) struct OutputCollector {
    capture: bool,
    on_line: Option<LineCallback>,
    out_lines: LineSplitter,
    err_lines: LineSplitter,
    pub(crate) output: ExecOutput,
    /// Last bytes of stderr, kept even when not capturing.
    pub(crate) stderr_tail: Vec<u8>,
}

const STDERR_TAIL: usize = 4096;

impl OutputCollector {
    pub(crate) fn new(capture: bool, on_line: Option<LineCallback>) -> Self {
        OutputCollector {
            capture,
            on_line,
            out_lines: LineSplitter::new(Stream::Stdout),
            err_lines: LineSplitter::new(Stream::Stderr),
            output: ExecOutput::default(),
            stderr_tail: Vec::new(),
        }
    }

    /// Stdout bytes that were not sent to a sink.
    pub(crate) fn stdout(&mut self, data: &[u8]) {
        if self.capture {
            self.output.stdout.extend_from_slice(data);
        }
        if let Some(cb) = &self.on_line {
            self.out_lines.push(data, cb);
        }
    }

    pub(crate) fn stderr(&mut self, data: &[u8]) {
        if self.capture {
            self.output.stderr.extend_from_slice(data);
        }
        if let Some(cb) = &self.on_line {
            self.err_lines.push(data, cb);
        }
        self.stderr_tail.extend_from_slice(data);
        if self.stderr_tail.len() > STDERR_TAIL {
            let cut = self.stderr_tail.len() - STDERR_TAIL;
            self.stderr_tail.drain(..cut);
        }
    }

    pub(crate) fn finish(mut self) -> (ExecOutput, Vec<u8>) {
        if let Some(cb) = &self.on_line {
            self.out_lines.finish(cb);
            self.err_lines.finish(cb);
        }
        (self.output, self.stderr_tail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_command_has_a_deadline_unless_given_its_own() {
        assert!(Exec::new("true").timeout.is_some());
        let own = Exec::new("true").timeout(Duration::from_secs(3));
        assert_eq!(own.timeout, Some(Duration::from_secs(3)));
    }

    #[test]
    fn splitter_joins_chunks_and_flushes_the_last_line() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let cb: LineCallback = Arc::new(move |s, l| s2.lock().unwrap().push((s, l.to_string())));
        let mut sp = LineSplitter::new(Stream::Stderr);
        sp.push(b"ab", &cb);
        sp.push(b"c\r\nd\n\ne", &cb);
        sp.finish(&cb);
        let got = seen.lock().unwrap().clone();
        let lines: Vec<_> = got.iter().map(|(_, l)| l.as_str()).collect();
        assert_eq!(lines, ["abc", "d", "", "e"]);
        assert!(got.iter().all(|(s, _)| *s == Stream::Stderr));
    }

    #[test]
    fn debug_hides_stdin() {
        let e = Exec::new("cat").stdin_bytes(b"hunter2".to_vec());
        let s = format!("{e:?}");
        assert!(!s.contains("hunter2"));
        assert!(s.contains("<7 bytes>"));
    }
}
