//! containerd's task service (runtime v2, ttrpc) over rkt pods: one pod per sandbox, one app
//! per container, `rkt app exec` per exec.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use containerd_shim::api::{self, Status};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};

use crate::bundle;
use crate::sandbox::{Rkt, Sandbox};
use crate::stdio::{self, StdinWriter};
use rkt_engine::stage1::Flavor;

/// The file in a bundle that names the pod its container made (read by `shim delete`).
pub const POD_UUID_FILE: &str = "rkt-pod-uuid";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PState {
    Created,
    Running,
    Stopped,
}

struct Proc {
    pid: u32,
    state: PState,
    exit_status: u32,
    exited_at: Option<Timestamp>,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    stdin_writer: Option<StdinWriter>,
    pty: Option<File>,
}

impl Proc {
    fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Proc {
        Proc {
            pid: 0,
            state: PState::Created,
            exit_status: 0,
            exited_at: None,
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
            terminal,
            stdin_writer: None,
            pty: None,
        }
    }

    fn exited(&mut self, code: u32) -> Timestamp {
        let at = containerd_shim::util::timestamp().unwrap_or_default();
        self.state = PState::Stopped;
        self.exit_status = code;
        self.exited_at = Some(at.clone());
        self.pty = None;
        at
    }
}

struct Exec {
    proc_: Proc,
    args: Vec<String>,
}

struct Container {
    bundle: PathBuf,
    app: String,
    /// The sandbox whose pod runs the app (the container's own id when it made the pod).
    sandbox: String,
    rootfs_mounted: bool,
    init: Proc,
    execs: HashMap<String, Exec>,
}

impl Container {
    /// The container's first process (`exec_id` empty) or one of its execs.
    fn process(&self, exec_id: &str) -> TtrpcResult<&Proc> {
        if exec_id.is_empty() {
            return Ok(&self.init);
        }
        self.execs
            .get(exec_id)
            .map(|e| &e.proc_)
            .ok_or_else(|| exec_not_found(exec_id))
    }

    fn process_mut(&mut self, exec_id: &str) -> TtrpcResult<&mut Proc> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .map(|e| &mut e.proc_)
            .ok_or_else(|| exec_not_found(exec_id))
    }
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    sandboxes: HashMap<String, Sandbox>,
}

impl State {
    fn container(&self, id: &str) -> TtrpcResult<&Container> {
        self.containers.get(id).ok_or_else(|| not_found(id))
    }

    fn container_mut(&mut self, id: &str) -> TtrpcResult<&mut Container> {
        self.containers.get_mut(id).ok_or_else(|| not_found(id))
    }

    /// The process `exec_id` (empty: the first one) of container `id`.
    fn process(&self, id: &str, exec_id: &str) -> TtrpcResult<&Proc> {
        self.container(id)?.process(exec_id)
    }

    fn process_mut(&mut self, id: &str, exec_id: &str) -> TtrpcResult<&mut Proc> {
        self.container_mut(id)?.process_mut(exec_id)
    }

    /// The sandbox whose pod runs container `id`.
    fn sandbox_of(&self, id: &str) -> TtrpcResult<&Sandbox> {
        self.sandbox_of_container(self.container(id)?)
    }

    fn sandbox_of_container(&self, c: &Container) -> TtrpcResult<&Sandbox> {
        self.sandboxes
            .get(&c.sandbox)
            .ok_or_else(|| err(Code::NOT_FOUND, format!("the sandbox of {} is gone", c.app)))
    }
}

#[derive(Clone)]
pub struct TaskService {
    inner: Arc<(Mutex<State>, Condvar)>,
    exit: Arc<ExitSignal>,
    rkt: Arc<Rkt>,
    publisher: Arc<Mutex<RemotePublisher>>,
    namespace: String,
}

