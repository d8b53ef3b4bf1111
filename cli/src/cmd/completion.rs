//! `rkt completion bash|zsh|fish`.

use clap::Args;
use clap_complete::Shell;

#[derive(Args, Debug)]
pub struct CompletionArgs {
    /// Shell to generate completions for
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(a: CompletionArgs, mut cmd: clap::Command) -> anyhow::Result<i32> {
    clap_complete::generate(a.shell, &mut cmd, "rkt", &mut std::io::stdout());
    Ok(0)
}
