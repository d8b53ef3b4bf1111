//! `inspect`: the test app run inside pods. Each flag prints what a test needs to see from inside
//! the pod as `KEY=value` lines; flags run in the order given. All flags are parsed before any runs,
//! so a typo fails with exit 2 without side effects. Failed actions print `*_ERRNO=` lines and make
//! the exit code 1 unless `--exit-code=N` is given. See images/README.md for the full list.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;

#[derive(Debug, Clone, PartialEq)]
enum Action {
    PrintEnv(String),
    PrintAllEnv,
    PrintUser,
    PrintGroups,
    PrintHostname,
    PrintCaps,
    PrintCgroupLimits,
    PrintMounts,
    ReadFile(String),
    WriteFile {
        path: String,
        content: String,
    },
    Stat(String),
    PrintCwd,
    PrintNoNewPrivs,
    PrintSeccomp,
    CheckSyscall(String),
    Sleep(f64),
    PrintPid,
    PrintOomScoreAdj,
    PrintArgs,
    Echo(String),
    EchoStderr(String),
    /// Sends the text (`\n` for a newline) to `$NOTIFY_SOCKET`, as sd_notify(3) does.
    SdNotify(String),
    TrapSignals,
    IgnoreSignals,
    ReadStdin,
    PrintNs,
    PrintNet,
    ServeTcp(u16),
    Connect(String),
    PrintTty,
    WaitFile(String),
    OpenDev(String),
    Mknod(String),
    TryUserns,
}

#[derive(Debug, PartialEq)]
struct Plan {
    actions: Vec<Action>,
    exit_code: Option<i32>,
}

const USAGE: &str = "usage: inspect [--print-env=VAR] [--print-all-env] [--print-user] [--print-groups] \
[--print-hostname] [--print-caps] [--print-cgroup-limits] [--print-mounts] [--read-file=PATH] \
[--write-file=PATH --content=X] [--stat=PATH] [--print-cwd] [--print-no-new-privs] [--print-seccomp] \
[--check-syscall=NAME] [--sleep=SECS] [--print-pid] [--print-oom-score-adj] [--print-args] \
[--echo=TEXT] [--echo-stderr=TEXT] [--sd-notify=MSG] [--trap-signals] [--ignore-signals] [--read-stdin] [--print-ns] \
[--print-net] [--serve-tcp=PORT] [--connect=HOST:PORT] [--print-tty] [--wait-file=PATH] \
[--open-dev=PATH] [--mknod=PATH:b|c:MAJOR:MINOR] [--try-userns] [--exit-code=N]";

/// Syscalls `--check-syscall` knows how to try harmlessly (see `try_syscall`).
const SYSCALLS: &[&str] = &[
    "reboot",
    "mount",
    "unshare",
    "chroot",
    "swapoff",
    "kexec_load",
    "delete_module",
    "socket",
    "personality",
    "uname",
    "getpid",
];

