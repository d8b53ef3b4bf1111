//! Stats on ns: the app's cgroup figures (cgroup v1 controllers, or the unified hierarchy),
//! as containerd's cgroup v1 `Metrics`.

use std::path::{Path, PathBuf};

use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::MessageField;

fn read_u64(p: &Path) -> Option<u64> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

fn keyed(p: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Figures from whichever of the app's cgroup directories has them.
pub fn metrics(dirs: &[PathBuf]) -> Metrics {
    let mut m = Metrics::new();
    let find = |f: &str| dirs.iter().map(|d| d.join(f)).find(|p| p.exists());
    if let Some(p) = find("memory.usage_in_bytes") {
        let d = p.parent().unwrap();
        let mut ms = MemoryStat::new();
        ms.usage = MessageField::some(MemoryEntry {
            usage: read_u64(&p).unwrap_or(0),
            limit: read_u64(&d.join("memory.limit_in_bytes")).unwrap_or(0),
            max: read_u64(&d.join("memory.max_usage_in_bytes")).unwrap_or(0),
            failcnt: read_u64(&d.join("memory.failcnt")).unwrap_or(0),
            ..Default::default()
        });
        for (k, v) in keyed(&d.join("memory.stat")) {
            match k.as_str() {
                "cache" => ms.cache = v,
                "rss" => ms.rss = v,
                "mapped_file" => ms.mapped_file = v,
                "pgfault" => ms.pg_fault = v,
                "pgmajfault" => ms.pg_maj_fault = v,
                "total_cache" => ms.total_cache = v,
                "total_rss" => ms.total_rss = v,
                _ => {}
            }
        }
        m.memory = MessageField::some(ms);
    } else if let Some(p) = find("memory.current") {
        let d = p.parent().unwrap();
        let mut ms = MemoryStat::new();
        ms.usage = MessageField::some(MemoryEntry {
            usage: read_u64(&p).unwrap_or(0),
            limit: read_u64(&d.join("memory.max")).unwrap_or(u64::MAX),
            ..Default::default()
        });
        m.memory = MessageField::some(ms);
    }
    if let Some(p) = find("cpuacct.usage") {
        let d = p.parent().unwrap();
        let mut u = CPUUsage {
            total: read_u64(&p).unwrap_or(0),
            ..Default::default()
        };
        // cpuacct.stat is in USER_HZ ticks (100 per second).
        for (k, v) in keyed(&d.join("cpuacct.stat")) {
            match k.as_str() {
                "user" => u.user = v * 10_000_000,
                "system" => u.kernel = v * 10_000_000,
                _ => {}
            }
        }
        m.cpu = MessageField::some(CPUStat {
            usage: MessageField::some(u),
            ..Default::default()
        });
    } else if let Some(p) = find("cpu.stat") {
        let mut u = CPUUsage::new();
        for (k, v) in keyed(&p) {
            match k.as_str() {
                "usage_usec" => u.total = v * 1000,
                "user_usec" => u.user = v * 1000,
                "system_usec" => u.kernel = v * 1000,
                _ => {}
            }
        }
        m.cpu = MessageField::some(CPUStat {
            usage: MessageField::some(u),
            ..Default::default()
        });
    }
    if let Some(p) = find("pids.current") {
        let max = std::fs::read_to_string(p.with_file_name("pids.max")).unwrap_or_default();
        m.pids = MessageField::some(PidsStat {
            current: read_u64(&p).unwrap_or(0),
            limit: max.trim().parse().unwrap_or(0),
            ..Default::default()
        });
    }
    m
}
