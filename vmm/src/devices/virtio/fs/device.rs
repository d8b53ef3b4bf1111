use std::path::Path;

use crate::error::{bail, Context, Result};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::passthrough::{Config, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use virtio_queue::QueueT;

use crate::devices::virtio::{read_config_bytes, ActiveQueues, VirtioDevice, TYPE_FS};
use crate::event::EventOps;

/// hiprio queue (FORGET, INTERRUPT) + one request queue.
const QUEUE_SIZES: &[u16] = &[256, 256];
/// Longest tag the config space holds.
pub const MAX_TAG_LEN: usize = 36;

pub struct Fs {
    config: [u8; MAX_TAG_LEN + 4],
    server: Server<PassthroughFs>,
    active: Option<ActiveQueues>,
    debug: bool,
}

impl Fs {
    /// Serves `shared_dir` under `tag`.
    pub fn new(tag: &str, shared_dir: &Path, debug: bool) -> Result<Self> {
        if tag.is_empty() || tag.len() > MAX_TAG_LEN || tag.bytes().any(|b| b == 0) {
            bail!(
                Config,
                "virtio-fs tag {tag:?} must be 1 to {MAX_TAG_LEN} bytes without NUL"
            );
        }
        if !shared_dir.is_dir() {
            bail!(
                Config,
                "virtio-fs shared directory {} is not a directory",
                shared_dir.display()
            );
        }
        let Some(root) = shared_dir.to_str() else {
            bail!(Config, "{} is not UTF-8", shared_dir.display());
        };
        let fs = PassthroughFs::new(Config {
            root_dir: root.to_string(),
            do_import: true,
            xattr: true,
            ..Default::default()
        })
        .with_context(|| format!("virtio-fs for {}", shared_dir.display()))?;
        fs.import()
            .with_context(|| format!("virtio-fs: opening {}", shared_dir.display()))?;
        let mut config = [0u8; MAX_TAG_LEN + 4];
        config[..tag.len()].copy_from_slice(tag.as_bytes());
        // num_request_queues
        config[MAX_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        Ok(Fs {
            config,
            server: Server::new(fs),
            active: None,
            debug,
        })
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, active: ActiveQueues) -> anyhow::Result<()> {
        if active.queues.len() != 2 || !active.queues[1].ready() {
            anyhow::bail!("virtio-fs needs its request queue");
        }
        self.active = Some(active);
        Ok(())
    }

    fn active_queues(&self) -> Option<&ActiveQueues> {
        self.active.as_ref()
    }

    fn reset(&mut self) {
        self.active = None;
    }

    fn process_queue(&mut self, index: usize, _ops: &mut EventOps) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let (server, debug) = (&self.server, self.debug);
        a.drain_queue(index, |mem, chain| {
            // The transport's Reader/Writer check every buffer against guest memory; a
            // malformed request gets an error from the server, never host memory.
            match (
                Reader::from_descriptor_chain(mem, chain.clone()),
                VirtioFsWriter::new(mem, chain),
            ) {
                (Ok(r), Ok(w)) => match server.handle_message(r, w.into(), None, None) {
                    Ok(n) => n as u32,
                    Err(e) => {
                        if debug {
                            eprintln!("rkt-vmm: virtio-fs: bad request: {e}");
                        }
                        0
                    }
                },
                _ => 0,
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::boot::create_memory;
    use crate::devices::virtio::queue::testutil::DriverQueue;
    use crate::devices::virtio::Interrupt;
    use vm_memory::{Bytes, GuestAddress};
    use vmm_sys_util::epoll::Epoll;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn config_space_holds_tag_and_queue_count() {
        let dir = tempfile::tempdir().unwrap();
        let fs = Fs::new("rkt", dir.path(), false).unwrap();
        let mut d = [0u8; 40];
        fs.read_config(0, &mut d);
        assert_eq!(&d[..4], b"rkt\0");
        assert_eq!(&d[36..], &1u32.to_le_bytes());
        assert!(Fs::new(&"x".repeat(37), dir.path(), false).is_err());
        assert!(Fs::new("", dir.path(), false).is_err());
        assert!(Fs::new("t", &dir.path().join("missing"), false).is_err());
    }

    /// FUSE_INIT followed by FUSE_LOOKUP of a file in the shared directory, as the guest
    /// driver sends them.
    #[test]
    fn serves_init_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hello.txt"), b"hi").unwrap();
        let mut fs = Fs::new("rkt", dir.path(), false).unwrap();
        let mem = create_memory(4 << 20).unwrap();
        let hq = DriverQueue::at(16, 0x1_0000);
        let mut rq = DriverQueue::at(16, 0x2_0000);
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        fs.activate(ActiveQueues {
            mem: mem.clone(),
            queues: vec![hq.queue(), rq.queue()],
            interrupt: irq,
            acked_features: 0,
        })
        .unwrap();
        let epoll = Epoll::new().unwrap();

        // fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, padding (40 bytes).
        let in_header = |len: u32, opcode: u32, unique: u64, nodeid: u64| {
            let mut h = Vec::new();
            h.extend_from_slice(&len.to_le_bytes());
            h.extend_from_slice(&opcode.to_le_bytes());
            h.extend_from_slice(&unique.to_le_bytes());
            h.extend_from_slice(&nodeid.to_le_bytes());
            h.extend_from_slice(&[0u8; 16]);
            h
        };
        // FUSE_INIT (26): major 7, minor 31, max_readahead, flags.
        let mut init = in_header(40 + 16, 26, 1, 0);
        for v in [7u32, 31, 0x20000, 0] {
            init.extend_from_slice(&v.to_le_bytes());
        }
        mem.write_slice(&init, GuestAddress(0x10_0000)).unwrap();
        rq.desc(&mem, 0, 0x10_0000, init.len() as u32, 1, 1);
        rq.desc(&mem, 1, 0x11_0000, 4096, 2, 0);
        rq.push(&mem, 0);
        fs.process_queue(1, &mut EventOps::new(&epoll, 0));
        let (_, len, idx) = rq.used_elem(&mem, 0);
        assert_eq!(idx, 1);
        assert!(len >= 16 + 24, "an init reply, got {len} bytes");
        let err: i32 = mem.read_obj(GuestAddress(0x11_0004)).unwrap();
        assert_eq!(err, 0, "FUSE_INIT succeeded");

        // FUSE_LOOKUP (1) of "hello.txt" in the root (nodeid 1).
        let mut lookup = in_header(40 + 10, 1, 2, 1);
        lookup.extend_from_slice(b"hello.txt\0");
        mem.write_slice(&lookup, GuestAddress(0x12_0000)).unwrap();
        rq.desc(&mem, 2, 0x12_0000, lookup.len() as u32, 1, 3);
        rq.desc(&mem, 3, 0x13_0000, 4096, 2, 0);
        rq.push(&mem, 2);
        fs.process_queue(1, &mut EventOps::new(&epoll, 0));
        let (_, len, idx) = rq.used_elem(&mem, 1);
        assert_eq!(idx, 2);
        let err: i32 = mem.read_obj(GuestAddress(0x13_0004)).unwrap();
        assert_eq!(err, 0, "lookup found the file");
        // fuse_entry_out follows the 16-byte out header; attr.size is at offset 40+8 in it.
        let size: u64 = mem.read_obj(GuestAddress(0x13_0000 + 16 + 48)).unwrap();
        assert_eq!(size, 2, "size of hello.txt ({len} bytes reply)");

        // Lookup escaping the shared directory fails.
        let mut evil = in_header(40 + 3, 1, 3, 1);
        evil.extend_from_slice(b"..\0");
        mem.write_slice(&evil, GuestAddress(0x14_0000)).unwrap();
        rq.desc(&mem, 4, 0x14_0000, evil.len() as u32, 1, 5);
        rq.desc(&mem, 5, 0x15_0000, 4096, 2, 0);
        rq.push(&mem, 4);
        fs.process_queue(1, &mut EventOps::new(&epoll, 0));
        let err: i32 = mem.read_obj(GuestAddress(0x15_0004)).unwrap();
        let nodeid: u64 = mem.read_obj(GuestAddress(0x15_0000 + 16)).unwrap();
        assert!(err != 0 || nodeid == 1, "'..' of the root stays the root");
    }
}
