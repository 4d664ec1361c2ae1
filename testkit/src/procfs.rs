//! What `/proc` says about a process (CPU time, memory, open descriptors) and about
//! the machine's TCP listen queues. Linux only; a field that cannot be read is 0.

use std::sync::OnceLock;
use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` (`getconf CLK_TCK`; 100, the Linux
/// default `USER_HZ`, if that cannot be asked).
pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&ticks| ticks > 0)
            .unwrap_or(100)
    })
}

/// User + system CPU time of a process, from `/proc/PID/stat`; `None` if it cannot be
/// read (no such process).
pub fn try_cpu_time_of(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after ')'.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let ticks = clock_ticks();
    let total = utime + stime;
    Some(
        Duration::from_secs(total / ticks)
            + Duration::from_nanos((total % ticks) * 1_000_000_000 / ticks),
    )
}

/// User + system CPU time of a process (zero if it cannot be read).
pub fn cpu_time_of(pid: u32) -> Duration {
    try_cpu_time_of(pid).unwrap_or_default()
}

/// A `kB` field of `/proc/PID/status` (`"VmRSS:"`, `"VmHWM:"`), in KiB; `None` if it
/// cannot be read.
pub fn try_status_kib(pid: u32, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resident set size of a process, in KiB (0 if it cannot be read).
pub fn rss_kib(pid: u32) -> u64 {
    try_status_kib(pid, "VmRSS:").unwrap_or(0)
}

/// Peak resident set size of a process (`VmHWM`), in KiB (0 if it cannot be read).
pub fn peak_rss_kib(pid: u32) -> u64 {
    try_status_kib(pid, "VmHWM:").unwrap_or(0)
}

/// Open file descriptors of a process (entries of `/proc/PID/fd`; 0 if unreadable).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// CPU time and resident set size (KiB) of a process; `None` if either cannot be read.
pub fn usage(pid: u32) -> Option<(Duration, u64)> {
    Some((try_cpu_time_of(pid)?, try_status_kib(pid, "VmRSS:")?))
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExtListenOverflows` in `/proc/net/netstat`; system-wide).
pub fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::{fd_count, rss_kib, try_cpu_time_of, usage};

    #[test]
    fn this_process_is_readable_and_a_missing_one_is_not() {
        let me = std::process::id();
        // Burn a little CPU so that at least one tick is counted.
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < std::time::Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(try_cpu_time_of(me).is_some_and(|cpu| !cpu.is_zero()));
        assert!(rss_kib(me) > 0);
        assert!(fd_count(me) > 0);
        assert!(usage(me).is_some());
        // Pids are below 2^22 on Linux.
        assert_eq!(usage(u32::MAX), None);
    }
}
