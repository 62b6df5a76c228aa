//! Volumes out of and into hosts: a tar read or written by a throwaway
//! container of the base image (the seed's data-container backup), streamed
//! over the transport to a local file, from a local file, or from one host
//! straight into another. The command lines come from [`crate::commands`].
//!
//! Every backup file gets a manifest beside it, `FILE.manifest.json` (0600):
//! size and SHA-256 of the stream, its volumes, service, host and time. It
//! is written only after the whole stream arrived and before the file takes
//! its final name, so a backup file with a manifest is a whole one. A
//! sidecar, not a last tar member: the tar stays a plain tar any `tar -x`
//! reads, and the digest covers its exact bytes.
//!
//! Restores are verified twice before anything is replaced: here, the file
//! against its manifest (before a host is even contacted), and on the host,
//! the digest of what arrived (a connection can drop exactly at a member
//! boundary, where GNU tar exits 0). The host extracts beside the old
//! content and swaps only when told the digest matches.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

use crate::commands;
use crate::transport::{Exec, Transport};

/// The image of the throwaway containers: the project's base image, which
/// every provisioned host has (and which is shipped to one that lacks it).
pub const DATA_IMAGE: &str = crate::plan::DATA_IMAGE;

/// Streams of volumes can be large; this bounds a hung one.
const STREAM_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// A swap is a few renames while the volume's users are stopped.
const SWAP_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// What a backup file holds, written beside it as `FILE.manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Bytes of the tar stream.
    pub size: u64,
    /// SHA-256 of the tar stream, hex.
    pub sha256: String,
    /// The volumes, one top-level folder each.
    pub volumes: Vec<String>,
    /// Volumes that held no regular file when they were copied.
    #[serde(default)]
    pub empty_volumes: Vec<String>,
    /// The services that mount them.
    pub services: Vec<String>,
    pub host: String,
    pub address: String,
    /// When the copy started, UTC (`YYYY-MM-DDTHH:MM:SSZ`).
    pub created: String,
    /// The provision that wrote it.
    pub provision: String,
}

/// Where a backup comes from, for its manifest.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub host: String,
    pub address: String,
    pub services: Vec<String>,
}

/// A backup just written.
#[derive(Debug, Clone)]
pub struct Written {
    pub manifest: Manifest,
    pub manifest_path: PathBuf,
}

/// `FILE.manifest.json` beside `FILE`.
pub fn manifest_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

/// Size and SHA-256 of a stream as it passes, shared with whoever reads it.
#[derive(Debug, Default)]
struct Tally {
    size: u64,
    hash: Sha256,
}

impl Tally {
    fn add(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        self.hash.update(bytes);
    }

    /// `SIZE SHA256`, as the host prints what it received.
    fn digest(&self) -> (u64, String) {
        (self.size, hex::encode(self.hash.clone().finalize()))
    }
}

/// A writer that tallies what goes through it.
struct TallyWriter<W> {
    inner: W,
    tally: Arc<Mutex<Tally>>,
}

impl<W: AsyncWrite + Unpin> AsyncWrite for TallyWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.tally.lock().unwrap().add(&buf[..*n]);
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Make sure the host has `image` (see [`crate::images`]).
pub async fn ensure_image(t: &dyn Transport, image: &str) -> Result<(), String> {
    let source = crate::images::Source::default();
    crate::images::ensure(t, image, &source, &mut |_| {})
        .await
        .map(drop)
}

/// Why a volume without a single regular file is worth a stop: its
/// service's data is elsewhere (e.g. an anonymous volume beneath it).
pub fn empty_volumes_message(host: &str, empty: &[String]) -> String {
    format!(
        "volume{} {} on {host} hold{} no file at all (only folders, if anything): the data of \
         {} service is not in {}; is it mounted beneath it, in an anonymous volume \
         (`docker inspect` the container's Mounts)?",
        if empty.len() == 1 { "" } else { "s" },
        empty.join(", "),
        if empty.len() == 1 { "s" } else { "" },
        if empty.len() == 1 { "its" } else { "their" },
        if empty.len() == 1 { "it" } else { "them" },
    )
}

