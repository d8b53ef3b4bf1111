//! stage1 `ns`: runs a pod's apps in Linux namespaces on this host (filled in by the ns runtime
//! work; these entry points are the contract with `stage1/mod.rs`).

use std::path::Path;

use anyhow::{bail, Result};
use rkt_stage2::PodSpec;

/// Runs the pod described by `spec` (already written to `<pod_dir>/stage1-spec.json`) in the
/// foreground; returns the exit code for `rkt run`. Must write `rkt_stage2::pod_pid_path` and each
/// app's `rkt_stage2::app_status_path`, and stop the apps gracefully on SIGTERM.
pub fn run(_pod_dir: &Path, _spec: &PodSpec) -> Result<i32> {
    bail!("stage1 ns cannot run pods yet")
}

/// Runs `cmd` in the namespaces of `app` in the running pod; returns its exit code.
pub fn enter(_pod_dir: &Path, _spec: &PodSpec, _app: &str, _cmd: &[String]) -> Result<i32> {
    bail!("stage1 ns cannot enter pods yet")
}

/// Releases mounts, cgroups and network namespaces an exited pod left behind.
pub fn gc(_pod_dir: &Path) -> Result<()> {
    Ok(())
}
