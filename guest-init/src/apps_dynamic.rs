//! Apps of a mutable pod (`rkt app sandbox --stage1=kvm`), started and stopped by the host while
//! the VM runs. The pod boots with no app; the host sends `AppStart {chan, spec}` (the app's
//! stage2 spec with guest paths, its root already under the virtio-fs share), `AppStop {chan}`
//! and `AppSignal {chan, signal}` (containerd's Kill). An app started with `stdin` reads the
//! host's input for its channel through the same [`Inputs`] an interactive pod's app uses.
//!
//! The app is set up exactly as a boot-time app (`app_child`, stage2), forked from its own thread
//! and handed to the stage2 supervisor (PID 1's main loop) over stage2's control socket, bound in
//! the guest's `/run` where no app sees it: the supervisor then reaps it, stops it with the pod
//! and reports its exit through `on_exit`. The child waits on a gate until it is registered, so
//! it cannot be reaped unseen. Channels are never reused: a late message about an old app
//! cannot be mistaken for a new one.

use crate::*;
use rkt_stage2::control::{self, Request};
use std::collections::HashSet;
use std::sync::OnceLock;

/// Where PID 1 binds stage2's control socket (`supervisor.sock`): the guest's own tmpfs.
const CTL_DIR: &str = "/run/rkt/ctl";
/// How long an exit report waits for the start report of the same app.
const START_REPORT_WAIT: Duration = Duration::from_secs(10);

struct App {
    name: String,
    spec: AppSpec,
    /// End of the app's stdout/stderr relays.
    drains: mpsc::Receiver<()>,
    /// Sent once `AppStarted` went out (or the start failed).
    started: mpsc::Receiver<()>,
}

struct State {
    pod: Arc<PodSpec>,
    layout: Option<Layout>,
    ctl: Control,
    pids: Arc<Mutex<HashMap<String, i32>>>,
    inputs: SharedInputs,
    apps: Mutex<HashMap<u32, App>>,
    used: Mutex<HashSet<u32>>,
}

static STATE: OnceLock<State> = OnceLock::new();
/// Host app messages that arrived before [`init`]: the host sees the pod ready as soon as we
/// connected, a moment before the supervisor runs. Bounded; replayed by `init`.
static EARLY: Mutex<Vec<Msg>> = Mutex::new(Vec::new());
const EARLY_MAX: usize = 64;