fn parse(args: &[String]) -> Result<Plan, String> {
    let mut actions = Vec::new();
    let mut exit_code = None;
    for arg in args {
        let (flag, val) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        let need = |v: Option<String>| v.ok_or_else(|| format!("{flag} needs a value ({flag}=…)"));
        let none = |v: &Option<String>| match v {
            Some(_) => Err(format!("{flag} takes no value")),
            None => Ok(()),
        };
        let action = match flag {
            "--print-env" => Action::PrintEnv(need(val)?),
            "--print-all-env" => none(&val).map(|_| Action::PrintAllEnv)?,
            "--print-user" => none(&val).map(|_| Action::PrintUser)?,
            "--print-groups" => none(&val).map(|_| Action::PrintGroups)?,
            "--print-hostname" => none(&val).map(|_| Action::PrintHostname)?,
            "--print-caps" => none(&val).map(|_| Action::PrintCaps)?,
            "--print-cgroup-limits" => none(&val).map(|_| Action::PrintCgroupLimits)?,
            "--print-mounts" => none(&val).map(|_| Action::PrintMounts)?,
            "--read-file" => Action::ReadFile(need(val)?),
            "--write-file" => Action::WriteFile {
                path: need(val)?,
                content: String::new(),
            },
            "--content" => {
                let c = need(val)?;
                match actions.last_mut() {
                    Some(Action::WriteFile { content, .. }) => *content = c,
                    _ => return Err("--content must follow --write-file=PATH".into()),
                }
                continue;
            }
            "--stat" => Action::Stat(need(val)?),
            "--print-cwd" => none(&val).map(|_| Action::PrintCwd)?,
            "--print-no-new-privs" => none(&val).map(|_| Action::PrintNoNewPrivs)?,
            "--print-seccomp" => none(&val).map(|_| Action::PrintSeccomp)?,
            "--check-syscall" => {
                let n = need(val)?;
                if !SYSCALLS.contains(&n.as_str()) {
                    return Err(format!(
                        "--check-syscall: unknown syscall {n:?} (known: {})",
                        SYSCALLS.join(", ")
                    ));
                }
                Action::CheckSyscall(n)
            }
            "--sleep" => {
                let v = need(val)?;
                let s: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                    .ok_or_else(|| format!("--sleep: bad number of seconds {v:?}"))?;
                Action::Sleep(s)
            }
            "--exit-code" => {
                let v = need(val)?;
                exit_code = Some(
                    v.parse::<i32>()
                        .ok()
                        .filter(|c| (0..=255).contains(c))
                        .ok_or_else(|| format!("--exit-code: not a number in 0..255: {v:?}"))?,
                );
                continue;
            }
            "--print-pid" => none(&val).map(|_| Action::PrintPid)?,
            "--print-oom-score-adj" => none(&val).map(|_| Action::PrintOomScoreAdj)?,
            "--print-args" => none(&val).map(|_| Action::PrintArgs)?,
            "--echo" => Action::Echo(need(val)?),
            "--echo-stderr" => Action::EchoStderr(need(val)?),
            "--sd-notify" => Action::SdNotify(need(val)?),
            "--trap-signals" => none(&val).map(|_| Action::TrapSignals)?,
            "--ignore-signals" => none(&val).map(|_| Action::IgnoreSignals)?,
            "--read-stdin" => none(&val).map(|_| Action::ReadStdin)?,
            "--print-ns" => none(&val).map(|_| Action::PrintNs)?,
            "--print-net" => none(&val).map(|_| Action::PrintNet)?,
            "--print-tty" => none(&val).map(|_| Action::PrintTty)?,
            "--wait-file" => Action::WaitFile(need(val)?),
            "--open-dev" => Action::OpenDev(need(val)?),
            "--mknod" => {
                let v = need(val)?;
                parse_mknod(&v)?;
                Action::Mknod(v)
            }
            "--try-userns" => none(&val).map(|_| Action::TryUserns)?,
            "--serve-tcp" => {
                let v = need(val)?;
                Action::ServeTcp(
                    v.parse()
                        .map_err(|_| format!("--serve-tcp: bad port {v:?}"))?,
                )
            }
            "--connect" => {
                let v = need(val)?;
                if v.rsplit_once(':')
                    .and_then(|(_, p)| p.parse::<u16>().ok())
                    .is_none()
                {
                    return Err(format!("--connect: want HOST:PORT, got {v:?}"));
                }
                Action::Connect(v)
            }
            "-h" | "--help" => return Err(USAGE.into()),
            _ => return Err(format!("unknown flag {arg:?}")),
        };
        actions.push(action);
    }
    Ok(Plan { actions, exit_code })
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EINTR => "EINTR",
        libc::EIO => "EIO",
        libc::E2BIG => "E2BIG",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::ENODEV => "ENODEV",
        libc::ENXIO => "ENXIO",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        // Same number as ENOTSUP on Linux; the kernel's name.
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOEXEC => "ENOEXEC",
        libc::ECHILD => "ECHILD",
        libc::ENOTBLK => "ENOTBLK",
        libc::EXDEV => "EXDEV",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOTTY => "ENOTTY",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ESPIPE => "ESPIPE",
        libc::EMLINK => "EMLINK",
        libc::EPIPE => "EPIPE",
        libc::EDOM => "EDOM",
        libc::ERANGE => "ERANGE",
        libc::EDEADLK => "EDEADLK",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOLCK => "ENOLCK",
        libc::ENODATA => "ENODATA",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EPROTOTYPE => "EPROTOTYPE",
        libc::ENOBUFS => "ENOBUFS",
        libc::ENOTCONN => "ENOTCONN",
        libc::EALREADY => "EALREADY",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::ESTALE => "ESTALE",
        libc::ECANCELED => "ECANCELED",
        libc::EOWNERDEAD => "EOWNERDEAD",
        libc::EDQUOT => "EDQUOT",
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ECONNRESET => "ECONNRESET",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        _ => return format!("E{e}"),
    };
    name.to_string()
}

fn io_errno(e: &std::io::Error) -> String {
    e.raw_os_error()
        .map(errno_name)
        .unwrap_or_else(|| "EUNKNOWN".into())
}

/// Capability names by bit number (linux/capability.h).
const CAP_NAMES: &[&str] = &[
    "cap_chown",
    "cap_dac_override",
    "cap_dac_read_search",
    "cap_fowner",
    "cap_fsetid",
    "cap_kill",
    "cap_setgid",
    "cap_setuid",
    "cap_setpcap",
    "cap_linux_immutable",
    "cap_net_bind_service",
    "cap_net_broadcast",
    "cap_net_admin",
    "cap_net_raw",
    "cap_ipc_lock",
    "cap_ipc_owner",
    "cap_sys_module",
    "cap_sys_rawio",
    "cap_sys_chroot",
    "cap_sys_ptrace",
    "cap_sys_pacct",
    "cap_sys_admin",
    "cap_sys_boot",
    "cap_sys_nice",
    "cap_sys_resource",
    "cap_sys_time",
    "cap_sys_tty_config",
    "cap_mknod",
    "cap_lease",
    "cap_audit_write",
    "cap_audit_control",
    "cap_setfcap",
    "cap_mac_override",
    "cap_mac_admin",
    "cap_syslog",
    "cap_wake_alarm",
    "cap_block_suspend",
    "cap_audit_read",
    "cap_perfmon",
    "cap_bpf",
    "cap_checkpoint_restore",
];

