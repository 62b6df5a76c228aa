//! The Debian base image every machine image starts from. When it is absent
//! and no registry answers, it is built here with debootstrap.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::process::Command;

use super::docker;
use super::engine::on_path;
use super::lock::lock;
use super::Error;

/// The lock file other provision components use for the same job.
const BASE_IMAGE_LOCK: &str = "provision-base-image.lock";
const SUITE: &str = "bookworm";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const PULL_DEADLINE: Duration = Duration::from_secs(120);

/// Make sure `tag` (normally `debian:bookworm`) exists: pull it, else build
/// it with `debootstrap --variant=minbase`. Holds a lock shared with other
/// processes while it checks and builds.
pub async fn ensure_base_image(tag: &str) -> Result<(), Error> {
    if docker::image_exists(tag).await? {
        return Ok(());
    }
    let _lock = lock(BASE_IMAGE_LOCK).await?;
    if docker::image_exists(tag).await? {
        return Ok(());
    }
    eprintln!("provision: base image {tag} is absent; trying `docker pull {tag}`");
    let pull = ["pull", "--quiet", tag].map(String::from);
    if let Ok(Ok(out)) = tokio::time::timeout(PULL_DEADLINE, docker::output(&pull, None)).await {
        if out.success {
            return Ok(());
        }
    }
    if !on_path("debootstrap") {
        return Err(Error::BaseImage(format!(
            "base image {tag} is absent and cannot be pulled: install debootstrap \
             (`apt-get install debootstrap`) so provision can build it, or `docker load` it"
        )));
    }
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::BaseImage(format!(
            "base image {tag} is absent and cannot be pulled; building it with debootstrap \
             needs root: run provision as root once, or `docker load` the image"
        )));
    }
    eprintln!("provision: building {tag} with debootstrap --variant=minbase (about a minute)");
    let rootfs = TempDir::new()?;
    build(tag, rootfs.path()).await
}

async fn build(tag: &str, rootfs: &Path) -> Result<(), Error> {
    let host_sources = host_apt_sources();
    let mirror = host_sources
        .as_ref()
        .and_then(|(_, text)| debian_mirror(text))
        .unwrap_or_else(|| DEFAULT_MIRROR.to_string());
    let rootfs_arg = rootfs.display().to_string();
    shell(&shell_words::join([
        "debootstrap",
        "--variant=minbase",
        SUITE,
        &rootfs_arg,
        &mirror,
    ]))
    .await?;
    if let Some((path, text)) = &host_sources {
        // Same mirror inside the image as on this computer; only when the
        // host's sources are for the same suite.
        if text.contains(SUITE) {
            let target = rootfs.join(path.strip_prefix("/").expect("absolute path"));
            write(&target, text)?;
            if path.ends_with("debian.sources") {
                let _ = std::fs::remove_file(rootfs.join("etc/apt/sources.list"));
            }
        }
    }
    shell(&format!(
        "rm -rf {root}/var/cache/apt/archives/*.deb {root}/var/lib/apt/lists/* && \
         tar --numeric-owner -C {root} -c . | docker import --change 'CMD [\"bash\"]' - {tag}",
        root = shell_words::quote(&rootfs_arg),
        tag = shell_words::quote(tag),
    ))
    .await
}

/// The host's Debian apt sources: deb822 first, then the one-line format.
fn host_apt_sources() -> Option<(PathBuf, String)> {
    [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ]
    .iter()
    .find_map(|p| {
        let text = std::fs::read_to_string(p).ok()?;
        debian_mirror(&text).map(|_| (PathBuf::from(p), text))
    })
}

/// The first Debian archive URI in an apt sources text (either format).
pub fn debian_mirror(text: &str) -> Option<String> {
    text.lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.starts_with("http") && w.trim_end_matches('/').ends_with("/debian"))
        .map(|w| w.trim_end_matches('/').to_string())
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    std::fs::write(path, text).map_err(|source| Error::Io {
        what: format!("cannot write {}", path.display()),
        source,
    })
}

async fn shell(script: &str) -> Result<(), Error> {
    let out = Command::new("sh")
        .args(["-c", script])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|source| Error::Io {
            what: "cannot run sh".into(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail: Vec<&str> = stdout.lines().chain(stderr.lines()).collect();
    Err(Error::BaseImage(format!(
        "`{script}` failed:\n{}",
        tail[tail.len().saturating_sub(15)..].join("\n")
    )))
}

/// A scratch folder for the root filesystem, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<Self, Error> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("provision-rootfs-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| Error::Io {
            what: format!("cannot create {}", path.display()),
            source,
        })?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A failed debootstrap may leave /proc or /sys mounted in the rootfs:
        // detach those first so removal never descends into them.
        let prefix = format!("{}/", self.0.display());
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let mut points: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|p| p.starts_with(&prefix))
                .collect();
            points.sort_by_key(|p| std::cmp::Reverse(p.len()));
            for point in points {
                if let Ok(c) = std::ffi::CString::new(point) {
                    // SAFETY: a valid C string; MNT_DETACH only unmounts.
                    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::debian_mirror;

    #[test]
    fn finds_the_mirror_in_both_formats() {
        let deb822 = "Types: deb\n# http://snapshot.debian.org/archive/debian/2025\n\
                      URIs: http://deb.debian.org/debian\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian-security\n";
        assert_eq!(
            debian_mirror(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let one_line = "deb http://ftp.de.debian.org/debian/ bookworm main\n";
        assert_eq!(
            debian_mirror(one_line).as_deref(),
            Some("http://ftp.de.debian.org/debian")
        );
        assert_eq!(
            debian_mirror("deb http://archive.ubuntu.com/ubuntu jammy main"),
            None
        );
    }
}
