//! The standard `process_*` metrics, sluice's own collector.

use std::collections::HashMap;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::Gauge;

/// The standard `process_*` metrics, read from `/proc/self` at each scrape.
pub struct Process {
    descs: Vec<Desc>,
    clock_ticks: f64,
    page_size: f64,
    boot_time: f64,
}

const PROCESS: [(&str, &str); 6] = [
    ("process_cpu_seconds_total", "Total user and system CPU time spent in seconds."),
    ("process_resident_memory_bytes", "Resident memory size in bytes."),
    ("process_virtual_memory_bytes", "Virtual memory size in bytes."),
    ("process_open_fds", "Number of open file descriptors."),
    ("process_max_fds", "Maximum number of open file descriptors."),
    ("process_start_time_seconds", "Start time of the process since unix epoch in seconds."),
];

impl Process {
    pub fn new() -> Self {
        let descs = PROCESS
            .iter()
            .map(|(name, help)| Desc::new(name.to_string(), help.to_string(), vec![], HashMap::new()))
            .collect::<Result<_, _>>()
            .expect("valid descriptors");
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ")?.trim().parse().ok()))
            .unwrap_or(0.0);
        // Linux fixes USER_HZ at 100 and x86-64 and aarch64 pages at 4 KiB for user space.
        Self { descs, clock_ticks: 100.0, page_size: 4096.0, boot_time }
    }

    fn read(&self) -> Option<[f64; 6]> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
        let cpu = (field(14)? + field(15)?) / self.clock_ticks;
        let start = self.boot_time + field(22)? / self.clock_ticks;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as f64;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()?
            .lines()
            .find(|l| l.starts_with("Max open files"))?
            .split_whitespace()
            .nth(3)?
            .parse()
            .ok()?;
        Some([cpu, field(24)? * self.page_size, field(23)?, open_fds, max_fds, start])
    }
}

impl Collector for Process {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(values) = self.read() else { return Vec::new() };
        PROCESS
            .iter()
            .zip(values)
            .flat_map(|((name, help), value)| {
                let family: Box<dyn Collector> = if name.ends_with("_total") {
                    let c = prometheus::Counter::new(*name, *help).expect("valid metric");
                    c.inc_by(value);
                    Box::new(c)
                } else {
                    let g = Gauge::new(*name, *help).expect("valid metric");
                    g.set(value);
                    Box::new(g)
                };
                family.collect()
            })
            .collect()
    }
}
