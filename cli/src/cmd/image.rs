//! `rkt image …` (owned by the store work; stub until it lands).

use clap::Args;

use crate::global::Globals;

#[derive(Args, Debug)]
pub struct ImageArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(_g: &Globals, _a: ImageArgs) -> anyhow::Result<i32> {
    anyhow::bail!("image commands are not implemented yet")
}
