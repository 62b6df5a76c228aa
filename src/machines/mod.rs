//! Local playground machines: Debian bookworm containers on the local Docker
//! engine that behave like small VMs (systemd as PID 1, or no init), each with
//! sshd, its own address on a per-project network and its own
//! /var/lib/docker volume, so a `machine = "local"` host is a blank SSH host.
//!
//! - `spec`: what a machine is, derived names, validation (pure)
//! - `image`: machine Dockerfiles and their content hash (pure)
//! - `commands`: docker command lines as values (pure)
//! - `keys`: the project key and known_hosts
//! - `engine`, `base_image`: make sure an engine and `debian:bookworm` exist
//! - `docker`, `lock`: run docker; cross-process locks
//! - `playground`: `Playground::up/down/status`
//!
//! ```no_run
//! # async fn demo() -> Result<(), provision::machines::Error> {
//! use provision::machines::{Init, MachineSpec, Playground};
//! let mut db = MachineSpec::new("shop", "db", "10.213.7.11".parse().unwrap());
//! db.init = Init::None;
//! let web = MachineSpec::new("shop", "web", "10.213.7.10".parse().unwrap());
//! let playground = Playground::new(".provision");
//! for m in playground.up(&[web, db]).await? {
//!     println!("{} at {}:{}", m.name, m.address, m.ssh_port);
//! }
//! # Ok(()) }
//! ```

mod base_image;
pub mod commands;
mod docker;
mod engine;
pub mod image;
pub mod keys;
mod lock;
mod playground;
mod spec;

/// Whether the local engine has this image, asked on its socket (None: it
/// cannot tell that way).
pub async fn local_image_exists(image: &str) -> Option<bool> {
    docker::image_exists_via_socket(image).await
}

pub use playground::{
    MachineInfo, MachineState, MachineStatus, Playground, UpAction, DEFAULT_BASE_IMAGE,
};
pub use spec::{
    network_name, subnet_of, validate, Cpus, Init, MachineSpec, PortForward, LABEL_MACHINE,
    LABEL_PROJECT,
};

/// Everything that can go wrong with the playground, worded for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The specs (or a key file) are not usable as given.
    #[error("{0}")]
    Invalid(String),
    #[error("`docker {command}` failed: {message}")]
    Docker { command: String, message: String },
    /// No usable local engine.
    #[error("{0}")]
    Engine(String),
    /// No base image and no way to build it.
    #[error("{0}")]
    BaseImage(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}
