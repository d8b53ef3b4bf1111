//! virtio-fs (spec 5.11): a host directory served to the guest by `fuse-backend-rs`'s
//! `PassthroughFs`, in process, over the virtio queues. The guest mounts it with
//! `mount -t virtiofs <tag> <dir>`.
//!
//! FUSE requests run on the event-loop thread and do blocking host file-system calls; the
//! VMM has no other latency-sensitive work there besides vsock. The server confines lookups to
//! the shared directory, but it runs with the VMM's credentials: a stage1 must run the VMM in
//! a mount namespace/chroot (or as an unprivileged user) if the directory is not trusted.

mod device;

pub use device::Fs;
