//! `rkt enter` on a kvm pod: a vsock session with the guest init.

use super::*;

/// Opens a host-initiated vsock connection to `port` in the guest (Firecracker's protocol:
/// `CONNECT <port>\n` on the VM's unix socket, answered by `OK <host port>\n`).
pub fn vsock_connect(uds: &Path, port: u32) -> Result<UnixStream> {
    let mut s =
        UnixStream::connect(uds).with_context(|| format!("connecting to {}", uds.display()))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let mut line = Vec::new();
    let mut r = BufReader::new(s.try_clone()?).take(64);
    r.read_until(b'\n', &mut line)?;
    if !line.starts_with(b"OK ") {
        bail!(
            "the VM refused a connection to guest port {port}: {:?}",
            String::from_utf8_lossy(&line).trim()
        );
    }
    // BufReader may have read past the line only if the guest spoke first; it does not (the
    // guest init answers our Hello), so nothing is lost.
    Ok(s)
}

/// Runs `cmd` in `app` of a running kvm pod; returns its exit code. When our stdin is a terminal
/// the command gets a pty in the guest (as it would get our terminal on ns).
pub fn enter(pod_dir: &Path, _spec: &PodSpec, app: &str, cmd: &[String]) -> Result<i32> {
    wait_ready(pod_dir, ENTER_BOOT_WAIT)?;
    let uds = pod_dir.join(VSOCK_UDS);
    let tty = crate::stage1::term::is_tty(0);
    let mut conn = vsock_connect(&uds, proto::ENTER_PORT).map_err(err_prefix)?;
    proto::handshake(&mut conn).context("stage1 kvm: enter")?;
    proto::write_msg(
        &mut conn,
        &Msg::Enter {
            app: app.to_string(),
            cmd: cmd.to_vec(),
            env: Vec::new(),
            tty,
        },
    )?;
    let _raw = if tty {
        // Taken by the resize thread below; blocked before it exists.
        let mut winch = nix::sys::signal::SigSet::empty();
        winch.add(nix::sys::signal::SIGWINCH);
        winch.thread_block().context("blocking SIGWINCH")?;
        Some(crate::stage1::term::RawTerminal::new(0)?)
    } else {
        None
    };
    enter_relay(
        conn,
        Box::new(io::stdin()),
        &mut io::stdout(),
        &mut io::stderr(),
        tty,
    )
}

/// Waits (bounded, saying so once on stderr) until a booting pod's apps run.
pub(super) fn wait_ready(pod_dir: &Path, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let mut said = false;
    while !pod_dir.join(READY_FILE).exists() {
        if !crate::pod::Lock::is_held(pod_dir).unwrap_or(false) {
            bail!("stage1 kvm: the pod exited before its apps were up");
        }
        if start.elapsed() >= limit {
            bail!(
                "stage1 kvm: the pod's apps were not up after {}s (see {})",
                limit.as_secs(),
                pod_dir.join(CONSOLE_LOG).display()
            );
        }
        if !said {
            eprintln!(
                "rkt: waiting for the pod's VM to boot and start its apps (up to {}s)",
                limit.as_secs()
            );
            said = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Relays an enter session: `input` to the command, its output to `out`/`err`; returns its code.
/// With `tty`, our terminal's size is sent now and on every SIGWINCH (which the caller blocked).
/// The stdin thread is detached: it may stay blocked reading a terminal after the command ended.
pub fn enter_relay<S>(
    conn: S,
    input: Box<dyn Read + Send>,
    out: &mut dyn Write,
    err: &mut dyn Write,
    tty: bool,
) -> Result<i32>
where
    S: Read + Write + TryCloneStream + 'static,
{
    let writer = Arc::new(Mutex::new(Some(conn.try_clone_stream()?)));
    let mut r = conn;
    if tty {
        send_size(&writer, 0);
        let writer = writer.clone();
        std::thread::spawn(move || {
            let mut winch = nix::sys::signal::SigSet::empty();
            winch.add(nix::sys::signal::SIGWINCH);
            while winch.wait().is_ok() {
                send_size(&writer, 0);
            }
        });
    }
    {
        let writer = writer.clone();
        std::thread::spawn(move || relay_stdin(input, 0, &writer));
    }
    loop {
        match proto::read_msg(&mut r) {
            Ok(Some(Msg::Data {
                stream: Stream::Stdout,
                data,
                ..
            })) => {
                let _ = out.write_all(&data);
                let _ = out.flush();
            }
            Ok(Some(Msg::Data {
                stream: Stream::Stderr,
                data,
                ..
            })) => {
                let _ = err.write_all(&data);
                let _ = err.flush();
            }
            Ok(Some(Msg::Eof { .. })) => {}
            Ok(Some(Msg::Exited { code })) => {
                r.shutdown_stream();
                return Ok(code);
            }
            Ok(Some(Msg::Error { message })) => {
                r.shutdown_stream();
                let line: String = message
                    .chars()
                    .take(500)
                    .filter(|c| !c.is_control())
                    .collect();
                bail!("stage1 kvm: enter: {line}");
            }
            Ok(Some(other)) => {
                r.shutdown_stream();
                bail!("stage1 kvm: enter: unexpected message {}", describe(&other))
            }
            Ok(None) => {
                r.shutdown_stream();
                bail!("stage1 kvm: enter: the guest closed the session without an exit code")
            }
            Err(e) => {
                r.shutdown_stream();
                bail!("stage1 kvm: enter: {e}")
            }
        }
    }
}

/// Streams an enter session can run over (a unix socket to the VMM; a socketpair in tests).
pub trait TryCloneStream: Sized + Send {
    fn try_clone_stream(&self) -> io::Result<Self>;
    /// Unblocks the stdin relay thread's writes.
    fn shutdown_stream(&self);
}

impl TryCloneStream for UnixStream {
    fn try_clone_stream(&self) -> io::Result<Self> {
        self.try_clone()
    }
    fn shutdown_stream(&self) {
        let _ = self.shutdown(std::net::Shutdown::Both);
    }
}
