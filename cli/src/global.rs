//! Global (persistent) flags, as rkt v1.30 has them, resolved against the configuration files.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use rkt_engine::config::Config;
pub use rkt_engine::global::{Globals, Insecure};

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
    /// Automatically trust the keys appc discovery names (over https) for an image whose
    /// prefix has no trusted key
    #[arg(long, global = true)]
    pub trust_keys_from_https: bool,
    /// TPM connection, in tpm2-tools' TCTI syntax (e.g. `swtpm:host=127.0.0.1,port=2321`);
    /// falls back to the config, then TPM2TOOLS_TCTI, then /dev/tpmrm0
    #[arg(long, global = true, value_name = "TCTI")]
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
            trust: rkt_store::trust::TrustConfig {
                local_config: self.local_config.clone(),
                system_config: self.system_config.clone(),
                trust_keys_from_https: self.trust_keys_from_https,
            },
        })
    }
}
