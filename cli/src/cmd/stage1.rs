//! `rkt stage1 template list|build|rm`: the VM templates stage1 kvm restores pods from
//! (docs/kvm-template.md). They live in `$RKT_TEMPLATE_CACHE` (default
//! /var/cache/rkt/templates), shared by every `--dir`.

use anyhow::Result;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};

use crate::global::Globals;
use crate::pod::table::{humanize, tabulate};
use crate::stage1::kvm::template;

#[derive(Args, Debug)]
pub struct Stage1Args {
    #[command(subcommand)]
    pub cmd: Stage1Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Stage1Cmd {
    /// stage1 kvm VM templates: list, build ahead of time, remove
    Template(TemplateArgs),
}

#[derive(Args, Debug)]
pub struct TemplateArgs {
    #[command(subcommand)]
    pub cmd: TemplateCmd,
}

#[derive(Subcommand, Debug)]
pub enum TemplateCmd {
    /// List the VM templates: key, size on disk (sparse) and in memory, age, what made them
    List {
        /// Don't print a header
        #[arg(long)]
        no_legend: bool,
        /// Print full keys and paths
        #[arg(long)]
        full: bool,
    },
    /// Boot the guest once to make the template a default-sized kvm pod restores from
    Build,
    /// Remove VM templates (by key or unambiguous key prefix)
    Rm {
        /// Keys or key prefixes
        #[arg(value_name = "KEY")]
        keys: Vec<String>,
        /// Remove every template
        #[arg(long, conflicts_with = "keys")]
        all: bool,
    },
}

pub fn run(g: &Globals, a: Stage1Args) -> Result<i32> {
    let Stage1Cmd::Template(t) = a.cmd;
    let root = template::cache_root();
    match t.cmd {
        TemplateCmd::List { no_legend, full } => {
            let now = Utc::now();
            let mut rows = Vec::new();
            if !no_legend {
                rows.push(
                    [
                        "KEY",
                        "DISK",
                        "MEMORY",
                        "CREATED",
                        "VCPUS",
                        "KERNEL",
                        "INITRAMFS",
                    ]
                    .map(String::from)
                    .to_vec(),
                );
            }
            let short = |s: &str| {
                if full {
                    s.to_string()
                } else {
                    s.chars().take(12).collect()
                }
            };
            for e in template::list(&root)? {
                let created: DateTime<Utc> = match &e.meta {
                    Some(m) => DateTime::from_timestamp(m.created as i64, 0).unwrap_or(now),
                    None => e.modified.into(),
                };
                let (vcpus, kernel, init) = match &e.meta {
                    Some(m) => (
                        m.vcpus.to_string(),
                        if full {
                            format!("{} sha256:{}", m.kernel.display(), m.kernel_sha256)
                        } else {
                            format!("sha256:{}", short(&m.kernel_sha256))
                        },
                        format!("sha256:{}", short(&m.initramfs_sha256)),
                    ),
                    None => ("-".into(), "-".into(), "- (no meta.json)".into()),
                };
                rows.push(vec![
                    short(&e.key),
                    mib(e.disk_bytes),
                    mib(e.apparent_bytes),
                    humanize(created, now),
                    vcpus,
                    kernel,
                    init,
                ]);
            }
            crate::out!("{}", tabulate(&rows));
            Ok(0)
        }
        TemplateCmd::Build => {
            let (key, made) = crate::stage1::kvm::build_template(&g.dir, g.debug)?;
            let what = if made { "made" } else { "already there" };
            crate::outln!("{key} ({what}, {})", root.join(&key).display());
            Ok(0)
        }
        TemplateCmd::Rm { keys, all } => {
            if keys.is_empty() && !all {
                anyhow::bail!("rkt stage1 template rm: name templates (KEY…) or pass --all");
            }
            for k in template::remove(&root, &keys)? {
                crate::outln!("removed {k}");
            }
            Ok(0)
        }
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
}
