//! stage0's measurement hooks: before each stage runs, what it is made of is extended into the
//! configured PCR and appended to the TPM event log (see docs/tpm.md). The pod records which log
//! entries are its own in `<pod>/tpm-events.json`.
//!
//! A pod is measured in execution order, each stage before it runs: [`PodMeasurement::begin`]
//! (stage0, when the pod starts) → the flavour measures its stage1 ([`PodMeasurement::stage1_ns`]
//! before the namespaces exist, [`PodMeasurement::stage1_fly`] before its supervisor is forked,
//! [`PodMeasurement::stage1_kvm`] once the VM is laid out and before any vCPU runs) →
//! [`PodMeasurement::finish`] (pod manifest, every app, `<pod>/tpm-events.json`) → the flavour
//! starts the apps.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::global::Globals;
use rkt_tpm::{resolve_tcti, Journal, Logged};

/// rkt v1 measured into PCR 15, which only a TPM Reset/Restart clears (see docs/tpm.md).
pub const DEFAULT_PCR: u32 = 15;
/// `<pod>/tpm-events.json`.
pub const EVENTS_FILE: &str = "tpm-events.json";

/// `--tpm` / `tpm.d` `mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TpmMode {
    /// Measure when a TPM answers; otherwise say so once and run unmeasured.
    Auto,
    /// Refuse to run a pod that cannot be measured.
    Required,
    Off,
}

impl TpmMode {
    pub fn parse(s: &str) -> Result<TpmMode> {
        match s {
            "auto" => Ok(TpmMode::Auto),
            "required" => Ok(TpmMode::Required),
            "off" => Ok(TpmMode::Off),
            other => bail!("invalid --tpm {other:?} (expected auto, required or off)"),
        }
    }

    /// The flag, else the `tpm.d` config, else `auto`.
    pub fn resolve(flag: Option<&str>, g: &Globals) -> Result<TpmMode> {
        TpmMode::parse(flag.or(g.config.tpm_mode.as_deref()).unwrap_or("auto"))
    }
}

/// The PCR to extend: `tpm.d` `pcr`, else 15.
pub fn pcr(g: &Globals) -> Result<u32> {
    let p = g.config.tpm_pcr.unwrap_or(DEFAULT_PCR);
    if p > 23 {
        bail!("tpm.d pcr {p} does not exist (PCRs are 0-23)");
    }
    Ok(p)
}

pub fn journal(g: &Globals) -> Journal {
    Journal::new(&g.dir, &resolve_tcti(g.tpm_tcti.as_deref()))
}

/// `<pod>/tpm-events.json`: which entries of which log are this pod's measurements.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PodEvents {
    /// Log file name under `<dir>/tpm/`.
    pub log: String,
    /// TPM boot cycle (`resetCount-restartCount`) the log belongs to.
    pub boot: String,
    pub pcr: u32,
    /// Event numbers in the log (the header is 0).
    pub events: Vec<usize>,
    /// The TCTI the pod was measured through (for measurements added later, see
    /// `measure_kvm_late`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tcti: String,
}

/// What one app is measured as.
#[derive(Debug, Clone)]
pub struct AppMeasurement<'a> {
    pub name: &'a str,
    /// Image ID (`sha256-…`): digest of the image manifest.
    pub image: &'a str,
    /// `RenderedTree::tree_digest`.
    pub tree: &'a str,
    /// `RenderedTree::rootfs`: where `rkt tpm verify` recomputes the tree digest.
    pub rootfs: &'a Path,
    /// The app's volumes and mounts, as they will be set up.
    pub volumes: Value,
    /// The command line the app will run.
    pub exec: &'a [String],
}

pub struct Measurer {
    journal: Option<Journal>,
    tcti: String,
    mode: TpmMode,
    pcr: u32,
    logged: Vec<Logged>,
}

