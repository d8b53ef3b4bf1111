//! The rkt pod behind a sandbox: started with `rkt app sandbox` (a long-running process, as
//! rktlet ran it), its apps changed through the engine's app library, stopped and removed with
//! the last container that uses it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rkt_engine::pod::{Pod, PodDir, Pods, State};
use rkt_engine::stage1::Flavor;

use crate::bundle::Net;

/// Where the shim finds rkt: its data directory and its binary.
#[derive(Debug, Clone)]
pub struct Rkt {
    pub dir: PathBuf,
    pub bin: PathBuf,
    pub flavor: Flavor,
}

/// `RKT_SHIM_DIR` (rkt's `--dir`) and `RKT_SHIM_RKT` (the `rkt` binary) come from containerd's
/// environment, which shims inherit; by default `/var/lib/rkt` and the `rkt` beside the shim
/// (both are installed in the same directory), else the one on `PATH`.
impl Rkt {
    pub fn from_env(flavor: Flavor) -> Rkt {
        let dir = std::env::var_os("RKT_SHIM_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| "/var/lib/rkt".into());
        let bin = std::env::var_os("RKT_SHIM_RKT")
            .map(PathBuf::from)
            .or_else(|| {
                let beside = std::env::current_exe().ok()?.parent()?.join("rkt");
                beside.exists().then_some(beside)
            })
            .unwrap_or_else(|| "rkt".into());
        Rkt { dir, bin, flavor }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg(format!("--dir={}", self.dir.display()));
        c.stdin(Stdio::null());
        c
    }

    pub fn pods(&self) -> Pods {
        Pods::new(&self.dir)
    }

    pub fn pod(&self, uuid: &str) -> Result<Pod> {
        Pod::load(&self.pods(), uuid)?.with_context(|| format!("pod {uuid} is gone"))
    }
}

/// A running sandbox pod and the `rkt app sandbox` process that runs it.
pub struct Sandbox {
    pub uuid: String,
    pub dir: PathBuf,
    /// The sandbox process's exit, once it is gone.
    exited: mpsc::Receiver<()>,
}

/// How long a sandbox may take to come up (its supervisor ready for apps). A VM boots in
/// ~0.1 s on real KVM but took 120-150 s here under nested PVM, which emulates the guest
/// kernel (docs/containerd.md).
fn start_timeout(flavor: Flavor) -> Duration {
    match flavor {
        Flavor::Kvm => Duration::from_secs(900),
        _ => Duration::from_secs(60),
    }
}

impl Sandbox {
    /// Starts an empty mutable pod; `uuid_file` (in the bundle) records it for `shim delete`,
    /// which cleans up after a shim that was killed.
    pub fn start(
        rkt: &Rkt,
        net: &Net,
        hostname: Option<&str>,
        uuid_file: &Path,
    ) -> Result<Sandbox> {
        let _ = std::fs::remove_file(uuid_file);
        let mut cmd = rkt.command();
        cmd.args(["app", "sandbox"])
            .arg(format!("--stage1={}", rkt.flavor))
            .arg(format!("--uuid-file-save={}", uuid_file.display()));
        match net {
            Net::Host => {
                cmd.arg("--net=host");
            }
            Net::Own => {
                cmd.arg("--net=none");
            }
            // CRI's namespace, set up by its CNI: the pod joins it and leaves it to containerd.
            Net::Join(p) => {
                cmd.arg(format!("--net={}", p.display()));
            }
        }
        if let Some(h) = hostname {
            cmd.arg(format!("--hostname={h}"));
        }
        let log = uuid_file.with_file_name("rkt-sandbox.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdout(out.try_clone()?).stderr(out);
        // The sandbox stops (SIGTERM: its apps get the pod's stop timeout) when the shim dies.
        // PDEATHSIG follows the thread that forked, so a thread that lives as long as the child
        // forks it and reaps it.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (spawned_tx, spawned_rx) = mpsc::channel();
        let (exit_tx, exit_rx) = mpsc::channel();
        std::thread::spawn(move || match cmd.spawn() {
            Ok(mut child) => {
                let _ = spawned_tx.send(Ok(()));
                let _ = child.wait();
                let _ = exit_tx.send(());
            }
            Err(e) => {
                let _ = spawned_tx.send(Err(e));
            }
        });
        spawned_rx
            .recv()
            .context("sandbox thread")?
            .with_context(|| format!("running {}", rkt.bin.display()))?;
        let deadline = Instant::now() + start_timeout(rkt.flavor);
        let failed = |what: &str| {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let last = text.lines().last().unwrap_or("").to_string();
            anyhow::anyhow!("rkt app sandbox {what}: {last}")
        };
        loop {
            if exit_rx.try_recv().is_ok() {
                return Err(failed("exited"));
            }
            if let Ok(uuid) = std::fs::read_to_string(uuid_file) {
                let uuid = uuid.trim().to_string();
                if let Ok(Some(pod)) = Pod::load(&rkt.pods(), &uuid) {
                    if pod.state == State::Running && rkt.flavor.is_ready(&pod.path) {
                        return Ok(Sandbox {
                            uuid,
                            dir: pod.path,
                            exited: exit_rx,
                        });
                    }
                }
            }
            if Instant::now() > deadline {
                return Err(failed("did not become ready"));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Stops the pod (its apps get SIGTERM, SIGKILL after the stop timeout), waits for the
    /// sandbox process, and removes the pod.
    pub fn stop_and_remove(self, rkt: &Rkt) -> Result<()> {
        if let Err(e) = rkt_engine::stage1::stop(&self.dir, false) {
            log::warn!("stopping pod {}: {e:#}", self.uuid);
        }
        let _ = self.exited.recv_timeout(Duration::from_secs(30));
        remove(rkt, &self.uuid)
    }
}

/// `rkt rm` of an exited pod (after `rkt stop --force` when it still runs, as after a shim that
/// was killed), in this process: what `rkt rm` does, without starting one.
pub fn remove(rkt: &Rkt, uuid: &str) -> Result<()> {
    let running = |rkt: &Rkt| {
        Pod::load(&rkt.pods(), uuid)
            .ok()
            .flatten()
            .is_some_and(|p| p.state == State::Running)
    };
    if running(rkt) {
        let path = rkt.pods().path(PodDir::Run, uuid);
        let _ = rkt_engine::stage1::stop(&path, true);
        let deadline = Instant::now() + Duration::from_secs(10);
        while running(rkt) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let pods = rkt.pods();
    let pod = Pod::load(&pods, uuid)?.with_context(|| format!("pod {uuid} is gone"))?;
    rkt_engine::pod::lifecycle::remove(&pods, pod)
        .with_context(|| format!("removing pod {uuid}"))?;
    Ok(())
}