/// Comma-separated capability names of a hex mask (`cap_N` for bits without a name).
fn cap_names(mask: u64) -> String {
    (0..64)
        .filter(|b| mask & (1u64 << b) != 0)
        .map(|b| {
            CAP_NAMES
                .get(b as usize)
                .map(|s| s.to_string())
                .unwrap_or_else(|| format!("cap_{b}"))
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A field of /proc/self/status, e.g. `CapEff`.
fn status_field(status: &str, field: &str) -> Option<String> {
    status.lines().find_map(|l| {
        l.strip_prefix(field)
            .and_then(|r| r.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    })
}

/// Unescapes mountinfo's `\ooo` octal escapes.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One mountinfo line as `<mount point> <fstype> <options> <source>`; options are the per-mount
/// options followed by the superblock options.
fn format_mountinfo_line(line: &str) -> Option<String> {
    let (pre, post) = line.split_once(" - ")?;
    let pre: Vec<&str> = pre.split(' ').collect();
    let post: Vec<&str> = post.split(' ').collect();
    let point = unescape_octal(pre.get(4)?);
    let mnt_opts = pre.get(5)?;
    let fstype = post.first()?;
    let source = unescape_octal(post.get(1)?);
    let sb_opts = post.get(2).copied().unwrap_or("");
    Some(format!("{point} {fstype} {mnt_opts},{sb_opts} {source}"))
}

/// Cgroup paths of this process: (v1 controller list or "" for v2, path).
fn own_cgroups() -> Vec<(String, String)> {
    std::fs::read_to_string("/proc/self/cgroup")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?.to_string();
            let path = it.next()?.to_string();
            Some((ctrls, path))
        })
        .collect()
}

/// Reads `file` of our cgroup in the hierarchy mounted at `mount`: first at our path from
/// /proc/self/cgroup, then at the mount root (a cgroup namespace or a bind mount of our own cgroup
/// shows it there). Returns (path read, trimmed content).
fn read_cgroup_file(mount: &str, cg_path: &str, file: &str) -> Option<(String, String)> {
    let mut candidates = vec![format!(
        "{mount}/{}/{file}",
        cg_path.trim_start_matches('/')
    )];
    candidates.push(format!("{mount}/{file}"));
    candidates.into_iter().find_map(|p| {
        let p = p.replace("//", "/");
        std::fs::read_to_string(&p)
            .ok()
            .map(|c| (p, c.trim().to_string()))
    })
}

/// v1 reports "no limit" as a huge page-aligned number; print `max` like v2.
fn normalize_v1_memory(v: &str) -> String {
    match v.parse::<u64>() {
        Ok(n) if n >= 1u64 << 62 => "max".into(),
        _ => v.to_string(),
    }
}

fn print_cgroup_limits(out: &mut Vec<String>) {
    let cgs = own_cgroups();
    let v2 = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if v2 {
        out.push("CGROUP_VERSION=2".into());
        let path = cgs
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| "/".into());
        out.push(format!("CGROUP_PATH={path}"));
        match read_cgroup_file("/sys/fs/cgroup", &path, "memory.max") {
            Some((_, v)) => out.push(format!("MEMORY_LIMIT={v}")),
            None => out.push("MEMORY_LIMIT=unknown".into()),
        }
        match read_cgroup_file("/sys/fs/cgroup", &path, "cpu.max") {
            Some((_, v)) => {
                let mut it = v.split_whitespace();
                out.push(format!("CPU_QUOTA={}", it.next().unwrap_or("unknown")));
                out.push(format!("CPU_PERIOD={}", it.next().unwrap_or("unknown")));
            }
            None => {
                out.push("CPU_QUOTA=unknown".into());
                out.push("CPU_PERIOD=unknown".into());
            }
        }
        match read_cgroup_file("/sys/fs/cgroup", &path, "cpu.weight") {
            Some((_, v)) => out.push(format!("CPU_WEIGHT={v}")),
            None => out.push("CPU_WEIGHT=unknown".into()),
        }
        return;
    }
    out.push("CGROUP_VERSION=1".into());
    let path_of = |ctrl: &str| {
        cgs.iter()
            .find(|(c, _)| c.split(',').any(|x| x == ctrl))
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| "/".into())
    };
    let mem = path_of("memory");
    out.push(format!("CGROUP_MEMORY_PATH={mem}"));
    match read_cgroup_file("/sys/fs/cgroup/memory", &mem, "memory.limit_in_bytes") {
        Some((_, v)) => out.push(format!("MEMORY_LIMIT={}", normalize_v1_memory(&v))),
        None => out.push("MEMORY_LIMIT=unknown".into()),
    }
    let cpu = path_of("cpu");
    out.push(format!("CGROUP_CPU_PATH={cpu}"));
    // The cpu controller is usually co-mounted as cpu,cpuacct.
    let cpu_mount = ["/sys/fs/cgroup/cpu,cpuacct", "/sys/fs/cgroup/cpu"]
        .into_iter()
        .find(|m| std::path::Path::new(m).exists())
        .unwrap_or("/sys/fs/cgroup/cpu");
    for (key, file) in [
        ("CPU_QUOTA", "cpu.cfs_quota_us"),
        ("CPU_PERIOD", "cpu.cfs_period_us"),
        ("CPU_SHARES", "cpu.shares"),
    ] {
        match read_cgroup_file(cpu_mount, &cpu, file) {
            Some((_, v)) if key == "CPU_QUOTA" && v == "-1" => out.push(format!("{key}=max")),
            Some((_, v)) => out.push(format!("{key}={v}")),
            None => out.push(format!("{key}=unknown")),
        }
    }
}

