//! virtio-net: one RX/TX queue pair over a frame-per-read/write backend fd (a tap opened with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and a 12-byte vnet header, so the guest's
//! `virtio_net_hdr_v1` passes through unchanged; tests and the fuzz target use a socketpair).

mod device;
pub mod tap;

pub use device::{offload_mode, Net, SetOffload, HDR_LEN, MAX_FRAME};
