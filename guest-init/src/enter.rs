//! `rkt enter` sessions: a vsock listener; each session runs a command in an app's namespaces.

use crate::*;

pub(crate) fn enter_listener(
    pod: &Arc<PodSpec>,
    pids: &Arc<Mutex<HashMap<String, i32>>>,
    layout: Option<&Layout>,
) -> anyhow::Result<()> {
    let fd = socket::socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .context("vsock socket")?;
    socket::bind(
        fd.as_raw_fd(),
        &VsockAddr::new(libc::VMADDR_CID_ANY, proto::ENTER_PORT),
    )
    .context("bind")?;
    socket::listen(&fd, socket::Backlog::new(8).unwrap()).context("listen")?;
    loop {
        let c = match socket::accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
            Ok(c) => c,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => bail!("accept: {e}"),
        };
        // SAFETY: accept4 returned a new fd we own.
        let conn = unsafe { File::from_raw_fd(c) };
        // A session is its own process: it is the parent of the command and so can wait for its
        // exit code, while PID 1's supervisor merely reaps the session process.
        let snapshot = pids.lock().unwrap().clone();
        let pod = &crate::apps_dynamic::with_added(pod);
        // SAFETY: the child runs the session to completion and _exits.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let code = match enter_session(conn, pod, &snapshot, layout) {
                    Ok(()) => 0,
                    Err(e) => {
                        log(&format!("enter session: {e:#}"));
                        1
                    }
                };
                // SAFETY: leaving the forked child.
                unsafe { libc::_exit(code) }
            }
            Ok(ForkResult::Parent { .. }) => drop(conn),
            Err(e) => log(&format!("fork for enter: {e}")),
        }
    }
}

pub(crate) fn enter_session(
    mut conn: File,
    pod: &PodSpec,
    pids: &HashMap<String, i32>,
    layout: Option<&Layout>,
) -> anyhow::Result<()> {
    proto::handshake(&mut conn)?;
    let (name, cmd, env, tty) = match proto::read_msg(&mut conn)? {
        Some(Msg::Enter { app, cmd, env, tty }) => (app, cmd, env, tty),
        other => bail!("expected Enter, got {other:?}"),
    };
    let refuse = |conn: &mut File, m: String| -> anyhow::Result<()> {
        proto::write_msg(conn, &Msg::Error { message: m.clone() })?;
        bail!(m)
    };
    let Some(a) = pod.apps.iter().find(|a| a.name == name) else {
        return refuse(&mut conn, format!("no app {name:?} in the pod"));
    };
    let Some(&pid) = pids.get(&name) else {
        return refuse(&mut conn, format!("app {name:?} is not running"));
    };
    if cmd.is_empty() {
        return refuse(&mut conn, "no command to run".into());
    }
    let (in_r, in_w) = pipe()?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let pair = if tty {
        Some(
            socket::socketpair(
                AddressFamily::Unix,
                SockType::Stream,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .context("socketpair")?,
        )
    } else {
        None
    };
    // SAFETY: the child sets itself up and execs (or _exits).
    let child = match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            supervisor::reset_signals_in_child();
            let io = AppIo {
                stdin: Some(&in_r),
                out: &out_w,
                err: &err_w,
                tty: pair.map(|(_, theirs)| theirs),
            };
            let e = enter_child(pod, a, pid, cmd, env, io, layout);
            let _ = writeln!(std::io::stderr(), "rkt: enter: {e:#}");
            // SAFETY: leaving the forked child.
            unsafe { libc::_exit(SETUP_FAILED) }
        }
        ForkResult::Parent { child } => child,
    };
    drop((in_r, out_w, err_w));
    // With a terminal, input goes to the pty master and its output comes back as stdout; the
    // pipes carry only what the child says before its terminal is attached.
    let master = match pair {
        Some((ours, theirs)) => {
            drop(theirs);
            supervisor::recv_fd(&ours)?
        }
        None => None,
    };
    relay_session(&mut conn, child, in_w, out_r, err_r, master)
}

pub(crate) fn enter_child(
    pod: &PodSpec,
    a: &AppSpec,
    pid: i32,
    cmd: Vec<String>,
    env: Vec<(String, String)>,
    io: AppIo,
    layout: Option<&Layout>,
) -> anyhow::Error {
    let r = (|| -> anyhow::Result<()> {
        // attach_tty makes its own session.
        if io.tty.is_none() {
            nix::unistd::setsid().context("setsid")?;
        }
        let stdin = io.stdin.context("enter needs a stdin")?;
        for (i, fd) in [stdin, io.out, io.err].iter().enumerate() {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(fd.as_raw_fd(), i as i32) };
        }
        if let Some(l) = layout {
            cgroup::join(l, &cgroup::app_path(&pod.uuid, &a.name), 0)?;
        }
        let ns = File::open(format!("/proc/{pid}/ns/mnt"))
            .context("opening the app's mount namespace")?;
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS).context("setns")?;
        // setns moved us to the app's root: its /dev/pts is the app's own devpts.
        if let Some(sock) = &io.tty {
            supervisor::hand_over_pty(Path::new("/dev/pts"), sock)?;
        }
        Ok(())
    })();
    if let Err(e) = r {
        return e;
    }
    // As the app runs (`runc exec`): its user, groups, capabilities, seccomp filter,
    // no_new_privs, working directory and environment (plus the caller's additions); shared
    // with stage1 ns. We are in the app's mount namespace, so "/" is the app's root.
    let entered = app::entered_app(a, Path::new("/"), &cmd, env);
    match app::exec_as_app(&entered, pod, Path::new("/")) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Relays an enter session: host stdin to the command, its stdout/stderr to the host, then its