/// Tries a syscall in a way that cannot change the system: each call is either refused by the
/// capability check or seccomp (EPERM or the filter's errno), or fails on deliberately bad
/// arguments after the permission check (EINVAL/ENODEV/ENOENT), or is harmless when it succeeds.
fn try_syscall(name: &str) -> Result<(), i32> {
    // SAFETY: every call passes valid pointers or NULL; see the per-call notes on harmlessness.
    let r: libc::c_long = unsafe {
        match name {
            // Bad magic: EPERM without CAP_SYS_BOOT, EINVAL with it; never reboots.
            "reboot" => libc::syscall(
                libc::SYS_reboot,
                0 as libc::c_long,
                0 as libc::c_long,
                0 as libc::c_long,
                std::ptr::null::<libc::c_void>(),
            ),
            // Unknown fs type: EPERM without CAP_SYS_ADMIN (checked first), else ENODEV.
            "mount" => {
                let src = c"none";
                let tgt = c"/";
                let fs = c"inspect-no-such-fs";
                libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) as _
            }
            // A new UTS namespace for this short-lived process only.
            "unshare" => libc::unshare(libc::CLONE_NEWUTS) as _,
            // chroot("/") changes nothing.
            "chroot" => libc::chroot(c"/".as_ptr()) as _,
            // Capability checked first, then ENOENT.
            "swapoff" => libc::swapoff(c"/inspect-no-such-swap".as_ptr()) as _,
            // Capability checked first, then EINVAL for too many segments.
            "kexec_load" => libc::syscall(
                libc::SYS_kexec_load,
                0 as libc::c_ulong,
                10_000 as libc::c_ulong,
                std::ptr::null::<libc::c_void>(),
                0 as libc::c_ulong,
            ),
            // Capability checked first, then ENOENT for the unknown module.
            "delete_module" => libc::syscall(
                libc::SYS_delete_module,
                c"inspect_no_such_module".as_ptr(),
                libc::O_NONBLOCK as libc::c_long,
            ),
            "socket" => {
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                if fd >= 0 {
                    libc::close(fd);
                }
                fd as _
            }
            // 0xffffffff only queries the persona.
            "personality" => libc::personality(0xffff_ffff) as _,
            "uname" => {
                let mut u: libc::utsname = std::mem::zeroed();
                libc::uname(&mut u) as _
            }
            "getpid" => libc::syscall(libc::SYS_getpid),
            _ => unreachable!("checked at parse time"),
        }
    };
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// `PATH:b|c:MAJOR:MINOR` of `--mknod`.
fn parse_mknod(v: &str) -> Result<(String, libc::mode_t, u32, u32), String> {
    let bad = || format!("--mknod: want PATH:b|c:MAJOR:MINOR, got {v:?}");
    let mut f = v.rsplitn(4, ':');
    let (min, maj, kind, path) = (f.next(), f.next(), f.next(), f.next());
    let (Some(min), Some(maj), Some(kind), Some(path)) = (min, maj, kind, path) else {
        return Err(bad());
    };
    let kind = match kind {
        "b" => libc::S_IFBLK,
        "c" => libc::S_IFCHR,
        _ => return Err(bad()),
    };
    let maj = maj.parse().map_err(|_| bad())?;
    let min = min.parse().map_err(|_| bad())?;
    Ok((path.to_string(), kind, maj, min))
}

/// "OK" or the errno name of a libc call's result.
fn rc_name(r: libc::c_long) -> String {
    if r < 0 {
        errno_name(errno())
    } else {
        "OK".into()
    }
}

/// A fork-like raw clone with `flags`; the child exits at once.
fn try_clone(flags: libc::c_int) -> String {
    // SAFETY: no new stack: the child continues on a copy of ours and exits immediately.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if r == 0 {
        // SAFETY: leaving the child without running anything else.
        unsafe { libc::_exit(0) }
    }
    if r > 0 {
        // SAFETY: reaping our own child.
        unsafe { libc::waitpid(r as i32, std::ptr::null_mut(), 0) };
    }
    rc_name(r)
}

fn file_type(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_symlink() {
        "symlink"
    } else if t.is_dir() {
        "dir"
    } else if t.is_file() {
        "file"
    } else if t.is_char_device() {
        "chardev"
    } else if t.is_block_device() {
        "blockdev"
    } else if t.is_fifo() {
        "fifo"
    } else if t.is_socket() {
        "socket"
    } else {
        "unknown"
    }
}

/// How long `--wait-file` waits before giving up.
const WAIT_FILE_SECS: u64 = 600;

const TRAPPED: [libc::c_int; 4] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGUSR1];

/// Exit code used by the signal handler (the `--exit-code` value, else 0).
static SIGNAL_EXIT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn on_signal(sig: libc::c_int) {
    let msg: &[u8] = match sig {
        libc::SIGTERM => b"SIGNAL=SIGTERM\n",
        libc::SIGINT => b"SIGNAL=SIGINT\n",
        libc::SIGHUP => b"SIGNAL=SIGHUP\n",
        _ => b"SIGNAL=SIGUSR1\n",
    };
    // SAFETY: write(2) and _exit(2) are async-signal-safe.
    unsafe {
        libc::write(1, msg.as_ptr().cast(), msg.len());
        libc::_exit(SIGNAL_EXIT.load(std::sync::atomic::Ordering::Relaxed));
    }
}

