//! virtio-vsock (spec 5.10), Firecracker-style host side: stream sockets only, bridged to Unix
//! domain sockets.
//!
//! - The guest (CID `guest_cid`, usually 3) connecting to host port P: the VMM connects to the
//!   Unix socket `<uds_path>_<P>` and bridges the two.
//! - A host process connecting to the Unix listener `<uds_path>` writes `CONNECT <port>\n`; the
//!   VMM opens a vsock connection to that guest port and answers `OK <hostport>\n` once the guest
//!   accepts, then bridges the stream.
//!
//! Flow control is virtio-vsock's credit scheme: we never send the guest more than it advertised
//! room for, and advertise a fixed buffer per connection that a well-behaved guest respects (one
//! that overruns it gets its connection reset).

mod device;
mod packet;

pub use device::Vsock;
pub use packet::{Hdr, HOST_CID};
