//! CPU time and peak memory of processes, from `/proc`.
//!
//! CPU is the first field of `/proc/PID/task/TID/schedstat` (nanoseconds
//! on a CPU), summed over the process's threads: exact, unlike the 10 ms
//! ticks of `/proc/PID/stat`. A thread that exits inside a window takes its
//! time with it, so each sample also reads `utime + stime` of
//! `/proc/PID/stat` (which keeps dead threads' time) and the larger of the
//! two deltas is used.

use std::path::Path;
use std::time::Duration;

/// Clock ticks per second of `/proc/PID/stat` (`USER_HZ`, 100 on Linux).
const USER_HZ: u64 = 100;

/// One reading of a set of processes.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSample {
    /// Summed schedstat run time of their threads alive now, in ns.
    pub schedstat_ns: u64,
    /// Summed `utime + stime` (ticks), dead threads included.
    pub ticks: u64,
    /// Summed schedstat time runnable but waiting for a CPU (the second
    /// field), in ns.
    pub wait_ns: u64,
    /// Summed schedstat timeslices run (the third field).
    pub slices: u64,
}

impl CpuSample {
    /// Reads the processes `pids` (those that are gone count 0).
    pub fn read(pids: &[u32]) -> CpuSample {
        let mut sample = CpuSample::default();
        for &pid in pids {
            let [run, wait, slices] = schedstat(pid);
            sample.schedstat_ns += run;
            sample.wait_ns += wait;
            sample.slices += slices;
            sample.ticks += stat_ticks(pid);
        }
        sample
    }

    /// The mean time a thread waited for a CPU before it ran, between
    /// `earlier` and `self` (the scheduler's part of any latency).
    pub fn mean_wait_since(&self, earlier: &CpuSample) -> Option<Duration> {
        let slices = self.slices.checked_sub(earlier.slices).filter(|&n| n > 0)?;
        let wait = self.wait_ns.saturating_sub(earlier.wait_ns);
        Some(Duration::from_nanos(wait / slices))
    }

    /// CPU time used between `earlier` and `self`.
    pub fn since(&self, earlier: &CpuSample) -> Duration {
        let sched = self.schedstat_ns.saturating_sub(earlier.schedstat_ns);
        let ticks_ns = self.ticks.saturating_sub(earlier.ticks) * (1_000_000_000 / USER_HZ);
        // Ticks are coarse: only trust them when they say clearly more
        // (a thread died in between).
        let ns = if ticks_ns > sched + 20_000_000 {
            ticks_ns
        } else {
            sched
        };
        Duration::from_nanos(ns)
    }
}

/// Run time, wait time (ns) and timeslices, summed over the threads.
fn schedstat(pid: u32) -> [u64; 3] {
    let mut sum = [0u64; 3];
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return sum;
    };
    for text in tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
    {
        for (total, field) in sum.iter_mut().zip(text.split_whitespace()) {
            *total += field.parse::<u64>().unwrap_or(0);
        }
    }
    sum
}

fn stat_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command (which may hold spaces and parentheses).
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime 15.
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// A line of `/proc/PID/status` in kB (`VmHWM`, `VmRSS`), as bytes.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// The pids of the shims serving the containerd at `socket` (their command
/// line has `containerd-shim` and `-address <socket>`).
pub fn shim_pids(socket: &Path) -> Vec<u32> {
    let Some(socket) = socket.to_str() else {
        return Vec::new();
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in procs.filter_map(Result::ok) {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let is_shim = args
            .first()
            .is_some_and(|a| a.windows(15).any(|w| w == b"containerd-shim"));
        let serves = args
            .windows(2)
            .any(|w| w[0] == b"-address" && w[1] == socket.as_bytes());
        if is_shim && serves {
            pids.push(pid);
        }
    }
    pids
}
