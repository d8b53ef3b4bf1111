//! `rkt config`: the effective configuration as JSON.

use clap::Args;

use crate::global::Globals;

#[derive(Args, Debug)]
pub struct ConfigArgs {
    /// Apply indent to format the output
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub pretty_print: bool,
}

pub fn run(g: &Globals, a: ConfigArgs) -> anyhow::Result<i32> {
    let v = g.config.to_json(&g.dir, super::DEFAULT_STAGE1)?;
    if a.pretty_print {
        crate::outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        crate::outln!("{v}");
    }
    Ok(0)
}
