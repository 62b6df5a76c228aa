//! Shared helpers for integration tests (`mod support;` in a test file):
//! one end-to-end lab (`lab`, with `run`, `stack`, `wait`, `http`) and the
//! sshd fixture of the SSH transport tests (`sshd`).
#![allow(dead_code)] // each test file uses its own part

pub mod http;
pub mod lab;
pub mod local;
pub mod run;
pub mod secrets;
pub mod sshd;
pub mod stack;
pub mod wait;
