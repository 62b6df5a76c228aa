//! Exit codes, in one place for every verb: 0 done, 1 a host failed, 2 bad
//! input (nothing was run).

pub const EXIT_OK: i32 = 0;
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;
