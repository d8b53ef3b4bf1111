use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::num::Wrapping;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use crate::error::{bail, Context, Result};
use virtio_queue::{QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;

use super::packet::*;
use crate::devices::virtio::queue::{bufs_len, collect_chain, gather, scatter};
use crate::devices::virtio::{
    read_config_bytes, ActiveQueues, VirtioDevice, DEVICE_TOKEN_BASE, TYPE_VSOCK,
};
use crate::event::EventOps;

const RXQ: usize = 0;
const TXQ: usize = 1;
const EVQ: usize = 2;
/// virtio_vsock_event id: the transport was reset (e.g. the VM was restored elsewhere).
const EVENT_TRANSPORT_RESET: u32 = 0;
const QUEUE_SIZES: &[u16] = &[256, 256, 256];
/// Receive buffer we advertise per connection (guest -> host bytes not yet written out).
const BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload moved in one packet.
const MAX_PKT: usize = 64 * 1024;
/// Host ports for host-initiated connections start here.
const HOST_PORT_START: u32 = 1 << 30;
const TOKEN_LISTENER: u32 = DEVICE_TOKEN_BASE;
/// Longest "CONNECT <port>\n" line accepted from a host client.
const MAX_CONNECT_LINE: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Host-initiated: REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

struct Conn {
    stream: UnixStream,
    token: u32,
    /// Host-side port (what the guest sees as the remote port).
    local_port: u32,
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Bytes received from the guest and written to the Unix socket.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest data not yet written to the socket (bounded by BUF_ALLOC).
    tx_buf: VecDeque<u8>,
    /// The guest will send no more; shut down our write side once tx_buf drains.
    peer_shut_send: bool,
    /// The host side reached EOF (SHUTDOWN sent to the guest).
    host_eof: bool,
    /// Socket has (or may have) data to read.
    readable: bool,
    /// Current epoll registration (None = not registered).
    registered: Option<EventSet>,
}

impl Conn {
    fn peer_credit(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }
}

/// A host client that connected to the listener and has not finished its CONNECT line.
struct Pending {
    stream: UnixStream,
    line: Vec<u8>,
}

type Key = (u32, u32); // (local_port, peer_port)

pub struct Vsock {
    cid: u64,
    config: [u8; 8],
    uds_path: PathBuf,
    listener: UnixListener,
    active: Option<ActiveQueues>,
    conns: HashMap<Key, Conn>,
    by_token: HashMap<u32, Key>,
    pending: HashMap<u32, Pending>,
    /// Control packets (no payload) waiting for an rx buffer.
    ctrl: VecDeque<Hdr>,
    /// No rx buffer was available last time we looked.
    rx_starved: bool,
    next_token: u32,
    next_host_port: u32,
    said_not_ready: bool,
    debug: bool,
}

fn is_would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Vsock {
    /// Binds the host listener at `uds_path` (a stale socket file there is replaced).
    pub fn new(guest_cid: u64, uds_path: PathBuf, debug: bool) -> Result<Self> {
        if guest_cid <= 2 || guest_cid >= u64::from(u32::MAX) {
            bail!(
                Config,
                "vsock guest CID {guest_cid} is reserved or out of range (use 3 or more)"
            );
        }
        if let Ok(md) = std::fs::symlink_metadata(&uds_path) {
            if md.file_type().is_socket() {
                let _ = std::fs::remove_file(&uds_path);
            }
        }
        let listener = UnixListener::bind(&uds_path)
            .with_context(|| format!("binding vsock socket {}", uds_path.display()))?;
        listener.set_nonblocking(true).context("vsock listener")?;
        Ok(Vsock {
            cid: guest_cid,
            config: guest_cid.to_le_bytes(),
            uds_path,
            listener,
            active: None,
            conns: HashMap::new(),
            by_token: HashMap::new(),
            pending: HashMap::new(),
            ctrl: VecDeque::new(),
            rx_starved: false,
            next_token: TOKEN_LISTENER + 1,
            next_host_port: HOST_PORT_START,
            said_not_ready: false,
            debug,
        })
    }

    fn log(&self, m: impl FnOnce() -> String) {
        if self.debug {
            eprintln!("rkt-vmm: vsock: {}", m());
        }
    }

    fn alloc_token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = self.next_token.wrapping_add(1).max(TOKEN_LISTENER + 1);
            if !self.by_token.contains_key(&t) && !self.pending.contains_key(&t) {
                return t;
            }
        }
    }

    fn reply(&self, local_port: u32, peer_port: u32, op: u16, flags: u32) -> Hdr {
        Hdr {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: local_port,
            dst_port: peer_port,
            len: 0,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: 0,
            fwd_cnt: 0,
        }
    }

    fn remove_conn(&mut self, key: Key, ops: &mut EventOps) {
        if let Some(c) = self.conns.remove(&key) {
            if c.registered.is_some() {
                let _ = ops.remove(c.stream.as_raw_fd());
            }
            self.by_token.remove(&c.token);
        }
    }

    /// Resets a connection towards the guest and forgets it.
    fn reset_conn(&mut self, key: Key, ops: &mut EventOps) {
        let h = self.reply(key.0, key.1, OP_RST, 0);
        self.ctrl.push_back(h);
        self.remove_conn(key, ops);
    }

    /// Handles one packet the guest sent.
    fn handle_tx_packet(&mut self, h: Hdr, payload: &[u8], ops: &mut EventOps) {
        let (src_cid, dst_cid, op, type_) = (h.src_cid, h.dst_cid, h.op, h.type_);
        if src_cid != self.cid || dst_cid != HOST_CID {
            self.log(|| format!("dropping packet {src_cid}->{dst_cid}"));
            return;
        }
        let key = (h.dst_port, h.src_port);
        if type_ != TYPE_STREAM {
            if op != OP_RST {
                self.ctrl.push_back(self.reply(key.0, key.1, OP_RST, 0));
            }
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = Wrapping(h.fwd_cnt);
        }
        match op {
            OP_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.reset_conn(key, ops);
                    return;
                }
                let path = format!("{}_{}", self.uds_path.display(), key.0);
                let stream = match UnixStream::connect(&path) {
                    Ok(s) if s.set_nonblocking(true).is_ok() => s,
                    _ => {
                        self.log(|| format!("guest connect to port {} ({path}) refused", key.0));
                        self.ctrl.push_back(self.reply(key.0, key.1, OP_RST, 0));
                        return;
                    }
                };
                let token = self.alloc_token();
                self.conns.insert(
                    key,
                    Conn {
                        stream,
                        token,
                        local_port: key.0,
                        state: State::Established,
                        peer_buf_alloc: h.buf_alloc,
                        peer_fwd_cnt: Wrapping(h.fwd_cnt),
                        rx_cnt: Wrapping(0),
                        fwd_cnt: Wrapping(0),
                        last_fwd_cnt_sent: Wrapping(0),
                        tx_buf: VecDeque::new(),
                        peer_shut_send: false,
                        host_eof: false,
                        readable: true,
                        registered: None,
                    },
                );
                self.by_token.insert(token, key);
                self.ctrl
                    .push_back(self.reply(key.0, key.1, OP_RESPONSE, 0));
            }
            OP_RESPONSE => match self.conns.get_mut(&key) {
                Some(c) if c.state == State::Connecting => {
                    let ok = format!("OK {}\n", c.local_port);
                    // A few bytes into a fresh socket buffer: cannot block in practice.
                    if c.stream.write_all(ok.as_bytes()).is_err() {
                        self.reset_conn(key, ops);
                    } else {
                        c.state = State::Established;
                        c.readable = true;
                    }
                }
                _ => self.reset_conn(key, ops),
            },
            OP_RW => {
                let Some(c) = self.conns.get_mut(&key) else {
                    self.ctrl.push_back(self.reply(key.0, key.1, OP_RST, 0));
                    return;
                };
                if c.state != State::Established || c.peer_shut_send {
                    self.reset_conn(key, ops);
                    return;
                }
                if c.tx_buf.len() + payload.len() > BUF_ALLOC as usize {
                    self.log(|| "guest overran its send credit; resetting".into());
                    self.reset_conn(key, ops);
                    return;
                }
                let mut written = 0;
                if c.tx_buf.is_empty() {
                    match c.stream.write(payload) {
                        Ok(n) => written = n,
                        Err(e) if is_would_block(&e) => {}
                        Err(_) => {
                            self.reset_conn(key, ops);
                            return;
                        }
                    }
                }
                c.fwd_cnt += Wrapping(written as u32);
                c.tx_buf.extend(&payload[written..]);
                self.maybe_credit_update(key);
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.ctrl
                        .push_back(self.reply(key.0, key.1, OP_CREDIT_UPDATE, 0));
                } else {
                    self.ctrl.push_back(self.reply(key.0, key.1, OP_RST, 0));
                }
            }
            OP_SHUTDOWN => {
                let flags = h.flags;
                if flags & (SHUTDOWN_RCV | SHUTDOWN_SEND) == SHUTDOWN_RCV | SHUTDOWN_SEND {
                    // Full close: acknowledge with RST, as the Linux driver expects.
                    if self.conns.contains_key(&key) {
                        self.reset_conn(key, ops);
                    }
                } else if let Some(c) = self.conns.get_mut(&key) {
                    if flags & SHUTDOWN_SEND != 0 {
                        c.peer_shut_send = true;
                        if c.tx_buf.is_empty() {
                            let _ = c.stream.shutdown(Shutdown::Write);
                        }
                    }
                    if flags & SHUTDOWN_RCV != 0 {
                        c.host_eof = true;
                    }
                }
            }
            OP_RST => self.remove_conn(key, ops),
            _ => {
                if self.conns.contains_key(&key) {
                    self.reset_conn(key, ops);
                } else {
                    self.ctrl.push_back(self.reply(key.0, key.1, OP_RST, 0));
                }
            }
        }
    }

    /// Tells the guest about freed buffer space once a quarter of it has been forwarded.
    fn maybe_credit_update(&mut self, key: Key) {
        if let Some(c) = self.conns.get(&key) {
            if (c.fwd_cnt - c.last_fwd_cnt_sent).0 >= BUF_ALLOC / 4 {
                self.ctrl
                    .push_back(self.reply(key.0, key.1, OP_CREDIT_UPDATE, 0));
            }
        }
    }

    fn process_tx(&mut self, ops: &mut EventOps) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mut packets = Vec::new();
        // tx buffers are only read: every chain goes back with length 0.
        a.drain_queue(TXQ, |mem, chain| {
            match collect_chain(chain, mem, (HDR_LEN + MAX_PKT) as u64) {
                Ok(bufs) if bufs_len(&bufs, false) >= HDR_LEN => {
                    let mut hb = [0u8; HDR_LEN];
                    gather(mem, &bufs, 0, &mut hb);
                    let h = Hdr::from_bytes(&hb);
                    let len = h.len as usize;
                    if len <= bufs_len(&bufs, false) - HDR_LEN && len <= MAX_PKT {
                        let mut payload = vec![0u8; len];
                        gather(mem, &bufs, HDR_LEN, &mut payload);
                        packets.push((h, payload));
                    }
                }
                _ => {}
            }
            0
        });
        for (h, payload) in packets {
            self.handle_tx_packet(h, &payload, ops);
        }
    }

    /// Fills rx buffers: control packets first, then data from readable connections.
    fn process_rx(&mut self, ops: &mut EventOps) {
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = a.mem.clone();
        let mut used = false;
        let mut to_reset = Vec::new();
        let mut budget = a.queues[RXQ].size() as usize * 2;
        loop {
            if budget == 0 {
                break;
            }
            budget -= 1;
            // Pick what to send before taking a buffer.
            let data_key = if self.ctrl.is_empty() {
                let k = self
                    .conns
                    .iter()
                    .find(|(_, c)| {
                        c.state == State::Established
                            && c.readable
                            && !c.host_eof
                            && c.peer_credit() > 0
                    })
                    .map(|(k, _)| *k);
                match k {
                    Some(k) => Some(k),
                    None => break,
                }
            } else {
                None
            };
            let q = &mut a.queues[RXQ];
            let Some(chain) = q.pop_descriptor_chain(&mem) else {
                self.rx_starved = true;
                break;
            };
            let head = chain.head_index();
            let bufs = match collect_chain(chain, &mem, u64::MAX) {
                Ok(b) if bufs_len(&b, true) >= HDR_LEN => b,
                _ => {
                    used |= q.add_used(&mem, head, 0).is_ok();
                    continue;
                }
            };
            let room = bufs_len(&bufs, true) - HDR_LEN;
            let (mut h, payload) = match data_key {
                None => (
                    self.ctrl.pop_front().expect("checked non-empty"),
                    Vec::new(),
                ),
                Some(key) => {
                    let c = self.conns.get_mut(&key).expect("picked above");
                    let max = room.min(MAX_PKT).min(c.peer_credit() as usize);
                    let mut data = vec![0u8; max];
                    match c.stream.read(&mut data) {
                        Ok(0) => {
                            c.host_eof = true;
                            let mut h = Hdr {
                                src_cid: HOST_CID,
                                dst_cid: self.cid,
                                src_port: key.0,
                                dst_port: key.1,
                                type_: TYPE_STREAM,
                                op: OP_SHUTDOWN,
                                flags: SHUTDOWN_RCV | SHUTDOWN_SEND,
                                ..Default::default()
                            };
                            h.len = 0;
                            (h, Vec::new())
                        }
                        Ok(n) => {
                            data.truncate(n);
                            let h = Hdr {
                                src_cid: HOST_CID,
                                dst_cid: self.cid,
                                src_port: key.0,
                                dst_port: key.1,
                                len: n as u32,
                                type_: TYPE_STREAM,
                                op: OP_RW,
                                ..Default::default()
                            };
                            (h, data)
                        }
                        Err(e) if is_would_block(&e) => {
                            c.readable = false;
                            q.go_to_previous_position();
                            continue;
                        }
                        Err(_) => {
                            to_reset.push(key);
                            q.go_to_previous_position();
                            continue;
                        }
                    }
                }
            };
            // Every packet carries the connection's current credit.
            let key = (h.src_port, h.dst_port);
            if let Some(c) = self.conns.get_mut(&key) {
                h.buf_alloc = BUF_ALLOC;
                h.fwd_cnt = c.fwd_cnt.0;
                c.last_fwd_cnt_sent = c.fwd_cnt;
                c.rx_cnt += Wrapping(payload.len() as u32);
            }
            let n =
                scatter(&mem, &bufs, 0, &h.to_bytes()) + scatter(&mem, &bufs, HDR_LEN, &payload);
            used |= q.add_used(&mem, head, n as u32).is_ok();
        }
        if used {
            let _ = a.interrupt.signal_used_queue();
        }
        for k in to_reset {
            self.reset_conn(k, ops);
        }
        if !self.ctrl.is_empty() && !self.rx_starved && budget > 0 {
            // reset_conn queued RSTs after the loop: send them now.
            self.process_rx(ops);
        }
    }

    /// Writes buffered guest data out to a connection's socket.
    fn flush_tx(&mut self, key: Key, ops: &mut EventOps) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        while !c.tx_buf.is_empty() {
            let (a, _) = c.tx_buf.as_slices();
            match c.stream.write(a) {
                Ok(0) => break,
                Ok(n) => {
                    c.tx_buf.drain(..n);
                    c.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if is_would_block(&e) => break,
                Err(_) => {
                    self.reset_conn(key, ops);
                    return;
                }
            }
        }
        if c.tx_buf.is_empty() && c.peer_shut_send {
            let _ = c.stream.shutdown(Shutdown::Write);
        }
        self.maybe_credit_update(key);
    }

    /// Brings every connection's epoll registration in line with what it can do now. Level-
    /// triggered epoll would spin on a readable socket we cannot drain (no credit or no rx
    /// buffers), so such sockets are taken out of the set until that changes.
    fn update_interest(&mut self, ops: &mut EventOps) {
        let starved = self.rx_starved;
        for c in self.conns.values_mut() {
            let mut want = EventSet::empty();
            if c.state == State::Established && !c.host_eof && c.peer_credit() > 0 && !starved {
                want |= EventSet::IN;
            }
            if !c.tx_buf.is_empty() {
                want |= EventSet::OUT;
            }
            let fd = c.stream.as_raw_fd();
            let res = match (c.registered, want.is_empty()) {
                (None, true) => Ok(()),
                (None, false) => ops.add(fd, c.token, want),
                (Some(_), true) => ops.remove(fd),
                (Some(old), false) if old == want => Ok(()),
                (Some(_), false) => ops.modify(fd, c.token, want),
            };
            if res.is_ok() {
                c.registered = if want.is_empty() { None } else { Some(want) };
            }
        }
    }

    fn accept_clients(&mut self, ops: &mut EventOps) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = self.alloc_token();
                    if ops.add(stream.as_raw_fd(), token, EventSet::IN).is_ok() {
                        self.pending.insert(
                            token,
                            Pending {
                                stream,
                                line: Vec::new(),
                            },
                        );
                    }
                }
                Err(e) if is_would_block(&e) => return,
                Err(_) => return,
            }
        }
    }

    /// Reads a host client's `CONNECT <port>\n` and starts the guest connection.
    fn handle_pending(&mut self, token: u32, ops: &mut EventOps) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let done = loop {
            // Byte by byte: nothing after the newline may be consumed (it is stream data).
            match p.stream.read(&mut buf[..1]) {
                Ok(0) => break Err(()),
                Ok(_) => {
                    if buf[0] == b'\n' {
                        break Ok(());
                    }
                    p.line.push(buf[0]);
                    if p.line.len() >= MAX_CONNECT_LINE {
                        break Err(());
                    }
                }
                Err(e) if is_would_block(&e) => return,
                Err(_) => break Err(()),
            }
        };
        let p = self.pending.remove(&token).expect("present");
        let _ = ops.remove(p.stream.as_raw_fd());
        let port = std::str::from_utf8(&p.line)
            .ok()
            .and_then(|l| l.trim().strip_prefix("CONNECT "))
            .and_then(|n| n.trim().parse::<u32>().ok());
        let (Ok(()), Some(peer_port)) = (done, port) else {
            return;
        };
        if self.active.is_none() {
            // Clients retry until the guest is up: say it once, not once per try.
            if !self.said_not_ready {
                self.said_not_ready = true;
                self.log(|| "host connect before the guest driver is up; refused".into());
            }
            return;
        }
        let mut local_port = self.next_host_port;
        while self.conns.contains_key(&(local_port, peer_port)) {
            local_port = local_port.wrapping_add(1).max(HOST_PORT_START);
        }
        self.next_host_port = local_port.wrapping_add(1).max(HOST_PORT_START);
        let key = (local_port, peer_port);
        self.conns.insert(
            key,
            Conn {
                stream: p.stream,
                token,
                local_port,
                state: State::Connecting,
                peer_buf_alloc: 0,
                peer_fwd_cnt: Wrapping(0),
                rx_cnt: Wrapping(0),
                fwd_cnt: Wrapping(0),
                last_fwd_cnt_sent: Wrapping(0),
                tx_buf: VecDeque::new(),
                peer_shut_send: false,
                host_eof: false,
                readable: false,
                registered: None,
            },
        );
        self.by_token.insert(token, key);
        self.ctrl
            .push_back(self.reply(local_port, peer_port, OP_REQUEST, 0));
    }

    fn after_event(&mut self, ops: &mut EventOps) {
        self.process_rx(ops);
        self.update_interest(ops);
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
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
        if active.queues.len() != 3 || !active.queues[RXQ].ready() || !active.queues[TXQ].ready() {
            anyhow::bail!("virtio-vsock needs its rx and tx queues");
        }
        self.active = Some(active);
        self.rx_starved = false;
        Ok(())
    }

    fn active_queues(&self) -> Option<&ActiveQueues> {
        self.active.as_ref()
    }

    fn after_restore(&mut self) {
        // The guest's connections belonged to another VMM: a TRANSPORT_RESET event makes the
        // driver reset them and re-read the CID (listening sockets survive).
        let Some(a) = self.active.as_mut() else {
            return;
        };
        let mem = a.mem.clone();
        let Some(q) = a.queues.get_mut(EVQ) else {
            return;
        };
        let Some(chain) = q.pop_descriptor_chain(&mem) else {
            if self.debug {
                eprintln!("rkt-vmm: vsock: no event buffer for the transport reset");
            }
            return;
        };
        let head = chain.head_index();
        let n = match collect_chain(chain, &mem, 64) {
            Ok(bufs) => scatter(&mem, &bufs, 0, &EVENT_TRANSPORT_RESET.to_le_bytes()),
            Err(_) => 0,
        };
        if q.add_used(&mem, head, n as u32).is_ok() {
            let _ = a.interrupt.signal_used_queue();
        }
    }

    fn reset(&mut self) {
        // Dropping the streams closes them, which also takes them out of the epoll set.
        self.active = None;
        self.conns.clear();
        self.by_token.clear();
        self.ctrl.clear();
    }

    fn process_queue(&mut self, index: usize, ops: &mut EventOps) {
        match index {
            TXQ => self.process_tx(ops),
            RXQ => self.rx_starved = false,
            _ => return, // event queue: nothing to report
        }
        self.after_event(ops);
    }

    fn init_events(&mut self, ops: &mut EventOps) -> io::Result<()> {
        ops.add(self.listener.as_raw_fd(), TOKEN_LISTENER, EventSet::IN)
    }

    fn handle_event(&mut self, token: u32, events: EventSet, ops: &mut EventOps) {
        if token == TOKEN_LISTENER {
            self.accept_clients(ops);
            return;
        }
        if self.pending.contains_key(&token) {
            self.handle_pending(token, ops);
            self.after_event(ops);
            return;
        }
        let Some(&key) = self.by_token.get(&token) else {
            return;
        };
        if events.contains(EventSet::OUT) {
            self.flush_tx(key, ops);
        }
        if let Some(c) = self.conns.get_mut(&key) {
            if events.intersects(EventSet::IN | EventSet::HANG_UP | EventSet::READ_HANG_UP) {
                c.readable = true;
            }
            if events.contains(EventSet::ERROR) {
                self.reset_conn(key, ops);
            }
        }
        self.after_event(ops);
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