/// A tar of `volumes` on the host written to `path` (through `path.partial`,
/// renamed only when complete, after its manifest was written).
pub async fn backup_to_file(
    t: &dyn Transport,
    volumes: &[String],
    path: &Path,
    restart: bool,
    origin: &Origin,
) -> Result<Written, String> {
    ensure_image(t, DATA_IMAGE).await?;
    if let Some(d) = path.parent() {
        crate::private::create_dir(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
    }
    // A backup holds the volumes' data (a database's rows, its password
    // hashes): 0600, also at a path of the user's choosing.
    let partial = partial_path(path);
    let file = crate::private::create_file(&partial)
        .map(tokio::fs::File::from_std)
        .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let sink = TallyWriter {
        inner: file,
        tally: tally.clone(),
    };
    let line = commands::backup_volumes(volumes, DATA_IMAGE, restart);
    let started = now_secs();
    let out = t
        .exec(
            Exec::new(line)
                .stdout_to(Box::new(sink))
                .timeout(STREAM_TIMEOUT),
        )
        .await;
    let fail = |e: String| {
        let _ = std::fs::remove_file(&partial);
        Err(e)
    };
    let out = match out {
        Ok(o) => o,
        Err(e) => return fail(e.to_string()),
    };
    if !out.success() {
        return fail(format!(
            "backup of {} on {} failed: {}",
            volumes.join(", "),
            t.name(),
            why_failed(&out)
        ));
    }
    let (size, sha256) = tally.lock().unwrap().digest();
    // The file as it is on disk must be what came: read back, not trusted.
    let scan = match scan_archive(&partial) {
        Ok(s) => s,
        Err(e) => return fail(format!("the backup stream is not a whole tar: {e}")),
    };
    match file_digest(&partial) {
        Ok(d) if d == (size, sha256.clone()) => {}
        Ok((n, _)) => {
            return fail(format!(
                "{} holds {n} bytes that differ from the {size} received",
                partial.display()
            ))
        }
        Err(e) => return fail(e),
    }
    let manifest = Manifest {
        size,
        sha256,
        volumes: volumes.to_vec(),
        empty_volumes: volumes
            .iter()
            .filter(|v| scan.files_in(v) == 0)
            .cloned()
            .collect(),
        services: origin.services.clone(),
        host: origin.host.clone(),
        address: origin.address.clone(),
        created: utc_iso(started),
        provision: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mpath = manifest_path(path);
    let mpartial = partial_path(&mpath);
    let text = serde_json::to_string_pretty(&manifest).expect("a manifest serializes") + "\n";
    let written = crate::private::create_file(&mpartial)
        .and_then(|mut f| {
            use std::io::Write;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&mpartial, &mpath));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&mpartial);
        return fail(format!("cannot write {}: {e}", mpath.display()));
    }
    std::fs::rename(&partial, path)
        .map_err(|e| format!("cannot rename {}: {e}", partial.display()))?;
    Ok(Written {
        manifest,
        manifest_path: mpath,
    })
}

/// Remove a backup file and its manifest (an empty backup nobody asked to keep).
pub fn remove_backup(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(manifest_path(path));
}

/// A failed command in a few words: its error output, or how it ended.
fn why_failed(out: &crate::transport::ExecOutput) -> String {
    let err = out.stderr_str();
    let err = err.trim();
    match (&out.signal, out.status) {
        _ if !err.is_empty() => err.to_string(),
        (Some(sig), _) => format!("the copy was killed (SIG{sig}) on the host"),
        (None, Some(code)) => format!("exit status {code}"),
        (None, None) => "it ended without an exit status".into(),
    }
}

fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Size and SHA-256 of a local file.
pub fn file_digest(path: &Path) -> Result<(u64, String), String> {
    let mut f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    Ok((size, hex::encode(h.finalize())))
}

