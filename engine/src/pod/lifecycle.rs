//! A pod's way from flags to a running stage1, shared by `rkt run`, `prepare`, `run-prepared`,
//! `rkt app sandbox` and the containerd shim: prepare (fetch, plan, populate; nothing on disk
//! until every image and flag checked out), start (networks planned, moved to `run/`, spec
//! written, measured, handed to the flavour), and removal of a pod that never started.

use std::path::Path;

use anyhow::{bail, Context, Result};
use rkt_store::Store;

use super::build;
use super::request::{AppFlags, PodFlags};
use super::{Lock, Pod, PodDir, Pods, State};
use crate::global::{Globals, Insecure};
use crate::stage1::Flavor;

/// A `rkt run` that failed before its pod started leaves nothing behind (not a prepared or
/// "exited" pod that gc would keep for a day). A pod whose stage1 got as far as recording a pid
/// ran, and stays for `rkt status` and gc.
pub fn discard_unstarted(pods: &Pods, mut pod: Pod, lock: Lock) {
    if rkt_stage2::pod_pid_path(&pod.path).exists() {
        return;
    }
    // In garbage/ first: if the removal fails half-way, the next gc finishes it.
    let gone = pod
        .move_to(pods, PodDir::Garbage)
        .and_then(|()| delete(&pod, lock));
    if let Err(e) = gone {
        crate::print_error(&format!(
            "removing the failed pod {}: {}",
            pod.uuid,
            crate::one_line(&e)
        ));
    }
}

/// What [`prepare_pod`] leaves: a pod in `prepared/` for a later `run-prepared`, or, for
/// `rkt run`, one still in `prepare/` that goes straight to `run/` (as rkt v1 does): a host crash
/// can then leave only an aborted prepare or an exited pod, never an unsynced "prepared" one.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Prepared,
    StartNow,
}

/// Fetches, validates and writes a pod (see [`Keep`]). Nothing is created on disk until every
/// image and flag checked out; a failure while populating removes the half-made pod.
pub fn prepare_pod(
    g: &Globals,
    pod_flags: &PodFlags,
    apps: &[AppFlags],
    keep: Keep,
) -> Result<(Pods, Pod, Lock, Insecure)> {
    let insecure = build::insecure(g.insecure, pod_flags)?;
    let flavor = build::flavor(pod_flags, g.config.stage1_name.as_deref())?;
    let mut fetch = build::fetch_options(pod_flags, insecure, &g.config)?;
    fetch.trust.config = g.trust.clone();
    let pods = Pods::new(&g.dir);
    pods.ensure_dirs()?;
    // Shared during prepare, exclusive for image gc: trees we are about to use stay put.
    let _prepare_lock = prepare_lock(&g.dir, rkt_flock::Mode::Shared)?;
    let store = Store::open(&g.dir)?;
    let plan = build::plan(
        &store,
        pod_flags,
        apps,
        &fetch,
        flavor,
        g.config.tpm_mode.as_deref(),
    )?;

    let uuid = uuid::Uuid::new_v4().to_string();
    let path = pods.path(PodDir::Embryo, &uuid);
    std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut pod = Pod {
        uuid,
        dir: PodDir::Embryo,
        path,
        state: State::Embryo,
    };
    // From here on a failure removes the half-made pod, wherever it got to.
    let made = (|| {
        let lock = Lock::try_exclusive(&pod.path)?.context("locking the new pod")?;
        pod.move_to(&pods, PodDir::Prepare)?;
        build::populate(&pod.path, &plan)?;
        if keep == Keep::Prepared {
            pod.move_to(&pods, PodDir::Prepared)?;
        }
        Ok(lock)
    })();
    match made {
        Ok(lock) => {
            pod.state = match keep {
                Keep::Prepared => State::Prepared,
                Keep::StartNow => State::Preparing,
            };
            Ok((pods, pod, lock, insecure))
        }
        Err(e) => {
            let _ = crate::pod::remove_tree(&pod.path);
            Err(e)
        }
    }
}

/// `<dir>/locks/prepareLock`: shared while preparing a pod, exclusive for `image gc`, so gc never
/// removes a tree a pod is being prepared with.
pub fn prepare_lock(dir: &Path, mode: rkt_flock::Mode) -> Result<rkt_flock::Flock> {
    rkt_store::private_dir(dir)?;
    let locks = dir.join("locks");
    std::fs::create_dir_all(&locks)?;
    let f = rkt_flock::open_lock_file(&locks.join("prepareLock"))
        .context("opening locks/prepareLock")?;
    rkt_flock::Flock::lock(f, mode).context("locking locks/prepareLock")
}

