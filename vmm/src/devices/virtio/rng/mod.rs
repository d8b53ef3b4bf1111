//! virtio-rng (entropy source, spec 5.4): one request queue; the guest offers writable buffers
//! and the device fills them from the host's getrandom(2).

mod device;

pub use device::Rng;
