use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};

use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{Epoll, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::arch::boot::{create_memory, GuestMem};
use crate::devices::virtio::queue::testutil::DriverQueue;
use crate::devices::virtio::Interrupt;

const GUEST_PORT: u32 = 49152;
const RX_BUF: u64 = 0x10_0000;
const TX_BUF: u64 = 0x20_0000;

struct Guest {
    mem: GuestMem,
    rx: DriverQueue,
    tx: DriverQueue,
    rx_next: u16,
    rx_seen: u16,
    tx_next: u16,
    dev: Vsock,
    epoll: Epoll,
    _dir: tempfile::TempDir,
    uds: std::path::PathBuf,
}

impl Guest {
    fn new() -> Guest {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        let mem = create_memory(4 << 20).unwrap();
        let rx = DriverQueue::at(16, 0x1_0000);
        let tx = DriverQueue::at(16, 0x2_0000);
        let ev = DriverQueue::at(16, 0x3_0000);
        let mut dev = Vsock::new(3, uds.clone(), false).unwrap();
        let epoll = Epoll::new().unwrap();
        dev.init_events(&mut EventOps::new(&epoll, 0)).unwrap();
        dev.activate(ActiveQueues {
            mem: mem.clone(),
            queues: vec![rx.queue(), tx.queue(), ev.queue()],
            interrupt: Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
            acked_features: 0,
        })
        .unwrap();
        let mut g = Guest {
            mem,
            rx,
            tx,
            rx_next: 0,
            rx_seen: 0,
            tx_next: 0,
            dev,
            epoll,
            _dir: dir,
            uds,
        };
        for _ in 0..4 {
            g.post_rx();
        }
        g
    }

    /// Offers one 4 KiB rx buffer (header and data in two descriptors, as Linux 6.1 does).
    fn post_rx(&mut self) {
        let i = self.rx_next;
        self.rx_next += 1;
        let addr = RX_BUF + u64::from(i) * 0x2000;
        self.rx
            .desc(&self.mem, 2 * i, addr, HDR_LEN as u32, 2 | 1, 2 * i + 1);
        self.rx.desc(&self.mem, 2 * i + 1, addr + 0x100, 4096, 2, 0);
        self.rx.push(&self.mem, 2 * i);
    }

    fn send(&mut self, h: Hdr, payload: &[u8]) {
        let i = self.tx_next;
        self.tx_next += 1;
        let addr = TX_BUF + u64::from(i) * 0x2000;
        self.mem
            .write_slice(&h.to_bytes(), GuestAddress(addr))
            .unwrap();
        if payload.is_empty() {
            self.tx.desc(&self.mem, i, addr, HDR_LEN as u32, 0, 0);
        } else {
            self.mem
                .write_slice(payload, GuestAddress(addr + 0x100))
                .unwrap();
            // Header and payload in separate descriptors (chained via a second table slot).
            self.tx.desc(&self.mem, i, addr, HDR_LEN as u32, 1, i + 8);
            self.tx
                .desc(&self.mem, i + 8, addr + 0x100, payload.len() as u32, 0, 0);
        }
        self.tx.push(&self.mem, i);
        self.dev
            .process_queue(TXQ, &mut EventOps::new(&self.epoll, 0));
    }

    /// Next packet the device put in the rx queue, if any.
    fn recv(&mut self) -> Option<(Hdr, Vec<u8>)> {
        let (id, len, used_idx) = self.rx.used_elem(&self.mem, self.rx_seen);
        if used_idx <= self.rx_seen {
            return None;
        }
        self.rx_seen += 1;
        let addr = RX_BUF + u64::from(id / 2) * 0x2000;
        let mut hb = [0u8; HDR_LEN];
        self.mem.read_slice(&mut hb, GuestAddress(addr)).unwrap();
        let h = Hdr::from_bytes(&hb);
        let mut data = vec![0u8; len as usize - HDR_LEN];
        self.mem
            .read_slice(&mut data, GuestAddress(addr + 0x100))
            .unwrap();
        self.post_rx();
        Some((h, data))
    }

    fn hdr(&self, op: u16, dst_port: u32, len: u32) -> Hdr {
        Hdr {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: GUEST_PORT,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    fn event(&mut self, token: u32, ev: EventSet) {
        self.dev
            .handle_event(token, ev, &mut EventOps::new(&self.epoll, 0));
    }
}

#[test]
fn guest_connects_to_host_and_data_flows_both_ways() {
    let mut g = Guest::new();
    let host = UnixListener::bind(format!("{}_1234", g.uds.display())).unwrap();
    let h = g.hdr(OP_REQUEST, 1234, 0);
    g.send(h, &[]);
    let (mut peer, _) = host.accept().unwrap();
    let (resp, _) = g.recv().expect("a RESPONSE");
    assert_eq!(
        (resp.op, resp.src_port, resp.dst_port, resp.dst_cid),
        (OP_RESPONSE, 1234, GUEST_PORT, 3)
    );
    assert_eq!({ resp.buf_alloc }, BUF_ALLOC);

    let h = g.hdr(OP_RW, 1234, 5);
    g.send(h, b"hello");
    let mut got = [0u8; 5];
    peer.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"hello");

    peer.write_all(b"world").unwrap();
    let token = g.dev.conns[&(1234, GUEST_PORT)].token;
    g.event(token, EventSet::IN);
    let (rw, data) = g.recv().expect("an RW packet");
    assert_eq!({ rw.op }, OP_RW);
    assert_eq!(data, b"world");
    assert_eq!({ rw.fwd_cnt }, 5, "host forwarded 5 bytes");

    // Host closes: the guest is told with SHUTDOWN, then its RST ends the connection.
    drop(peer);
    g.event(token, EventSet::IN | EventSet::HANG_UP);
    let (sd, _) = g.recv().expect("a SHUTDOWN");
    assert_eq!({ sd.op }, OP_SHUTDOWN);
    let h = g.hdr(OP_RST, 1234, 0);
    g.send(h, &[]);
    assert!(g.dev.conns.is_empty());
}

#[test]
fn host_connects_to_guest_port() {
    let mut g = Guest::new();
    let mut client = UnixStream::connect(&g.uds).unwrap();
    g.event(TOKEN_LISTENER, EventSet::IN);
    client.write_all(b"CONNECT 5000\n").unwrap();
    let token = *g.dev.pending.keys().next().expect("pending client");
    g.event(token, EventSet::IN);
    let (req, _) = g.recv().expect("a REQUEST to the guest");
    assert_eq!(
        (req.op, req.dst_port, req.src_port, req.dst_cid),
        (OP_REQUEST, 5000, HOST_CID_PORT_START, 3)
    );
    // The guest accepts.
    let mut h = g.hdr(OP_RESPONSE, req.src_port, 0);
    h.src_port = 5000;
    g.send(h, &[]);
    let mut line = [0u8; 14];
    client.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"OK 1073741824\n");
    // Data from the guest reaches the client.
    let mut h = g.hdr(OP_RW, req.src_port, 3);
    h.src_port = 5000;
    g.send(h, b"abc");
    let mut got = [0u8; 3];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"abc");
}

