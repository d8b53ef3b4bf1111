//! One module per command group. Each exposes clap `Args` types and `run`-style functions that
//! return the process exit code.

pub mod completion;
pub mod config;
pub mod fetch;
pub mod image;
pub mod pods;
pub mod tpm;
pub mod version;

/// The stage1 flavour used when neither `--stage1` nor the config picks one.
pub const DEFAULT_STAGE1: &str = "kvm";
