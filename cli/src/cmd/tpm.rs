//! `rkt tpm …` (owned by the TPM work; stub until it lands).

use clap::Args;

use crate::global::Globals;

#[derive(Args, Debug)]
pub struct TpmArgs {
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

pub fn run(_g: &Globals, _a: TpmArgs) -> anyhow::Result<i32> {
    anyhow::bail!("tpm commands are not implemented yet")
}