const HOST_CID_PORT_START: u32 = HOST_PORT_START;

#[test]
fn refused_and_malformed_packets() {
    let mut g = Guest::new();
    // Nobody listens on port 9: RST.
    let h = g.hdr(OP_REQUEST, 9, 0);
    g.send(h, &[]);
    let (rst, _) = g.recv().unwrap();
    assert_eq!((rst.op, rst.src_port), (OP_RST, 9));
    // Wrong source CID (spoofing another VM): dropped without a reply.
    let mut h = g.hdr(OP_REQUEST, 9, 0);
    h.src_cid = 7;
    g.send(h, &[]);
    assert!(g.recv().is_none());
    // Length field larger than the payload: dropped, no panic.
    let h = g.hdr(OP_RW, 9, 60_000);
    g.send(h, b"xy");
    assert!(g.recv().is_none());
    // RW on an unknown connection: RST.
    let h = g.hdr(OP_RW, 10, 2);
    g.send(h, b"xy");
    assert_eq!({ g.recv().unwrap().0.op }, OP_RST);
    // Datagram type: RST.
    let mut h = g.hdr(OP_REQUEST, 11, 0);
    h.type_ = 2;
    g.send(h, &[]);
    assert_eq!({ g.recv().unwrap().0.op }, OP_RST);
}

