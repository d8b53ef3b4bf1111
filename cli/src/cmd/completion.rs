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
    // Into a buffer first: clap_complete panics when its writer fails (a closed pipe).
    let mut buf = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "rkt", &mut buf);
    crate::out!("{}", String::from_utf8_lossy(&buf));
    Ok(0)
}
