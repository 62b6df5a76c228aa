//! provision: a multi-host provisioner for the Rails on Docker stack.
//!
//! Data flows one way: hosts.toml -> inventory -> plan -> per-host steps ->
//! transport -> report. The pure core (inventory, plan, commands, templates)
//! does no I/O; the edge (transport, machines, events, renderers) does.

pub mod app_folder;
pub mod backup;
pub mod cli;
pub mod commands;
pub mod data_paths;
pub mod dev;
pub mod diagnostics;
pub mod docker_api;
pub mod dockerignore;
pub mod events;
pub mod executor;
pub mod firewall;
pub mod host_lock;
pub mod images;
pub mod inventory;
pub mod load;
pub mod machines;
pub mod plan;
pub mod plan_output;
pub mod private;
pub mod probe;
pub mod reach;
pub mod readiness;
pub mod releases;
pub mod render;
pub mod run;
pub mod runtime;
pub mod secrets;
pub mod session;
pub mod status;
pub mod swarm_join;
pub mod templates;
pub mod timing;
pub mod transport;
