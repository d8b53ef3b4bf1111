//! seccomp filters: rkt's syscall groups, `--seccomp mode=retain|remove[,errno=E],set...`, and the
//! BPF program built with rust-vmm's `seccompiler`.
//!
//! The default (no `--seccomp`) is rkt's default *remove* set answered with EPERM. rkt v1.30
//! retained `@rkt/default-whitelist` instead, a 2016 list that lacks syscalls today's libcs call
//! first (statx, clone3, rseq, faccessat2, ...), so a retain-set default would kill ordinary
//! programs; the remove set blocks the same dangerous calls. As Docker's default profile, the
//! default also refuses namespace flags on `clone` (EPERM) unless the app keeps `CAP_SYS_ADMIN`,
//! and answers `clone3` with ENOSYS (its flags live in memory a filter cannot read; libcs fall
//! back to `clone` on ENOSYS). `unshare` and `setns` are in the remove set outright.

use std::collections::BTreeSet;

use anyhow::{anyhow, bail, Context};
use seccompiler::{BpfProgram, TargetArch};

use crate::spec::SeccompSpec;

/// Docker's and rkt's default remove set (rkt: `@rkt/default-blacklist`).
pub const DEFAULT_BLACKLIST: &[&str] = &[
    "_sysctl",
    "acct",
    "add_key",
    "adjtimex",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "get_kernel_syms",
    "get_mempolicy",
    "init_module",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mbind",
    "mount",
    "move_pages",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "set_mempolicy",
    "setns",
    "settimeofday",
    "stime",
    "swapon",
    "swapoff",
    "sysfs",
    "umount",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vm86",
    "vm86old",
];

/// Docker's and rkt's default retain set (`@rkt/default-whitelist`), plus the syscalls that
/// current libcs need before `main` (so the group is usable on a 2020s userland).
pub const DEFAULT_WHITELIST: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "alarm",
    "bind",
    "brk",
    "capget",
    "capset",
    "chdir",
    "chmod",
    "chown",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "connect",
    "copy_file_range",
    "creat",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "fadvise64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fcntl",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstatfs",
    "fsync",
    "ftruncate",
    "futex",
    "futimesat",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "geteuid",
    "getgid",
    "getgroups",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresuid",
    "getrlimit",
    "get_robust_list",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "get_thread_area",
    "gettid",
    "gettimeofday",
    "getuid",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "ioctl",
    "io_destroy",
    "io_getevents",
    "ioprio_get",
    "ioprio_set",
    "io_setup",
    "io_submit",
    "kill",
    "lchown",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "madvise",
    "memfd_create",
    "mincore",
    "mkdir",
    "mkdirat",
    "mknod",
    "mknodat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "open",
    "openat",
    "pause",
    "personality",
    "pipe",
    "pipe2",
    "poll",
    "ppoll",
    "prctl",
    "pread64",
    "preadv",
    "prlimit64",
    "pselect6",
    "pwrite64",
    "pwritev",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recvfrom",
    "recvmmsg",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_tgsigqueueinfo",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "seccomp",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "sendfile",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "setfsgid",
    "setfsuid",
    "setgid",
    "setgroups",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setresgid",
    "setresuid",
    "setreuid",
    "setrlimit",
    "set_robust_list",
    "setsid",
    "setsockopt",
    "set_thread_area",
    "set_tid_address",
    "setuid",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "socket",
    "socketpair",
    "splice",
    "stat",
    "statfs",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "syslog",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_settime",
    "timer_getoverrun",
    "timer_gettime",
    "timer_settime",
    "times",
    "tkill",
    "truncate",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimes",
    "vfork",
    "vmsplice",
    "wait4",
    "waitid",
    "write",
    "writev",
    "arch_prctl",
    "modify_ldt",
    "chroot",
    "clone",
    "clone3",
    "statx",
    "rseq",
    "faccessat2",
    "openat2",
    "close_range",
    "pidfd_open",
    "pidfd_send_signal",
    "preadv2",
    "pwritev2",
    "epoll_pwait2",
    "futex_waitv",
];

/// Syscalls a retain set always gets: without them the app cannot even be exec'd or exit.
const ALWAYS_RETAINED: &[&str] = &["execve", "exit", "exit_group", "rt_sigreturn"];

fn arch() -> anyhow::Result<TargetArch> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|_| {
        anyhow!(
            "seccomp filters are not supported on {}",
            std::env::consts::ARCH
        )
    })
}

/// Whether `name` is a syscall on the build architecture.
pub fn syscall_exists(name: &str) -> bool {
    compile_list(&[name.to_string()], "\"allow\"", "{\"errno\": 1}").is_ok()
}

