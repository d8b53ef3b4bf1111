//! rkt's configuration directories: `paths.d/`, `stage1.d/` and (ours) `tpm.d/` JSON files, read from
//! the system, then local, then user directory, later ones overriding earlier ones.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

#[derive(Debug, Clone, Default)]
pub struct Config {
    pub data_dir: Option<PathBuf>,
    pub stage1_images_dir: Option<PathBuf>,
    /// Default stage1 flavour from `stage1.d` (`name`: `ns` or `kvm`).
    pub stage1_name: Option<String>,
    /// `tpm.d`: `"mode": "auto|required|off"`.
    pub tpm_mode: Option<String>,
    /// `tpm.d`: `"tcti": "…"`.
    pub tpm_tcti: Option<String>,
    /// `tpm.d`: `"pcr": N`.
    pub tpm_pcr: Option<u32>,
    /// The directories read, lowest priority first: the store reads `auth.d` (credentials) and
    /// `certs.d` (registry CAs) from them when it goes to the network.
    pub dirs: Vec<PathBuf>,
}

impl Config {
    pub fn load(system: &Path, local: &Path, user: Option<&Path>) -> Result<Config> {
        let mut c = Config::default();
        for dir in [Some(system), Some(local), user].into_iter().flatten() {
            c.read_dir(dir)?;
            c.dirs.push(dir.to_path_buf());
        }
        Ok(c)
    }

    fn read_dir(&mut self, dir: &Path) -> Result<()> {
        for kind in ["paths", "stage1", "tpm"] {
            let sub = dir.join(format!("{kind}.d"));
            let Ok(entries) = std::fs::read_dir(&sub) else {
                continue;
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            for f in files {
                let text =
                    crate::read_limited_string(&f, crate::limits::CONFIG_FILE, "config file")?;
                let v: Value = serde_json::from_str(&text)
                    .with_context(|| format!("parsing config file {}", f.display()))?;
                self.apply(kind, &v)
                    .with_context(|| format!("config file {}", f.display()))?;
            }
        }
        Ok(())
    }

    fn apply(&mut self, kind: &str, v: &Value) -> Result<()> {
        let got_kind = v.get("rktKind").and_then(Value::as_str).unwrap_or("");
        if got_kind != kind {
            bail!("rktKind is {got_kind:?}, expected {kind:?}");
        }
        if v.get("rktVersion").and_then(Value::as_str) != Some("v1") {
            bail!("unsupported rktVersion (expected \"v1\")");
        }
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        match kind {
            "paths" => {
                if let Some(d) = s("data") {
                    self.data_dir = Some(d.into());
                }
                if let Some(d) = s("stage1-images") {
                    self.stage1_images_dir = Some(d.into());
                }
            }
            "stage1" => {
                if let Some(n) = s("name") {
                    self.stage1_name = Some(n);
                }
            }
            "tpm" => {
                if let Some(m) = s("mode") {
                    self.tpm_mode = Some(m);
                }
                if let Some(t) = s("tcti") {
                    self.tpm_tcti = Some(t);
                }
                if let Some(p) = v.get("pcr").and_then(Value::as_u64) {
                    self.tpm_pcr = Some(p as u32);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `rkt config` output: rkt v1's shape, `stage0` entries per kind, the credentials rkt would
    /// use (`auth`, `dockerAuth`, with secrets masked and the file each came from) first.
    pub fn to_json(&self, data_dir: &Path, default_stage1: &str) -> Result<Value> {
        let auth = rkt_store::auth::Auth::load(&self.dirs)?;
        let mut paths = json!({"rktVersion": "v1", "rktKind": "paths", "data": data_dir});
        if let Some(s) = &self.stage1_images_dir {
            paths["stage1-images"] = json!(s);
        }
        let stage1 = json!({
            "rktVersion": "v1",
            "rktKind": "stage1",
            "name": self.stage1_name.as_deref().unwrap_or(default_stage1),
            "version": env!("CARGO_PKG_VERSION"),
        });
        let mut tpm = json!({"rktVersion": "v1", "rktKind": "tpm",
            "mode": self.tpm_mode.as_deref().unwrap_or("auto")});
        if let Some(t) = &self.tpm_tcti {
            tpm["tcti"] = json!(t);
        }
        if let Some(p) = self.tpm_pcr {
            tpm["pcr"] = json!(p);
        }
        let mut stage0 = auth.to_json();
        stage0.extend([paths, stage1, tpm]);
        Ok(json!({ "stage0": stage0 }))
    }
}