fn err(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn internal(e: anyhow::Error) -> ttrpc::Error {
    err(Code::INTERNAL, format!("{e:#}"))
}

fn not_found(id: &str) -> ttrpc::Error {
    err(Code::NOT_FOUND, format!("container {id} not found"))
}

fn exec_not_found(exec_id: &str) -> ttrpc::Error {
    err(Code::NOT_FOUND, format!("exec {exec_id} not found"))
}

impl TaskService {
    pub fn new(
        rkt: Arc<Rkt>,
        exit: Arc<ExitSignal>,
        publisher: RemotePublisher,
        namespace: String,
    ) -> TaskService {
        TaskService {
            inner: Arc::new((Mutex::new(State::default()), Condvar::new())),
            exit,
            rkt,
            publisher: Arc::new(Mutex::new(publisher)),
            namespace,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.0.lock().unwrap()
    }

    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let ctx = containerd_shim::protos::ttrpc::context::Context::default();
        if let Err(e) = self
            .publisher
            .lock()
            .unwrap()
            .publish(ctx, topic, &self.namespace, event)
        {
            log::warn!("publishing {topic}: {e}");
        }
    }

    /// Records an exit, wakes Wait and tells containerd.
    fn on_exit(&self, id: &str, exec_id: &str, code: u32) {
        let mut st = self.lock();
        let Ok(p) = st.process_mut(id, exec_id) else {
            return;
        };
        let at = p.exited(code);
        let pid = p.pid;
        drop(st);
        self.inner.1.notify_all();
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: id.into(),
                id: if exec_id.is_empty() { id } else { exec_id }.into(),
                pid,
                exit_status: code,
                exited_at: MessageField::some(at),
                ..Default::default()
            }),
        );
    }

    /// Watches for the supervisor's record of the app's exit code (the supervisor, not the shim,
    /// is the app's parent). A pod that is gone without one reports 255. The status directory is
    /// watched with inotify (the record is renamed into place), so the exit is seen at once;
    /// the pod's liveness is checked at every wake-up and every 100 ms.
    fn watch_app(&self, id: String, pod_dir: PathBuf, app: String) {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let svc = self.clone();
        std::thread::spawn(move || {
            let status = rkt_stage2::app_status_path(&pod_dir, &app);
            let pod_pid = std::fs::read_to_string(rkt_stage2::pod_pid_path(&pod_dir))
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            let inotify = status.parent().and_then(|dir| {
                let i = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok()?;
                i.add_watch(
                    dir,
                    AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
                )
                .ok()?;
                Some(i)
            });
            let code = loop {
                if let Ok(t) = std::fs::read_to_string(&status) {
                    if let Ok(c) = t.trim().parse::<i32>() {
                        break c as u32;
                    }
                }
                // SAFETY: kill(pid, 0) only checks that the process exists.
                if pod_pid.is_some_and(|p| unsafe { libc::kill(p, 0) } != 0) && !status.exists() {
                    break 255;
                }
                match &inotify {
                    Some(i) => {
                        use std::os::fd::AsFd;
                        let mut fds = [nix::poll::PollFd::new(
                            i.as_fd(),
                            nix::poll::PollFlags::POLLIN,
                        )];
                        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u16));
                        while i.read_events().is_ok_and(|e| !e.is_empty()) {}
                    }
                    None => std::thread::sleep(Duration::from_millis(20)),
                }
            };
            svc.on_exit(&id, "", code);
        });
    }

    fn wait_exit(&self, id: &str, exec_id: &str) -> TtrpcResult<(u32, Timestamp)> {
        let mut st = self.lock();
        loop {
            let p = st.process(id, exec_id)?;
            if p.state == PState::Stopped {
                return Ok((p.exit_status, p.exited_at.clone().unwrap_or_default()));
            }
            st = self.inner.1.wait(st).unwrap();
        }
    }

    fn create_inner(&self, req: &api::CreateTaskRequest) -> anyhow::Result<u32> {
        use anyhow::Context;
        let bundle_dir = PathBuf::from(&req.bundle);
        let spec = bundle::load(&bundle_dir)?;
        let app = bundle::app_name(&req.id);
        let mut st = self.lock();
        if st.containers.contains_key(&req.id) {
            anyhow::bail!("container {} already exists", req.id);
        }
        let mounted = bundle::mount_rootfs(&bundle_dir, &req.rootfs)?;
        let undo_mount = |b: &Path| {
            if mounted {
                bundle::unmount_rootfs(b)
            }
        };
        let sandbox = bundle::sandbox_of(&spec).unwrap_or_else(|| req.id.clone());
        let r = (|| -> anyhow::Result<()> {
            let sysctls = bundle::sysctls(&spec)?;
            if !sysctls.is_empty() {
                match bundle::net(&spec) {
                    bundle::Net::Join(ns) => bundle::apply_sysctls(&ns, &sysctls)?,
                    _ => anyhow::bail!(
                        "network sysctls need a network namespace made by CRI (this pod has the host's or a new one)"
                    ),
                }
            }
            if !st.sandboxes.contains_key(&sandbox) {
                if sandbox != req.id {
                    anyhow::bail!("sandbox {sandbox} is not served by this shim");
                }
                let sb = Sandbox::start(
                    &self.rkt,
                    &bundle::net(&spec),
                    bundle::hostname(&spec).as_deref(),
                    &bundle_dir.join(POD_UUID_FILE),
                )?;
                st.sandboxes.insert(sandbox.clone(), sb);
            }
            let sb = &st.sandboxes[&sandbox];
            let pod = self.rkt.pod(&sb.uuid)?;
            let image = bundle::runtime_image(&spec, &req.id);
            let app_spec = bundle::app_spec(&spec, &bundle_dir, &app, &image.id)?;
            let ra = rkt_schema::RuntimeApp {
                name: app.clone(),
                image,
                app: None,
                read_only_rootfs: app_spec.readonly_rootfs,
                mounts: Vec::new(),
                annotations: Vec::new(),
            };
            rkt_engine::pod::app::add_prepared(&pod, ra, app_spec)
                .with_context(|| format!("adding app {app} to pod {}", sb.uuid))
        })();
        if let Err(e) = r {
            // A pod made for this container goes with it.
            if sandbox == req.id {
                if let Some(sb) = st.sandboxes.remove(&sandbox) {
                    let _ = sb.stop_and_remove(&self.rkt);
                }
            }
            undo_mount(&bundle_dir);
            return Err(e);
        }
        st.containers.insert(
            req.id.clone(),
            Container {
                bundle: bundle_dir,
                app,
                sandbox,
                rootfs_mounted: mounted,
                init: Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal),
                execs: HashMap::new(),
            },
        );
        Ok(0)
    }

    fn start_init(&self, id: &str) -> anyhow::Result<u32> {
        use anyhow::Context;
        let mut st = self.lock();
        let pod = self.rkt.pod(&st.sandbox_of(id)?.uuid)?;
        let c = st.container_mut(id)?;
        if c.init.state != PState::Created {
            anyhow::bail!("container {id} has already been started");
        }
        let io = stdio::open(
            &format!("container {id}"),
            &c.init.stdin,
            &c.init.stdout,
            &c.init.stderr,
            c.init.terminal,
            // The app's own devpts does not exist yet: its terminal comes from the host's.
            None,
        )?;
        rkt_engine::pod::app::start_with_stdio(&pod, &c.app, Some(io.fds))?;
        let kvm = self.rkt.flavor == Flavor::Kvm;
        // In a VM the app has no host pid: the VMM's stands for it (Kata reports its VM's too);
        // signals go through the guest init (`kill`).
        let pid_file = if kvm {
            rkt_stage2::pod_pid_path(&pod.path)
        } else {
            rkt_stage2::app_pid_path(&pod.path, &c.app)
        };
        let pid: u32 = std::fs::read_to_string(pid_file)
            .context("reading the app's pid")?
            .trim()
            .parse()
            .context("the app's pid")?;
        c.init.pid = pid;
        c.init.state = PState::Running;
        c.init.stdin_writer = Some(io.stdin);
        c.init.pty = io.pty;
        let (pod_dir, app) = (pod.path.clone(), c.app.clone());
        drop(st);
        self.watch_app(id.to_string(), pod_dir, app);
        if kvm {
            // The guest reported the app once it exec'd.
            return Ok(pid);
        }
        // Start returns once the app runs its own program, as runc's does: until then it is a
        // fork of the shim setting up its root, and an exec that comes at once (CRI's ExecSync
        // right after StartContainer) would not find the app's root. Bounded; a process that is
        // gone or still not there is left to the exit watcher.
        if let Err(e) = rkt_engine::stage1::wait_for_exec(pid as i32, Duration::from_secs(10)) {
            log::warn!("app pid {pid}: {e:#}");
        }
        Ok(pid)
    }

    fn start_exec(&self, id: &str, exec_id: &str) -> anyhow::Result<u32> {
        use anyhow::Context;
        use std::os::unix::process::CommandExt;
        let mut st = self.lock();
        let uuid = st.sandbox_of(id)?.uuid.clone();
        let c = st.container_mut(id)?;
        let app = c.app.clone();
        // On kvm the command's terminal is the host's: `rkt app exec` relays it into the VM.
        let ptmx = (self.rkt.flavor != Flavor::Kvm)
            .then(|| PathBuf::from(format!("/proc/{}/root/dev/ptmx", c.init.pid)));
        let e = c
            .execs
            .get_mut(exec_id)
            .ok_or_else(|| exec_not_found(exec_id))?;
        if e.proc_.state != PState::Created {
            anyhow::bail!("exec {exec_id} has already been started");
        }
        let io = stdio::open(
            &format!("exec {exec_id} of container {id}"),
            &e.proc_.stdin,
            &e.proc_.stdout,
            &e.proc_.stderr,
            e.proc_.terminal,
            ptmx.as_deref(),
        )?;
        let [i, o, er] = io.fds;
        let mut cmd = self.rkt.command();
        cmd.args(["app", "exec", &uuid])
            .arg(format!("--app={app}"))
            .arg("--")
            .args(&e.args)
            .stdin(i)
            .stdout(o)
            .stderr(er);
        if e.proc_.terminal {
            // The pty becomes the command's controlling terminal (job control, ^C).
            // SAFETY: setsid and ioctl are async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    libc::setsid();
                    libc::ioctl(0, libc::TIOCSCTTY, 0);
                    Ok(())
                });
            }
        }
        let mut child = cmd.spawn().context("running rkt app exec")?;
        let pid = child.id();
        e.proc_.pid = pid;
        e.proc_.state = PState::Running;
        e.proc_.stdin_writer = Some(io.stdin);
        e.proc_.pty = io.pty;
        drop(st);
        // The `Command` kept no copy of the pty's slave: the master sees EIO once the
        // command and what it started are gone.
        let svc = self.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        std::thread::spawn(move || {
            let code = match child.wait() {
                Ok(s) => {
                    use std::os::unix::process::ExitStatusExt;
                    s.code()
                        .or_else(|| s.signal().map(|n| 128 + n))
                        .unwrap_or(255) as u32
                }
                Err(_) => 255,
            };
            svc.on_exit(&id, &exec_id, code);
        });
        Ok(pid)
    }

    /// The app's cgroup directories (one per controller on cgroup v1); on kvm the VMM's, whose
    /// figures are the VM's.
    fn app_cgroups(&self, st: &State, c: &Container) -> Vec<PathBuf> {
        let Some(sb) = st.sandboxes.get(&c.sandbox) else {
            return Vec::new();
        };
        let Ok(layout) = rkt_engine::stage1::ns::pod_layout(&sb.dir) else {
            return Vec::new();
        };
        let rel = match self.rkt.flavor {
            Flavor::Kvm => rkt_stage2::cgroup::pod_path(&sb.uuid).join("vmm"),
            _ => rkt_stage2::cgroup::app_path(&sb.uuid, &c.app),
        };
        layout.dirs(&rel)
    }

    /// Kill of a container's first process on kvm: the guest init signals the app.
    fn kill_in_vm(&self, st: &State, c: &Container, sig: u32) -> TtrpcResult<()> {
        let sb = st.sandbox_of_container(c)?;
        let pod = self.rkt.pod(&sb.uuid).map_err(internal)?;
        rkt_engine::pod::app::signal(&pod, &c.app, sig as i32)
            .map_err(|e| err(Code::NOT_FOUND, format!("{e:#}")))
    }

    fn cgroup_pids(dirs: &[PathBuf]) -> Vec<u32> {
        for d in dirs {
            if let Ok(t) = std::fs::read_to_string(d.join("cgroup.procs")) {
                return t.lines().filter_map(|l| l.trim().parse().ok()).collect();
            }
        }
        Vec::new()
    }

    fn delete_init(&self, id: &str) -> anyhow::Result<(u32, u32, Timestamp)> {
        let mut st = self.lock();
        let c = st.container(id)?;
        if c.init.state == PState::Running {
            anyhow::bail!("container {id} is running: kill it first");
        }
        let c = st.containers.remove(id).unwrap();
        // An app of a pod that goes with it is not removed on its own.
        let pod_goes = c.sandbox == id;
        if let Some(sb) = st.sandboxes.get(&c.sandbox).filter(|_| !pod_goes) {
            if let Ok(pod) = self.rkt.pod(&sb.uuid) {
                if pod.state == rkt_engine::pod::State::Running {
                    if let Err(e) = rkt_engine::pod::app::rm(&pod, &c.app) {
                        log::warn!("removing app {}: {e:#}", c.app);
                    }
                }
            }
        }
        // The pod goes with the container that made it (CRI deletes the sandbox's pause
        // container last).
        if c.sandbox == id {
            if let Some(sb) = st.sandboxes.remove(id) {
                if let Err(e) = sb.stop_and_remove(&self.rkt) {
                    log::warn!("removing the pod of {id}: {e:#}");
                }
            }
            let _ = std::fs::remove_file(c.bundle.join(POD_UUID_FILE));
        }
        if c.rootfs_mounted {
            bundle::unmount_rootfs(&c.bundle);
        }
        Ok((
            c.init.pid,
            c.init.exit_status,
            c.init.exited_at.unwrap_or_default(),
        ))
    }
}