/// Network interfaces (from /proc/net/dev) and their IPv4/IPv6 addresses (getifaddrs).
fn print_net(out: &mut Vec<String>) {
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    for l in dev.lines().skip(2) {
        if let Some((name, _)) = l.split_once(':') {
            out.push(format!("IFACE={}", name.trim()));
        }
    }
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills ifap with a list we free below; we only read its fields.
    unsafe {
        if libc::getifaddrs(&mut ifap) != 0 {
            out.push(format!("ADDR_ERRNO={}", errno_name(errno())));
            return;
        }
        let mut p = ifap;
        while !p.is_null() {
            let ifa = &*p;
            p = ifa.ifa_next;
            if ifa.ifa_addr.is_null() {
                continue;
            }
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy();
            let (ip, prefix) = match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                    let prefix = if ifa.ifa_netmask.is_null() {
                        32
                    } else {
                        let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                        u32::from_be(m.sin_addr.s_addr).count_ones()
                    };
                    (ip.to_string(), prefix)
                }
                libc::AF_INET6 => {
                    let a = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let ip = std::net::Ipv6Addr::from(a.sin6_addr.s6_addr);
                    let prefix = if ifa.ifa_netmask.is_null() {
                        128
                    } else {
                        let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in6);
                        m.sin6_addr.s6_addr.iter().map(|b| b.count_ones()).sum()
                    };
                    (ip.to_string(), prefix)
                }
                _ => continue,
            };
            out.push(format!("ADDR={name} {ip}/{prefix}"));
        }
        libc::freeifaddrs(ifap);
    }
}

/// Serves TCP on 0.0.0.0:PORT until killed: each connection gets
/// one line `inspect <hostname>` and is closed. Prints `LISTENING=PORT` once bound.
fn serve_tcp(port: u16) -> ! {
    let listener = match std::net::TcpListener::bind(("0.0.0.0", port)) {
        Ok(l) => l,
        Err(e) => {
            println!("LISTEN_ERRNO={}", io_errno(&e));
            std::process::exit(1);
        }
    };
    let mut name = [0u8; 256];
    // SAFETY: buffer of the given length.
    unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) };
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    let reply = format!("inspect {}\n", String::from_utf8_lossy(&name[..end]));
    println!(
        "LISTENING={}",
        listener.local_addr().map(|a| a.port()).unwrap_or(port)
    );
    let _ = std::io::stdout().flush();
    for mut c in listener.incoming().flatten() {
        let _ = c.write_all(reply.as_bytes());
    }
    std::process::exit(0)
}

