//! `containerd-shim-rkt-v2`: containerd's runtime v2 shim that runs each sandbox as an rkt pod
//! and each container as an app of it (docs/containerd.md). Installed twice: as
//! `containerd-shim-rkt-v2` (runtime `io.containerd.rkt.v2`, stage1 kvm) and as
//! `containerd-shim-rkt-ns-v2` (`io.containerd.rkt-ns.v2`, stage1 ns); containerd derives the
//! binary name from the runtime name, so the name the shim runs under picks the flavour.

mod bundle;
mod sandbox;
mod service;
mod stats;
mod stdio;

use std::path::Path;
use std::sync::Arc;

use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};
use rkt_engine::stage1::Flavor;

use sandbox::Rkt;
use service::{TaskService, POD_UUID_FILE};

/// Set by `start` for the shim daemon it spawns, which runs as `current_exe()` (a symlink's
/// target, not the name containerd ran).
const FLAVOUR_ENV: &str = "RKT_SHIM_RUNTIME_NAME";

/// The flavour and runtime name for the name the binary runs under.
fn flavour(argv0: &str) -> (Flavor, &'static str) {
    let from_env = std::env::var(FLAVOUR_ENV).unwrap_or_default();
    let argv0 = if from_env.is_empty() {
        argv0
    } else {
        &from_env
    };
    let name = Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.contains("rkt-ns") {
        (Flavor::Ns, "io.containerd.rkt-ns.v2")
    } else {
        (Flavor::Kvm, "io.containerd.rkt.v2")
    }
}

struct Shim {
    rkt: Arc<Rkt>,
    exit: Arc<ExitSignal>,
    namespace: String,
    bundle: String,
}

impl containerd_shim::Shim for Shim {
    type T = TaskService;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        let argv0 = std::env::args().next().unwrap_or_default();
        Shim {
            rkt: Arc::new(Rkt::from_env(flavour(&argv0).0)),
            exit: Arc::new(ExitSignal::default()),
            namespace: args.namespace.clone(),
            bundle: args.bundle.clone(),
        }
    }

    /// One shim per sandbox: CRI's containers of a sandbox share the shim of its pause
    /// container (containerd connects to the address it gets back).
    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let cwd = std::env::current_dir().unwrap_or_default();
        let grouping = bundle::load(&cwd)
            .map(|s| bundle::grouping(&s, &opts.id))
            .unwrap_or_else(|_| opts.id.clone());
        let argv0 = std::env::args().next().unwrap_or_default();
        let (_, address) = containerd_shim::spawn(opts, &grouping, vec![(FLAVOUR_ENV, &argv0)])?;
        Ok(address)
    }

    /// After a shim that died (or was killed): the pod its container made is stopped and
    /// removed, the root it mounted unmounted.
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let bundle = if self.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            self.bundle.clone().into()
        };
        if let Ok(uuid) = std::fs::read_to_string(bundle.join(POD_UUID_FILE)) {
            if let Err(e) = sandbox::remove(&self.rkt, uuid.trim()) {
                log::warn!("removing pod {}: {e:#}", uuid.trim());
            }
            let _ = std::fs::remove_file(bundle.join(POD_UUID_FILE));
        }
        bundle::unmount_rootfs(&bundle);
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: containerd_shim::protos::protobuf::MessageField::some(
                containerd_shim::util::timestamp().unwrap_or_default(),
            ),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService::new(
            self.rkt.clone(),
            self.exit.clone(),
            publisher,
            self.namespace.clone(),
        )
    }
}

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    let (_, runtime) = flavour(&argv0);
    // The shim reaps only its own children (Command::wait): the apps' parent is the pod's
    // supervisor, and orphans go to init, not to the shim.
    let config = Config {
        no_reaper: true,
        no_sub_reaper: true,
        ..Default::default()
    };
    containerd_shim::run::<Shim>(runtime, Some(config));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavour_from_name() {
        assert_eq!(
            flavour("/usr/local/bin/containerd-shim-rkt-ns-v2"),
            (Flavor::Ns, "io.containerd.rkt-ns.v2")
        );
        assert_eq!(
            flavour("containerd-shim-rkt-v2"),
            (Flavor::Kvm, "io.containerd.rkt.v2")
        );
    }
}
