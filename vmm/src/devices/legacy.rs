//! PC legacy devices on port I/O: the COM1 16550 UART (guest console) and the i8042 keyboard
//! controller, whose only job here is the reset line (`reboot=k`).

use std::io::{self, Write};
use std::sync::Arc;

use vm_superio::{I8042Device, Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::exit::{ExitReason, ExitState};

pub const COM1_BASE: u16 = 0x3f8;
pub const COM_LEN: u16 = 8;
pub const I8042_BASE: u16 = 0x60;
pub const I8042_LEN: u16 = 5;

/// Raises an interrupt line through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// i8042 reset line: ends the VM with `ExitReason::Reset`.
pub struct ResetTrigger(pub Arc<ExitState>);

impl Trigger for ResetTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.exit(ExitReason::Reset);
        Ok(())
    }
}

pub type SerialDevice = Serial<IrqTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

/// The port-I/O devices. Accesses to other ports read as 0xff (nothing there) and writes are
/// ignored, like an empty ISA bus.
pub struct PioBus {
    pub serial: SerialDevice,
    pub i8042: I8042Device<ResetTrigger>,
}

impl PioBus {
    pub fn read(&mut self, port: u16, data: &mut [u8]) {
        if data.len() == 1 {
            if (COM1_BASE..COM1_BASE + COM_LEN).contains(&port) {
                data[0] = self.serial.read((port - COM1_BASE) as u8);
                return;
            }
            if (I8042_BASE..I8042_BASE + I8042_LEN).contains(&port) {
                data[0] = self.i8042.read((port - I8042_BASE) as u8);
                return;
            }
        }
        data.fill(0xff);
    }

    pub fn write(&mut self, port: u16, data: &[u8]) {
        if data.len() != 1 {
            return;
        }
        if (COM1_BASE..COM1_BASE + COM_LEN).contains(&port) {
            // Errors only come from the output writer (e.g. a closed pipe): the guest must not
            // notice, so they are dropped.
            let _ = self.serial.write((port - COM1_BASE) as u8, data[0]);
        } else if (I8042_BASE..I8042_BASE + I8042_LEN).contains(&port) {
            let _ = self.i8042.write((port - I8042_BASE) as u8, data[0]);
        }
    }
}

/// Feeds a host fd (terminal, pipe) into the UART's receive FIFO from the event loop. Input
/// that finds the FIFO full is dropped, as a real UART overruns.
pub struct SerialInput {
    fd: std::fs::File,
    pio: Arc<std::sync::Mutex<PioBus>>,
}

impl SerialInput {
    pub fn new(fd: std::os::fd::OwnedFd, pio: Arc<std::sync::Mutex<PioBus>>) -> Self {
        SerialInput {
            fd: std::fs::File::from(fd),
            pio,
        }
    }
}

impl crate::event::Subscriber for SerialInput {
    fn init(&mut self, ops: &mut crate::event::EventOps) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        ops.add(self.fd.as_raw_fd(), 0, vmm_sys_util::epoll::EventSet::IN)
    }

    fn handle(
        &mut self,
        _token: u32,
        _events: vmm_sys_util::epoll::EventSet,
        ops: &mut crate::event::EventOps,
    ) {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 64];
        match self.fd.read(&mut buf) {
            Ok(0) | Err(_) => {
                // EOF or a dead fd: stop watching it (level-triggered epoll would spin).
                let _ = ops.remove(self.fd.as_raw_fd());
            }
            Ok(n) => {
                let mut pio = self.pio.lock().unwrap_or_else(|e| e.into_inner());
                let room = pio.serial.fifo_capacity();
                let _ = pio.serial.enqueue_raw_bytes(&buf[..n.min(room)]);
            }
        }
    }
}

/// Copies serial output to two writers (console and log file).
pub struct Tee<A: Write, B: Write>(pub A, pub B);

impl<A: Write, B: Write> Write for Tee<A, B> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write_all(buf)?;
        self.1.write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()?;
        self.1.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn bus() -> (PioBus, Buf, Arc<ExitState>) {
        let out = Buf::default();
        let exit = Arc::new(ExitState::new().unwrap());
        let bus = PioBus {
            serial: Serial::new(
                IrqTrigger(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
                Box::new(out.clone()),
            ),
            i8042: I8042Device::new(ResetTrigger(exit.clone())),
        };
        (bus, out, exit)
    }

    #[test]
    fn serial_output_and_thr_empty() {
        let (mut b, out, _) = bus();
        for c in b"hi\n" {
            b.write(COM1_BASE, &[*c]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        // Line status register: transmitter holding register empty (bit 5) and idle (bit 6),
        // or the kernel's 8250 driver spins waiting.
        let mut lsr = [0u8];
        b.read(COM1_BASE + 5, &mut lsr);
        assert_eq!(lsr[0] & 0x60, 0x60);
    }

    #[test]
    fn i8042_reset_ends_the_vm() {
        let (mut b, _, exit) = bus();
        assert!(exit.reason().is_none());
        b.write(I8042_BASE + 4, &[0xfe]);
        assert_eq!(exit.reason(), Some(ExitReason::Reset));
    }

    #[test]
    fn serial_input_reaches_the_receive_buffer() {
        use crate::event::{EventOps, Subscriber};
        use std::os::fd::{FromRawFd, OwnedFd};
        let (b, _, _) = bus();
        let pio = Arc::new(Mutex::new(b));
        let mut fds = [0; 2];
        // SAFETY: fds is a valid 2-element array for pipe(2).
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: pipe(2) just returned these fds and nothing else owns them.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut input = SerialInput::new(r, pio.clone());
        let epoll = vmm_sys_util::epoll::Epoll::new().unwrap();
        let mut ops = EventOps::new(&epoll, 0);
        input.init(&mut ops).unwrap();
        std::fs::File::from(w).write_all(b"ls\n").unwrap();
        input.handle(0, vmm_sys_util::epoll::EventSet::IN, &mut ops);
        let mut p = pio.lock().unwrap();
        let mut got = Vec::new();
        let mut lsr = [0u8];
        loop {
            p.read(COM1_BASE + 5, &mut lsr);
            if lsr[0] & 1 == 0 {
                break;
            }
            let mut c = [0u8];
            p.read(COM1_BASE, &mut c);
            got.push(c[0]);
        }
        assert_eq!(got, b"ls\n");
    }

    #[test]
    fn unknown_ports_read_all_ones() {
        let (mut b, _, _) = bus();
        let mut d = [0u8; 2];
        b.read(0x2f8, &mut d);
        assert_eq!(d, [0xff, 0xff]);
        b.write(0x80, &[1]);
    }
}
