//! cgroups for pods and apps: `rkt/<pod uuid>/<app>` in the memory, cpu, cpuacct and pids
//! hierarchies (cgroup v1, also in a hybrid layout) or in the unified hierarchy (v2).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use crate::spec::AppSpec;

/// Controllers whose hierarchies hold the pod's cgroups.
const MANAGED: &[&str] = &["memory", "cpu", "cpuacct", "pids"];
/// CFS period used for `--cpu` (rkt: 100 ms).
pub const CFS_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mountpoint: PathBuf,
    /// Mount options naming the hierarchy: controllers (`cpu`, `cpuacct`) or `name=systemd`.
    pub controllers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// cgroup v1 hierarchies, plus the v2 mount of a hybrid layout if any.
    V1 {
        hierarchies: Vec<Hierarchy>,
        unified: Option<PathBuf>,
    },
    V2 {
        root: PathBuf,
    },
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// One line of /proc/self/mountinfo: (mount point, fs type, super options).
pub fn parse_mountinfo(text: &str) -> Vec<(PathBuf, String, String)> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let mp = pre.split(' ').nth(4)?;
            let mut post = post.split(' ');
            let fstype = post.next()?.to_string();
            let _src = post.next()?;
            let opts = post.next().unwrap_or("").to_string();
            Some((PathBuf::from(unescape_mountinfo(mp)), fstype, opts))
        })
        .collect()
}

/// Finds the cgroup layout from mountinfo text and the kernel's controller list (/proc/cgroups).
pub fn layout_from(mountinfo: &str, known_controllers: &[String]) -> anyhow::Result<Layout> {
    let mut hierarchies = Vec::new();
    let mut unified = None;
    for (mp, fstype, opts) in parse_mountinfo(mountinfo) {
        match fstype.as_str() {
            "cgroup" => {
                let controllers: Vec<String> = opts
                    .split(',')
                    .filter(|o| o.starts_with("name=") || known_controllers.iter().any(|k| k == o))
                    .map(str::to_string)
                    .collect();
                if !controllers.is_empty()
                    && !hierarchies
                        .iter()
                        .any(|h: &Hierarchy| h.controllers == controllers)
                {
                    hierarchies.push(Hierarchy {
                        mountpoint: mp,
                        controllers,
                    });
                }
            }
            "cgroup2" if unified.is_none() => unified = Some(mp),
            _ => {}
        }
    }
    if !hierarchies.is_empty() {
        return Ok(Layout::V1 {
            hierarchies,
            unified,
        });
    }
    match unified {
        Some(root) => Ok(Layout::V2 { root }),
        None => bail!("no cgroup filesystem is mounted"),
    }
}

/// The layout of the calling process's mount namespace.
pub fn detect() -> anyhow::Result<Layout> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    let known: Vec<String> = std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    layout_from(&mi, &known)
}

/// Relative cgroup path of a pod.
pub fn pod_path(uuid: &str) -> PathBuf {
    PathBuf::from("rkt").join(uuid)
}

/// Relative cgroup path of an app.
pub fn app_path(uuid: &str, app: &str) -> PathBuf {
    pod_path(uuid).join(app)
}

impl Layout {
    /// Directories (absolute) of the relative cgroup `rel` in every managed hierarchy.
    pub fn dirs(&self, rel: &Path) -> Vec<PathBuf> {
        match self {
            Layout::V1 { hierarchies, .. } => hierarchies
                .iter()
                .filter(|h| h.controllers.iter().any(|c| MANAGED.contains(&c.as_str())))
                .map(|h| h.mountpoint.join(rel))
                .collect(),
            Layout::V2 { root } => vec![root.join(rel)],
        }
    }

    fn dir_with(&self, controller: &str, rel: &Path) -> Option<PathBuf> {
        match self {
            Layout::V1 { hierarchies, .. } => hierarchies
                .iter()
                .find(|h| h.controllers.iter().any(|c| c == controller))
                .map(|h| h.mountpoint.join(rel)),
            Layout::V2 { root } => Some(root.join(rel)),
        }
    }
}