/// Parses an errno name (`EPERM`, `ENOSYS`, ...) or number.
pub fn parse_errno(e: &str) -> anyhow::Result<u32> {
    if let Ok(n) = e.parse::<u32>() {
        return Ok(n);
    }
    let n = match e.to_ascii_uppercase().as_str() {
        "EPERM" => libc::EPERM,
        "ENOENT" => libc::ENOENT,
        "ESRCH" => libc::ESRCH,
        "EINTR" => libc::EINTR,
        "EIO" => libc::EIO,
        "ENXIO" => libc::ENXIO,
        "E2BIG" => libc::E2BIG,
        "ENOEXEC" => libc::ENOEXEC,
        "EBADF" => libc::EBADF,
        "ECHILD" => libc::ECHILD,
        "EAGAIN" => libc::EAGAIN,
        "ENOMEM" => libc::ENOMEM,
        "EACCES" => libc::EACCES,
        "EFAULT" => libc::EFAULT,
        "EBUSY" => libc::EBUSY,
        "EEXIST" => libc::EEXIST,
        "EXDEV" => libc::EXDEV,
        "ENODEV" => libc::ENODEV,
        "ENOTDIR" => libc::ENOTDIR,
        "EISDIR" => libc::EISDIR,
        "EINVAL" => libc::EINVAL,
        "ENFILE" => libc::ENFILE,
        "EMFILE" => libc::EMFILE,
        "ENOTTY" => libc::ENOTTY,
        "EFBIG" => libc::EFBIG,
        "ENOSPC" => libc::ENOSPC,
        "ESPIPE" => libc::ESPIPE,
        "EROFS" => libc::EROFS,
        "EMLINK" => libc::EMLINK,
        "EPIPE" => libc::EPIPE,
        "EDOM" => libc::EDOM,
        "ERANGE" => libc::ERANGE,
        "ENOSYS" => libc::ENOSYS,
        "ENOTSUP" | "EOPNOTSUPP" => libc::EOPNOTSUPP,
        "ETIMEDOUT" => libc::ETIMEDOUT,
        _ => bail!("unknown errno {e:?}"),
    };
    Ok(n as u32)
}

/// Expands rkt's `@scope/name` wildcards. Returns None for `@appc.io/all` in a retain set
/// (no filtering) and an empty set for `@appc.io/empty`.
fn expand(set: &[String]) -> anyhow::Result<Option<BTreeSet<String>>> {
    let mut out = BTreeSet::new();
    for item in set {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let list: &[&str] = match item {
            "@appc.io/all" => return Ok(None),
            "@appc.io/empty" => &[],
            "@rkt/default-blacklist" | "@docker/default-blacklist" => DEFAULT_BLACKLIST,
            "@rkt/default-whitelist" | "@docker/default-whitelist" => DEFAULT_WHITELIST,
            w if w.starts_with('@') => bail!("unsupported seccomp group {w:?}"),
            name => {
                if !syscall_exists(name) {
                    bail!("unknown syscall {name:?} in seccomp set");
                }
                out.insert(name.to_string());
                continue;
            }
        };
        // Groups list syscalls of every architecture; keep those this one has.
        out.extend(
            list.iter()
                .filter(|s| syscall_exists(s))
                .map(|s| s.to_string()),
        );
    }
    Ok(Some(out))
}

fn compile_list(names: &[String], mismatch: &str, matched: &str) -> anyhow::Result<BpfProgram> {
    let rules: Vec<String> = names
        .iter()
        .map(|n| format!("{{\"syscall\": {}}}", serde_json::to_string(n).unwrap()))
        .collect();
    compile_rules(&rules, mismatch, matched)
}

/// Namespace flags `clone` may not use without CAP_SYS_ADMIN (Docker's default profile).
pub const CLONE_NS_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWNS,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWCGROUP,
];

/// seccompiler rules (JSON) matching a `clone` with any of [`CLONE_NS_FLAGS`]: one rule per flag
/// (rules of a syscall are or-ed), each `flags & FLAG == FLAG` on the low 32 bits of argument 0.
fn clone_ns_rules() -> Vec<String> {
    CLONE_NS_FLAGS
        .iter()
        .map(|f| {
            format!(
                "{{\"syscall\": \"clone\", \"args\": [{{\"index\": 0, \"type\": \"dword\", \"op\": {{\"masked_eq\": {f}}}, \"val\": {f}}}]}}"
            )
        })
        .collect()
}

