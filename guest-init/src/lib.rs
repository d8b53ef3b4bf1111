//! The stage1 kvm guest side. `proto` is the one definition of the host<->guest protocol: the
//! host (`engine/src/stage1/kvm.rs`) and the guest init both use it, so it has no dependencies.

pub mod initramfs;
pub mod net;
pub mod proto;