fn status(s: PState) -> Status {
    match s {
        PState::Created => Status::CREATED,
        PState::Running => Status::RUNNING,
        PState::Stopped => Status::STOPPED,
    }
}

fn kill_pid(pid: u32, sig: u32) -> TtrpcResult<()> {
    // SAFETY: plain kill(2).
    if pid == 0 || unsafe { libc::kill(pid as i32, sig as i32) } != 0 {
        return Err(err(Code::NOT_FOUND, "process already finished"));
    }
    Ok(())
}

/// The command `rkt app exec` runs is its child; signals are for it, not for rkt.
fn exec_target(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()
        .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse().ok()))
        .unwrap_or(pid)
}

impl containerd_shim::Task for TaskService {
    fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let st = self.lock();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: st.containers.get(&req.id).map_or(0, |c| c.init.pid),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let pid = self.create_inner(&req).map_err(internal)?;
        self.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let pid = if req.exec_id.is_empty() {
            let pid = self.start_init(&req.id).map_err(internal)?;
            self.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
            pid
        } else {
            let pid = self.start_exec(&req.id, &req.exec_id).map_err(internal)?;
            self.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
            pid
        };
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let st = self.lock();
        let c = st.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: p.pid,
            status: status(p.state).into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status: p.exit_status,
            exited_at: p.exited_at.clone().into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (code, at) = self.wait_exit(&req.id, &req.exec_id)?;
        Ok(api::WaitResponse {
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let st = self.lock();
        let c = st.container(&req.id)?;
        if !req.exec_id.is_empty() {
            let p = c.process(&req.exec_id)?;
            if p.state != PState::Running {
                return Err(err(Code::NOT_FOUND, "process already finished"));
            }
            kill_pid(exec_target(p.pid), req.signal)?;
            return Ok(api::Empty::new());
        }
        match c.init.state {
            PState::Running => {}
            PState::Stopped => return Err(err(Code::NOT_FOUND, "process already finished")),
            PState::Created => {
                return Err(err(Code::FAILED_PRECONDITION, "container not started"));
            }
        }
        if self.rkt.flavor == Flavor::Kvm {
            // `all`: the app's processes are in the VM, where the guest init signals the app.
            self.kill_in_vm(&st, c, req.signal)?;
            return Ok(api::Empty::new());
        }
        if req.all {
            for pid in Self::cgroup_pids(&self.app_cgroups(&st, c)) {
                let _ = kill_pid(pid, req.signal);
            }
            Ok(api::Empty::new())
        } else {
            kill_pid(c.init.pid, req.signal).map(|()| api::Empty::new())
        }
    }

    fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut st = self.lock();
            let e = st
                .container_mut(&req.id)?
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| exec_not_found(&req.exec_id))?;
            return Ok(api::DeleteResponse {
                pid: e.proc_.pid,
                exit_status: e.proc_.exit_status,
                exited_at: e.proc_.exited_at.into(),
                ..Default::default()
            });
        }
        let (pid, code, at) = self
            .delete_init(&req.id)
            .map_err(|e| err(Code::FAILED_PRECONDITION, format!("{e:#}")))?;
        self.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                pid,
                exit_status: code,
                exited_at: MessageField::some(at.clone()),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid,
            exit_status: code,
            exited_at: MessageField::some(at),
            ..Default::default()
        })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<api::Empty> {
        let process: oci_spec::runtime::Process = serde_json::from_slice(
            &req.spec
                .as_ref()
                .map(|a| a.value.clone())
                .unwrap_or_default(),
        )
        .map_err(|e| err(Code::INVALID_ARGUMENT, format!("exec spec: {e}")))?;
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() {
            return Err(err(Code::INVALID_ARGUMENT, "exec: no command"));
        }
        let mut st = self.lock();
        let c = st.container_mut(&req.id)?;
        if c.init.state != PState::Running {
            return Err(err(Code::FAILED_PRECONDITION, "container is not running"));
        }
        if c.execs.contains_key(&req.exec_id) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("exec {} already exists", req.exec_id),
            ));
        }
        c.execs.insert(
            req.exec_id.clone(),
            Exec {
                proc_: Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal),
                args,
            },
        );
        drop(st);
        self.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let st = self.lock();
        let p = st.process(&req.id, &req.exec_id)?;
        let pty = p
            .pty
            .as_ref()
            .ok_or_else(|| err(Code::FAILED_PRECONDITION, "the process has no terminal"))?;
        stdio::resize(pty, req.width, req.height).map_err(internal)?;
        Ok(api::Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<api::Empty> {
        let st = self.lock();
        let p = st.process(&req.id, &req.exec_id)?;
        if req.stdin {
            if let Some(w) = &p.stdin_writer {
                w.lock().unwrap().take();
            }
        }
        Ok(api::Empty::new())
    }

    /// New limits for a running container (CRI's UpdateContainerResources): memory, CPU quota
    /// and shares written to the app's cgroup, as at its start.
    fn update(&self, _ctx: &TtrpcContext, req: api::UpdateTaskRequest) -> TtrpcResult<api::Empty> {
        let value = req
            .resources
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        let res: oci_spec::runtime::LinuxResources = serde_json::from_slice(&value)
            .map_err(|e| err(Code::INVALID_ARGUMENT, format!("update resources: {e}")))?;
        let st = self.lock();
        let c = st.container(&req.id)?;
        if c.init.state != PState::Running {
            return Err(err(Code::FAILED_PRECONDITION, "container is not running"));
        }
        if self.rkt.flavor == Flavor::Kvm {
            return Err(err(
                Code::UNIMPLEMENTED,
                "stage1 kvm: a running container's resources cannot be changed (the VM's size is set when it boots)",
            ));
        }
        let sb = st.sandbox_of(&req.id)?;
        let layout = rkt_engine::stage1::ns::pod_layout(&sb.dir).map_err(internal)?;
        let (memory_limit, cpu_millis, cpu_shares) = bundle::limits(Some(&res));
        let limits = rkt_stage2::AppSpec {
            memory_limit,
            cpu_millis,
            cpu_shares,
            ..bundle::no_limits(&c.app)
        };
        let dirs = layout.dirs(&rkt_stage2::cgroup::app_path(&sb.uuid, &c.app));
        for (controller, file, value) in rkt_stage2::cgroup::limit_files(&layout, &limits) {
            // The hierarchy that has the file is the controller's.
            let path = dirs
                .iter()
                .map(|d| d.join(file))
                .find(|p| p.exists())
                .ok_or_else(|| {
                    err(
                        Code::FAILED_PRECONDITION,
                        format!("the {controller} cgroup controller is not available"),
                    )
                })?;
            std::fs::write(&path, &value).map_err(|e| {
                err(
                    Code::INTERNAL,
                    format!("writing {value} to {}: {e}", path.display()),
                )
            })?;
        }
        Ok(api::Empty::new())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let st = self.lock();
        let c = st.container(&req.id)?;
        let mut pids = Self::cgroup_pids(&self.app_cgroups(&st, c));
        if pids.is_empty() && c.init.state == PState::Running {
            pids.push(c.init.pid);
        }
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim::protos::types::task::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let st = self.lock();
        let c = st.container(&req.id)?;
        let metrics = crate::stats::metrics(&self.app_cgroups(&st, c));
        let any = containerd_shim::util::convert_to_any(Box::new(metrics))
            .map_err(|e| err(Code::INTERNAL, e))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: api::ShutdownRequest) -> TtrpcResult<api::Empty> {
        if self.lock().containers.is_empty() {
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }
}
