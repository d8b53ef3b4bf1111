//! Booting the VM and serving the pod until it ends; the glue to rkt-vmm.

use super::*;

pub(super) fn boot(
    pod_dir: &Path,
    spec: &PodSpec,
    kernel: &Path,
    initrd: &Path,
    mut measure: PodMeasurement,
    nics: &[crate::net::kvm::VmNic],
) -> Result<i32> {
    let uds = pod_dir.join(VSOCK_UDS);
    let ctl_path = PathBuf::from(format!("{}_{}", uds.display(), proto::CONTROL_PORT));
    if ctl_path.as_os_str().len() > 107 {
        bail!(
            "stage1 kvm: pod directory path too long for a unix socket ({})",
            ctl_path.display()
        );
    }
    for p in [&uds, &ctl_path] {
        let _ = std::fs::remove_file(p);
    }
    std::fs::create_dir_all(uds.parent().unwrap())?;
    let listener = UnixListener::bind(&ctl_path)
        .with_context(|| format!("stage1 kvm: listening on {}", ctl_path.display()))?;
    std::fs::set_permissions(&ctl_path, std::fs::Permissions::from_mode(0o600))?;
    listener.set_nonblocking(true)?;

    // Signals are taken by one thread; `run` blocked them before any other thread existed.
    let tty = spec.interactive && crate::stage1::term::is_tty(0);
    let sigs = vmm_signals();

    let (vcpus, mem_mib) = vm_size(spec);
    super::template::set_trace(spec.debug);
    let (vm, plan) = template_build(spec, pod_dir, kernel, initrd, &uds, vcpus, mem_mib, nics)?;
    // The command line is final only now: measure the VMM (rkt itself), kernel, initramfs and
    // command line, then the pod manifest and apps, before any vCPU runs.
    let measured = measure
        .stage1_kvm(Path::new("/proc/self/exe"), kernel, initrd, &vm.cmdline)
        .and_then(|()| match &plan {
            // A restored VM runs the template's state and memory: their digests, checked
            // against the template's record just before the restore, go into the log too.
            super::template::Plan::Restored(dir, meta) => measure.stage1_kvm_template(
                &meta.key,
                dir,
                &meta.state_sha256,
                &meta.mem_sha256,
                meta.mem_pages,
            ),
            _ => Ok(()),
        })
        .and_then(|()| measure.finish());
    if let Err(e) = measured {
        for p in [&uds, &ctl_path] {
            let _ = std::fs::remove_file(p);
        }
        return Err(e.context("stage1 kvm: measuring the VM"));
    }
    let handle = vm.handle();
    // The app owns the terminal until the VM ends; restored on every way out of here.
    let _raw = if tty {
        Some(crate::stage1::term::RawTerminal::new(0)?)
    } else {
        None
    };
    let ended = Arc::new(AtomicBool::new(false));
    let writer: Arc<Mutex<Option<UnixStream>>> = Arc::default();
    let stopped_by_signal = Arc::new(AtomicBool::new(false));
    {
        let (writer, handle, stopped) = (writer.clone(), handle.clone(), stopped_by_signal.clone());
        std::thread::spawn(move || loop {
            let Ok(sig) = sigs.wait() else {
                continue;
            };
            if sig == nix::sys::signal::SIGWINCH {
                if tty {
                    send_size(&writer, 0);
                }
                continue;
            }
            stopped.store(true, Ordering::SeqCst);
            crate::stage1::notify::stopping();
            let sent = writer
                .lock()
                .ok()
                .and_then(|mut w| {
                    w.as_mut()
                        .map(|s| proto::write_msg(s, &Msg::Stop { timeout_ms: 10_000 }).is_ok())
                })
                .unwrap_or(false);
            if !sent {
                handle.stop();
                continue;
            }
            let h = handle.clone();
            std::thread::spawn(move || {
                std::thread::sleep(STOP_GRACE);
                h.stop();
            });
        });
    }
    // `rkt app start|stop|rm` of a mutable pod reach the guest through us (app.rs).
    let dynamic = Arc::new(super::app::Dynamic::new(spec.apps.len() as u32));
    if crate::pod::app::is_mutable(pod_dir) {
        let l = super::app::bind(pod_dir)?;
        let (pod_dir, writer, dynamic) = (pod_dir.to_path_buf(), writer.clone(), dynamic.clone());
        std::thread::spawn(move || super::app::serve(l, pod_dir, writer, dynamic));
    }
    let server = {
        let (ended, writer, handle, pod_dir, spec) = (
            ended.clone(),
            writer.clone(),
            handle.clone(),
            pod_dir.to_path_buf(),
            spec.clone(),
        );
        std::thread::spawn(move || -> Outcome {
            let mut conn = loop {
                match listener.accept() {
                    Ok((c, _)) => break c,
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            && !ended.load(Ordering::SeqCst) =>
                    {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(_) => return Outcome::default(),
                }
            };
            super::template::trace("control connection accepted");
            let _ = conn.set_nonblocking(false);
            let mut clone = conn.try_clone().ok();
            let mut on_hello = || {
                *writer.lock().unwrap() = clone.take();
                if spec.interactive {
                    if tty {
                        send_size(&writer, 0);
                    }
                    // Detached: it may stay blocked reading our stdin after the pod ended.
                    let writer = writer.clone();
                    std::thread::spawn(move || relay_stdin(io::stdin(), 0, &writer));
                }
            };
            let o = serve_control_with(
                &mut conn,
                &pod_dir,
                &spec,
                &mut io::stdout(),
                &mut io::stderr(),
                &mut on_hello,
                &dynamic,
            );
            super::template::trace("pod done");
            *writer.lock().unwrap() = None;
            drop(conn);
            // The guest reported the pod's end (after syncing its file systems): nothing it
            // does from here on matters, and its own power-off would cost ~0.3-1 s of emulated
            // kernel work under PVM, so end the VM now (issue 12). Without PodDone, closing
            // tells the guest it may reset; if it does not within a few seconds, end it.
            if o.code.is_none() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while !ended.load(Ordering::SeqCst) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            handle.stop();
            o
        })
    };
    let reason = super::template::run(vm, plan, &uds);
    ended.store(true, Ordering::SeqCst);
    let outcome = server.join().unwrap_or_default();
    super::template::trace("returning");
    for p in [&uds, &ctl_path, &pod_dir.join(super::app::APP_SOCKET)] {
        let _ = std::fs::remove_file(p);
    }
    let reason = reason.context("stage1 kvm: running the VM")?;
    if let Some(code) = outcome.code {
        if let Some(e) = outcome.error {
            eprintln!("rkt: stage1 kvm: {e}");
        }
        return Ok(code);
    }
    if let Some(e) = outcome.error {
        bail!("stage1 kvm: {e}");
    }
    if stopped_by_signal.load(Ordering::SeqCst) {
        return Ok(128 + libc::SIGTERM);
    }
    bail!(
        "stage1 kvm: the VM ended ({reason:?}) before the pod finished; see {}",
        pod_dir.join(CONSOLE_LOG).display()
    )
}

/// The pod's VM, restored from a template or booted cold (template.rs, issue 12).
#[allow(clippy::too_many_arguments)]
pub(super) fn template_build(
    spec: &PodSpec,
    pod_dir: &Path,
    kernel: &Path,
    initrd: &Path,
    uds: &Path,
    vcpus: u8,
    mem_mib: u64,
    nics: &[crate::net::kvm::VmNic],
) -> Result<(rkt_vmm::Vm, super::template::Plan)> {
    // A card is part of the template (its tap is not: a restored VM gets this pod's).
    let devices = format!(
        "{}{}",
        vmm::DEVICES,
        crate::net::kvm::template_devices(nics)
    );
    super::template::build(
        || vmm::config(spec, pod_dir, kernel, initrd, uds, vcpus, mem_mib, nics),
        &devices,
    )
}

/// Sends our terminal's size for channel `chan` to the guest, if connected.
pub(super) fn send_size<S: Write>(writer: &Mutex<Option<S>>, chan: u32) {
    if let Some((rows, cols)) = crate::stage1::term::size(0) {
        if let Some(w) = writer.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let _ = proto::write_msg(w, &Msg::Resize { chan, rows, cols });
        }
    }
}

