//! `rkt help [COMMAND...]`, the `--help` of the raw-argument commands (`run`, `prepare`,
//! `run-prepared`) and `rkt man --dir DIR`: all rendered from [`crate::display_command`], so the
//! run flags shown are the table their parser reads.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct HelpArgs {
    /// Command (and subcommand) to show the help of
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ManArgs {
    /// Directory to write rkt.1 and rkt-COMMAND.1 into (created if missing)
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,
}

/// The help of `rkt <path...>`, as `rkt <path...> --help` prints it.
pub fn print_help(path: &[&str]) -> Result<i32> {
    let mut cmd = crate::display_command().bin_name("rkt");
    cmd.build();
    let mut c = &mut cmd;
    for name in path {
        match c.find_subcommand_mut(name) {
            Some(s) => c = s,
            None => bail!("unknown command {name:?} for \"rkt help\""),
        }
    }
    crate::out!("{}", c.render_help());
    Ok(0)
}

pub fn help(a: HelpArgs) -> Result<i32> {
    let path: Vec<&str> = a.command.iter().map(String::as_str).collect();
    print_help(&path)
}

/// One page per command, `rkt-image-list.1` style, and `rkt.1`.
pub fn man(a: ManArgs) -> Result<i32> {
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    let mut cmd = crate::display_command();
    cmd.build();
    let mut written = 0;
    write_pages(&cmd, "rkt", &a.dir, &mut written)?;
    crate::outln!("{written} man pages written to {}", a.dir.display());
    Ok(0)
}

/// clap names commands with `&'static str`; a man page run writes a few dozen, once.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn write_pages(
    cmd: &clap::Command,
    name: &str,
    dir: &std::path::Path,
    written: &mut usize,
) -> Result<()> {
    if cmd.is_hide_set() {
        return Ok(());
    }
    let page = cmd.clone().name(clap::builder::Str::from(leak(name)));
    let mut buf = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut buf)
        .with_context(|| format!("rendering {name}.1"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, buf).with_context(|| format!("writing {}", path.display()))?;
    *written += 1;
    for sub in cmd.get_subcommands() {
        write_pages(sub, &format!("{name}-{}", sub.get_name()), dir, written)?;
    }
    Ok(())
}