fn sha256_file(p: &Path) -> Result<String> {
    let mut f = std::fs::File::open(p).with_context(|| format!("reading {}", p.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", p.display()))?;
    Ok(hex::encode(h.finalize()))
}

/// Event data: a label saying what was measured, a space, then the details as compact JSON
/// (keys sorted), e.g. `rkt/stage1/kvm/vmlinux {"path":"…","pod":"…","sha256":"…"}`.
pub fn event_data(label: &str, details: &Value) -> Vec<u8> {
    format!("{label} {details}").into_bytes()
}

/// Splits event data written by `event_data`.
pub fn parse_event_data(data: &[u8]) -> Option<(String, Value)> {
    let s = std::str::from_utf8(data).ok()?;
    let (label, rest) = s.split_once(' ')?;
    Some((label.to_string(), serde_json::from_str(rest).ok()?))
}

impl Measurer {
    /// Checks that a TPM answers (unless `off`). `required` without a TPM is an error; `auto`
    /// without one measures nothing and says so only with `debug` (most hosts have no TPM: a
    /// note on every run would be noise; `rkt tpm log --pod` explains an unmeasured pod).
    pub fn open(g: &Globals, mode: TpmMode, debug: bool) -> Result<Measurer> {
        let pcr = pcr(g)?;
        let j = journal(g);
        let mut m = Measurer {
            journal: None,
            tcti: j.tcti.clone(),
            mode,
            pcr,
            logged: Vec::new(),
        };
        if mode == TpmMode::Off {
            return Ok(m);
        }
        match j.probe() {
            Ok(_) => m.journal = Some(j),
            Err(e) if mode == TpmMode::Required => {
                return Err(e.context("--tpm=required but no usable TPM"))
            }
            Err(e) if debug => eprintln!("rkt: no TPM, pod not measured ({e:#})"),
            Err(_) => {}
        }
        Ok(m)
    }

    /// Is a TPM being used?
    pub fn active(&self) -> bool {
        self.journal.is_some()
    }

    fn measure(&mut self, label: &str, details: Value) -> Result<Vec<usize>> {
        let Some(j) = &self.journal else {
            return Ok(Vec::new());
        };
        match j.measure(self.pcr, &event_data(label, &details)) {
            Ok(l) => {
                let i = l.index;
                self.logged.push(l);
                Ok(vec![i])
            }
            Err(e) if self.mode == TpmMode::Required => {
                Err(e.context(format!("TPM measurement of {label} failed")))
            }
            Err(e) => {
                eprintln!(
                    "rkt: TPM measurement of {label} failed, pod not measured further ({e:#})"
                );
                self.journal = None;
                Ok(Vec::new())
            }
        }
    }

    fn measure_file(&mut self, label: &str, pod: &str, path: &Path) -> Result<Vec<usize>> {
        if !self.active() {
            return Ok(Vec::new());
        }
        let sha = sha256_file(path)?;
        self.measure(label, json!({"pod": pod, "path": path, "sha256": sha}))
    }

    /// stage0: the running rkt binary.
    pub fn measure_stage0(&mut self, pod: &str) -> Result<Vec<usize>> {
        if !self.active() {
            return Ok(Vec::new());
        }
        let exe = std::fs::read_link("/proc/self/exe").unwrap_or_else(|_| "/proc/self/exe".into());
        let sha = sha256_file(Path::new("/proc/self/exe"))?;
        self.measure(
            "rkt/stage0",
            json!({"pod": pod, "path": exe, "sha256": sha, "version": env!("CARGO_PKG_VERSION")}),
        )
    }

    /// stage1 `ns`: the security settings the pod will run with, as JSON.
    pub fn measure_stage1_ns(&mut self, pod: &str, settings: &Value) -> Result<Vec<usize>> {
        let sha = hex::encode(Sha256::digest(settings.to_string().as_bytes()));
        self.measure(
            "rkt/stage1/ns",
            json!({"pod": pod, "settings": settings, "sha256": sha}),
        )
    }

    /// stage1 `fly`: what its apps run with (host namespaces, full privileges), as JSON.
    pub fn measure_stage1_fly(&mut self, pod: &str, settings: &Value) -> Result<Vec<usize>> {
        let sha = hex::encode(Sha256::digest(settings.to_string().as_bytes()));
        self.measure(
            "rkt/stage1/fly",
            json!({"pod": pod, "settings": settings, "sha256": sha}),
        )
    }

    /// stage1 `kvm`: the VMM build, the guest kernel, its initramfs and command line.
    pub fn measure_stage1_kvm(
        &mut self,
        pod: &str,
        vmm: &Path,
        vmlinux: &Path,
        initramfs: &Path,
        cmdline: &str,
    ) -> Result<Vec<usize>> {
        let mut out = self.measure_file("rkt/stage1/kvm/vmm", pod, vmm)?;
        out.extend(self.measure_file("rkt/stage1/kvm/vmlinux", pod, vmlinux)?);
        out.extend(self.measure_file("rkt/stage1/kvm/initramfs", pod, initramfs)?);
        let sha = hex::encode(Sha256::digest(cmdline.as_bytes()));
        out.extend(self.measure(
            "rkt/stage1/kvm/cmdline",
            json!({"pod": pod, "cmdline": cmdline, "sha256": sha}),
        )?);
        Ok(out)
    }

    /// stage1 `kvm` restored from a VM template (docs/kvm-template.md): which template, and the
    /// digests of the state and memory the VM runs from.
    pub fn measure_stage1_kvm_template(
        &mut self,
        pod: &str,
        key: &str,
        dir: &Path,
        state_sha256: &str,
        mem_sha256: &str,
        mem_pages: u64,
    ) -> Result<Vec<usize>> {
        self.measure(
            "rkt/stage1/kvm/template",
            json!({"pod": pod, "key": key, "path": dir, "state_sha256": state_sha256,
                   "mem_sha256": mem_sha256, "mem_pages": mem_pages}),
        )
    }

    /// The pod manifest exactly as stored at `<pod>/pod`.
    pub fn measure_pod_manifest(&mut self, pod: &str, bytes: &[u8]) -> Result<Vec<usize>> {
        let sha = hex::encode(Sha256::digest(bytes));
        self.measure(
            "rkt/pod-manifest",
            json!({"pod": pod, "file": "pod", "sha256": sha}),
        )
    }

    /// One app: image, rendered tree, volumes and command line.
    pub fn measure_app(&mut self, pod: &str, app: &AppMeasurement) -> Result<Vec<usize>> {
        self.measure(
            "rkt/app",
            json!({
                "pod": pod,
                "app": app.name,
                "image": app.image,
                "tree": app.tree,
                "rootfs": app.rootfs,
                "volumes": app.volumes,
                "exec": app.exec,
            }),
        )
    }

    /// Writes `<pod>/tpm-events.json` (atomically) if anything was measured.
    pub fn record(&self, pod_dir: &Path) -> Result<()> {
        let Some(first) = self.logged.first() else {
            return Ok(());
        };
        let rec = PodEvents {
            log: first
                .log
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            boot: first.boot.id(),
            pcr: self.pcr,
            events: self.logged.iter().map(|l| l.index).collect(),
            tcti: self.tcti.clone(),
        };
        write_pod_events(pod_dir, &rec)
    }
}

/// Writes `<pod>/tpm-events.json` atomically (temp file, fsync, rename).
fn write_pod_events(pod_dir: &Path, rec: &PodEvents) -> Result<()> {
    let path = pod_dir.join(EVENTS_FILE);
    let tmp = pod_dir.join(format!(".{EVENTS_FILE}.tmp"));
    let data = serde_json::to_vec_pretty(rec)?;
    std::fs::write(&tmp, &data)
        .and_then(|_| std::fs::File::open(&tmp)?.sync_all())
        .and_then(|_| std::fs::rename(&tmp, &path))
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads `<pod>/tpm-events.json`; None if the pod was not measured.
pub fn read_pod_events(pod_dir: &Path) -> Result<Option<PodEvents>> {
    let p = pod_dir.join(EVENTS_FILE);
    match std::fs::read(&p) {
        Ok(b) => Ok(Some(
            serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
    }
}

/// The pod directory of `uuid` (full or unambiguous prefix) under `<dir>/pods/*/`.
pub fn find_pod_dir(data_dir: &Path, uuid: &str) -> Result<(String, PathBuf)> {
    let q = uuid.trim().to_ascii_lowercase();
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    if !q.is_empty() {
        for state in [
            "embryo",
            "prepare",
            "prepared",
            "run",
            "exited-garbage",
            "garbage",
        ] {
            let Ok(rd) = std::fs::read_dir(data_dir.join("pods").join(state)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&q) && !found.iter().any(|(n, _)| *n == name) {
                    found.push((name, e.path()));
                }
            }
        }
    }
    match found.len() {
        0 => bail!("no pod matches {uuid:?}"),
        1 => Ok(found.pop().unwrap()),
        n => bail!("ambiguous UUID prefix {uuid:?}: matches {n} pods"),
    }
}

/// The `ns` flavour's security settings, as measured: network mode, `--insecure-options`, and per
/// app the user, capabilities, seccomp filter, read-only rootfs and resource limits.
pub fn ns_settings(spec: &rkt_stage2::PodSpec) -> Value {
    let apps: Vec<Value> = spec
        .apps
        .iter()
        .map(|a| {
            json!({
                "name": a.name,
                "user": a.user,
                "group": a.group,
                "supplementaryGids": a.supplementary_gids,
                "capabilities": a.capabilities,
                "seccomp": a.seccomp,
                "readOnlyRootfs": a.readonly_rootfs,
                "memoryLimit": a.memory_limit,
                "cpuMillis": a.cpu_millis,
                "cpuShares": a.cpu_shares,
            })
        })
        .collect();
    json!({"flavor": "ns", "net": spec.net, "insecure": spec.insecure, "apps": apps})
}

/// stage1 `fly`'s settings: every app gets the host's namespaces (its own mount namespace
/// only), all capabilities, no seccomp filter, the host's /dev and /sys and no cgroup limits,
/// whatever the flags asked; only who it runs as and its root's writability vary.
pub fn fly_settings(spec: &rkt_stage2::PodSpec) -> Value {
    let apps: Vec<Value> = spec
        .apps
        .iter()
        .map(|a| {
            json!({
                "name": a.name,
                "user": a.user,
                "group": a.group,
                "supplementaryGids": a.supplementary_gids,
                "readOnlyRootfs": a.readonly_rootfs,
            })
        })
        .collect();
    json!({
        "flavor": "fly",
        "net": spec.net,
        "namespaces": "host (own mount namespace)",
        "privileges": "all capabilities, no seccomp filter, host /dev and /sys, no cgroups",
        "apps": apps,
    })
}

/// One pod's measurement, from its start to the moment its apps run. Everything it measures is
/// gathered at [`PodMeasurement::begin`] (the spec and manifest are final then), so the flavour
/// only adds its stage1 and calls [`PodMeasurement::finish`] before starting the apps.
pub struct PodMeasurement {
    m: Measurer,
    uuid: String,
    pod_dir: PathBuf,
    manifest: Vec<u8>,
    apps: Vec<MeasuredApp>,
    stage1_done: bool,
}

/// An app's measurement, owned (see [`AppMeasurement`]).
struct MeasuredApp {
    name: String,
    image: String,
    tree: String,
    rootfs: PathBuf,
    volumes: Value,
    exec: Vec<String>,
}

impl PodMeasurement {
    /// Opens the TPM in `--tpm` mode `mode` and measures stage0 (the running rkt). Reads the pod
    /// manifest as stored at `<pod>/pod` and each app's rendered tree (`tree_of(image_id)`) now,
    /// for [`PodMeasurement::finish`]. An error means the pod must not start.
    pub fn begin(
        g: &Globals,
        mode: TpmMode,
        debug: bool,
        pod_dir: &Path,
        spec: &rkt_stage2::PodSpec,
        tree_of: impl Fn(&str) -> Result<rkt_store::RenderedTree>,
    ) -> Result<PodMeasurement> {
        let m = Measurer::open(g, mode, debug)?;
        PodMeasurement::with(m, pod_dir, spec, tree_of)
    }

    fn with(
        mut m: Measurer,
        pod_dir: &Path,
        spec: &rkt_stage2::PodSpec,
        tree_of: impl Fn(&str) -> Result<rkt_store::RenderedTree>,
    ) -> Result<PodMeasurement> {
        let mut pm = PodMeasurement {
            uuid: spec.uuid.clone(),
            pod_dir: pod_dir.to_path_buf(),
            manifest: Vec::new(),
            apps: Vec::new(),
            stage1_done: false,
            m: Measurer {
                journal: None,
                tcti: String::new(),
                mode: TpmMode::Off,
                pcr: DEFAULT_PCR,
                logged: Vec::new(),
            },
        };
        if !m.active() {
            pm.m = m;
            return Ok(pm);
        }
        let manifest = pod_dir.join("pod");
        pm.manifest =
            std::fs::read(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
        for a in &spec.apps {
            let tree = tree_of(&a.image_id)
                .with_context(|| format!("app {:?}: image {}", a.name, a.image_id))?;
            pm.apps.push(MeasuredApp {
                name: a.name.clone(),
                image: a.image_id.clone(),
                tree: tree.tree_digest,
                rootfs: tree.rootfs,
                volumes: serde_json::to_value(&a.mounts)?,
                exec: a.exec.clone(),
            });
        }
        m.measure_stage0(&pm.uuid)?;
        pm.m = m;
        Ok(pm)
    }

    /// stage1 `ns`: its security settings, from the spec.
    pub fn stage1_ns(&mut self, spec: &rkt_stage2::PodSpec) -> Result<()> {
        self.stage1_done = true;
        self.m.measure_stage1_ns(&self.uuid, &ns_settings(spec))?;
        Ok(())
    }

    /// stage1 `fly`: its settings, from the spec.
    pub fn stage1_fly(&mut self, spec: &rkt_stage2::PodSpec) -> Result<()> {
        self.stage1_done = true;
        self.m.measure_stage1_fly(&self.uuid, &fly_settings(spec))?;
        Ok(())
    }

    /// stage1 `kvm`: the VMM, guest kernel, initramfs and the final kernel command line.
    pub fn stage1_kvm(
        &mut self,
        vmm: &Path,
        vmlinux: &Path,
        initramfs: &Path,
        cmdline: &str,
    ) -> Result<()> {
        self.stage1_done = true;
        self.m
            .measure_stage1_kvm(&self.uuid, vmm, vmlinux, initramfs, cmdline)?;
        Ok(())
    }

    /// stage1 `kvm` restored from a VM template: after [`PodMeasurement::stage1_kvm`] (the
    /// VMM, kernel, initramfs and command line the template was made with), before `finish`.
    pub fn stage1_kvm_template(
        &mut self,
        key: &str,
        dir: &Path,
        state_sha256: &str,
        mem_sha256: &str,
        mem_pages: u64,
    ) -> Result<()> {
        if !self.stage1_done {
            bail!("internal error: the template measured before stage1 kvm");
        }
        self.m.measure_stage1_kvm_template(
            &self.uuid,
            key,
            dir,
            state_sha256,
            mem_sha256,
            mem_pages,
        )?;
        Ok(())
    }

    /// Whether a TPM is measuring this pod.
    pub fn active(&self) -> bool {
        self.m.active()
    }

    /// The pod manifest, then every app; writes `<pod>/tpm-events.json`. Call it after the
    /// flavour measured its stage1 and before any app runs.
    pub fn finish(mut self) -> Result<()> {
        if !self.m.active() {
            return Ok(());
        }
        if !self.stage1_done {
            bail!("internal error: the pod's stage1 was not measured");
        }
        self.m.measure_pod_manifest(&self.uuid, &self.manifest)?;
        for a in &self.apps {
            self.m.measure_app(
                &self.uuid,
                &AppMeasurement {
                    name: &a.name,
                    image: &a.image,
                    tree: &a.tree,
                    rootfs: &a.rootfs,
                    volumes: a.volumes.clone(),
                    exec: &a.exec,
                },
            )?;
        }
        self.m.record(&self.pod_dir)
    }
}

/// The `--tpm` mode a pod was prepared with (`<pod>/tpm-mode`), else the config's, else auto.
pub fn pod_mode(g: &Globals, pod_dir: &Path) -> Result<TpmMode> {
    let recorded = std::fs::read_to_string(pod_dir.join("tpm-mode")).ok();
    TpmMode::resolve(recorded.as_deref().map(str::trim), g)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_data_round_trips() {
        let d = json!({"pod": "abc", "sha256": "00ff", "exec": ["/bin/sh", "-c", "echo a b"]});
        let bytes = event_data("rkt/app", &d);
        // Keys are sorted, so the same measurement always gives the same bytes.
        assert_eq!(
            String::from_utf8(bytes.clone()).unwrap(),
            r#"rkt/app {"exec":["/bin/sh","-c","echo a b"],"pod":"abc","sha256":"00ff"}"#
        );
        let (label, back) = parse_event_data(&bytes).unwrap();
        assert_eq!(label, "rkt/app");
        assert_eq!(back, d);
        assert!(parse_event_data(b"no-json-here").is_none());
        assert!(parse_event_data(&[0xff, b' ', b'{', b'}']).is_none());
    }

    #[test]
    fn modes_parse() {
        assert_eq!(TpmMode::parse("auto").unwrap(), TpmMode::Auto);
        assert_eq!(TpmMode::parse("required").unwrap(), TpmMode::Required);
        assert_eq!(TpmMode::parse("off").unwrap(), TpmMode::Off);
        let e = TpmMode::parse("yes").unwrap_err().to_string();
        assert!(e.contains("expected auto, required or off"), "{e}");
    }

    #[test]
    fn pod_record_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_pod_events(dir.path()).unwrap(), None);
        let rec = PodEvents {
            log: "eventlog-1-0.bin".into(),
            boot: "1-0".into(),
            pcr: 15,
            events: vec![3, 4, 5],
            tcti: "swtpm:port=2321".into(),
        };
        std::fs::write(
            dir.path().join(EVENTS_FILE),
            serde_json::to_vec(&rec).unwrap(),
        )
        .unwrap();
        assert_eq!(read_pod_events(dir.path()).unwrap(), Some(rec));
    }

    #[test]
    fn pods_are_found_by_unambiguous_prefix() {
        let dir = tempfile::tempdir().unwrap();
        for (state, uuid) in [
            ("run", "aaaa1111"),
            ("prepared", "aaaa2222"),
            ("run", "bbbb"),
        ] {
            std::fs::create_dir_all(dir.path().join("pods").join(state).join(uuid)).unwrap();
        }
        let (uuid, path) = find_pod_dir(dir.path(), "aaaa2").unwrap();
        assert_eq!(uuid, "aaaa2222");
        assert!(path.ends_with("pods/prepared/aaaa2222"));
        assert!(find_pod_dir(dir.path(), "aaaa")
            .unwrap_err()
            .to_string()
            .contains("ambiguous"));
        assert!(find_pod_dir(dir.path(), "cccc").is_err());
        assert!(find_pod_dir(dir.path(), "").is_err());
    }
}

#[cfg(test)]
mod pod_measurement_tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// swtpm on a free port, killed on drop.
    struct Swtpm {
        child: std::process::Child,
        port: u16,
        /// The TPM's state directory, removed on drop.
        _state: tempfile::TempDir,
    }
    impl Drop for Swtpm {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
    fn swtpm() -> Swtpm {
        let state = tempfile::tempdir().unwrap();
        loop {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            if port == u16::MAX || std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_err() {
                continue;
            }
            drop(l);
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
                .args(["--server", &format!("type=tcp,port={port}")])
                .args(["--ctrl", &format!("type=tcp,port={}", port + 1)])
                .args(["--tpmstate", &format!("dir={}", state.path().display())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            for _ in 0..500 {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Swtpm {
                        child,
                        port,
                        _state: state,
                    };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    #[test]
    fn kvm_pods_are_measured_as_kvm_in_execution_order() {
        let tpm = swtpm();
        let tcti = format!("swtpm:host=127.0.0.1,port={}", tpm.port);
        let dir = tempfile::tempdir().unwrap();
        let pod = dir.path().join("pods/run/0123-pod");
        std::fs::create_dir_all(&pod).unwrap();
        std::fs::write(pod.join("pod"), br#"{"acKind":"PodManifest"}"#).unwrap();
        let spec: rkt_stage2::PodSpec = serde_json::from_value(json!({
            "uuid": "0123-pod", "hostname": "h", "net": "none", "resolv_conf": null,
            "hosts": null, "interactive": false, "insecure": rkt_stage2::InsecureRun::default(),
            "debug": false, "apps": []
        }))
        .unwrap();
        let m = Measurer {
            journal: Some(Journal::new(dir.path(), &tcti)),
            tcti: tcti.clone(),
            mode: TpmMode::Required,
            pcr: DEFAULT_PCR,
            logged: Vec::new(),
        };
        let mut pm = PodMeasurement::with(m, &pod, &spec, |_| unreachable!()).unwrap();
        let f = dir.path().join("artefact");
        std::fs::write(&f, b"kernel bytes").unwrap();
        // Nothing is recorded for the pod until the flavour measured its stage1 and finished.
        assert!(!pod.join(EVENTS_FILE).exists());
        pm.stage1_kvm(&f, &f, &f, "console=ttyS0 quiet").unwrap();
        pm.finish().unwrap();
        let rec = read_pod_events(&pod).unwrap().unwrap();
        assert_eq!(rec.events, vec![1, 2, 3, 4, 5, 6]);
        let log = rkt_tpm::Log::parse(
            &std::fs::read(Journal::new(dir.path(), &tcti).dir.join(&rec.log)).unwrap(),
        )
        .unwrap();
        let labels: Vec<String> = log
            .events
            .iter()
            .map(|e| {
                parse_event_data(&e.data)
                    .map(|(l, _)| l)
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            labels,
            [
                "rkt/stage0",
                "rkt/stage1/kvm/vmm",
                "rkt/stage1/kvm/vmlinux",
                "rkt/stage1/kvm/initramfs",
                "rkt/stage1/kvm/cmdline",
                "rkt/pod-manifest",
            ]
        );
        let (_, cmd) = parse_event_data(&log.events[4].data).unwrap();
        assert_eq!(cmd["cmdline"], "console=ttyS0 quiet");
        assert_eq!(cmd["pod"], "0123-pod");
    }

    #[test]
    fn finishing_without_a_stage1_is_refused() {
        let tpm = swtpm();
        let tcti = format!("swtpm:host=127.0.0.1,port={}", tpm.port);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pod"), b"{}").unwrap();
        let spec: rkt_stage2::PodSpec = serde_json::from_value(json!({
            "uuid": "u", "hostname": "h", "net": "none", "resolv_conf": null, "hosts": null,
            "interactive": false, "insecure": rkt_stage2::InsecureRun::default(),
            "debug": false, "apps": []
        }))
        .unwrap();
        let m = Measurer {
            journal: Some(Journal::new(dir.path(), &tcti)),
            tcti,
            mode: TpmMode::Required,
            pcr: DEFAULT_PCR,
            logged: Vec::new(),
        };
        let pm = PodMeasurement::with(m, dir.path(), &spec, |_| unreachable!()).unwrap();
        assert!(pm.finish().is_err());
    }
}