/// The files and values that implement an app's limits: (controller, file, value).
pub fn limit_files(layout: &Layout, app: &AppSpec) -> Vec<(&'static str, &'static str, String)> {
    let v2 = matches!(layout, Layout::V2 { .. });
    let mut out = Vec::new();
    if let Some(m) = app.memory_limit {
        out.push((
            "memory",
            if v2 {
                "memory.max"
            } else {
                "memory.limit_in_bytes"
            },
            m.to_string(),
        ));
    }
    if let Some(millis) = app.cpu_millis {
        // quota = share of one CPU per period; the kernel's minimum quota is 1 ms.
        let quota = (millis * CFS_PERIOD_US / 1000).max(1000);
        if v2 {
            out.push(("cpu", "cpu.max", format!("{quota} {CFS_PERIOD_US}")));
        } else {
            out.push(("cpu", "cpu.cfs_period_us", CFS_PERIOD_US.to_string()));
            out.push(("cpu", "cpu.cfs_quota_us", quota.to_string()));
        }
    }
    if let Some(shares) = app.cpu_shares {
        if v2 {
            out.push(("cpu", "cpu.weight", shares_to_weight(shares).to_string()));
        } else {
            out.push(("cpu", "cpu.shares", shares.max(2).to_string()));
        }
    }
    out
}

/// v1 cpu.shares (2..262144, default 1024) to v2 cpu.weight (1..10000, default 100).
pub fn shares_to_weight(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9999) / 262_142
}

