//! Emulated devices: legacy PC port-I/O devices and virtio devices over MMIO.
pub mod legacy;
pub mod virtio;