#[test]
fn credit_limits_what_reaches_the_guest() {
    let mut g = Guest::new();
    let host = UnixListener::bind(format!("{}_77", g.uds.display())).unwrap();
    let mut h = g.hdr(OP_REQUEST, 77, 0);
    h.buf_alloc = 10; // the guest only has room for 10 bytes
    g.send(h, &[]);
    let (mut peer, _) = host.accept().unwrap();
    g.recv().unwrap();
    peer.write_all(&[7u8; 100]).unwrap();
    let token = g.dev.conns[&(77, GUEST_PORT)].token;
    g.event(token, EventSet::IN);
    let (rw, data) = g.recv().unwrap();
    assert_eq!((rw.op, data.len()), (OP_RW, 10));
    assert!(g.recv().is_none(), "no more until the guest grants credit");
    assert!(
        g.dev.conns[&(77, GUEST_PORT)].registered.is_none(),
        "socket left out of epoll while there is no credit"
    );
    let mut h = g.hdr(OP_CREDIT_UPDATE, 77, 0);
    h.buf_alloc = 10;
    h.fwd_cnt = 10;
    g.send(h, &[]);
    let (rw, data) = g.recv().unwrap();
    assert_eq!((rw.op, data.len()), (OP_RW, 10));
}

#[test]
fn stale_socket_file_is_replaced_and_bad_cid_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s");
    let l = UnixListener::bind(&p).unwrap();
    drop(l);
    assert!(Vsock::new(3, p.clone(), false).is_ok());
    assert!(Vsock::new(2, dir.path().join("t"), false).is_err());
    let f = dir.path().join("regular");
    std::fs::write(&f, b"x").unwrap();
    assert!(
        Vsock::new(3, f, false).is_err(),
        "a regular file is not clobbered"
    );
}

#[test]
fn restore_sends_one_transport_reset_event() {
    let dir = tempfile::tempdir().unwrap();
    let mem = create_memory(4 << 20).unwrap();
    let rx = DriverQueue::at(16, 0x1_0000);
    let tx = DriverQueue::at(16, 0x2_0000);
    let mut ev = DriverQueue::at(16, 0x3_0000);
    let mut dev = Vsock::new(3, dir.path().join("v.sock"), false).unwrap();
    let irq = Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
    dev.activate(ActiveQueues {
        mem: mem.clone(),
        queues: vec![rx.queue(), tx.queue(), ev.queue()],
        interrupt: irq.clone(),
        acked_features: 0,
    })
    .unwrap();
    // Two event buffers, pre-filled with junk.
    for i in 0..2u16 {
        let addr = 0x40_0000 - 0x1000 * u64::from(i + 1);
        mem.write_slice(&[0xff; 8], GuestAddress(addr)).unwrap();
        ev.desc(&mem, i, addr, 8, 2, 0);
        ev.push(&mem, i);
    }
    dev.after_restore();
    let (id, len, used_idx) = ev.used_elem(&mem, 0);
    assert_eq!((id, len, used_idx), (0, 4, 1), "one event, 4 bytes");
    let mut b = [0u8; 8];
    mem.read_slice(&mut b, GuestAddress(0x40_0000 - 0x1000))
        .unwrap();
    assert_eq!(
        b,
        [0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
        "id 0 = TRANSPORT_RESET"
    );
    assert_eq!(irq.irqfd.read().unwrap(), 1);
}
