//! `rkt fetch IMAGE…`: imports images into the store (and renders them, ready to run), printing
//! one image ID per image on stdout.

use std::io::IsTerminal;

use clap::Args;
use rkt_store::{FetchOptions, PullPolicy, Store};

use crate::global::Globals;

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Images to fetch: oci:PATH[:TAG], oci-archive:FILE, docker-archive:FILE, FILE.aci,
    /// docker://[HOST[:PORT]/]NAME[:TAG|@DIGEST]
    #[arg(required = true)]
    pub images: Vec<String>,
    /// When to fetch: never (store only), new (if not in the store), update (always check)
    #[arg(long, default_value = "update", value_name = "POLICY")]
    pub pull_policy: String,
    /// Print the full image ID (IDs are always printed in full)
    #[arg(long)]
    pub full: bool,
    /// Signature of the image at the same position (an ACI's detached .asc, or a simple-signing
    /// signature of an OCI/Docker image; docs/trust.md)
    #[arg(long, value_name = "FILE")]
    pub signature: Vec<String>,
    /// Deprecated: same as --pull-policy=never
    #[arg(long, hide = true)]
    pub store_only: bool,
    /// Deprecated: same as --pull-policy=update
    #[arg(long, hide = true)]
    pub no_store: bool,
}

pub fn fetch_options(g: &Globals, policy: PullPolicy) -> FetchOptions {
    FetchOptions {
        pull_policy: policy,
        insecure_http: g.insecure.http,
        insecure_tls: g.insecure.tls,
        progress: std::io::stderr().is_terminal(),
        trust: rkt_store::trust::Verify {
            skip: g.insecure.image,
            config: g.trust.clone(),
            ..Default::default()
        },
        config_dirs: g.config.dirs.clone(),
    }
}

pub fn run(g: &Globals, a: FetchArgs) -> anyhow::Result<i32> {
    let mut policy: PullPolicy = a.pull_policy.parse()?;
    if a.store_only {
        policy = PullPolicy::Never;
    }
    if a.no_store {
        policy = PullPolicy::Update;
    }
    let store = Store::open(&g.dir)?;
    if a.signature.len() > a.images.len() {
        anyhow::bail!(
            "{} --signature files for {} images: give at most one per image, in order",
            a.signature.len(),
            a.images.len()
        );
    }
    let opts = fetch_options(g, policy);
    for (i, img) in a.images.iter().enumerate() {
        let mut opts = opts.clone();
        opts.trust.signature = a.signature.get(i).map(Into::into);
        let info = store.fetch(img, &opts)?;
        crate::outln!("{}", info.id);
    }
    Ok(0)
}
