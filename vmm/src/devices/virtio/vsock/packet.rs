//! The virtio-vsock packet header (`struct virtio_vsock_hdr`, little-endian, packed).

use vm_memory::ByteValued;

pub const HOST_CID: u64 = 2;
pub const HDR_LEN: usize = 44;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the peer will receive / send no more data.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hdr {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

// SAFETY: plain old data, every bit pattern is valid, no padding (packed).
unsafe impl ByteValued for Hdr {}

const _: () = assert!(std::mem::size_of::<Hdr>() == HDR_LEN);

impl Hdr {
    pub fn to_bytes(self) -> [u8; HDR_LEN] {
        let mut b = [0u8; HDR_LEN];
        b.copy_from_slice(self.as_slice());
        b
    }

    pub fn from_bytes(b: &[u8; HDR_LEN]) -> Hdr {
        let mut h = Hdr::default();
        h.as_mut_slice().copy_from_slice(b);
        h
    }
}
