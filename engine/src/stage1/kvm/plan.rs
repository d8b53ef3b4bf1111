//! What the host mounts before boot (app roots, volumes under the share) and the guest's copy of
//! the spec, with every path in the guest's view.

use super::*;

/// What the host mounts before boot, and the spec the guest reads.
#[derive(Debug)]
pub struct Plan {
    /// App roots to assemble on the host: (how, where under the pod directory).
    pub roots: Vec<(RootfsSpec, PathBuf)>,
    /// Bind mounts of host volumes outside the pod directory into `<pod>/volumes/<n>`.
    pub binds: Vec<(PathBuf, PathBuf)>,
    pub guest: PodSpec,
}

/// The one directory the guest sees (virtio-fs): the app roots, volumes and the guest spec,
/// rkt's `stage1/rootfs`. Not the whole pod directory: its `pid` file is what `rkt stop` signals
/// and its manifest, lock and sockets are stage0's, none of which a guest may rewrite.
pub fn share_dir(pod_dir: &Path) -> PathBuf {
    pod_dir.join("stage1/rootfs")
}

/// Maps a host path under the share to the guest's view of it.
pub(super) fn guest_path(pod_dir: &Path, p: &Path) -> Option<PathBuf> {
    let rel = p.strip_prefix(share_dir(pod_dir)).ok()?;
    Some(Path::new(proto::SHARE_MOUNT).join(rel))
}

/// Computes the host mounts and the guest spec (no side effects).
pub fn plan(pod_dir: &Path, spec: &PodSpec) -> Result<Plan> {
    let mut guest = spec.clone();
    let mut roots = Vec::new();
    let mut binds: Vec<(PathBuf, PathBuf)> = Vec::new();
    for app in &mut guest.apps {
        let at = rkt_stage2::app_root_path(pod_dir, &app.name);
        let needs_mount = match &app.rootfs {
            RootfsSpec::Dir(d) => d != &at,
            RootfsSpec::Overlay { .. } => true,
        };
        if needs_mount {
            roots.push((app.rootfs.clone(), at.clone()));
        }
        app.rootfs = RootfsSpec::Dir(guest_path(pod_dir, &at).unwrap());
        for m in &mut app.mounts {
            let MountSpec { source, .. } = m;
            let host = source.clone();
            let shared = match guest_path(pod_dir, &host) {
                Some(g) => g,
                None => {
                    let n = match binds.iter().position(|(s, _)| *s == host) {
                        Some(n) => n,
                        None => {
                            binds.push((
                                host.clone(),
                                share_dir(pod_dir)
                                    .join("volumes")
                                    .join(binds.len().to_string()),
                            ));
                            binds.len() - 1
                        }
                    };
                    guest_path(pod_dir, &binds[n].1).unwrap()
                }
            };
            *source = shared;
        }
    }
    Ok(Plan {
        roots,
        binds,
        guest,
    })
}

impl Plan {
    /// Performs the mounts (in the caller's private mount namespace).
    pub fn apply(&self) -> Result<()> {
        for (how, at) in &self.roots {
            rkt_stage2::fs::mount_rootfs(how, at)?;
        }
        for (src, dst) in &self.binds {
            let md = std::fs::metadata(src)
                .with_context(|| format!("volume source {}", src.display()))?;
            if md.is_dir() {
                std::fs::create_dir_all(dst)?;
            } else {
                std::fs::create_dir_all(dst.parent().unwrap())?;
                std::fs::write(dst, b"")?;
            }
            nix::mount::mount(
                Some(src),
                dst,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
                None::<&str>,
            )
            .with_context(|| format!("bind-mounting {} on {}", src.display(), dst.display()))?;
        }
        Ok(())
    }
}

pub(super) fn enter_private_mount_ns() -> Result<()> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare mount namespace")?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("making mounts private")
}
