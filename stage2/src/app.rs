//! Setting up one app and exec'ing it. Called in a fresh child process that is already in the
//! pod's PID/UTS/IPC/network namespaces, its own mount namespace and (if cgroups are managed) its
//! own cgroup + cgroup namespace; on the host by stage1 `ns`, inside the VM by the kvm guest init.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use nix::unistd::{Gid, Uid};

use crate::cgroup::Layout;
use crate::spec::{AppSpec, PodSpec};
use crate::{caps, fs, passwd, seccomp};

/// rkt's default `PATH` when an app's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Assembles the app's filesystem on `root`, pivots into it, switches to the app's identity and
/// privileges and execs the app. Returns only on failure.
pub fn setup_and_exec(
    app: &AppSpec,
    pod: &PodSpec,
    root: &Path,
    cgroups: Option<&Layout>,
) -> anyhow::Error {
    setup_and_exec_with(app, pod, root, cgroups, &mut |_| Ok(()))
}

/// [`setup_and_exec`] with a hook that runs once the root is assembled (the app's `/dev` exists
/// at `root/dev`) and before pivot_root, e.g. to allocate the app's terminal in its own devpts.
pub fn setup_and_exec_with(
    app: &AppSpec,
    pod: &PodSpec,
    root: &Path,
    cgroups: Option<&Layout>,
    before_pivot: &mut dyn FnMut(&Path) -> anyhow::Result<()>,
) -> anyhow::Error {
    let r = (|| -> anyhow::Result<std::convert::Infallible> {
        if app.exec.is_empty() {
            bail!("app {:?} has nothing to execute", app.name);
        }
        fs::prepare_root(pod, app, root, cgroups)?;
        before_pivot(root)?;
        fs::pivot(root, app.readonly_rootfs)?;
        exec_as_app(app, pod, Path::new("/"))
    })();
    match r {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// The final environment: the spec's, with PATH and HOME filled in when missing.
pub fn environment(app: &AppSpec, home: Option<String>) -> Vec<(String, String)> {
    let mut env = app.env.clone();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    if !env.iter().any(|(k, _)| k == "HOME") {
        env.push(("HOME".into(), home.unwrap_or_else(|| "/".into())));
    }
    env
}

/// What `rkt enter` runs, on both flavours: `cmd` (rkt's default `/bin/bash` falls back to
/// `/bin/sh` when the image has no bash) as the app itself runs, as `runc exec` does: the app's
/// user and groups, capabilities, seccomp filter and no_new_privs, working directory and
/// environment (`extra_env` added over it). `root` is the app's root as the caller sees it.
/// Run [`exec_as_app`] on the result, in the app's namespaces and cgroup.
pub fn entered_app(
    app: &AppSpec,
    root: &Path,
    cmd: &[String],
    extra_env: Vec<(String, String)>,
) -> AppSpec {
    let mut entered = app.clone();
    entered.exec = if cmd.is_empty() || (cmd == ["/bin/bash"] && !root.join("bin/bash").exists()) {
        vec!["/bin/sh".to_string()]
    } else {
        cmd.to_vec()
    };
    for (k, v) in extra_env {
        entered.env.retain(|(ek, _)| *ek != k);
        entered.env.push((k, v));
    }
    entered
}

/// Finds `cmd` in `path` (a PATH value) below `root` unless it already has a slash.
pub fn find_executable(root: &Path, cmd: &str, path: &str) -> anyhow::Result<PathBuf> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = Path::new(dir).join(cmd);
        let host = root.join(cand.strip_prefix("/").unwrap_or(&cand));
        if host.is_file() {
            return Ok(cand);
        }
    }
    bail!("{cmd:?} not found in PATH {path:?}")
}

