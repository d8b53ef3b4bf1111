//! One module per command group. Each exposes clap `Args` types and `run`-style functions that
//! return the process exit code.

pub mod api_service;
pub mod app;
pub mod completion;
pub mod config;
pub mod fetch;
pub mod help;
pub mod image;
pub mod logs;
pub mod pods;
pub mod stage1;
pub mod tpm;
pub mod trust;
pub mod version;

pub use rkt_engine::DEFAULT_STAGE1;