/// exit status. Single-threaded (we are a freshly forked process).
pub(crate) fn relay_session(
    conn: &mut File,
    child: Pid,
    in_w: OwnedFd,
    out_r: OwnedFd,
    err_r: OwnedFd,
    master: Option<OwnedFd>,
) -> anyhow::Result<()> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::wait::{waitpid, WaitPidFlag};
    let mut outs: Vec<(Option<File>, Stream)> = vec![
        (Some(File::from(out_r)), Stream::Stdout),
        (Some(File::from(err_r)), Stream::Stderr),
    ];
    let mut stdin = Some(File::from(in_w));
    let mut size_fd = None;
    if let Some(m) = master {
        stdin = Some(File::from(m.try_clone()?));
        size_fd = Some(m.try_clone()?);
        outs.push((Some(File::from(m)), Stream::Stdout));
    }
    let mut conn_open = true;
    let mut status = None;
    let mut after_exit = 0;
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        if status.is_none() {
            if let Ok(st) = waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                status = supervisor::exit_code(&st);
            }
        }
        let outs_open = outs.iter().any(|(f, _)| f.is_some());
        // After the exit, give output a short while (a background child may hold the pipes).
        if status.is_some() && (!outs_open || after_exit >= 10) {
            break;
        }
        if status.is_some() {
            after_exit += 1;
        }
        let conn_dup = conn.try_clone()?;
        let mut fds: Vec<PollFd> = Vec::new();
        let mut which = Vec::new();
        for (i, (f, _)) in outs.iter().enumerate() {
            if let Some(f) = f {
                fds.push(PollFd::new(std::os::fd::AsFd::as_fd(f), PollFlags::POLLIN));
                which.push(i as i32);
            }
        }
        if conn_open {
            fds.push(PollFd::new(
                std::os::fd::AsFd::as_fd(&conn_dup),
                PollFlags::POLLIN,
            ));
            which.push(-1);
        }
        let _ = poll(&mut fds, PollTimeout::from(100u8));
        let ready: Vec<(i32, bool)> = fds
            .iter()
            .zip(&which)
            .map(|(f, w)| (*w, f.revents().map(|r| !r.is_empty()).unwrap_or(false)))
            .collect();
        drop(fds);
        for (w, r) in ready {
            if !r {
                continue;
            }
            if w < 0 {
                match proto::read_msg(conn) {
                    Ok(Some(Msg::Data {
                        stream: Stream::Stdin,
                        data,
                        ..
                    })) => {
                        if let Some(s) = stdin.as_mut() {
                            if s.write_all(&data).is_err() {
                                stdin = None;
                            }
                        }
                    }
                    Ok(Some(Msg::Eof {
                        stream: Stream::Stdin,
                        ..
                    })) => stdin = None,
                    Ok(Some(Msg::Stop { .. })) => {
                        let _ = kill(child, Signal::SIGTERM);
                    }
                    Ok(Some(Msg::Resize { rows, cols, .. })) => {
                        if let Some(m) = &size_fd {
                            set_winsize(m, (rows, cols));
                        }
                    }
                    Ok(Some(_)) => {}
                    // The host went away: nobody reads the output any more.
                    Ok(None) | Err(_) => {
                        conn_open = false;
                        stdin = None;
                        let _ = kill(child, Signal::SIGKILL);
                    }
                }
            } else {
                let (f, stream) = &mut outs[w as usize];
                let n = f.as_mut().map(|f| f.read(&mut buf)).unwrap_or(Ok(0));
                match n {
                    Ok(n) if n > 0 => {
                        if conn_open {
                            proto::write_msg(
                                conn,
                                &Msg::Data {
                                    chan: 0,
                                    stream: *stream,
                                    data: buf[..n].to_vec(),
                                },
                            )?;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    _ => {
                        *f = None;
                        if conn_open {
                            proto::write_msg(
                                conn,
                                &Msg::Eof {
                                    chan: 0,
                                    stream: *stream,
                                },
                            )?;
                        }
                    }
                }
            }
        }
    }
    let code = status.unwrap_or(SETUP_FAILED);
    if conn_open {
        proto::write_msg(conn, &Msg::Exited { code })?;
    }
    Ok(())
}