/// Runs one action; returns its output lines and whether it failed.
fn run(action: &Action, argv: &[String]) -> (Vec<String>, bool) {
    let mut out = Vec::new();
    let mut failed = false;
    match action {
        Action::PrintEnv(var) => match std::env::var_os(var) {
            Some(v) => out.push(format!("{var}={}", v.to_string_lossy())),
            None => out.push(format!("ENV_UNSET={var}")),
        },
        Action::PrintAllEnv => {
            for (k, v) in std::env::vars_os() {
                out.push(format!("{}={}", k.to_string_lossy(), v.to_string_lossy()));
            }
        }
        Action::PrintUser => {
            // SAFETY: these getters cannot fail.
            let (u, g, eu, eg) = unsafe {
                (
                    libc::getuid(),
                    libc::getgid(),
                    libc::geteuid(),
                    libc::getegid(),
                )
            };
            out.push(format!("UID={u}"));
            out.push(format!("GID={g}"));
            out.push(format!("EUID={eu}"));
            out.push(format!("EGID={eg}"));
        }
        Action::PrintGroups => {
            let mut gs = vec![0 as libc::gid_t; 1024];
            // SAFETY: buffer of the given length.
            let n = unsafe { libc::getgroups(gs.len() as i32, gs.as_mut_ptr()) };
            if n < 0 {
                out.push(format!("GROUPS_ERRNO={}", errno_name(errno())));
                failed = true;
            } else {
                let list: Vec<String> = gs[..n as usize].iter().map(|g| g.to_string()).collect();
                out.push(format!("GROUPS={}", list.join(",")));
            }
        }
        Action::PrintHostname => {
            let mut buf = [0u8; 256];
            // SAFETY: buffer of the given length.
            if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
                out.push(format!("HOSTNAME_ERRNO={}", errno_name(errno())));
                failed = true;
            } else {
                let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                out.push(format!("HOSTNAME={}", String::from_utf8_lossy(&buf[..end])));
            }
        }
        Action::PrintCaps => {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            for (key, field) in [
                ("CAP_EFF", "CapEff"),
                ("CAP_PRM", "CapPrm"),
                ("CAP_BND", "CapBnd"),
                ("CAP_INH", "CapInh"),
                ("CAP_AMB", "CapAmb"),
            ] {
                match status_field(&status, field) {
                    Some(hex) => {
                        let mask = u64::from_str_radix(&hex, 16).unwrap_or(0);
                        out.push(format!("{key}={hex}"));
                        out.push(format!("{key}_NAMES={}", cap_names(mask)));
                    }
                    None => out.push(format!("{key}=unknown")),
                }
            }
        }
        Action::PrintCgroupLimits => print_cgroup_limits(&mut out),
        Action::PrintMounts => match std::fs::read_to_string("/proc/self/mountinfo") {
            Ok(mi) => out.extend(
                mi.lines()
                    .filter_map(format_mountinfo_line)
                    .map(|l| format!("MOUNT={l}")),
            ),
            Err(e) => {
                out.push(format!("MOUNTS_ERRNO={}", io_errno(&e)));
                failed = true;
            }
        },
        Action::ReadFile(p) => match std::fs::read(p) {
            Ok(c) => {
                let s = String::from_utf8_lossy(&c);
                out.push(format!("CONTENT={}", s.strip_suffix('\n').unwrap_or(&s)));
            }
            Err(e) => {
                out.push(format!("READ_ERRNO={}", io_errno(&e)));
                failed = true;
            }
        },
        Action::WriteFile { path, content } => match std::fs::write(path, content) {
            Ok(()) => out.push(format!("WROTE={path}")),
            Err(e) => {
                out.push(format!("WRITE_ERRNO={}", io_errno(&e)));
                failed = true;
            }
        },
        Action::Stat(p) => match std::fs::symlink_metadata(p) {
            Ok(m) => {
                out.push(format!("STAT_PATH={p}"));
                out.push(format!("STAT_TYPE={}", file_type(&m)));
                out.push(format!("STAT_MODE={:04o}", m.mode() & 0o7777));
                out.push(format!("STAT_UID={}", m.uid()));
                out.push(format!("STAT_GID={}", m.gid()));
                out.push(format!("STAT_SIZE={}", m.size()));
                out.push(format!("STAT_NLINK={}", m.nlink()));
                out.push(format!("STAT_INO={}", m.ino()));
                if m.file_type().is_symlink() {
                    let t = std::fs::read_link(p).map(|t| t.display().to_string());
                    out.push(format!("STAT_LINK={}", t.unwrap_or_default()));
                }
            }
            Err(e) => {
                out.push(format!("STAT_ERRNO={}", io_errno(&e)));
                failed = true;
            }
        },
        Action::PrintCwd => match std::env::current_dir() {
            Ok(d) => out.push(format!("CWD={}", d.display())),
            Err(e) => {
                out.push(format!("CWD_ERRNO={}", io_errno(&e)));
                failed = true;
            }
        },
        Action::PrintNoNewPrivs | Action::PrintSeccomp => {
            let (key, field) = if *action == Action::PrintSeccomp {
                ("SECCOMP", "Seccomp")
            } else {
                ("NO_NEW_PRIVS", "NoNewPrivs")
            };
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            let v = status_field(&status, field).unwrap_or_else(|| "unknown".into());
            out.push(format!("{key}={v}"));
        }
        Action::CheckSyscall(name) => {
            let r = match try_syscall(name) {
                Ok(()) => "OK".to_string(),
                Err(e) => errno_name(e),
            };
            out.push(format!("SYSCALL_{name}={r}"));
        }
        Action::Sleep(s) => {
            std::thread::sleep(std::time::Duration::from_secs_f64(*s));
            out.push(format!("SLEPT={s}"));
        }
        Action::PrintPid => {
            out.push(format!("PID={}", std::process::id()));
            // SAFETY: getppid cannot fail.
            out.push(format!("PPID={}", unsafe { libc::getppid() }));
        }
        Action::PrintOomScoreAdj => match std::fs::read_to_string("/proc/self/oom_score_adj") {
            Ok(v) => out.push(format!("OOM_SCORE_ADJ={}", v.trim())),
            Err(e) => {
                out.push(format!("OOM_SCORE_ADJ_ERRNO={}", io_errno(&e)));
                failed = true;
            }
        },
        Action::PrintArgs => {
            out.push(format!("ARGC={}", argv.len()));
            for (i, a) in argv.iter().enumerate() {
                out.push(format!("ARG{i}={a}"));
            }
        }
        Action::Echo(t) => out.push(t.clone()),
        Action::EchoStderr(t) => {
            eprintln!("{t}");
        }
        Action::SdNotify(t) => match std::env::var_os("NOTIFY_SOCKET") {
            None => {
                out.push("SD_NOTIFY=no NOTIFY_SOCKET".into());
                failed = true;
            }
            Some(path) => {
                let msg = t.replace("\\n", "\n");
                let s = std::os::unix::net::UnixDatagram::unbound();
                match s.and_then(|s| s.send_to(msg.as_bytes(), &path)) {
                    Ok(_) => out.push("SD_NOTIFY=sent".into()),
                    Err(e) => {
                        out.push(format!("SD_NOTIFY={}", io_errno(&e)));
                        failed = true;
                    }
                }
            }
        },
        Action::TrapSignals => {
            for sig in TRAPPED {
                // SAFETY: the handler only calls async-signal-safe functions (write, _exit).
                unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
            }
            out.push("TRAPPING=SIGTERM,SIGINT,SIGHUP,SIGUSR1".into());
        }
        Action::IgnoreSignals => {
            for sig in TRAPPED {
                // SAFETY: installing SIG_IGN.
                unsafe { libc::signal(sig, libc::SIG_IGN) };
            }
            out.push("IGNORING=SIGTERM,SIGINT,SIGHUP,SIGUSR1".into());
        }
        Action::ReadStdin => {
            let mut buf = Vec::new();
            match std::io::stdin().read_to_end(&mut buf) {
                Ok(_) => {
                    let s = String::from_utf8_lossy(&buf);
                    out.push(format!("STDIN={}", s.strip_suffix('\n').unwrap_or(&s)));
                }
                Err(e) => {
                    out.push(format!("STDIN_ERRNO={}", io_errno(&e)));
                    failed = true;
                }
            }
        }
        Action::PrintNs => {
            for ns in ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"] {
                let v = std::fs::read_link(format!("/proc/self/ns/{ns}"))
                    .map(|t| t.display().to_string())
                    .unwrap_or_else(|e| io_errno(&e));
                out.push(format!("NS_{}={v}", ns.to_uppercase()));
            }
        }
        Action::PrintNet => print_net(&mut out),
        Action::PrintTty => {
            for (key, fd) in [("TTY_STDIN", 0), ("TTY_STDOUT", 1), ("TTY_STDERR", 2)] {
                // SAFETY: isatty on a plain fd number.
                out.push(format!("{key}={}", unsafe { libc::isatty(fd) }));
            }
        }
        Action::OpenDev(p) => {
            let c = std::ffi::CString::new(p.as_str()).unwrap_or_default();
            // SAFETY: valid path; the descriptor is closed at once.
            let fd =
                unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK | libc::O_NOCTTY) };
            let r = rc_name(fd as libc::c_long);
            if fd >= 0 {
                // SAFETY: closing what we opened.
                unsafe { libc::close(fd) };
            }
            out.push(format!("OPEN={p}:{r}"));
        }
        Action::Mknod(v) => {
            let (path, kind, maj, min) = parse_mknod(v).expect("checked at parse time");
            let c = std::ffi::CString::new(path.as_str()).unwrap_or_default();
            // SAFETY: valid path.
            let r = unsafe { libc::mknod(c.as_ptr(), kind | 0o666, libc::makedev(maj, min)) };
            out.push(format!("MKNOD={path}:{}", rc_name(r as libc::c_long)));
        }
        Action::TryUserns => {
            out.push(format!("CLONE_NEWUSER={}", try_clone(libc::CLONE_NEWUSER)));
            out.push(format!("CLONE_NEWNS={}", try_clone(libc::CLONE_NEWNS)));
            // A NULL, zero-sized clone_args: EINVAL from the kernel when the call is allowed.
            // SAFETY: the kernel rejects the size before reading anything.
            let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize) };
            out.push(format!("CLONE3={}", rc_name(r)));
            // unshare(2) changes only this short-lived process (but does: keep this flag last).
            // SAFETY: plain syscall with flags.
            let r = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
            out.push(format!("UNSHARE_NEWUSER={}", rc_name(r as libc::c_long)));
        }
        Action::WaitFile(p) => {
            // Polls so the host can release the app at a moment of its choosing.
            let deadline =
                std::time::Instant::now() + std::time::Duration::from_secs(WAIT_FILE_SECS);
            loop {
                if std::path::Path::new(p).exists() {
                    out.push(format!("WAITED={p}"));
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    out.push("WAIT_ERRNO=ETIMEDOUT".into());
                    failed = true;
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        Action::ServeTcp(port) => serve_tcp(*port),
        Action::Connect(target) => {
            use std::net::ToSocketAddrs;
            let res = target
                .to_socket_addrs()
                .map_err(|e| io_errno(&e))
                .and_then(|mut a| {
                    let addr = a.next().ok_or_else(|| "ENOENT".to_string())?;
                    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))
                        .map_err(|e| io_errno(&e))
                });
            match res {
                Ok(mut s) => {
                    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                    let mut buf = Vec::new();
                    let _ = s.read_to_end(&mut buf);
                    let text = String::from_utf8_lossy(&buf);
                    out.push("CONNECT=OK".into());
                    out.push(format!("RECEIVED={}", text.lines().next().unwrap_or("")));
                }
                Err(e) => {
                    out.push(format!("CONNECT_ERRNO={e}"));
                    failed = true;
                }
            }
        }
    }
    (out, failed)
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let plan = match parse(&argv[1..]) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("inspect: {e}");
            std::process::exit(2);
        }
    };
    SIGNAL_EXIT.store(
        plan.exit_code.unwrap_or(0),
        std::sync::atomic::Ordering::Relaxed,
    );
    let mut any_failed = false;
    let stdout = std::io::stdout();
    for a in &plan.actions {
        let (lines, failed) = run(a, &argv);
        any_failed |= failed;
        let mut o = stdout.lock();
        for l in lines {
            let _ = writeln!(o, "{l}");
        }
        let _ = o.flush();
    }
    std::process::exit(plan.exit_code.unwrap_or(if any_failed { 1 } else { 0 }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Plan, String> {
        parse(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn parses_in_order() {
        let plan = p(&[
            "--print-user",
            "--print-env=HOME",
            "--write-file=/tmp/x",
            "--content=a=b",
            "--sleep=0.5",
            "--exit-code=3",
            "--check-syscall=reboot",
        ])
        .unwrap();
        assert_eq!(
            plan.actions,
            vec![
                Action::PrintUser,
                Action::PrintEnv("HOME".into()),
                Action::WriteFile {
                    path: "/tmp/x".into(),
                    content: "a=b".into()
                },
                Action::Sleep(0.5),
                Action::CheckSyscall("reboot".into()),
            ]
        );
        assert_eq!(plan.exit_code, Some(3));
    }

    #[test]
    fn parses_device_and_namespace_probes() {
        let plan = p(&[
            "--open-dev=/dev/null",
            "--mknod=/dev/x:y:b:7:0",
            "--try-userns",
        ])
        .unwrap();
        assert_eq!(
            plan.actions,
            vec![
                Action::OpenDev("/dev/null".into()),
                Action::Mknod("/dev/x:y:b:7:0".into()),
                Action::TryUserns
            ]
        );
        assert_eq!(
            parse_mknod("/dev/x:y:b:7:0").unwrap(),
            ("/dev/x:y".to_string(), libc::S_IFBLK, 7, 0)
        );
        assert!(p(&["--mknod=/dev/x:q:1:2"]).is_err());
        assert!(p(&["--mknod=/dev/x:c:1"]).is_err());
    }

    #[test]
    fn parses_network_and_signal_flags() {
        let plan = p(&[
            "--trap-signals",
            "--ignore-signals",
            "--read-stdin",
            "--print-ns",
            "--print-net",
            "--connect=10.0.0.1:80",
            "--serve-tcp=8080",
            "--print-tty",
            "--wait-file=/tmp/go",
        ])
        .unwrap();
        assert_eq!(
            plan.actions,
            vec![
                Action::TrapSignals,
                Action::IgnoreSignals,
                Action::ReadStdin,
                Action::PrintNs,
                Action::PrintNet,
                Action::Connect("10.0.0.1:80".into()),
                Action::ServeTcp(8080),
                Action::PrintTty,
                Action::WaitFile("/tmp/go".into()),
            ]
        );
    }

    #[test]
    fn empty_is_ok() {
        assert_eq!(
            p(&[]).unwrap(),
            Plan {
                actions: vec![],
                exit_code: None
            }
        );
    }

    #[test]
    fn rejects_bad_input() {
        assert!(p(&["--nope"]).unwrap_err().contains("unknown flag"));
        assert!(p(&["--print-env"]).unwrap_err().contains("needs a value"));
        assert!(p(&["--print-user=1"])
            .unwrap_err()
            .contains("takes no value"));
        assert!(p(&["--content=x"]).unwrap_err().contains("must follow"));
        assert!(p(&["--sleep=-1"]).is_err());
        assert!(p(&["--sleep=abc"]).is_err());
        assert!(p(&["--exit-code=256"]).is_err());
        assert!(p(&["--check-syscall=fork"])
            .unwrap_err()
            .contains("unknown syscall"));
        assert!(p(&["positional"]).is_err());
        assert!(p(&["--serve-tcp=99999"]).is_err());
        assert!(p(&["--connect=nohost"]).unwrap_err().contains("HOST:PORT"));
        assert!(p(&["--trap-signals=1"]).is_err());
    }

    #[test]
    fn write_file_without_content_is_empty() {
        let plan = p(&["--write-file=/a", "--write-file=/b", "--content=x"]).unwrap();
        assert_eq!(
            plan.actions,
            vec![
                Action::WriteFile {
                    path: "/a".into(),
                    content: "".into()
                },
                Action::WriteFile {
                    path: "/b".into(),
                    content: "x".into()
                },
            ]
        );
    }

    #[test]
    fn cap_names_from_mask() {
        assert_eq!(cap_names(0), "");
        assert_eq!(cap_names(0x1), "cap_chown");
        assert_eq!(cap_names((1 << 21) | (1 << 7)), "cap_setuid,cap_sys_admin");
        assert_eq!(cap_names(1 << 63), "cap_63");
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tinspect\nCapEff:\t00000000a80425fb\nNoNewPrivs:\t1\nSeccomp:\t2\n";
        assert_eq!(status_field(s, "CapEff").unwrap(), "00000000a80425fb");
        assert_eq!(status_field(s, "NoNewPrivs").unwrap(), "1");
        assert_eq!(status_field(s, "Seccomp").unwrap(), "2");
        assert!(status_field(s, "CapBnd").is_none());
    }

    #[test]
    fn mountinfo_lines() {
        let l = "36 35 98:0 /mnt1 /mnt/my\\040dir rw,noatime master:1 - ext3 /dev/root rw,errors=continue";
        assert_eq!(
            format_mountinfo_line(l).unwrap(),
            "/mnt/my dir ext3 rw,noatime,rw,errors=continue /dev/root"
        );
        let no_opt = "22 1 0:21 / /proc rw,nosuid - proc proc rw";
        assert_eq!(
            format_mountinfo_line(no_opt).unwrap(),
            "/proc proc rw,nosuid,rw proc"
        );
        assert!(format_mountinfo_line("garbage").is_none());
    }

    #[test]
    fn v1_memory_unlimited_is_max() {
        assert_eq!(normalize_v1_memory("9223372036854771712"), "max");
        assert_eq!(normalize_v1_memory("104857600"), "104857600");
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(libc::EPERM), "EPERM");
        assert_eq!(errno_name(libc::EROFS), "EROFS");
        assert_eq!(errno_name(9999), "E9999");
        assert_eq!(errno_name(95), "EOPNOTSUPP");
    }

    #[test]
    fn harmless_syscalls_work_here() {
        for s in ["getpid", "uname", "socket", "personality"] {
            assert_eq!(try_syscall(s), Ok(()), "{s}");
        }
    }
}