/// A backup file checked before a restore.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The volumes it holds, in archive order.
    pub volumes: Vec<String>,
    /// `SIZE SHA256` every byte sent must add up to.
    pub size: u64,
    pub sha256: String,
    /// None: restored `--unverified` (no manifest).
    pub manifest: Option<Manifest>,
}

/// Check a backup file before anything is restored from it: against its
/// manifest (size, SHA-256, volumes) unless `unverified`, and always its tar
/// structure, up to the end-of-archive blocks that a file cut at a member
/// boundary lacks.
pub fn check_backup(path: &Path, unverified: bool) -> Result<Checked, String> {
    let shown = path.display();
    let refused = "restore refused, nothing was touched";
    let mpath = manifest_path(path);
    let manifest = match std::fs::read_to_string(&mpath) {
        Ok(text) => Some(serde_json::from_str::<Manifest>(&text).map_err(|e| {
            format!(
                "{}: not a backup manifest ({e}); {refused}",
                mpath.display()
            )
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && unverified => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "{shown} has no manifest ({} is missing), so nothing tells whether it is whole; \
                 {refused}. A backup made by an older provision or by hand can be restored \
                 with --unverified (only its tar structure is checked then)",
                mpath.display()
            ))
        }
        Err(e) => return Err(format!("{}: {e}", mpath.display())),
    };
    let (size, sha256) = file_digest(path)?;
    if let Some(m) = &manifest {
        if size != m.size {
            return Err(format!(
                "{shown} is {size} bytes but its manifest says {}: the file is {}; {refused}",
                m.size,
                if size < m.size {
                    "truncated"
                } else {
                    "not the one the manifest describes"
                }
            ));
        }
        if sha256 != m.sha256 {
            return Err(format!(
                "{shown}: its SHA-256 is {sha256} but its manifest says {}: the file is corrupted; {refused}",
                m.sha256
            ));
        }
    }
    let scan = scan_archive(path).map_err(|e| format!("{shown}: {e}; {refused}"))?;
    let volumes = scan.volumes();
    if let Some(m) = &manifest {
        let mut a = volumes.clone();
        let mut b = m.volumes.clone();
        a.sort();
        b.sort();
        if a != b {
            return Err(format!(
                "{shown} holds the volumes {} but its manifest says {}; {refused}",
                volumes.join(", "),
                m.volumes.join(", ")
            ));
        }
    }
    if volumes.is_empty() {
        return Err(format!("{shown}: the archive holds no volume; {refused}"));
    }
    Ok(Checked {
        volumes,
        size,
        sha256,
        manifest,
    })
}

/// What a walk through a tar file found.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Top-level folders and how many regular files each holds.
    pub folders: Vec<(String, usize)>,
}

impl Scan {
    pub fn volumes(&self) -> Vec<String> {
        self.folders.iter().map(|(v, _)| v.clone()).collect()
    }

    pub fn files_in(&self, volume: &str) -> usize {
        self.folders
            .iter()
            .find(|(v, _)| v == volume)
            .map_or(0, |(_, n)| *n)
    }
}

/// Walk every member header of a tar file (their checksums are checked)
/// and require the end-of-archive blocks after the last member: GNU tar
/// reads a file cut at a member boundary without complaint.
pub fn scan_archive(path: &Path) -> Result<Scan, String> {
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut scan = Scan::default();
    let mut end = 0u64;
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("unreadable archive: {e}"))?;
        let size = entry.header().entry_size().map_err(|e| e.to_string())?;
        end = entry.raw_file_position() + size.div_ceil(512) * 512;
        let p = entry.path().map_err(|e| e.to_string())?.into_owned();
        let Some(std::path::Component::Normal(first)) = p.components().next() else {
            continue;
        };
        let name = first.to_string_lossy().into_owned();
        let regular = entry.header().entry_type().is_file() && p.components().count() > 1;
        match scan.folders.iter_mut().find(|(n, _)| *n == name) {
            Some((_, n)) => *n += usize::from(regular),
            None => scan.folders.push((name, usize::from(regular))),
        }
    }
    // Two zero blocks end a tar; a stream cut after a member has none.
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut tail = [0u8; 1024];
    let whole = len >= end + 1024 && {
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(end))
            .and_then(|_| f.read_exact(&mut tail))
            .is_ok()
            && tail.iter().all(|&b| b == 0)
    };
    if !whole {
        return Err(format!(
            "the archive ends after {end} of {len} bytes without its end-of-archive blocks: it is truncated"
        ));
    }
    Ok(scan)
}

