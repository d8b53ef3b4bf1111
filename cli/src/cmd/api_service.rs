//! `rkt api-service [--listen=ADDR]`: serves rkt's read-only v1alpha gRPC API (`rkt_api`) until
//! SIGINT or SIGTERM. Under a systemd `.socket` unit it serves the sockets passed to it instead
//! (then `--listen` is an error, as in rkt). See docs/api-service.md.

use std::time::Duration;

use clap::Args;

use crate::global::{GlobalOpts, Globals};

#[derive(Args, Debug)]
pub struct ApiServiceArgs {
    /// Address to listen for client API requests (HOST:PORT; default localhost:15441, 0.0.0.0
    /// for every interface)
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

pub fn run(g: &Globals, opts: &GlobalOpts, a: ApiServiceArgs) -> anyhow::Result<i32> {
    if a.listen.as_deref() == Some("") {
        anyhow::bail!("--listen needs an address (HOST:PORT)");
    }
    rkt_api::serve(rkt_api::Options {
        dir: g.dir.clone(),
        system_config: opts.system_config.clone(),
        local_config: opts.local_config.clone(),
        user_config: opts.user_config.clone(),
        insecure_options: opts.insecure_options.clone(),
        trust_keys_from_https: opts.trust_keys_from_https,
        // The rkt v1 release whose CLI and API we keep, as `rkt version` names it.
        rkt_version: super::version::RKT_V1_COMPAT.to_string(),
        listen: a.listen,
        events_interval: Duration::from_secs(1),
    })?;
    Ok(0)
}
