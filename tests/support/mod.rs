//! Shared helpers for integration tests (`mod support;` in a test file):
//! one end-to-end lab (`lab`, with `run`, `stack`, `wait`, `http`) and the
//! sshd fixture of the SSH transport tests (`sshd`), the app tarball's
//! fetch as the plan has it (`fetch`).
#![allow(dead_code)] // each test file uses its own part

pub mod fetch;
pub mod http;
pub mod lab;
pub mod local;
pub mod run;
pub mod secrets;
pub mod sshd;
pub mod stack;
pub mod wait;
