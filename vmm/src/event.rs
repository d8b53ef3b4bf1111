//! The VMM's event loop: one epoll on the thread that called `Vm::run`. Devices register their
//! file descriptors (queue notification eventfds, backend sockets) through `EventOps` and get
//! called back with the token they chose. vCPU threads never block on device work.

use std::io;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Something that owns file descriptors watched by the event loop.
pub trait Subscriber: Send {
    /// Called once on the event-loop thread before the vCPUs start: register fds here.
    fn init(&mut self, ops: &mut EventOps) -> io::Result<()>;
    /// One of this subscriber's fds is ready.
    fn handle(&mut self, token: u32, events: EventSet, ops: &mut EventOps);
}

/// Registration handle given to a subscriber; tokens are private to the subscriber.
pub struct EventOps<'a> {
    epoll: &'a Epoll,
    sub: u32,
}

impl<'a> EventOps<'a> {
    /// Registration handle for subscriber number `sub` (the event loop makes these; tests too).
    pub fn new(epoll: &'a Epoll, sub: u32) -> Self {
        EventOps { epoll, sub }
    }

    fn data(&self, token: u32) -> u64 {
        (u64::from(self.sub) << 32) | u64::from(token)
    }

    pub fn add(&mut self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Add,
            fd,
            EpollEvent::new(events, self.data(token)),
        )
    }

    pub fn modify(&mut self, fd: RawFd, token: u32, events: EventSet) -> io::Result<()> {
        self.epoll.ctl(
            ControlOperation::Modify,
            fd,
            EpollEvent::new(events, self.data(token)),
        )
    }

    pub fn remove(&mut self, fd: RawFd) -> io::Result<()> {
        self.epoll
            .ctl(ControlOperation::Delete, fd, EpollEvent::default())
    }
}

pub type SharedSubscriber = Arc<Mutex<dyn Subscriber>>;

/// Subscriber index reserved for the loop's owner (exit and stop events).
pub const OWNER: u32 = u32::MAX;

pub struct EventLoop {
    epoll: Epoll,
    subs: Vec<SharedSubscriber>,
}

impl EventLoop {
    pub fn new() -> io::Result<Self> {
        Ok(EventLoop {
            epoll: Epoll::new()?,
            subs: Vec::new(),
        })
    }

    /// Registers an fd owned by the loop's owner; `wait` reports it as `Owner(token)`.
    pub fn add_owner_fd(&mut self, fd: RawFd, token: u32) -> io::Result<()> {
        EventOps {
            epoll: &self.epoll,
            sub: OWNER,
        }
        .add(fd, token, EventSet::IN)
    }

    pub fn add_subscriber(&mut self, s: SharedSubscriber) -> io::Result<()> {
        let sub = u32::try_from(self.subs.len()).map_err(|_| io::ErrorKind::OutOfMemory)?;
        let mut ops = EventOps {
            epoll: &self.epoll,
            sub,
        };
        s.lock().unwrap_or_else(|e| e.into_inner()).init(&mut ops)?;
        self.subs.push(s);
        Ok(())
    }

    /// Waits up to `timeout_ms` and dispatches subscriber events; returns owner tokens that
    /// fired, for the caller to act on.
    pub fn run_once(&mut self, timeout_ms: i32) -> io::Result<Vec<u32>> {
        let mut events = [EpollEvent::default(); 32];
        let n = match self.epoll.wait(timeout_ms, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        let mut owner = Vec::new();
        for ev in &events[..n] {
            let sub = (ev.data() >> 32) as u32;
            let token = ev.data() as u32;
            if sub == OWNER {
                owner.push(token);
                continue;
            }
            if let Some(s) = self.subs.get(sub as usize) {
                let mut ops = EventOps {
                    epoll: &self.epoll,
                    sub,
                };
                s.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .handle(token, ev.event_set(), &mut ops);
            }
        }
        Ok(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::io::AsRawFd;
    use vmm_sys_util::eventfd::EventFd;

    struct Counter {
        evt: EventFd,
        seen: Vec<u32>,
    }

    impl Subscriber for Counter {
        fn init(&mut self, ops: &mut EventOps) -> io::Result<()> {
            ops.add(self.evt.as_raw_fd(), 7, EventSet::IN)
        }
        fn handle(&mut self, token: u32, _: EventSet, ops: &mut EventOps) {
            self.evt.read().unwrap();
            self.seen.push(token);
            ops.remove(self.evt.as_raw_fd()).unwrap();
        }
    }

    #[test]
    fn dispatches_to_subscriber_and_owner() {
        let mut el = EventLoop::new().unwrap();
        let stop = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        el.add_owner_fd(stop.as_raw_fd(), 1).unwrap();
        let c = Arc::new(Mutex::new(Counter {
            evt: EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            seen: vec![],
        }));
        el.add_subscriber(c.clone()).unwrap();
        c.lock().unwrap().evt.write(1).unwrap();
        assert!(el.run_once(1000).unwrap().is_empty());
        assert_eq!(c.lock().unwrap().seen, vec![7]);
        // Removed by the handler: firing again is not dispatched.
        c.lock().unwrap().evt.write(1).unwrap();
        assert!(el.run_once(10).unwrap().is_empty());
        assert_eq!(c.lock().unwrap().seen, vec![7]);
        stop.write(1).unwrap();
        assert_eq!(el.run_once(1000).unwrap(), vec![1]);
    }
}
