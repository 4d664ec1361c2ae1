//! Harness for end-to-end tests: the test kit (`rollcall-testkit`), under the names the
//! tests use. Servers start in-process ([`Server::in_process`]) unless a test kills,
//! restarts or measures them ([`Server::start`] runs the real binary).

pub use rollcall_testkit::*;
