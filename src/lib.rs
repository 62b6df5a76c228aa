//! provision: a multi-host provisioner for the Rails on Docker stack.
//!
//! Data flows one way: hosts.toml -> inventory -> plan -> per-host steps ->
//! transport -> report. The pure core (inventory, plan, commands, templates)
//! does no I/O; the edge (transport, machines, progress) does.

pub mod machines;
pub mod transport;
