//! stage2: what both stage1 flavours need to run a pod's apps with the same semantics.
//!
//! `spec` is the resolved, flavour-independent description of a pod that stage0 writes at run time
//! (`<pod>/stage1-spec.json`); the `ns` flavour reads it on the host, the `kvm` guest init reads it
//! inside the VM. The app set-up code (mounts, users, env, caps, seccomp) lives here so that a flag
//! behaves the same on both flavours.

pub mod spec;

pub use spec::*;