/// Moves a prepared (or, for `rkt run`, just populated), locked pod to `run/`, writes its spec
/// and hands it to its stage1. The move is fsynced for `run-prepared`: a pod whose apps may have
/// run must not come back as `prepared` after a host crash.
/// `uuid_file` (`--uuid-file-save`) is written once the pod is in `run/`: from then on
/// `rkt stop`, `status` and `enter` act on it.
#[allow(clippy::too_many_arguments)]
pub fn start_pod(
    g: &Globals,
    pods: &Pods,
    pod: &mut Pod,
    lock: &Lock,
    start: &build::Start,
    insecure: Insecure,
    debug: bool,
    uuid_file: Option<&Path>,
) -> Result<i32> {
    let flavor = Flavor::of_pod(&pod.path)?;
    let store = Store::open(&g.dir)?;
    let pm = pod.manifest()?;
    // Networks are resolved (net.d read, plugins found) before the pod is moved to run/.
    let net_plan = match (flavor, &start.net) {
        (Flavor::Ns | Flavor::Kvm, rkt_stage2::NetMode::Default) => {
            let ports = crate::net::ports::mappings(&pm)?;
            crate::net::plan(&start.net_arg, &g.local_config, ports, !start.dns_given)?
        }
        _ if !pm.ports.is_empty() => {
            bail!("--port needs the default network on stage1 ns or kvm (--net=default)")
        }
        _ => None,
    };
    pod.move_to(pods, PodDir::Run)?;
    pod.state = State::Running;
    if let Some(f) = uuid_file {
        save_uuid(f, &pod.uuid)?;
    }
    let spec = build::pod_spec(&pod.path, &pod.uuid, &pm, &store, start, insecure, debug)?;
    // Runtime files of a pod in run/: a host crash makes it exited whatever they hold.
    crate::pod::write_runtime(
        &pod.path.join(rkt_stage2::SPEC_FILE),
        &serde_json::to_vec_pretty(&spec)?,
    )?;
    crate::pod::write_runtime_time(&pod.path.join(crate::pod::STARTED_FILE))?;
    if spec.net == rkt_stage2::NetMode::Default {
        if let Some(plan) = &net_plan {
            crate::net::write_plan(&pod.path, plan)?;
        } else {
            eprintln!(
                "rkt: warning: CNI networks are not implemented on this stage1 yet, the pod gets loopback only (use --net=none)"
            );
        }
    }
    // stage0 is measured now that the spec is final; the flavour measures its stage1, then the
    // manifest and apps, before any of them runs.
    let mode = crate::measure::pod_mode(g, &pod.path)?;
    let measure = crate::measure::PodMeasurement::begin(g, mode, debug, &pod.path, &spec, |id| {
        Ok(store.render(id)?)
    })?;
    let ctx = crate::stage1::PodContext {
        data_dir: &g.dir,
        pod_dir: &pod.path,
        lock_fd: lock.fd(),
    };
    flavor.run(&ctx, &spec, measure)
}

pub fn save_uuid(path: &Path, uuid: &str) -> Result<()> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    crate::pod::write_atomic(&abs, uuid.as_bytes())
        .with_context(|| format!("--uuid-file-save {}", path.display()))
}

/// Removes a garbage pod we hold exclusively: the flavour's clean-up, any mount left under the
/// pod, then the files. A pod whose mounts cannot be removed stays for a later gc.
pub fn delete(pod: &Pod, _lock: Lock) -> Result<()> {
    if pod.dir == PodDir::ExitedGarbage {
        if let Err(e) = Flavor::of_pod(&pod.path).and_then(|f| f.gc(&pod.path)) {
            eprintln!(
                "rkt: problem performing stage1 gc on {}: {}",
                pod.uuid,
                crate::one_line(&e)
            );
        }
    }
    crate::pod::unmount_all_under(&pod.path)
        .with_context(|| format!("unmounting what pod {} left", pod.uuid))?;
    crate::pod::remove_tree(&pod.path).with_context(|| format!("removing pod {}", pod.uuid))
}

/// `rkt rm` of one pod: an exited or never-started pod goes to the garbage directories and is
/// deleted; a running, preparing or deleting one, or one another process holds, is refused.
pub fn remove(pods: &Pods, mut pod: Pod) -> Result<String> {
    match pod.state {
        State::Running => bail!("pod {} is currently running", pod.uuid),
        State::Embryo | State::Preparing => bail!("pod {} is currently being prepared", pod.uuid),
        State::Deleting | State::ExitedDeleting => {
            bail!("pod {} is currently being deleted", pod.uuid)
        }
        State::AbortedPrepare | State::Prepared => pod.move_to(pods, PodDir::Garbage)?,
        State::Exited => pod.move_to(pods, PodDir::ExitedGarbage)?,
        State::ExitedGarbage | State::Garbage => {}
    }
    let Some(lock) = Lock::try_exclusive(&pod.path)? else {
        bail!("pod {} is in use by another process", pod.uuid);
    };
    delete(&pod, lock)?;
    Ok(pod.uuid)
}