/// Identity, working directory, capabilities, no_new_privs, seccomp, then execve. `root` is the
/// app's root as the caller sees it (`/` after pivot_root).
pub fn exec_as_app(
    app: &AppSpec,
    pod: &PodSpec,
    root: &Path,
) -> anyhow::Result<std::convert::Infallible> {
    let uid = passwd::resolve_user(root, &app.user)?;
    let gid = passwd::resolve_group(root, &app.group)?;
    let env = environment(app, passwd::home_of(root, uid));
    let path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let exe = find_executable(root, &app.exec[0], &path)?;
    // A capability the supervisor lacks (e.g. dropped from the host's bounding set) cannot be
    // granted: the set is what was asked for, limited to what we hold.
    let held = caps::current_permitted()?;
    let mask = if pod.insecure.capabilities {
        held
    } else {
        caps::mask_of(&app.capabilities)? & held
    };
    let filter = if pod.insecure.seccomp {
        None
    } else {
        seccomp::build(&app.seccomp, mask)?
    };
    let cstr = |s: &str| CString::new(s).map_err(|_| anyhow!("NUL byte in {s:?}"));
    let argv: Vec<CString> = app
        .exec
        .iter()
        .map(|a| cstr(a))
        .collect::<anyhow::Result<_>>()?;
    let envp: Vec<CString> = env
        .iter()
        .map(|(k, v)| cstr(&format!("{k}={v}")))
        .collect::<anyhow::Result<_>>()?;
    let exe_c = CString::new(exe.as_os_str().as_bytes())?;

    // While still root with every capability: lowering it needs CAP_SYS_RESOURCE. Inherited by
    // everything the app starts, and applied to `rkt enter` commands as to the app.
    if let Some(adj) = app.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .context("setting oom_score_adj")?;
    }
    // SAFETY: plain prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    if !pod.insecure.capabilities {
        caps::limit_bounding(mask)?;
    }
    let groups: Vec<Gid> = app
        .supplementary_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).context("setgroups")?;
    nix::unistd::setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))
        .context("setgid")?;
    nix::unistd::setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
        .context("setuid")?;
    caps::set_process_caps(mask)?;
    let wd = if app.working_dir.is_empty() {
        "/"
    } else {
        &app.working_dir
    };
    std::env::set_current_dir(root.join(wd.trim_start_matches('/')))
        .with_context(|| format!("working directory {wd}"))?;
    let need_nnp = filter.is_some() && mask & (1u64 << caps::CAP_SYS_ADMIN) == 0;
    if need_nnp {
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setting no_new_privs");
        }
    }
    if let Some(f) = &filter {
        seccomp::install(f)?;
    }
    // Nothing of the supervisor's (the pod lock, pipes) may leak into the app; CLOEXEC rather
    // than close so that a failed exec can still report.
    // SAFETY: close_range with the CLOEXEC flag only changes descriptor flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    let e = nix::unistd::execve(&exe_c, &argv, &envp).unwrap_err();
    Err(anyhow!("executing {}: {e}", exe.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_path_and_home_only_when_missing() {
        let mut app = crate::test_app();
        app.env = vec![("FOO".into(), "bar".into())];
        let env = environment(&app, Some("/root".into()));
        assert!(env.contains(&("PATH".into(), DEFAULT_PATH.into())));
        assert!(env.contains(&("HOME".into(), "/root".into())));
        app.env.push(("PATH".into(), "/x".into()));
        let env = environment(&app, None);
        assert_eq!(env.iter().filter(|(k, _)| k == "PATH").count(), 1);
        assert!(env.contains(&("HOME".into(), "/".into())));
    }

    #[test]
    fn entered_commands_keep_the_apps_identity() {
        let d = tempfile::tempdir().unwrap();
        let mut app = crate::test_app();
        app.user = "65534".into();
        app.group = "65534".into();
        app.supplementary_gids = vec![7];
        app.capabilities = vec!["CAP_KILL".into()];
        app.env = vec![("A".into(), "1".into()), ("B".into(), "2".into())];
        let e = entered_app(
            &app,
            d.path(),
            &["/bin/bash".into()],
            vec![("A".into(), "x".into())],
        );
        assert_eq!(e.exec, ["/bin/sh"]);
        assert_eq!((e.user.as_str(), e.group.as_str()), ("65534", "65534"));
        assert_eq!(e.supplementary_gids, [7]);
        assert_eq!(e.capabilities, app.capabilities);
        assert_eq!(e.seccomp, app.seccomp);
        assert_eq!(e.env, [("B".into(), "2".into()), ("A".into(), "x".into())]);
        std::fs::create_dir_all(d.path().join("bin")).unwrap();
        std::fs::write(d.path().join("bin/bash"), "").unwrap();
        let e = entered_app(&app, d.path(), &["/bin/bash".into()], vec![]);
        assert_eq!(e.exec, ["/bin/bash"]);
        assert_eq!(entered_app(&app, d.path(), &[], vec![]).exec, ["/bin/sh"]);
    }

    #[test]
    fn finds_executables_in_the_apps_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("bin")).unwrap();
        std::fs::write(d.path().join("bin/sh"), "").unwrap();
        assert_eq!(
            find_executable(d.path(), "sh", "/usr/bin:/bin").unwrap(),
            PathBuf::from("/bin/sh")
        );
        assert_eq!(
            find_executable(d.path(), "/x/y", "").unwrap(),
            PathBuf::from("/x/y")
        );
        assert!(find_executable(d.path(), "nope", "/bin")
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }
}