fn write(path: &Path, value: &str) -> anyhow::Result<()> {
    std::fs::write(path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

/// Creates the app's cgroup (and its pod's) and applies the app's limits.
pub fn create_app(layout: &Layout, uuid: &str, app: &AppSpec) -> anyhow::Result<()> {
    let rel = app_path(uuid, &app.name);
    if let Layout::V2 { root } = layout {
        // Controllers must be enabled in every parent's subtree_control.
        let avail = std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let want: Vec<String> = ["memory", "cpu", "pids"]
            .iter()
            .filter(|c| avail.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        let mut dir = root.clone();
        for comp in pod_path(uuid).components() {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), want.join(" "));
            dir = dir.join(comp);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating cgroup {}", dir.display()))?;
        }
        let _ = std::fs::write(dir.join("cgroup.subtree_control"), want.join(" "));
    }
    for d in layout.dirs(&rel) {
        std::fs::create_dir_all(&d).with_context(|| format!("creating cgroup {}", d.display()))?;
    }
    for (controller, file, value) in limit_files(layout, app) {
        let Some(d) = layout.dir_with(controller, &rel) else {
            bail!(
                "the {controller} cgroup controller is not available for --{}",
                if controller == "memory" {
                    "memory"
                } else {
                    "cpu"
                }
            );
        };
        write(&d.join(file), &value)?;
    }
    Ok(())
}

/// Moves `pid` (0: the caller) into the relative cgroup `rel` of every managed hierarchy.
pub fn join(layout: &Layout, rel: &Path, pid: i32) -> anyhow::Result<()> {
    for d in layout.dirs(rel) {
        write(&d.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(())
}

fn procs(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills whatever still runs in the pod's cgroups and removes them. Missing cgroups are fine.
pub fn remove_pod(layout: &Layout, uuid: &str) -> anyhow::Result<()> {
    let pod = pod_path(uuid);
    for top in layout.dirs(&pod) {
        if !top.exists() {
            continue;
        }
        let mut children: Vec<PathBuf> = std::fs::read_dir(&top)?
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .map(|e| e.path())
            .collect();
        children.push(top.clone());
        for dir in &children {
            // A few rounds: a dying process may fork once more.
            for _ in 0..50 {
                let p = procs(dir);
                if p.is_empty() {
                    break;
                }
                for pid in p {
                    // SAFETY: plain kill(2).
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let mut last = None;
            for _ in 0..50 {
                match std::fs::remove_dir(dir) {
                    Ok(()) => {
                        last = None;
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        last = None;
                        break;
                    }
                    Err(e) => last = Some(e),
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            if let Some(e) = last {
                return Err(e).with_context(|| format!("removing cgroup {}", dir.display()));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n\
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n\
36 31 0:33 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd\n\
40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
41 31 0:38 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n";

    fn known() -> Vec<String> {
        ["cpu", "cpuacct", "memory", "pids"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn app() -> AppSpec {
        crate::test_app()
    }

    #[test]
    fn detects_hybrid_v1() {
        let l = layout_from(HYBRID, &known()).unwrap();
        let Layout::V1 {
            hierarchies,
            unified,
        } = &l
        else {
            panic!("{l:?}")
        };
        assert_eq!(
            unified.as_deref(),
            Some(Path::new("/sys/fs/cgroup/unified"))
        );
        assert_eq!(hierarchies[3].controllers, vec!["name=systemd"]);
        assert_eq!(hierarchies[4].controllers, vec!["cpu", "cpuacct"]);
        let dirs = l.dirs(&app_path("u", "a"));
        assert!(dirs.contains(&PathBuf::from("/sys/fs/cgroup/memory/rkt/u/a")));
        assert!(!dirs.iter().any(|d| d.starts_with("/sys/fs/cgroup/systemd")));
    }

    #[test]
    fn detects_v2() {
        let mi = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            layout_from(mi, &known()).unwrap(),
            Layout::V2 {
                root: "/sys/fs/cgroup".into()
            }
        );
        assert!(layout_from("", &known()).is_err());
    }

    #[test]
    fn renders_limits_for_both_versions() {
        let v1 = layout_from(HYBRID, &known()).unwrap();
        let f = limit_files(&v1, &app());
        assert!(f.contains(&("memory", "memory.limit_in_bytes", "67108864".into())));
        assert!(f.contains(&("cpu", "cpu.cfs_quota_us", "50000".into())));
        assert!(f.contains(&("cpu", "cpu.shares", "512".into())));
        let v2 = Layout::V2 { root: "/x".into() };
        let f = limit_files(&v2, &app());
        assert!(f.contains(&("memory", "memory.max", "67108864".into())));
        assert!(f.contains(&("cpu", "cpu.max", "50000 100000".into())));
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn creates_v2_cgroups_with_controllers_enabled_along_the_path() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        let l = Layout::V2 {
            root: d.path().to_path_buf(),
        };
        create_app(&l, "u1", &app()).unwrap();
        let read = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        for dir in ["", "rkt", "rkt/u1"] {
            let p = if dir.is_empty() {
                "cgroup.subtree_control".to_string()
            } else {
                format!("{dir}/cgroup.subtree_control")
            };
            assert_eq!(read(&p), "+memory +cpu +pids", "{p}");
        }
        assert_eq!(read("rkt/u1/a/memory.max"), "67108864");
        assert_eq!(read("rkt/u1/a/cpu.max"), "50000 100000");
        assert_eq!(
            read("rkt/u1/a/cpu.weight"),
            shares_to_weight(512).to_string()
        );
    }

    #[test]
    fn creates_v1_cgroups_in_the_managed_hierarchies_only() {
        let d = tempfile::tempdir().unwrap();
        let h = |c: &str| Hierarchy {
            mountpoint: d.path().join(c),
            controllers: vec![c.to_string()],
        };
        let l = Layout::V1 {
            hierarchies: vec![h("memory"), h("cpu"), h("devices")],
            unified: None,
        };
        create_app(&l, "u1", &app()).unwrap();
        let read = |p: &str| std::fs::read_to_string(d.path().join(p)).unwrap();
        assert_eq!(read("memory/rkt/u1/a/memory.limit_in_bytes"), "67108864");
        assert_eq!(read("cpu/rkt/u1/a/cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu/rkt/u1/a/cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu/rkt/u1/a/cpu.shares"), "512");
        assert!(!d.path().join("devices/rkt").exists());
        // A limit whose controller is missing is refused, not ignored.
        let l = Layout::V1 {
            hierarchies: vec![h("cpu")],
            unified: None,
        };
        let e = create_app(&l, "u2", &app()).unwrap_err().to_string();
        assert!(e.contains("memory"), "{e}");
    }

    #[test]
    fn unescapes_mount_points() {
        let mi = "1 2 0:1 / /a\\040b rw - tmpfs tmpfs rw\n";
        assert_eq!(parse_mountinfo(mi)[0].0, PathBuf::from("/a b"));
    }
}
