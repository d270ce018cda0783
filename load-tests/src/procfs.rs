//! Process figures from `/proc`: CPU time and memory of the server and of the client processes,
//! and which processes listen on the server's port.

use std::collections::HashSet;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// `/proc` reports CPU time in USER_HZ ticks, which Linux fixes at 100 on the architectures we run on.
const TICKS_PER_SEC: f64 = 100.0;

/// User+system CPU seconds of a process, from `/proc/<pid>/stat` fields 14 and 15.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; the numeric fields start after its closing ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SEC)
}

/// CPU seconds summed over processes (those that went away count as zero).
pub fn cpu_seconds_sum(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|&pid| cpu_seconds(pid)).sum()
}

/// Resident memory of a set of processes, in KiB.
#[derive(Debug, Clone, Copy, Default, Serialize, serde::Deserialize)]
pub struct Memory {
    /// Sum of `VmRSS`: pages shared between the processes count once per process.
    pub rss_kib: u64,
    /// Sum of the proportional set size: shared pages split between the processes that map them.
    pub pss_kib: u64,
}

/// RSS and PSS of `pids`, summed.
pub fn memory(pids: &[u32]) -> Memory {
    let mut total = Memory::default();
    for &pid in pids {
        total.rss_kib += kib_field(&format!("/proc/{pid}/status"), "VmRSS:").unwrap_or(0);
        total.pss_kib += kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:").unwrap_or(0);
    }
    total
}

fn kib_field(path: &str, name: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(name))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Processes holding a socket that listens on TCP `port` (for nginx: the master and every
/// worker). Needs permission to read other processes' `/proc/<pid>/fd`.
pub fn listeners(port: u16) -> Result<Vec<u32>> {
    let mut inodes = HashSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT, st 0A is LISTEN, inode is field 10.
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.insert(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        bail!("nothing listens on TCP port {port}");
    }
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .ok()
                .and_then(|target| target.to_str().map(|t| inodes.contains(t)))
                .unwrap_or(false)
        });
        if holds {
            pids.push(pid);
        }
    }
    if pids.is_empty() {
        bail!("no readable process holds the socket listening on port {port}; pass --server-pid");
    }
    pids.sort_unstable();
    Ok(pids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_memory() {
        if cfg!(target_os = "linux") {
            let me = std::process::id();
            assert!(cpu_seconds(me).is_some());
            assert!(memory(&[me]).rss_kib > 0);
        }
    }

    #[test]
    fn finds_the_process_listening_on_a_port() -> Result<()> {
        if !cfg!(target_os = "linux") {
            return Ok(());
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        assert_eq!(listeners(port)?, vec![std::process::id()]);
        Ok(())
    }
}