/// Makes this pod mutable: binds the supervisor's control socket and accepts the host's app
/// messages from now on.
pub(crate) fn init(
    pod: &PodSpec,
    layout: Option<&Layout>,
    ctl: &Control,
    pids: &Arc<Mutex<HashMap<String, i32>>>,
    inputs: &SharedInputs,
) -> anyhow::Result<control::Control> {
    std::fs::create_dir_all(CTL_DIR)?;
    std::fs::set_permissions(CTL_DIR, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let l = control::bind(Path::new(CTL_DIR))?;
    let _ = STATE.set(State {
        pod: Arc::new(pod.clone()),
        layout: layout.cloned(),
        ctl: ctl.clone(),
        pids: pids.clone(),
        inputs: inputs.clone(),
        apps: Mutex::default(),
        used: Mutex::default(),
    });
    let early = std::mem::take(&mut *lock(&EARLY));
    for m in early {
        handle(m);
    }
    Ok(control::Control::new(l))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A host message for the mutable pod (from the control connection's reader).
pub(crate) fn handle(m: Msg) {
    let Some(st) = STATE.get() else {
        // Checked again under the lock `init` drains with: a message is kept or handled, once.
        let mut early = lock(&EARLY);
        if STATE.get().is_none() {
            if early.len() < EARLY_MAX {
                early.push(m);
            } else {
                log("too many app messages before the pod's supervisor runs: ignored");
            }
            return;
        }
        drop(early);
        return handle(m);
    };
    match m {
        Msg::AppStart { chan, spec, stdin } => {
            if !lock(&st.used).insert(chan) {
                log(&format!(
                    "AppStart for channel {chan}, already used: ignored"
                ));
                return;
            }
            // Its own thread: an app's set-up must not hold up the control connection.
            std::thread::spawn(move || {
                if let Err(e) = start(st, chan, &spec, stdin) {
                    log(&format!("starting app on channel {chan}: {e:#}"));
                    st.ctl.send(&Msg::AppExited {
                        app: chan,
                        code: SETUP_FAILED,
                    });
                }
            });
        }
        Msg::AppStop { chan } => {
            let name = lock(&st.apps).get(&chan).map(|a| a.name.clone());
            match name {
                Some(app) => {
                    if let Err(e) = control::request(Path::new(CTL_DIR), &Request::Stop { app }) {
                        log(&format!("stopping app on channel {chan}: {e:#}"));
                    }
                }
                None => log(&format!("AppStop for channel {chan}: no such app")),
            }
        }
        Msg::AppSignal { chan, signal } => {
            // Only a started app has a pid; it stays in `pids` until the supervisor reaped it, so
            // the signal cannot reach a recycled pid.
            let name = lock(&st.apps).get(&chan).map(|a| a.name.clone());
            let pid = name.and_then(|n| lock(&st.pids).get(&n).copied());
            match pid {
                // SAFETY: plain kill(2); the signal number was checked when the message was read.
                Some(pid) => unsafe {
                    libc::kill(pid, signal as i32);
                },
                None => log(&format!("AppSignal for channel {chan}: no running app")),
            }
        }
        _ => {}
    }
}

fn start(st: &'static State, chan: u32, spec: &str, stdin: bool) -> anyhow::Result<()> {
    let a: AppSpec = serde_json::from_str(spec).context("parsing the app spec")?;
    if !control::valid_app_name(&a.name) {
        bail!("invalid app name {:?}", a.name);
    }
    if lock(&st.apps).values().any(|x| x.name == a.name) {
        bail!("app {:?} already runs", a.name);
    }
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let input = if stdin { Some(pipe()?) } else { None };
    let (gate_r, gate_w) = pipe()?;
    let (exec_r, exec_w) = pipe()?;
    // SAFETY: the child only sets itself up and execs (or _exits).
    let child = match unsafe { fork() }.context("fork")? {
        ForkResult::Child => {
            supervisor::reset_signals_in_child();
            drop((exec_r, gate_w));
            // Registered with the supervisor first: one byte says go, end-of-file says die.
            let mut go = [0u8; 1];
            if !matches!(File::from(gate_r).read(&mut go), Ok(1)) {
                // SAFETY: leaving the forked child.
                unsafe { libc::_exit(SETUP_FAILED) }
            }
            let io = AppIo {
                stdin: input.as_ref().map(|(r, _)| r),
                out: &out_w,
                err: &err_w,
                tty: None,
            };
            let e = app_child(&st.pod, &a, io, st.layout.as_ref());
            let _ = writeln!(std::io::stderr(), "rkt: app {:?}: {e:#}", a.name);
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(SETUP_FAILED) }
        }
        ForkResult::Parent { child } => child,
    };
    drop((out_w, err_w, exec_w, gate_r));
    if let Some((r, w)) = input {
        drop(r);
        lock(&st.inputs).register(chan, File::from(w), None);
    }
    let (tx, drains) = mpsc::channel();
    for (fd, stream) in [(out_r, Stream::Stdout), (err_r, Stream::Stderr)] {
        let (c, tx) = (st.ctl.clone(), tx.clone());
        std::thread::spawn(move || relay(fd, chan, stream, c, tx));
    }
    let (started_tx, started) = mpsc::channel();
    lock(&st.apps).insert(
        chan,
        App {
            name: a.name.clone(),
            spec: a.clone(),
            drains,
            started,
        },
    );
    let reg = Request::Register {
        app: a.name.clone(),
        pid: child.as_raw(),
    };
    if let Err(e) = control::request(Path::new(CTL_DIR), &reg) {
        // Not registered: the supervisor reaps it without a report, so we report.
        let _ = kill(child, Signal::SIGKILL);
        lock(&st.apps).remove(&chan);
        return Err(e.context("registering the app with the supervisor"));
    }
    let _ = File::from(gate_w).write_all(b"g");
    wait_exec(&exec_r, child);
    lock(&st.pids).insert(a.name.clone(), child.as_raw());
    st.ctl.send(&Msg::AppStarted {
        app: chan,
        pid: child.as_raw() as u32,
    });
    let _ = started_tx.send(());
    Ok(())
}

/// The supervisor reaped `name`: if it is one of ours, report its exit (after its start and
/// its last output) and return true.
pub(crate) fn on_exit(name: &str, code: i32) -> bool {
    let Some(st) = STATE.get() else {
        return false;
    };
    let found = {
        let mut apps = lock(&st.apps);
        let chan = apps.iter().find(|(_, a)| a.name == name).map(|(c, _)| *c);
        chan.and_then(|c| apps.remove(&c).map(|a| (c, a)))
    };
    let Some((chan, a)) = found else {
        return false;
    };
    let _ = a.started.recv_timeout(START_REPORT_WAIT);
    lock(&st.pids).remove(name);
    // Its input writer goes (and with it the pipe), and so does input that came too late.
    let mut inputs = lock(&st.inputs);
    inputs.apps.remove(&chan);
    inputs.early.remove(&chan);
    drop(inputs);
    // As for boot-time apps: the last output first, bounded against daemons holding the pipes.
    for _ in 0..2 {
        if a.drains.recv_timeout(Duration::from_secs(2)).is_err() {
            break;
        }
    }
    st.ctl.send(&Msg::AppExited { app: chan, code });
    true
}

/// `pod` with the running dynamic apps added, for `rkt enter`/`rkt app exec`.
pub(crate) fn with_added(pod: &Arc<PodSpec>) -> Arc<PodSpec> {
    let Some(st) = STATE.get() else {
        return pod.clone();
    };
    let mut p = (**pod).clone();
    p.apps
        .extend(lock(&st.apps).values().map(|a| a.spec.clone()));
    Arc::new(p)
}