/// The volumes a backup file holds: its top-level folders.
pub fn archive_volumes(path: &Path) -> Result<Vec<String>, String> {
    let scan = scan_archive(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if scan.folders.is_empty() {
        return Err(format!("{}: the archive holds no volume", path.display()));
    }
    Ok(scan.volumes())
}

/// `@received SIZE SHA256` from the host's staging step.
fn received(stdout: &str) -> Option<(u64, String)> {
    let line = stdout.lines().find_map(|l| l.strip_prefix("@received "))?;
    let (n, sha) = line.trim().split_once(' ')?;
    Some((n.parse().ok()?, sha.to_string()))
}

/// Swap `volume` to the staged copy when what the host received is what was
/// sent; otherwise discard the copy and say why.
async fn swap_if_whole(
    t: &dyn Transport,
    project: &str,
    volume: &str,
    member: &str,
    got: Option<(u64, String)>,
    sent: (u64, String),
) -> Result<(), String> {
    if got.as_ref() != Some(&sent) {
        let _ = t
            .exec(
                Exec::new(commands::discard_staged(volume, member, DATA_IMAGE))
                    .timeout(SWAP_TIMEOUT),
            )
            .await;
        let got = got
            .map(|(n, s)| format!("{n} bytes with SHA-256 {s}"))
            .unwrap_or_else(|| "no digest".into());
        return Err(format!(
            "volume {volume} on {}: the stream arrived cut or changed ({got}; {} bytes with SHA-256 {} were sent): volume left as it was",
            t.name(),
            sent.0,
            sent.1
        ));
    }
    let digest = format!("{} {}", sent.0, sent.1);
    let out = t
        .exec(
            Exec::new(commands::swap_volume(
                project, volume, member, DATA_IMAGE, &digest,
            ))
            .timeout(SWAP_TIMEOUT),
        )
        .await
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(())
    } else {
        Err(format!(
            "swapping volume {volume} on {} failed: {}",
            t.name(),
            why_failed(&out)
        ))
    }
}

/// Replace `volume` on the host with folder `member` of the local archive,
/// checked before with [`check_backup`]: the host stages what it receives,
/// and the swap happens only if that is every byte of the file.
pub async fn restore_from_file(
    t: &dyn Transport,
    project: &str,
    volume: &str,
    member: &str,
    path: &Path,
    checked: &Checked,
) -> Result<(), String> {
    ensure_image(t, DATA_IMAGE).await?;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let line = commands::stage_volume(project, volume, member, DATA_IMAGE);
    let out = t
        .exec(
            Exec::new(line)
                .stdin_reader(Box::new(file))
                .timeout(STREAM_TIMEOUT),
        )
        .await
        .map_err(|e| {
            format!(
                "restore of volume {volume} on {}: {e}: volume left as it was",
                t.name()
            )
        })?;
    if !out.success() {
        return Err(format!(
            "restore of volume {volume} on {} failed: {}",
            t.name(),
            why_failed(&out)
        ));
    }
    swap_if_whole(
        t,
        project,
        volume,
        member,
        received(&out.stdout_str()),
        (checked.size, checked.sha256.clone()),
    )
    .await
}

