//! A lock shared across processes (an flock on a file in the temp folder), so
//! two provision runs or parallel tests never build the same image twice.

use std::fs::{File, OpenOptions};
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use super::Error;

/// Held while alive; dropping it closes the file and releases the lock.
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

/// Wait for the exclusive lock on `TMPDIR/NAME`.
pub async fn lock(name: &str) -> Result<FileLock, Error> {
    let path: PathBuf = std::env::temp_dir().join(name);
    let shown = path.display().to_string();
    tokio::task::spawn_blocking(move || {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(FileLock { _file: file })
    })
    .await
    .expect("lock task panicked")
    .map_err(|source| Error::Io {
        what: format!("cannot lock {shown}"),
        source,
    })
}
