//! Global (persistent) flags, as rkt v1.30 has them, resolved against the configuration files.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::config::Config;

#[derive(Args, Debug, Clone)]
pub struct GlobalOpts {
    /// Print out more debug information to stderr
    #[arg(long, global = true)]
    pub debug: bool,
    /// rkt data directory
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// system configuration directory
    #[arg(
        long,
        global = true,
        default_value = "/usr/lib/rkt",
        value_name = "DIR"
    )]
    pub system_config: PathBuf,
    /// local configuration directory
    #[arg(long, global = true, default_value = "/etc/rkt", value_name = "DIR")]
    pub local_config: PathBuf,
    /// user configuration directory
    #[arg(long, global = true, default_value = "", value_name = "DIR")]
    pub user_config: String,
    /// comma-separated list of security features to disable: none, image, tls, ondisk, http,
    /// pubkey, capabilities, paths, seccomp, all-fetch, all-run, all
    #[arg(long, global = true, default_value = "none", value_name = "OPTS")]
    pub insecure_options: String,
    /// Automatically trust gpg keys fetched from https (accepted for compatibility)
    #[arg(long, global = true)]
    pub trust_keys_from_https: bool,
    /// TPM connection, in tpm2-tools' TCTI syntax (e.g. `swtpm:host=127.0.0.1,port=2321`);
    /// falls back to the config, then TPM2TOOLS_TCTI, then /dev/tpmrm0
    #[arg(long, global = true, value_name = "TCTI")]
    pub tpm_tcti: Option<String>,
}

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
}

impl GlobalOpts {
    pub fn resolve(&self) -> Result<Globals> {
        let insecure = Insecure::parse(&self.insecure_options)?;
        let user = (!self.user_config.is_empty()).then(|| PathBuf::from(&self.user_config));
        let config = Config::load(&self.system_config, &self.local_config, user.as_deref())?;
        let dir = self
            .dir
            .clone()
            .or_else(|| config.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from("/var/lib/rkt"));
        let tpm_tcti = self.tpm_tcti.clone().or_else(|| config.tpm_tcti.clone());
        Ok(Globals {
            debug: self.debug,
            dir,
            local_config: self.local_config.clone(),
            insecure,
            config,
            tpm_tcti,
        })
    }
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
