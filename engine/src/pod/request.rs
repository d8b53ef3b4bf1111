//! What a user asked for when creating a pod, as given on the command line (`rkt run`, `prepare`,
//! `run-prepared`) and before any of it is checked: the CLI fills these in, [`super::build`] turns
//! them into a pod manifest and a [`rkt_stage2::PodSpec`].

use std::path::PathBuf;

/// Pod-level options.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodFlags {
    /// The stage1 flag given last (`stage1`, `stage1-name`, `stage1-path`...) and its value.
    pub stage1: Option<(String, String)>,
    pub volumes: Vec<String>,
    /// `--mount` given before the first image: mounted in every app (rkt v1).
    pub mounts: Vec<String>,
    pub inherit_env: bool,
    pub set_env: Vec<String>,
    pub set_env_file: Vec<String>,
    pub no_overlay: bool,
    pub pull_policy: Option<String>,
    pub pod_manifest: Option<PathBuf>,
    pub tpm: Option<String>,
    pub ports: Vec<String>,
    pub private_users: bool,
    pub insecure_options: Vec<String>,
    pub debug: bool,
    pub quiet: bool,
    pub uuid_file_save: Option<PathBuf>,
    pub start: StartFlags,
}

/// Options that take effect when the pod starts (`run` and `run-prepared`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StartFlags {
    pub net: Option<String>,
    pub dns: Vec<String>,
    pub dns_search: Vec<String>,
    pub dns_opt: Vec<String>,
    pub dns_domain: Option<String>,
    pub hosts_entries: Vec<String>,
    pub hostname: Option<String>,
    pub interactive: bool,
    pub mds_register: bool,
    pub ipc: Option<String>,
}

/// One image and the per-app flags that followed it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AppFlags {
    pub image: String,
    /// Arguments after `--`; None when no `--` was given (keep the image's).
    pub args: Option<Vec<String>>,
    pub exec: Option<String>,
    pub working_dir: Option<String>,
    pub readonly_rootfs: Option<bool>,
    pub mounts: Vec<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub supplementary_gids: Option<String>,
    pub name: Option<String>,
    pub annotations: Vec<String>,
    pub user_annotations: Vec<String>,
    pub user_labels: Vec<String>,
    pub environment: Vec<String>,
    pub memory: Option<String>,
    pub cpu: Option<String>,
    pub cpu_shares: Option<String>,
    pub caps_retain: Option<String>,
    pub caps_remove: Option<String>,
    pub seccomp: Option<String>,
    pub oom_score_adj: Option<String>,
    /// `--signature=FILE`: this image's signature (docs/trust.md).
    pub signature: Option<std::path::PathBuf>,
}
