use virtio_queue::QueueT;
use vm_memory::Bytes;

use crate::devices::virtio::queue::collect_chain;
use crate::devices::virtio::{ActiveQueues, VirtioDevice, TYPE_RNG};
use crate::event::EventOps;

const QUEUE_SIZES: &[u16] = &[256];
/// Bytes served per request at most: bounds the work one chain can ask for.
const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Default)]
pub struct Rng {
    active: Option<ActiveQueues>,
    debug: bool,
    /// Bytes handed to the guest so far (for tests and debugging).
    pub served: u64,
}

impl Rng {
    pub fn new(debug: bool) -> Self {
        Rng {
            active: None,
            debug,
            served: 0,
        }
    }
}

fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe {
            libc::getrandom(
                buf[done..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - done,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn activate(&mut self, active: ActiveQueues) -> anyhow::Result<()> {
        if active.queues.len() != 1 || !active.queues[0].ready() {
            anyhow::bail!("virtio-rng needs its request queue");
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
        let debug = self.debug;
        self.served += a.drain_queue(index, |mem, chain| {
            let mut written = 0u32;
            match collect_chain(chain, mem, u64::MAX) {
                Ok(bufs) => {
                    let mut budget = MAX_REQUEST;
                    for b in bufs.iter().filter(|b| b.write) {
                        let n = u64::from(b.len).min(budget) as usize;
                        if n == 0 {
                            break;
                        }
                        let mut data = vec![0u8; n];
                        if fill_random(&mut data).is_err()
                            || mem.write_slice(&data, b.addr).is_err()
                        {
                            break;
                        }
                        written += n as u32;
                        budget -= n as u64;
                    }
                }
                Err(e) => {
                    if debug {
                        eprintln!("rkt-vmm: virtio-rng: bad request from the guest: {e}");
                    }
                }
            }
            written
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::boot::create_memory;
    use crate::devices::virtio::queue::testutil::DriverQueue;
    use crate::devices::virtio::Interrupt;
    use std::sync::atomic::Ordering;
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    #[test]
    fn fills_buffers_and_survives_bad_chains() {
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let epoll = vmm_sys_util::epoll::Epoll::new().unwrap();
        let mut rng = Rng::new(false);
        rng.activate(ActiveQueues {
            mem: mem.clone(),
            queues: vec![dq.queue()],
            interrupt: irq.clone(),
            acked_features: 0,
        })
        .unwrap();
        DriverQueue::set_desc(&mem, 0, 0x8000, 64, 2, 0);
        // A looping chain and an out-of-memory buffer between two good ones.
        DriverQueue::set_desc(&mem, 1, 0x8100, 8, 3, 1);
        DriverQueue::set_desc(&mem, 2, 0xdead_0000, 8, 2, 0);
        DriverQueue::set_desc(&mem, 3, 0x9000, 0xff000, 2, 0);
        for h in [0, 1, 2, 3] {
            dq.push(&mem, h);
        }
        rng.process_queue(0, &mut EventOps::new(&epoll, 0));
        assert_eq!(DriverQueue::used(&mem, 0), (0, 64, 4));
        assert_eq!(
            DriverQueue::used(&mem, 1).1,
            0,
            "loop answered with 0 bytes"
        );
        assert_eq!(
            DriverQueue::used(&mem, 2).1,
            0,
            "bad address answered with 0 bytes"
        );
        // 0xff000 bytes at 0x9000 run past the 1 MiB of RAM: refused as a whole.
        assert_eq!(DriverQueue::used(&mem, 3).1, 0);
        let mut got = [0u8; 64];
        mem.read_slice(&mut got, GuestAddress(0x8000)).unwrap();
        assert_ne!(got, [0u8; 64], "random bytes written");
        assert_eq!(irq.status.load(Ordering::SeqCst) & 1, 1);
        assert_eq!(irq.irqfd.read().unwrap(), 1);
        assert_eq!(rng.served, 64);
    }

    #[test]
    fn large_request_is_capped() {
        let mem = create_memory(1 << 20).unwrap();
        let mut dq = DriverQueue::new(16);
        let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let epoll = vmm_sys_util::epoll::Epoll::new().unwrap();
        let mut rng = Rng::new(false);
        rng.activate(ActiveQueues {
            mem: mem.clone(),
            queues: vec![dq.queue()],
            interrupt: irq,
            acked_features: 0,
        })
        .unwrap();
        DriverQueue::set_desc(&mem, 0, 0x1_0000, 0x8_0000, 2, 0);
        dq.push(&mem, 0);
        rng.process_queue(0, &mut EventOps::new(&epoll, 0));
        assert_eq!(DriverQueue::used(&mem, 0).1 as u64, MAX_REQUEST);
    }
}
