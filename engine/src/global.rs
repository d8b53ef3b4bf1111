//! What every operation needs from rkt's global flags and configuration files, resolved once by
//! the CLI: data directory, configuration, `--insecure-options`, TPM connection.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::config::Config;

/// `--insecure-options`, parsed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Insecure {
    pub image: bool,
    pub tls: bool,
    pub http: bool,
    pub pubkey: bool,
    pub capabilities: bool,
    pub paths: bool,
    pub seccomp: bool,
}

impl Insecure {
    pub fn parse(s: &str) -> Result<Insecure> {
        let mut i = Insecure::default();
        for opt in s.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            match opt {
                "none" | "ondisk" => {}
                "image" => i.image = true,
                "tls" => i.tls = true,
                "http" => i.http = true,
                "pubkey" => i.pubkey = true,
                "capabilities" => i.capabilities = true,
                "paths" => i.paths = true,
                "seccomp" => i.seccomp = true,
                "all-fetch" => (i.image, i.tls, i.http, i.pubkey) = (true, true, true, true),
                "all-run" => (i.capabilities, i.paths, i.seccomp) = (true, true, true),
                "all" => {
                    i = Insecure {
                        image: true,
                        tls: true,
                        http: true,
                        pubkey: true,
                        capabilities: true,
                        paths: true,
                        seccomp: true,
                    }
                }
                other => bail!(
                    "unknown insecure option {other:?} (allowed: none, image, tls, ondisk, http, pubkey, capabilities, paths, seccomp, all-fetch, all-run, all)"
                ),
            }
        }
        Ok(i)
    }
}

/// Everything a command needs from the global flags and the configuration.
#[derive(Debug, Clone)]
pub struct Globals {
    pub debug: bool,
    /// `--dir`, else `paths` config `data`, else /var/lib/rkt.
    pub dir: PathBuf,
    /// `--local-config` (networks live in its `net.d`).
    pub local_config: PathBuf,
    pub insecure: Insecure,
    pub config: Config,
    /// Explicit TCTI from `--tpm-tcti` or the config (None: TPM2TOOLS_TCTI, then /dev/tpmrm0).
    pub tpm_tcti: Option<String>,
    /// Trusted keys: `<local-config>/trustedkeys` and `<system-config>/trustedkeys`.
    pub trust: rkt_store::trust::TrustConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insecure_groups_expand() {
        let i = Insecure::parse("all-run,http").unwrap();
        assert!(i.capabilities && i.paths && i.seccomp && i.http);
        assert!(!i.tls && !i.image);
        assert_eq!(Insecure::parse("none").unwrap(), Insecure::default());
        assert!(Insecure::parse("bogus").is_err());
    }
}
