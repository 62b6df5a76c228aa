//! Shared helpers for integration tests (`mod support;` in a test file).
pub mod lab;
pub mod sshd;
