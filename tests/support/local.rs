//! Small facts of this computer that tests check or need: a file's mode, a
//! port on 127.0.0.1 where nothing listens.

#![allow(dead_code)] // each test file uses its own part

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The permission bits of a file or folder (with setuid, setgid, sticky).
pub fn mode(p: &Path) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

pub fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// A port on 127.0.0.1 where nothing listens (a connection fails at once).
pub fn closed_port() -> u16 {
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}
