//! How a VM run ends. Its own module because both the devices (the i8042 reset line) and the
//! vCPU threads report an end, and neither should depend on the other for it.

use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// How a VM run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest rebooted (i8042 reset, triple fault or KVM reset event): with
    /// `reboot=k panic=-1` this is also how a guest panic ends.
    Reset,
    /// The guest powered off (KVM shutdown event).
    PowerOff,
    /// `VmHandle::stop` was called.
    Stopped,
    /// The VMM had to stop the guest (e.g. an instruction the host cannot emulate).
    Error(String),
}

/// How the VM ended, first reporter wins; `evt` wakes the event loop.
pub struct ExitState {
    reason: Mutex<Option<ExitReason>>,
    pub evt: EventFd,
}

impl ExitState {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitState {
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    pub fn exit(&self, r: ExitReason) {
        let mut g = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if g.is_none() {
            *g = Some(r);
        }
        drop(g);
        let _ = self.evt.write(1);
    }

    pub fn reason(&self) -> Option<ExitReason> {
        self.reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}