/// Copies `input` to the guest as channel `chan`'s stdin until it ends (then Eof) or the
/// connection goes away. One frame per read, under the writer's lock: frames never interleave
/// with the other writers (stop, window sizes).
pub(super) fn relay_stdin<S: Write>(mut input: impl Read, chan: u32, writer: &Mutex<Option<S>>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => 0,
            Ok(n) => n,
        };
        let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = w.as_mut() else {
            return;
        };
        let m = if n == 0 {
            Msg::Eof {
                chan,
                stream: Stream::Stdin,
            }
        } else {
            Msg::Data {
                chan,
                stream: Stream::Stdin,
                data: buf[..n].to_vec(),
            }
        };
        if proto::write_msg(w, &m).is_err() || n == 0 {
            return;
        }
    }
}

/// The glue to rkt-vmm: which devices the pod's VM gets.
pub(super) mod vmm {
    use super::*;

    #[allow(clippy::too_many_arguments)]
    pub fn config(
        spec: &PodSpec,
        pod_dir: &Path,
        kernel: &Path,
        initrd: &Path,
        uds: &Path,
        vcpus: u8,
        mem_mib: u64,
        nics: &[crate::net::kvm::VmNic],
    ) -> Result<rkt_vmm::VmConfig> {
        let mut cfg = rkt_vmm::VmConfig::new(kernel);
        cfg.initrd = Some(initrd.to_path_buf());
        cfg.vcpus = vcpus;
        cfg.mem_mib = mem_mib;
        cfg.debug = spec.debug;
        // Debugging aid (e.g. `loglevel=7` to see the guest kernel's segfault reports in the
        // console log); measured with the rest of the command line like any other setting.
        if let Some(extra) = std::env::var_os("RKT_STAGE1_KVM_CMDLINE_EXTRA") {
            cfg.cmdline_extra = extra.to_string_lossy().into_owned();
        }
        let log = pod_dir.join(CONSOLE_LOG);
        cfg.serial_out = if spec.debug {
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?;
            rkt_vmm::SerialOut::Writer(Box::new(rkt_vmm::devices::legacy::Tee(io::stderr(), f)))
        } else {
            rkt_vmm::SerialOut::File(log)
        };
        // Only the pod directory is shared: app roots and volumes were mounted under it.
        cfg.devices.push(rkt_vmm::DeviceConfig::Fs {
            tag: proto::SHARE_TAG.into(),
            shared_dir: share_dir(pod_dir),
        });
        cfg.devices.push(rkt_vmm::DeviceConfig::Vsock {
            guest_cid: GUEST_CID as u64,
            uds_path: uds.to_path_buf(),
        });
        cfg.devices.push(rkt_vmm::DeviceConfig::Rng);
        // Last, so a pod without networks has the same device slots as before.
        for n in nics {
            cfg.devices.push(rkt_vmm::DeviceConfig::Net {
                tap: n.tap.try_clone().context("duplicating the tap fd")?,
                mac: n.mac,
                mtu: n.mtu,
            });
        }
        Ok(cfg)
    }

    /// The device list above (without the cards), for the VM template key (template.rs).
    pub const DEVICES: &str = "fs,vsock,rng";
}