/// Prepends "clone3 -> ENOSYS" to `prog` (for the native architecture only: other syscall ABIs
/// fall through to `prog`, whose own architecture check handles them).
fn with_clone3_enosys(prog: BpfProgram) -> anyhow::Result<BpfProgram> {
    let nr = libc::SYS_clone3 as u32;
    let audit_arch = match arch()? {
        TargetArch::x86_64 => 0xc000_003e_u32,
        TargetArch::aarch64 => 0xc000_00b7,
    };
    let stmt = |code: u16, k: u32| seccompiler::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jeq = |k: u32, jt: u8, jf: u8| seccompiler::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    };
    let ld = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    let mut out = vec![
        stmt(ld, 4), // seccomp_data.arch
        jeq(audit_arch, 0, 3),
        stmt(ld, 0), // seccomp_data.nr
        jeq(nr, 0, 1),
        stmt(
            (libc::BPF_RET | libc::BPF_K) as u16,
            libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        ),
    ];
    out.extend(prog);
    Ok(out)
}

fn compile_rules(rules: &[String], mismatch: &str, matched: &str) -> anyhow::Result<BpfProgram> {
    let json = format!(
        "{{\"app\": {{\"mismatch_action\": {mismatch}, \"match_action\": {matched}, \"filter\": [{}]}}}}",
        rules.join(",")
    );
    let mut map = seccompiler::compile_from_json(json.as_bytes(), arch()?)
        .map_err(|e| anyhow!("building the seccomp filter: {e}"))?;
    Ok(map.remove("app").unwrap_or_default())
}

/// Builds the BPF program for `spec` for an app holding the capabilities in `caps` (a mask; the
/// default filter lets `clone` create namespaces only with CAP_SYS_ADMIN); None means no filter.
pub fn build(spec: &SeccompSpec, caps: u64) -> anyhow::Result<Option<BpfProgram>> {
    match spec {
        SeccompSpec::Default => {
            let set = expand(&["@rkt/default-blacklist".to_string()])?.unwrap_or_default();
            let mut rules: Vec<String> = set
                .iter()
                .map(|n| format!("{{\"syscall\": {}}}", serde_json::to_string(n).unwrap()))
                .collect();
            if caps & (1u64 << crate::caps::CAP_SYS_ADMIN) == 0 {
                rules.extend(clone_ns_rules());
            }
            let prog = compile_rules(&rules, "\"allow\"", &errno_action(libc::EPERM as u32))?;
            Ok(Some(with_clone3_enosys(prog)?))
        }
        SeccompSpec::Remove { syscalls, errno } => {
            let Some(set) = expand(syscalls)? else {
                bail!("@appc.io/all cannot be used in a seccomp remove set");
            };
            if set.is_empty() {
                return Ok(None);
            }
            let e = match errno {
                Some(e) => parse_errno(e)?,
                None => libc::EPERM as u32,
            };
            let names: Vec<String> = set.into_iter().collect();
            Ok(Some(compile_list(&names, "\"allow\"", &errno_action(e))?))
        }
        SeccompSpec::Retain { syscalls, errno } => {
            let Some(mut set) = expand(syscalls)? else {
                return Ok(None);
            };
            set.extend(ALWAYS_RETAINED.iter().map(|s| s.to_string()));
            let mismatch = match errno {
                Some(e) => errno_action(parse_errno(e)?),
                None => "\"kill_process\"".to_string(),
            };
            let names: Vec<String> = set.into_iter().collect();
            Ok(Some(compile_list(&names, &mismatch, "\"allow\"")?))
        }
    }
}

fn errno_action(e: u32) -> String {
    format!("{{\"errno\": {e}}}")
}