/// Copy `volume` from one host into the other, streamed through this
/// computer (no temporary file): the tar that `from` writes is the stdin of
/// the staging on `to`, and the swap on `to` is a separate command, run
/// only when `from` finished its tar and what `to` received has the size
/// and SHA-256 of what `from` sent. Returns the bytes carried.
pub async fn migrate(
    from: &dyn Transport,
    to: &dyn Transport,
    project: &str,
    volume: &str,
) -> Result<u64, String> {
    let (a, b) = tokio::join!(ensure_image(from, DATA_IMAGE), ensure_image(to, DATA_IMAGE));
    a?;
    b?;
    let (writer, reader) = tokio::io::duplex(1 << 20);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let sink = TallyWriter {
        inner: writer,
        tally: tally.clone(),
    };
    let send = from.exec(
        Exec::new(commands::backup_volumes(
            &[volume.to_string()],
            DATA_IMAGE,
            true,
        ))
        .stdout_to(Box::new(sink))
        .timeout(STREAM_TIMEOUT),
    );
    let receive = to.exec(
        Exec::new(commands::stage_volume(project, volume, volume, DATA_IMAGE))
            .stdin_reader(Box::new(reader))
            .timeout(STREAM_TIMEOUT),
    );
    let (sent, received_out) = tokio::join!(send, receive);
    let discard = || async {
        let _ = to
            .exec(
                Exec::new(commands::discard_staged(volume, volume, DATA_IMAGE))
                    .timeout(SWAP_TIMEOUT),
            )
            .await;
    };
    let sent = match sent {
        Ok(o) if o.success() => o,
        Ok(o) => {
            discard().await;
            return Err(format!(
                "reading volume {volume} on {} failed: {}; volume on {} left as it was",
                from.name(),
                why_failed(&o),
                to.name()
            ));
        }
        Err(e) => {
            discard().await;
            return Err(format!(
                "reading volume {volume} on {}: {e}; volume on {} left as it was",
                from.name(),
                to.name()
            ));
        }
    };
    drop(sent);
    let received_out = received_out.map_err(|e| {
        format!(
            "writing volume {volume} on {}: {e}; volume left as it was",
            to.name()
        )
    })?;
    if !received_out.success() {
        return Err(format!(
            "writing volume {volume} on {} failed: {}",
            to.name(),
            why_failed(&received_out)
        ));
    }
    let sent_digest = tally.lock().unwrap().digest();
    swap_if_whole(
        to,
        project,
        volume,
        volume,
        received(&received_out.stdout_str()),
        sent_digest.clone(),
    )
    .await?;
    Ok(sent_digest.0)
}

/// `HOST-YYYYMMDDTHHMMSSZ.tar` for a host's whole backup; `suffix` names a
/// partial one (`HOST-...Z-SERVICE.tar`).
pub fn backup_file_name(host: &str, unix_secs: u64, suffix: Option<&str>) -> String {
    match suffix {
        Some(s) => format!("{host}-{}-{s}.tar", utc_stamp(unix_secs)),
        None => format!("{host}-{}.tar", utc_stamp(unix_secs)),
    }
}

/// The newest whole backup of `host` in `dir` (names from [`backup_file_name`]).
pub fn latest_backup(dir: &Path, host: &str) -> Option<PathBuf> {
    let prefix = format!("{host}-");
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let stamp = name.strip_prefix(&prefix)?.strip_suffix(".tar")?;
            let ok = stamp.len() == 16
                && stamp.as_bytes()[8] == b'T'
                && stamp.ends_with('Z')
                && stamp[..8].bytes().all(|b| b.is_ascii_digit())
                && stamp[9..15].bytes().all(|b| b.is_ascii_digit());
            ok.then(|| (stamp.to_string(), e.path()))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, p)| p)
}

pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the epoch (UTC).
pub fn utc_iso(secs: u64) -> String {
    let s = utc_stamp(secs);
    format!(
        "{}-{}-{}T{}:{}:{}Z",
        &s[0..4],
        &s[4..6],
        &s[6..8],
        &s[9..11],
        &s[11..13],
        &s[13..15]
    )
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the epoch (UTC).
pub fn utc_stamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (H. Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_calendar_times() {
        assert_eq!(utc_stamp(0), "19700101T000000Z");
        assert_eq!(utc_stamp(951_782_400), "20000229T000000Z");
        assert_eq!(utc_stamp(1_704_067_199), "20231231T235959Z");
        assert_eq!(utc_iso(1_704_067_199), "2023-12-31T23:59:59Z");
    }

    #[test]
    fn latest_backup_is_the_newest_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "db-20240101T000000Z.tar",
            "db-20240301T000000Z.tar",
            "db-20240401T000000Z-postgis.tar",
            "db-20240501T000000Z.tar.partial",
            "web-20250101T000000Z.tar",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        assert_eq!(
            latest_backup(dir.path(), "db")
                .unwrap()
                .file_name()
                .unwrap(),
            "db-20240301T000000Z.tar"
        );
        assert!(latest_backup(dir.path(), "cache").is_none());
    }

    /// A backup file and its manifest as [`backup_to_file`] leaves them.
    fn backup_with_manifest(dir: &Path, files: &[(&str, &[u8])]) -> (PathBuf, Vec<u8>) {
        let mut b = tar::Builder::new(Vec::new());
        for (p, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, p, *body).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        let path = dir.join("db.tar");
        std::fs::write(&path, &bytes).unwrap();
        let m = Manifest {
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(&bytes)),
            volumes: vec!["pgdata".into()],
            empty_volumes: vec![],
            services: vec!["postgis".into()],
            host: "db".into(),
            address: "10.0.0.2".into(),
            created: utc_iso(0),
            provision: "test".into(),
        };
        std::fs::write(manifest_path(&path), serde_json::to_string(&m).unwrap()).unwrap();
        (path, bytes)
    }

    #[test]
    fn a_backup_is_checked_against_its_manifest_and_its_end_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let big = [1u8; 3000];
        let (path, bytes) = backup_with_manifest(
            dir.path(),
            &[("pgdata/PG_VERSION", b"15\n"), ("pgdata/base/1", &big)],
        );
        let ok = check_backup(&path, false).unwrap();
        assert_eq!(ok.volumes, ["pgdata"]);
        assert_eq!(ok.size, bytes.len() as u64);
        // Cut right after the first member (1024 bytes): truncated.
        std::fs::write(&path, &bytes[..1024]).unwrap();
        let e = check_backup(&path, false).unwrap_err();
        assert!(
            e.contains("truncated") && e.contains("nothing was touched"),
            "{e}"
        );
        // Without its manifest only --unverified reads it, and the missing
        // end-of-archive blocks still give the cut away.
        std::fs::remove_file(manifest_path(&path)).unwrap();
        let e = check_backup(&path, false).unwrap_err();
        assert!(
            e.contains("no manifest") && e.contains("--unverified"),
            "{e}"
        );
        let e = check_backup(&path, true).unwrap_err();
        assert!(e.contains("end-of-archive"), "{e}");
        // One flipped byte in a file's data: corrupted.
        let (path, mut bytes) = backup_with_manifest(dir.path(), &[("pgdata/base/1", &big)]);
        bytes[600] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let e = check_backup(&path, false).unwrap_err();
        assert!(e.contains("corrupted"), "{e}");
    }

    #[test]
    fn a_volume_with_folders_only_counts_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for (p, kind) in [
            ("empty/", tar::EntryType::Directory),
            ("empty/data/", tar::EntryType::Directory),
            ("full/", tar::EntryType::Directory),
            ("full/x", tar::EntryType::Regular),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(0);
            h.set_mode(0o700);
            h.set_cksum();
            b.append_data(&mut h, p, &b""[..]).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        let scan = scan_archive(&path).unwrap();
        assert_eq!(scan.volumes(), ["empty", "full"]);
        assert_eq!((scan.files_in("empty"), scan.files_in("full")), (0, 1));
    }

    #[test]
    fn archive_volumes_lists_top_level_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.tar");
        let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
        for p in ["pgdata/PG_VERSION", "pgdata/base/1", "redis-data/dump.rdb"] {
            let mut h = tar::Header::new_gnu();
            h.set_size(1);
            h.set_mode(0o600);
            h.set_cksum();
            b.append_data(&mut h, p, &b"x"[..]).unwrap();
        }
        b.finish().unwrap();
        drop(b);
        assert_eq!(archive_volumes(&path).unwrap(), ["pgdata", "redis-data"]);
    }
}
