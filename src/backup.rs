//! Volumes out of and into hosts: a tar read or written by a throwaway
//! container of the base image (the seed's data-container backup), streamed
//! over the transport to a local file, from a local file, or from one host
//! straight into another. The command lines come from [`crate::commands`].

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

use crate::commands;
use crate::transport::{Exec, Transport};

/// The image of the throwaway containers: the project's base image, which
/// every provisioned host has (and which is shipped to one that lacks it).
pub const DATA_IMAGE: &str = crate::plan::DATA_IMAGE;

/// Streams of volumes can be large; this bounds a hung one.
const STREAM_TIMEOUT: Duration = Duration::from_secs(4 * 3600);

/// Make sure the host has `image`: shipped from this computer's engine when
/// it has it, pulled by the host otherwise.
pub async fn ensure_image(t: &dyn Transport, image: &str) -> Result<(), String> {
    let check = commands::shell(&commands::argv(["docker", "image", "inspect", image]));
    let out = t
        .exec(
            Exec::new(format!("{check} >/dev/null"))
                .timeout(Duration::from_secs(60))
                .idempotent(true),
        )
        .await
        .map_err(|e| e.to_string())?;
    if out.success() {
        return Ok(());
    }
    if crate::executor::local_has_image(image).await {
        return crate::executor::ship_image(t, image).await;
    }
    let pull = commands::shell(&commands::argv(["docker", "pull", image]));
    match t
        .exec(Exec::new(pull).timeout(Duration::from_secs(600)))
        .await
    {
        Ok(o) if o.success() => Ok(()),
        Ok(o) => Err(format!(
            "image {image} is not on {} and cannot be pulled: {}",
            t.name(),
            o.stderr_str().trim()
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// A tar of `volumes` on the host written to `path` (through `path.partial`,
/// renamed only when complete). Returns its size in bytes.
pub async fn backup_to_file(
    t: &dyn Transport,
    volumes: &[String],
    path: &Path,
    restart: bool,
) -> Result<u64, String> {
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
    let line = commands::backup_volumes(volumes, DATA_IMAGE, restart);
    let out = t
        .exec(
            Exec::new(line)
                .stdout_to(Box::new(file))
                .timeout(STREAM_TIMEOUT),
        )
        .await;
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e.to_string());
        }
    };
    if !out.success() {
        let _ = std::fs::remove_file(&partial);
        return Err(format!(
            "backup of {} on {} failed: {}",
            volumes.join(", "),
            t.name(),
            out.stderr_str().trim()
        ));
    }
    std::fs::rename(&partial, path)
        .map_err(|e| format!("cannot rename {}: {e}", partial.display()))?;
    Ok(std::fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}

fn partial_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Replace `volume` on the host with folder `member` of the local archive.
pub async fn restore_from_file(
    t: &dyn Transport,
    project: &str,
    volume: &str,
    member: &str,
    path: &Path,
) -> Result<(), String> {
    ensure_image(t, DATA_IMAGE).await?;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let line = commands::restore_volume(project, volume, member, DATA_IMAGE);
    let out = t
        .exec(
            Exec::new(line)
                .stdin_reader(Box::new(file))
                .timeout(STREAM_TIMEOUT),
        )
        .await
        .map_err(|e| e.to_string())?;
    if out.success() {
        Ok(())
    } else {
        Err(format!(
            "restore of volume {volume} on {} failed: {}",
            t.name(),
            out.stderr_str().trim()
        ))
    }
}

/// Copy `volume` from one host into the other, streamed through this
/// computer (no temporary file): the tar that `from` writes is the stdin of
/// the extraction on `to`. Returns the bytes carried.
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
    let count = Arc::new(AtomicU64::new(0));
    let reader = Counting {
        inner: reader,
        count: count.clone(),
    };
    let send = from.exec(
        Exec::new(commands::backup_volumes(
            &[volume.to_string()],
            DATA_IMAGE,
            true,
        ))
        .stdout_to(Box::new(writer))
        .timeout(STREAM_TIMEOUT),
    );
    let receive = to.exec(
        Exec::new(commands::restore_volume(
            project, volume, volume, DATA_IMAGE,
        ))
        .stdin_reader(Box::new(reader))
        .timeout(STREAM_TIMEOUT),
    );
    let (sent, received) = tokio::join!(send, receive);
    let sent = sent.map_err(|e| e.to_string())?;
    if !sent.success() {
        return Err(format!(
            "reading volume {volume} on {} failed: {}",
            from.name(),
            sent.stderr_str().trim()
        ));
    }
    let received = received.map_err(|e| e.to_string())?;
    if !received.success() {
        return Err(format!(
            "writing volume {volume} on {} failed: {}",
            to.name(),
            received.stderr_str().trim()
        ));
    }
    Ok(count.load(Ordering::Relaxed))
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

/// The volumes a backup file holds: its top-level folders.
pub fn archive_volumes(path: &Path) -> Result<Vec<String>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut out: Vec<String> = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| format!("{}: not a tar archive: {e}", path.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: unreadable archive: {e}", path.display()))?;
        let p = entry
            .path()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .into_owned();
        if let Some(std::path::Component::Normal(first)) = p.components().next() {
            let name = first.to_string_lossy().into_owned();
            if !out.contains(&name) {
                out.push(name);
            }
        }
    }
    if out.is_empty() {
        return Err(format!("{}: the archive holds no volume", path.display()));
    }
    Ok(out)
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
