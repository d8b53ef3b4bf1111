//! `rkt fetch IMAGE…` (owned by the store work; stub until it lands).

use clap::Args;

use crate::global::Globals;

#[derive(Args, Debug)]
pub struct FetchArgs {
    /// Images to fetch
    #[arg(required = true)]
    pub images: Vec<String>,
}

pub fn run(_g: &Globals, _a: FetchArgs) -> anyhow::Result<i32> {
    anyhow::bail!("fetch is not implemented yet")
}
