//! What a test does when something it needs is missing (a tool, a privilege, a kernel
//! feature): it never passes silently. Under CI (`CI` set to anything but `false` or
//! `0`) it fails with the reason; elsewhere it prints the reason in a banner on stderr
//! and returns, so that a developer without, say, `nats-server` can still run the rest
//! and sees what did not run.
//!
//! ```text
//! let Some(nats) = require::program("nats-server", "apt-get install -y nats-server") else {
//!     return; // skipped, and said so (failed instead under CI)
//! };
//! ```

use std::path::PathBuf;

/// Whether the tests run under CI (`CI` set, and not `false` or `0`).
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// The test cannot run because of `reason`: panics under CI; otherwise prints a
/// banner naming the test and the reason. Return from the test right after.
///
/// The banner goes straight to the process's stderr, past the test harness's output
/// capture (which would show it only for a failed test), so a passing run shows it.
pub fn cannot_run(reason: &str) {
    cannot_run_under(under_ci(), reason);
}

fn cannot_run_under(ci: bool, reason: &str) {
    use std::io::Write as _;
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    assert!(!ci, "{test} cannot run: {reason}");
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n!!!!!!!!!! SKIPPED {test}\n!!!!!!!!!! it cannot run here: {reason}\n!!!!!!!!!! (under CI, with CI set, this fails)\n"
    );
}

/// `condition` holds, or the test cannot run because of `reason` (see
/// [`cannot_run`]); returns `condition`.
pub fn that(condition: bool, reason: &str) -> bool {
    if !condition {
        cannot_run(reason);
    }
    condition
}

/// The path of `program` on `PATH`, or `None` after [`cannot_run`] with the command
/// that installs it.
pub fn program(program: &str, install: &str) -> Option<PathBuf> {
    let found = find_program(program);
    if found.is_none() {
        cannot_run(&format!(
            "`{program}` is not on PATH; install it: {install}"
        ));
    }
    found
}

/// The path of `program` on `PATH`, if it is there.
pub fn find_program(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::{cannot_run_under, find_program};

    #[test]
    #[should_panic(expected = "cannot run: no frobnicator")]
    fn under_ci_a_test_that_cannot_run_fails() {
        cannot_run_under(true, "no frobnicator");
    }

    #[test]
    fn elsewhere_it_says_so_and_returns() {
        cannot_run_under(false, "no frobnicator (this banner is expected)");
    }

    #[test]
    fn programs_are_found_on_path() {
        assert!(find_program("sh").is_some());
        assert!(find_program("surely-no-such-program-here").is_none());
    }
}