/// Installs `prog` on the calling thread. The caller must have set no_new_privs or hold
/// CAP_SYS_ADMIN.
pub fn install(prog: &BpfProgram) -> anyhow::Result<()> {
    if prog.is_empty() {
        return Ok(());
    }
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at a live, well-formed BPF program for the duration of the call.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("installing the seccomp filter");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_filter_builds_and_skips_foreign_syscalls() {
        let p = build(&SeccompSpec::Default, 0).unwrap().unwrap();
        assert!(p.len() > 40, "{}", p.len());
        // vm86 is i386-only: the group still compiles on x86_64.
        assert_eq!(syscall_exists("vm86"), cfg!(target_arch = "x86"));
        assert!(syscall_exists("mount"));
    }

    #[test]
    fn retain_all_is_no_filter_and_empty_remove_is_none() {
        let all = SeccompSpec::Retain {
            syscalls: vec!["@appc.io/all".into()],
            errno: None,
        };
        assert!(build(&all, 0).unwrap().is_none());
        let none = SeccompSpec::Remove {
            syscalls: vec![],
            errno: None,
        };
        assert!(build(&none, 0).unwrap().is_none());
    }

    #[test]
    fn bad_names_are_refused_with_the_name() {
        let s = SeccompSpec::Remove {
            syscalls: vec!["frobnicate".into()],
            errno: None,
        };
        let e = build(&s, 0).unwrap_err().to_string();
        assert!(e.contains("frobnicate"), "{e}");
        let s = SeccompSpec::Remove {
            syscalls: vec!["mount".into()],
            errno: Some("EWHAT".into()),
        };
        assert!(build(&s, 0).unwrap_err().to_string().contains("EWHAT"));
        let s = SeccompSpec::Retain {
            syscalls: vec!["@systemd/clock".into()],
            errno: None,
        };
        assert!(build(&s, 0).is_err());
    }

    #[test]
    fn errno_names() {
        assert_eq!(parse_errno("EPERM").unwrap(), 1);
        assert_eq!(parse_errno("enosys").unwrap(), libc::ENOSYS as u32);
        assert_eq!(parse_errno("13").unwrap(), 13);
    }

    /// Installs `prog` in a forked child, runs `probe` there and returns its result (errno of a
    /// failed call, 0 on success).
    fn in_child(prog: &BpfProgram, probe: fn() -> i32) -> i32 {
        // SAFETY: the child only makes raw syscalls and exits.
        match unsafe { libc::fork() } {
            // SAFETY: in the forked child: raw syscalls only, then _exit.
            0 => unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if install(prog).is_err() {
                    libc::_exit(255);
                }
                libc::_exit(probe());
            },
            pid => {
                let mut st = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut st, 0) };
                assert!(libc::WIFEXITED(st), "status {st:#x}");
                libc::WEXITSTATUS(st)
            }
        }
    }

    fn raw_clone(flags: libc::c_int) -> i32 {
        // SAFETY: a fork-like clone (no new stack); the child exits at once.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone,
                (flags | libc::SIGCHLD) as libc::c_ulong,
                0,
                0,
                0,
                0,
            )
        };
        match r {
            // SAFETY: the clone child leaves at once without touching the parent's state.
            0 => unsafe { libc::_exit(0) },
            // SAFETY: errno is this thread's, valid to read.
            -1 => unsafe { *libc::__errno_location() },
            pid => {
                // SAFETY: reaping our own child.
                unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), 0) };
                0
            }
        }
    }

    #[test]
    fn default_filter_refuses_namespaces_on_clone_and_clone3() {
        let prog = build(&SeccompSpec::Default, 0).unwrap().unwrap();
        assert_eq!(in_child(&prog, || raw_clone(0)), 0, "plain fork-like clone");
        assert_eq!(
            in_child(&prog, || raw_clone(libc::CLONE_NEWUSER)),
            libc::EPERM
        );
        assert_eq!(
            in_child(&prog, || raw_clone(libc::CLONE_NEWNET | libc::CLONE_FILES)),
            libc::EPERM
        );
        assert_eq!(
            // SAFETY: clone3 with a null argument fails before it creates anything.
            in_child(&prog, || unsafe {
                libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0usize);
                *libc::__errno_location()
            }),
            libc::ENOSYS
        );
        assert_eq!(
            // SAFETY: unshare only changes this forked child's namespaces.
            in_child(&prog, || unsafe {
                libc::unshare(libc::CLONE_NEWUSER);
                *libc::__errno_location()
            }),
            libc::EPERM
        );
        // With CAP_SYS_ADMIN (as Docker) clone's flags are the kernel's business again.
        let admin = build(&SeccompSpec::Default, 1 << crate::caps::CAP_SYS_ADMIN)
            .unwrap()
            .unwrap();
        assert_eq!(in_child(&admin, || raw_clone(libc::CLONE_NEWUTS)), 0);
    }

    /// Runs the filter in a child process and checks what the kernel answers.
    #[test]
    fn remove_filter_answers_the_chosen_errno() {
        let s = SeccompSpec::Remove {
            syscalls: vec!["getppid".into()],
            errno: Some("ENOSYS".into()),
        };
        let prog = build(&s, 0).unwrap().unwrap();
        // SAFETY: the child only makes raw syscalls and exits.
        match unsafe { libc::fork() } {
            // SAFETY: in the forked child: raw syscalls only, then _exit.
            0 => unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if install(&prog).is_err() {
                    libc::_exit(2);
                }
                let r = libc::syscall(libc::SYS_getppid);
                let e = *libc::__errno_location();
                libc::_exit(if r == -1 && e == libc::ENOSYS { 0 } else { 1 });
            },
            pid => {
                let mut st = 0;
                // SAFETY: waiting for our own child.
                unsafe { libc::waitpid(pid, &mut st, 0) };
                assert!(
                    libc::WIFEXITED(st) && libc::WEXITSTATUS(st) == 0,
                    "status {st:#x}"
                );
            }
        }
    }
}
