//! The control connection: app output, exit statuses and readiness from the guest; stop to it.

use super::*;

/// How the guest's side of the pod ended, as seen over the control connection.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    pub code: Option<i32>,
    pub error: Option<String>,
    pub started: usize,
}

/// Serves one control connection from the guest init: relays app output to `out`/`err`, writes
/// `status/<app>` and (when every app started) [`READY_FILE`], until PodDone or the end of
/// the connection. Distrusts the guest: bad frames or app numbers end the pod with an error.
/// `on_hello` runs once the handshake is done: only then may other threads write to the guest.
pub fn serve_control<S: Read + Write>(
    conn: &mut S,
    pod_dir: &Path,
    spec: &PodSpec,
    out: &mut dyn Write,
    err: &mut dyn Write,
    on_hello: &mut dyn FnMut(),
) -> Outcome {
    let none = super::app::Dynamic::new(spec.apps.len() as u32);
    serve_control_with(conn, pod_dir, spec, out, err, on_hello, &none)
}

/// [`serve_control`] for a pod whose apps may be added while it runs (`rkt app` on kvm): the
/// guest's messages about an added app's channel are taken only while `dynamic` knows it.
pub fn serve_control_with<S: Read + Write>(
    conn: &mut S,
    pod_dir: &Path,
    spec: &PodSpec,
    out: &mut dyn Write,
    err: &mut dyn Write,
    on_hello: &mut dyn FnMut(),
    dynamic: &super::app::Dynamic,
) -> Outcome {
    let mut o = Outcome::default();
    if let Err(e) = proto::handshake(conn) {
        o.error = Some(format!("guest handshake: {e}"));
        return o;
    }
    on_hello();
    let n = spec.apps.len();
    // A mutable pod boots without apps: it is ready (for `rkt app`, `enter`) once connected.
    if n == 0 {
        let _ = rkt_stage2::supervisor::write_atomic(&pod_dir.join(READY_FILE), "");
        crate::stage1::notify::send("READY=1");
    }
    // Kept in the pod directory too, as ns and fly keep theirs (not an interactive pod's tty).
    let names: Vec<&str> = spec.apps.iter().map(|a| a.name.as_str()).collect();
    let mut logs = (!spec.interactive).then(|| crate::pod::logs::PodLogs::open(pod_dir, &names));
    let log_stream = |s: Stream| match s {
        Stream::Stderr => crate::pod::logs::Stream::Stderr,
        _ => crate::pod::logs::Stream::Stdout,
    };
    let name = |i: u32| spec.apps.get(i as usize).map(|a| a.name.as_str());
    // systemd's READY=1 waits for every app to have started and, for an app that speaks
    // sd_notify, for its own READY=1 (docs/systemd.md).
    let notifying = crate::stage1::notify::notifying_apps(pod_dir, spec);
    let mut app_ready: Vec<bool> = notifying.iter().map(|n| !n).collect();
    let mut sent_ready = false;
    let mut maybe_ready = |started: usize, app_ready: &[bool]| {
        if !sent_ready && n > 0 && started == n && app_ready.iter().all(|r| *r) {
            crate::stage1::notify::send("READY=1");
            sent_ready = true;
        }
    };
    // Added apps' channels -> their index in `logs`, opened at their first output.
    let mut added_logs: std::collections::HashMap<u32, usize> = Default::default();
    loop {
        let m = match proto::read_msg(conn) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                o.error = Some(format!("control connection: {e}"));
                break;
            }
        };
        match m {
            Msg::Data { chan, stream, data } if (chan as usize) < n => {
                let w: &mut dyn Write = if stream == Stream::Stderr { err } else { out };
                let _ = w.write_all(&data);
                let _ = w.flush();
                if let Some(l) = logs.as_mut() {
                    l.write(chan as usize, log_stream(stream), &data);
                }
            }
            Msg::Eof { chan, stream } if (chan as usize) < n => {
                if let Some(l) = logs.as_mut() {
                    l.finish(chan as usize, log_stream(stream));
                }
            }
            Msg::AppStarted { app, .. } if (app as usize) < n => {
                // The guest reports an app once it exec'd (its root is in place): enter works.
                o.started += 1;
                if o.started == n {
                    let _ = rkt_stage2::supervisor::write_atomic(&pod_dir.join(READY_FILE), "");
                }
                maybe_ready(o.started, &app_ready);
            }
            // Only an app that was given a socket may speak; what it says is filtered as on ns.
            Msg::Notify { chan, message } if (chan as usize) < n => {
                if notifying[chan as usize] {
                    let (ready, fwd) = crate::stage1::notify::app_message(&message);
                    app_ready[chan as usize] |= ready;
                    if !fwd.is_empty() {
                        crate::stage1::notify::send(&fwd);
                    }
                    maybe_ready(o.started, &app_ready);
                }
            }
            Msg::Notify { chan, .. } if dynamic.name(chan).is_some() => {}
            Msg::AppExited { app, code } if (app as usize) < n => {
                let p = rkt_stage2::app_status_path(pod_dir, name(app).unwrap());
                if let Err(e) = rkt_stage2::supervisor::write_atomic(&p, &format!("{code}")) {
                    o.error = Some(format!("{e:#}"));
                }
            }
            // Added apps (`rkt app start`): output to their own descriptors when their start
            // gave some (the containerd shim's FIFOs), else to ours and their logs; exit codes
            // to their status files.
            Msg::Data { chan, stream, data } if dynamic.name(chan).is_some() => {
                if dynamic.output(chan, stream, &data) {
                    continue;
                }
                let w: &mut dyn Write = if stream == Stream::Stderr { err } else { out };
                let _ = w.write_all(&data);
                let _ = w.flush();
                if let Some(l) = logs.as_mut() {
                    let i = *added_logs
                        .entry(chan)
                        .or_insert_with(|| l.add(pod_dir, &dynamic.name(chan).unwrap_or_default()));
                    l.write(i, log_stream(stream), &data);
                }
            }
            Msg::Eof { chan, stream } if dynamic.name(chan).is_some() => {
                dynamic.close_output(chan, stream);
                if let (Some(l), Some(i)) = (logs.as_mut(), added_logs.get(&chan)) {
                    l.finish(*i, log_stream(stream));
                }
            }
            Msg::AppStarted { app, .. } if dynamic.name(app).is_some() => dynamic.reported(app),
            Msg::AppExited { app, code } if dynamic.name(app).is_some() => {
                let name = dynamic.name(app).unwrap_or_default();
                // Its last output came first (the guest drains it before the exit).
                if let (Some(l), Some(i)) = (logs.as_mut(), added_logs.remove(&app)) {
                    l.close(i);
                }
                let p = rkt_stage2::app_status_path(pod_dir, &name);
                if let Err(e) = rkt_stage2::supervisor::write_atomic(&p, &format!("{code}")) {
                    o.error = Some(format!("{e:#}"));
                }
                dynamic.exited(app);
            }
            Msg::PodDone { code } => {
                o.code = Some(code);
                // The apps are down and the pod is torn down from here (as ns says it once its
                // supervisor exited): systemd's STOPPING=1, once, if no stop request sent it.
                crate::stage1::notify::stopping();
                break;
            }
            Msg::Error { message } => {
                // One line: the guest does not get to paint the user's terminal.
                let line: String = message
                    .chars()
                    .take(500)
                    .filter(|c| !c.is_control())
                    .collect();
                o.error = Some(format!("guest: {line}"));
            }
            other => {
                o.error = Some(format!(
                    "unexpected message from the guest: {}",
                    describe(&other)
                ));
                break;
            }
        }
    }
    o
}

pub(super) fn describe(m: &Msg) -> String {
    let s = format!("{m:?}");
    s.chars().take(120).collect()
}
