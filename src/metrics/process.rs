//! The standard `process_*` metrics, read from `/proc` at each scrape
//! (Linux only: elsewhere the families are left out), as Prometheus's own
//! client libraries name them.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// `/proc`'s clock ticks per second (USER_HZ). Fixed at 100 by the kernel's
/// ABI on the architectures the gateway runs on; Prometheus's procfs
/// library assumes the same, and asking (sysconf) would need `unsafe`.
const USER_HZ: f64 = 100.0;

#[derive(Debug)]
pub(super) struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(now) = Process::read() else {
            return Ok(());
        };
        let cpu = ConstCounter::new(now.cpu_seconds);
        cpu.encode(encoder.encode_descriptor(
            "process_cpu_seconds",
            "total user and system CPU time spent, in seconds",
            None,
            cpu.metric_type(),
        )?)?;
        let gauges = [
            (
                "process_resident_memory_bytes",
                "resident memory size, in bytes",
                Some(now.resident_bytes),
            ),
            (
                "process_virtual_memory_bytes",
                "virtual memory size, in bytes",
                Some(now.virtual_bytes),
            ),
            ("process_open_fds", "open file descriptors", now.open_fds),
            (
                "process_max_fds",
                "the most file descriptors the process may open (its soft limit)",
                now.max_fds,
            ),
            (
                "process_start_time_seconds",
                "when the process started, in seconds since the Unix epoch",
                now.start_time_seconds,
            ),
        ];
        for (name, help, value) in gauges {
            let Some(value) = value else { continue };
            let gauge = ConstGauge::new(value);
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// One reading of `/proc/self`; a figure that cannot be read is left out.
struct Process {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
    start_time_seconds: Option<f64>,
}

impl Process {
    fn read() -> Option<Self> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let stat = Stat::parse(&stat)?;
        let resident_bytes = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| status_bytes(&status, "VmRSS"))?;
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|entries| entries.count() as f64);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|limits| soft_limit(&limits, "Max open files"));
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| boot_time(&s));
        Some(Self {
            cpu_seconds: (stat.utime + stat.stime) as f64 / USER_HZ,
            resident_bytes,
            virtual_bytes: stat.vsize as f64,
            open_fds,
            max_fds,
            start_time_seconds: boot_time.map(|boot| boot + stat.starttime as f64 / USER_HZ),
        })
    }
}

/// The fields of `/proc/self/stat` the metrics use.
#[derive(Debug, PartialEq)]
struct Stat {
    utime: u64,
    stime: u64,
    starttime: u64,
    vsize: u64,
}

impl Stat {
    /// The command name (field 2) may hold spaces and parentheses: the
    /// fields are counted from its last `)`.
    fn parse(stat: &str) -> Option<Self> {
        let rest = &stat[stat.rfind(')')? + 1..];
        // Field 3 (state) is the first after the name.
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
        Some(Self {
            utime: field(14)?,
            stime: field(15)?,
            starttime: field(22)?,
            vsize: field(23)?,
        })
    }
}

/// A `kB` row of `/proc/self/status` (`VmRSS`), in bytes: exact, where
/// stat's page count would need the page size.
fn status_bytes(status: &str, row: &str) -> Option<f64> {
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix(row)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kb * 1024.0)
}

/// The soft limit of a `/proc/self/limits` row; `unlimited` is left out.
fn soft_limit(limits: &str, row: &str) -> Option<f64> {
    let line = limits.lines().find(|l| l.starts_with(row))?;
    line[row.len()..].split_whitespace().next()?.parse().ok()
}

/// `btime` in `/proc/stat`: when the system booted, in Unix seconds.
fn boot_time(stat: &str) -> Option<f64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 130 0 0 20 0 9 0 123456 987654321 2048 18446744073709551615";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                utime: 250,
                stime: 130,
                starttime: 123456,
                vsize: 987654321,
            })
        );
    }

    #[test]
    fn limits_and_boot_time_are_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 1048576              files     \n";
        assert_eq!(soft_limit(limits, "Max open files"), Some(1024.0));
        assert_eq!(
            boot_time("cpu  1 2 3\nbtime 1764547200\n"),
            Some(1764547200.0)
        );
        let status = "Name:\tx\nVmRSS:\t   14336 kB\nThreads:\t9\n";
        assert_eq!(status_bytes(status, "VmRSS"), Some(14336.0 * 1024.0));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_read() {
        let now = Process::read().expect("/proc/self");
        assert!(now.resident_bytes > 0.0);
        assert!(now.open_fds.is_some_and(|n| n >= 3.0));
        assert!(now.max_fds.is_some_and(|n| n >= 3.0));
        assert!(now.start_time_seconds.is_some_and(|t| t > 1.6e9));
    }
}
