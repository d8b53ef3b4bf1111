//! Which manifest of a multi-platform image (OCI image index, Docker manifest list) this host
//! runs: same OS, same architecture, and the best variant the CPU can run (arm v7 runs v6 and v5
//! images; amd64 v3 runs v2 and v1; arm64 "v8" is the same as no variant).

use anyhow::anyhow;
use serde_json::Value;

use crate::fetch::Descriptor;
use crate::Result;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// GOOS spelling: `linux`.
    pub os: String,
    /// GOARCH spelling: `amd64`, `arm64`, `arm`, `386`, `ppc64le`, `s390x`, `riscv64`.
    pub arch: String,
    /// `v7`, `v8`, `v3`…, empty when unknown or meaningless.
    pub variant: String,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if !self.variant.is_empty() {
            write!(f, "/{}", self.variant)?;
        }
        Ok(())
    }
}

impl Platform {
    /// This host, as OCI spells it.
    pub fn host() -> Platform {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
            "powerpc64" => "ppc64",
            "arm" => "arm",
            o => o,
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            arch: arch.to_string(),
            variant: host_variant(arch),
        }
    }

    /// The appc spelling of the architecture (`aarch64`, `armv7l`, `i386`), for ACI labels.
    pub fn appc_arch(&self) -> String {
        match (self.arch.as_str(), self.variant.as_str()) {
            ("arm64", _) => "aarch64".into(),
            ("arm", "v6") => "armv6l".into(),
            ("arm", _) => "armv7l".into(),
            ("386", _) => "i386".into(),
            (a, _) => a.into(),
        }
    }

    /// How well an index entry's platform fits this host: None if it cannot run here, else a rank
    /// (higher is better: the most capable variant the host runs).
    fn fits(&self, os: &str, arch: &str, variant: &str) -> Option<u32> {
        if os != self.os || arch != self.arch {
            return None;
        }
        let level = |v: &str| -> Option<u32> { v.strip_prefix('v')?.parse().ok() };
        match self.arch.as_str() {
            "arm64" => match variant {
                "" | "v8" => Some(1),
                // v9 images need v9 instructions; an unknown host variant counts as v8.
                v => (level(v)? <= level(&self.variant).unwrap_or(8)).then_some(0),
            },
            "arm" | "amd64" => {
                let default = if self.arch == "arm" { 7 } else { 1 };
                let host = level(&self.variant).unwrap_or(default);
                let want = if variant.is_empty() {
                    default.min(host)
                } else {
                    level(variant)?
                };
                (want <= host).then_some(want)
            }
            _ => (variant.is_empty() || variant == self.variant).then_some(1),
        }
    }

    /// Picks this host's entry from an image index's `manifests`; the error names the platforms
    /// the index has.
    pub fn pick(&self, index: &Value, what: &str) -> Result<Descriptor> {
        let ms: Vec<Descriptor> =
            serde_json::from_value(index.get("manifests").cloned().unwrap_or(Value::Null))
                .map_err(|e| anyhow!("invalid image index in {what}: {e}"))?;
        let s = |p: &Value, k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let mut best: Option<(u32, &Descriptor)> = None;
        let mut seen = Vec::new();
        for m in &ms {
            let Some(p) = &m.platform else {
                continue;
            };
            let (os, arch, variant) = (s(p, "os"), s(p, "architecture"), s(p, "variant"));
            // Docker's attestation manifests ("unknown/unknown") are not images.
            if os == "unknown" {
                continue;
            }
            if let Some(rank) = self.fits(&os, &arch, &variant) {
                if best.is_none_or(|(r, _)| rank > r) {
                    best = Some((rank, m));
                }
            }
            let name = Platform { os, arch, variant }.to_string();
            if !seen.contains(&name) {
                seen.push(name);
            }
        }
        if let Some((_, m)) = best {
            return Ok(m.clone());
        }
        let have = if seen.is_empty() {
            "none with a platform".to_string()
        } else {
            seen.join(", ")
        };
        Err(anyhow!(
            "{what} has no image for this host's platform {self} (it has: {have})"
        ))
    }
}

/// The CPU's variant: arm v6/v7 from the build target, amd64 microarchitecture level from CPUID.
fn host_variant(arch: &str) -> String {
    match arch {
        "arm64" => "v8".into(),
        "arm" => {
            if cfg!(target_feature = "v7") {
                "v7".into()
            } else {
                "v6".into()
            }
        }
        "amd64" => amd64_level(),
        _ => String::new(),
    }
}

#[cfg(target_arch = "x86_64")]
fn amd64_level() -> String {
    use std::arch::is_x86_feature_detected as has;
    let v2 = has!("sse4.2") && has!("popcnt") && has!("ssse3") && has!("cmpxchg16b");
    let v3 = v2
        && has!("avx2")
        && has!("bmi1")
        && has!("bmi2")
        && has!("fma")
        && has!("lzcnt")
        && has!("movbe");
    let v4 = v3
        && has!("avx512f")
        && has!("avx512bw")
        && has!("avx512cd")
        && has!("avx512dq")
        && has!("avx512vl");
    match (v2, v3, v4) {
        (_, _, true) => "v4",
        (_, true, _) => "v3",
        (true, _, _) => "v2",
        _ => "v1",
    }
    .into()
}

#[cfg(not(target_arch = "x86_64"))]
fn amd64_level() -> String {
    String::new()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn index(ps: &[(&str, &str, &str)]) -> Value {
        let ms: Vec<Value> = ps
            .iter()
            .enumerate()
            .map(|(i, (os, arch, v))| {
                let mut p = json!({"os": os, "architecture": arch});
                if !v.is_empty() {
                    p["variant"] = json!(v);
                }
                json!({"mediaType": "m", "digest": format!("sha256:{i}"), "size": 1, "platform": p})
            })
            .collect();
        json!({ "manifests": ms })
    }

    fn host(arch: &str, variant: &str) -> Platform {
        Platform {
            os: "linux".into(),
            arch: arch.into(),
            variant: variant.into(),
        }
    }

    #[test]
    fn picks_os_arch_and_best_variant() {
        let idx = index(&[
            ("linux", "arm", "v5"),
            ("linux", "arm", "v7"),
            ("linux", "arm64", "v8"),
            ("linux", "amd64", ""),
            ("linux", "amd64", "v3"),
            ("windows", "amd64", ""),
        ]);
        let d = |p: Platform| p.pick(&idx, "x").unwrap().digest;
        assert_eq!(d(host("arm", "v7")), "sha256:1");
        assert_eq!(d(host("arm", "v6")), "sha256:0");
        assert_eq!(d(host("arm64", "v8")), "sha256:2");
        assert_eq!(d(host("amd64", "v3")), "sha256:4");
        assert_eq!(d(host("amd64", "v2")), "sha256:3");
        let e = host("s390x", "").pick(&idx, "docker://r/x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "docker://r/x has no image for this host's platform linux/s390x (it has: linux/arm/v5, \
             linux/arm/v7, linux/arm64/v8, linux/amd64, linux/amd64/v3, windows/amd64)"
        );
    }

    #[test]
    fn host_is_known() {
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        #[cfg(target_arch = "x86_64")]
        assert!(h.arch == "amd64" && h.variant.starts_with('v'), "{h}");
    }
}
