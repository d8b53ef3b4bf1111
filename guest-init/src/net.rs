//! Network interfaces for stage1 kvm, over rtnetlink and a few ioctls (no netlink crate: the
//! guest init is a small static binary and needs five message types).
//!
//! Host side (`engine/src/net/kvm.rs`, run from a thread inside the pod's network namespace):
//! [`read_interface`] copies what the CNI plugins configured on an interface (MAC, MTU,
//! addresses, routes), and [`redirect`] joins the VMM's tap to that interface with tc ingress
//! redirects both ways (Kata's "tcfilter" model). Guest side: [`configure`] gives the guest's
//! card the same MAC, MTU, addresses and routes before any app starts.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use rkt_stage2::{IfAddress, NetInterface, Route};

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;
const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const RTM_NEWTFILTER: u16 = 44;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const IFA_F_NOPREFIXROUTE: u32 = 0x200;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RTN_UNICAST: u8 = 1;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_U32_SEL: u16 = 5;
const TCA_U32_ACT: u16 = 7;
const TCA_ACT_KIND: u16 = 1;
const TCA_ACT_OPTIONS: u16 = 2;
const TCA_MIRRED_PARMS: u16 = 2;
const TC_H_INGRESS: u32 = 0xffff_fff1;
const INGRESS_HANDLE: u32 = 0xffff_0000;
const TC_U32_TERMINAL: u8 = 1;
const TC_ACT_STOLEN: i32 = 4;
const TCA_EGRESS_REDIR: i32 = 1;
const ETH_P_ALL: u16 = 3;

/// An rtnetlink socket in the calling thread's network namespace.
struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

/// A message being built: header, fixed part, attributes (nested ones patched on close).
struct Msg {
    buf: Vec<u8>,
    open: Vec<usize>,
}

impl Msg {
    fn new(ty: u16, flags: u16, fixed: &[u8]) -> Msg {
        let mut buf = vec![0u8; 16];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(fixed);
        pad(&mut buf);
        Msg {
            buf,
            open: Vec::new(),
        }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        pad(&mut self.buf);
        self
    }

    fn begin(&mut self, ty: u16) -> &mut Self {
        self.open.push(self.buf.len());
        self.buf.extend_from_slice(&[0, 0]);
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self
    }

    fn end(&mut self) -> &mut Self {
        let at = self.open.pop().expect("end() without begin()");
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
}

fn pad(buf: &mut Vec<u8>) {
    buf.resize(buf.len().div_ceil(4) * 4, 0);
}

/// Attributes of a message body: (type without flags, payload). Stops at anything malformed.
fn attrs(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[(len.div_ceil(4) * 4).min(b.len())..];
    }
    out
}

fn ip_of(family: u8, b: &[u8]) -> Option<IpAddr> {
    match (i32::from(family), b.len()) {
        (libc::AF_INET, 4) => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        (libc::AF_INET6, 16) => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

fn ip_bytes(a: &IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn family(a: &IpAddr) -> u8 {
    match a {
        IpAddr::V4(_) => libc::AF_INET as u8,
        IpAddr::V6(_) => libc::AF_INET6 as u8,
    }
}

fn u32_of(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Netlink { fd, seq: 0 })
    }

    fn send(&mut self, m: &mut Msg) -> io::Result<u32> {
        self.seq += 1;
        let len = m.buf.len() as u32;
        m.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        m.buf[8..12].copy_from_slice(&self.seq.to_ne_bytes());
        // SAFETY: send(2) of our buffer on our socket (the kernel is the default peer).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), m.buf.as_ptr().cast(), m.buf.len(), 0) };
        if n != m.buf.len() as isize {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    /// Reads replies to `seq` and hands each message (type, body) to `f` until the ACK or the
    /// end of a dump; a netlink error becomes an io::Error with its errno.
    fn replies(&mut self, seq: u32, mut f: impl FnMut(u16, &[u8])) -> io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: recv(2) into our buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let len = u32_of(b).unwrap_or(0) as usize;
                if len < 16 || len > b.len() {
                    return Err(io::Error::other("malformed netlink reply"));
                }
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                let mseq = u32_of(&b[8..]).unwrap_or(0);
                let body = &b[16..len];
                b = &b[(len.div_ceil(4) * 4).min(b.len())..];
                if mseq != seq {
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let err = body
                            .get(..4)
                            .map_or(0, |e| i32::from_ne_bytes(e.try_into().unwrap_or_default()));
                        return if err == 0 {
                            Ok(())
                        } else {
                            Err(io::Error::from_raw_os_error(-err))
                        };
                    }
                    _ => f(ty, body),
                }
            }
        }
    }

    fn request(&mut self, m: &mut Msg) -> io::Result<()> {
        let seq = self.send(m)?;
        self.replies(seq, |_, _| {})
    }

    fn dump(&mut self, m: &mut Msg) -> io::Result<Vec<Vec<u8>>> {
        let seq = self.send(m)?;
        let mut out = Vec::new();
        self.replies(seq, |_, body| out.push(body.to_vec()))?;
        Ok(out)
    }
}

/// A datagram socket for the interface ioctls, in the calling thread's network namespace.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is ours.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name {name:?}"),
        ));
    }
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().enumerate() {
        r.ifr_name[i] = b as libc::c_char;
    }
    Ok(r)
}

fn ioctl(sock: &OwnedFd, req: libc::c_ulong, r: &mut libc::ifreq, what: &str) -> io::Result<()> {
    // SAFETY: every request used here reads or writes one ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), req as _, r as *mut libc::ifreq) } < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{what}: {e}")));
    }
    Ok(())
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn index_of(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface {name:?}"),
        )),
        i => Ok(i),
    }
}

/// Sets MTU and (if given) MAC of `name`, then brings it up.
pub fn link_up(name: &str, mac: Option<[u8; 6]>, mtu: u32) -> io::Result<()> {
    let s = ioctl_socket()?;
    if let Some(mac) = mac {
        let mut r = ifreq(name)?;
        // SAFETY: the union's sockaddr member is plain data.
        unsafe {
            r.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
            for (i, b) in mac.iter().enumerate() {
                r.ifr_ifru.ifru_hwaddr.sa_data[i] = *b as libc::c_char;
            }
        }
        ioctl(&s, libc::SIOCSIFHWADDR, &mut r, "setting the MAC address")?;
    }
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_mtu = mtu as libc::c_int;
    ioctl(&s, libc::SIOCSIFMTU, &mut r, "setting the MTU")?;
    let mut r = ifreq(name)?;
    ioctl(&s, libc::SIOCGIFFLAGS, &mut r, "reading the flags")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member.
    unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(&s, libc::SIOCSIFFLAGS, &mut r, "bringing the link up")
}

/// MAC and MTU of `name`.
fn mac_and_mtu(name: &str) -> io::Result<([u8; 6], u32)> {
    let s = ioctl_socket()?;
    let mut r = ifreq(name)?;
    ioctl(&s, libc::SIOCGIFHWADDR, &mut r, "reading the MAC address")?;
    let mut mac = [0u8; 6];
    // SAFETY: SIOCGIFHWADDR filled the sockaddr member.
    unsafe {
        for (i, m) in mac.iter_mut().enumerate() {
            *m = r.ifr_ifru.ifru_hwaddr.sa_data[i] as u8;
        }
    }
    let mut r = ifreq(name)?;
    ioctl(&s, libc::SIOCGIFMTU, &mut r, "reading the MTU")?;
    // SAFETY: SIOCGIFMTU filled the mtu member.
    let mtu = unsafe { r.ifr_ifru.ifru_mtu };
    Ok((mac, mtu as u32))
}

/// What the CNI plugins configured on interface `name` (in the calling thread's namespace):
/// MAC, MTU, its global addresses and the main-table routes through it (IPv6 link-local
/// ones left out: the guest makes the same from the same MAC).
pub fn read_interface(name: &str) -> io::Result<NetInterface> {
    let index = index_of(name)?;
    let (mac, mtu) = mac_and_mtu(name)?;
    let mut nl = Netlink::open()?;
    let mut addresses = Vec::new();
    // ifaddrmsg: family, prefixlen, flags, scope, index
    for body in nl.dump(&mut Msg::new(RTM_GETADDR, NLM_F_DUMP, &[0u8; 8]))? {
        let Some(fixed) = body.get(..8) else { continue };
        if u32_of(&fixed[4..]) != Some(index) || fixed[3] != 0 {
            continue; // another interface, or not scope global
        }
        let a = attrs(&body[8..]);
        let pick = |t| a.iter().find(|(ty, _)| *ty == t).map(|(_, d)| *d);
        if let Some(addr) = pick(IFA_LOCAL)
            .or_else(|| pick(IFA_ADDRESS))
            .and_then(|d| ip_of(fixed[0], d))
        {
            addresses.push(IfAddress {
                addr,
                prefix: fixed[1],
            });
        }
    }
    let mut routes = Vec::new();
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags(u32)
    for body in nl.dump(&mut Msg::new(RTM_GETROUTE, NLM_F_DUMP, &[0u8; 12]))? {
        let Some(fixed) = body.get(..12) else {
            continue;
        };
        let a = attrs(&body[12..]);
        let pick = |t| a.iter().find(|(ty, _)| *ty == t).map(|(_, d)| *d);
        let table = pick(RTA_TABLE)
            .and_then(u32_of)
            .unwrap_or(u32::from(fixed[4]));
        if table != u32::from(RT_TABLE_MAIN)
            || fixed[7] != RTN_UNICAST
            || pick(RTA_OIF).and_then(u32_of) != Some(index)
        {
            continue;
        }
        let fam = fixed[0];
        let dst = match pick(RTA_DST) {
            Some(d) => match ip_of(fam, d) {
                Some(a) => a,
                None => continue,
            },
            None if i32::from(fam) == libc::AF_INET => IpAddr::from([0u8; 4]),
            None => IpAddr::from([0u8; 16]),
        };
        if let IpAddr::V6(v6) = dst {
            if v6.segments()[0] & 0xffc0 == 0xfe80 {
                continue;
            }
        }
        routes.push(Route {
            dst,
            prefix: fixed[1],
            gateway: pick(RTA_GATEWAY).and_then(|d| ip_of(fam, d)),
            scope: fixed[6],
            metric: pick(RTA_PRIORITY).and_then(u32_of),
            src: pick(RTA_PREFSRC).and_then(|d| ip_of(fam, d)),
        });
    }
    // Routes without a gateway first: a gateway must be reachable when its route is added.
    routes.sort_by_key(|r| r.gateway.is_some());
    Ok(NetInterface {
        name: name.to_string(),
        mac,
        mtu,
        addresses,
        routes,
    })
}

/// Asks for a new ingress qdisc on interface `index` (EEXIST if it has one).
fn new_ingress(nl: &mut Netlink, index: u32) -> io::Result<()> {
    let mut m = Msg::new(
        RTM_NEWQDISC,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        &tcmsg(index, INGRESS_HANDLE, TC_H_INGRESS, 0),
    );
    m.attr(TCA_KIND, b"ingress\0");
    m.begin(TCA_OPTIONS).end();
    nl.request(&mut m)
}

/// Adds an ingress qdisc to interface `index` (nothing if it has one).
fn ingress_qdisc(nl: &mut Netlink, index: u32) -> io::Result<()> {
    match new_ingress(nl, index) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Adds an ingress qdisc to interface `index`, failing with `AlreadyExists` if it has one: on
/// an interface of someone else's (a joined namespace), an existing one means its traffic is
/// already someone's, and the one added here is ours to remove ([`remove_ingress`]).
pub fn add_ingress_exclusive(index: u32) -> io::Result<()> {
    new_ingress(&mut Netlink::open()?, index).map_err(|e| match e.raw_os_error() {
        Some(libc::EEXIST) => io::Error::new(
            io::ErrorKind::AlreadyExists,
            "it already has an ingress qdisc",
        ),
        _ => e,
    })
}

/// Removes the ingress qdisc of interface `index`, and with it its filters (`tc qdisc del dev
/// X ingress`); none there is not an error.
pub fn remove_ingress(index: u32) -> io::Result<()> {
    let mut nl = Netlink::open()?;
    let mut m = Msg::new(
        RTM_DELQDISC,
        NLM_F_ACK,
        &tcmsg(index, INGRESS_HANDLE, TC_H_INGRESS, 0),
    );
    m.attr(TCA_KIND, b"ingress\0");
    match nl.request(&mut m) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL)) => Ok(()),
        r => r,
    }
}

fn tcmsg(index: u32, handle: u32, parent: u32, info: u32) -> Vec<u8> {
    let mut t = vec![0u8; 4]; // family, pad
    t.extend_from_slice(&index.to_ne_bytes());
    t.extend_from_slice(&handle.to_ne_bytes());
    t.extend_from_slice(&parent.to_ne_bytes());
    t.extend_from_slice(&info.to_ne_bytes());
    t
}

/// Every frame arriving on `from` leaves through `to` unchanged: an ingress qdisc on `from`
/// with a match-all u32 filter and a mirred egress redirect (`tc filter add dev FROM parent
/// ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev TO`).
pub fn redirect(from: u32, to: u32) -> io::Result<()> {
    let mut nl = Netlink::open()?;
    ingress_qdisc(&mut nl, from)?;
    // info = priority << 16 | protocol (network byte order)
    let info = (1u32 << 16) | u32::from(ETH_P_ALL.to_be());
    let mut m = Msg::new(
        RTM_NEWTFILTER,
        NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        &tcmsg(from, 0, INGRESS_HANDLE, info),
    );
    m.attr(TCA_KIND, b"u32\0");
    m.begin(TCA_OPTIONS);
    // tc_u32_sel {flags, offshift, nkeys, pad, offmask, off, offoff, hoff, hmask} + one key
    // {mask 0, val 0, off 0, offmask 0}: matches every packet.
    let mut sel = vec![TC_U32_TERMINAL, 0, 1, 0];
    sel.extend_from_slice(&[0u8; 12]);
    sel.extend_from_slice(&[0u8; 16]);
    m.attr(TCA_U32_SEL, &sel);
    m.begin(TCA_U32_ACT).begin(1);
    m.attr(TCA_ACT_KIND, b"mirred\0");
    m.begin(TCA_ACT_OPTIONS);
    // tc_mirred {index, capab, action, refcnt, bindcnt, eaction, ifindex}
    let mut p = Vec::new();
    for v in [0i32, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, to as i32] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    m.attr(TCA_MIRRED_PARMS, &p);
    m.end().end().end().end();
    nl.request(&mut m)
}

/// Gives the guest's cards what the host read from the CNI interfaces: MAC, MTU, up,
/// addresses (no prefix route of their own: the routes come as they were), routes.
pub fn configure(ifaces: &[NetInterface]) -> anyhow::Result<()> {
    use anyhow::Context;
    if ifaces.is_empty() {
        return Ok(());
    }
    let mut nl = Netlink::open().context("netlink socket")?;
    for i in ifaces {
        let what = || format!("configuring {}", i.name);
        let index = index_of(&i.name).with_context(what)?;
        link_up(&i.name, Some(i.mac), i.mtu).with_context(what)?;
        for a in &i.addresses {
            add_address(&mut nl, index, a)
                .with_context(|| format!("{}: address {}/{}", i.name, a.addr, a.prefix))?;
        }
        for r in &i.routes {
            add_route(&mut nl, index, r)
                .with_context(|| format!("{}: route to {}/{}", i.name, r.dst, r.prefix))?;
        }
    }
    Ok(())
}

fn add_address(nl: &mut Netlink, index: u32, a: &IfAddress) -> io::Result<()> {
    let mut fixed = vec![family(&a.addr), a.prefix, 0, 0];
    fixed.extend_from_slice(&index.to_ne_bytes());
    let mut m = Msg::new(RTM_NEWADDR, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &fixed);
    let b = ip_bytes(&a.addr);
    m.attr(IFA_LOCAL, &b).attr(IFA_ADDRESS, &b);
    // The namespace's copy of this address already passed DAD on the host side.
    m.attr(
        IFA_FLAGS,
        &(IFA_F_NOPREFIXROUTE | IFA_F_NODAD).to_ne_bytes(),
    );
    match nl.request(&mut m) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

fn add_route(nl: &mut Netlink, index: u32, r: &Route) -> io::Result<()> {
    let fixed = [
        family(&r.dst),
        r.prefix,
        0,
        0,
        RT_TABLE_MAIN,
        RTPROT_STATIC,
        r.scope,
        RTN_UNICAST,
        0,
        0,
        0,
        0,
    ];
    let mut m = Msg::new(RTM_NEWROUTE, NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, &fixed);
    if r.prefix > 0 {
        m.attr(RTA_DST, &ip_bytes(&r.dst));
    }
    m.attr(RTA_OIF, &index.to_ne_bytes());
    if let Some(g) = &r.gateway {
        m.attr(RTA_GATEWAY, &ip_bytes(g));
    }
    if let Some(p) = r.metric {
        m.attr(RTA_PRIORITY, &p.to_ne_bytes());
    }
    if let Some(s) = &r.src {
        m.attr(RTA_PREFSRC, &ip_bytes(s));
    }
    match nl.request(&mut m) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_parse_and_malformed_ones_stop_the_walk() {
        let mut m = Msg::new(RTM_NEWADDR, 0, &[0u8; 8]);
        m.attr(IFA_LOCAL, &[10, 0, 0, 1])
            .attr(IFA_FLAGS, &[1, 2, 3]);
        m.begin(TCA_OPTIONS).attr(1, b"x").end();
        let a = attrs(&m.buf[24..]);
        assert_eq!(a.len(), 3);
        assert_eq!(a[0], (IFA_LOCAL, &[10u8, 0, 0, 1][..]));
        assert_eq!(a[1], (IFA_FLAGS, &[1u8, 2, 3][..]));
        assert_eq!(a[2].1.len(), 8);
        // A length past the end, a length below the header: nothing more, no panic.
        assert!(attrs(&[200, 0, 1, 0, 1, 2]).is_empty());
        assert!(attrs(&[2, 0, 1, 0]).is_empty());
        assert!(attrs(&[5, 0, 1, 0, 9]).len() == 1);
    }

    /// Needs root: in a private network namespace, a veth pair with an address and routes is
    /// read back, then a tap-like peer is joined with redirects (the host side of kvm pods).
    #[test]
    fn reads_an_interface_and_redirects_in_a_private_namespace() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: unshare(2) of this thread's network namespace only.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            let ip = |args: &str| {
                // The child inherits this thread's namespace.
                let st = std::process::Command::new("ip")
                    .args(args.split_whitespace())
                    .status()
                    .unwrap();
                assert!(st.success(), "ip {args}");
            };
            ip("link add t0 type veth peer name t1");
            ip("link set t0 address 02:00:00:00:00:07 mtu 1400 up");
            ip("link set t1 up");
            ip("addr add 10.9.0.5/24 dev t0 noprefixroute");
            ip("addr add fd00::5/64 dev t0 nodad");
            ip("route add 10.9.0.1/32 dev t0 scope link");
            ip("route add 10.9.0.0/24 via 10.9.0.1 dev t0");
            ip("route add default via 10.9.0.1 dev t0 metric 7");
            let i = read_interface("t0").unwrap();
            assert_eq!(i.mac, [2, 0, 0, 0, 0, 7]);
            assert_eq!(i.mtu, 1400);
            assert!(i.addresses.contains(&IfAddress {
                addr: "10.9.0.5".parse().unwrap(),
                prefix: 24
            }));
            assert!(i.addresses.iter().any(|a| a.addr.to_string() == "fd00::5"));
            let v4: Vec<_> = i
                .routes
                .iter()
                .filter(|r| r.dst.is_ipv4())
                .map(|r| (r.dst.to_string(), r.prefix, r.gateway, r.metric))
                .collect();
            let gw = Some("10.9.0.1".parse().unwrap());
            assert_eq!(
                v4,
                vec![
                    ("10.9.0.1".into(), 32, None, None),
                    ("0.0.0.0".into(), 0, gw, Some(7)),
                    ("10.9.0.0".into(), 24, gw, None),
                ]
            );
            // Join t1 and a new veth end both ways, as the VMM's tap is joined to eth0.
            ip("link add t2 type veth peer name t3");
            let (a, b) = (index_of("t1").unwrap(), index_of("t2").unwrap());
            redirect(a, b).unwrap();
            redirect(b, a).unwrap();
            let out = std::process::Command::new("tc")
                .args(["filter", "show", "dev", "t1", "ingress"])
                .output()
                .unwrap();
            let out = String::from_utf8_lossy(&out.stdout);
            assert!(out.contains("Egress Redirect to device t2"), "{out}");
            // A joined namespace's interface: someone's qdisc is refused; ours goes, filter
            // with it, and removing it twice is no error.
            let e = add_ingress_exclusive(a).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
            remove_ingress(a).unwrap();
            remove_ingress(a).unwrap();
            let qd = std::process::Command::new("tc")
                .args(["qdisc", "show", "dev", "t1", "ingress"])
                .output()
                .unwrap();
            assert!(qd.stdout.is_empty(), "{qd:?}");
            add_ingress_exclusive(a).unwrap();
            remove_ingress(a).unwrap();
            // Copy onto another interface, as the guest init does (t0 goes first: its
            // addresses and routes would clash).
            ip("link del t0");
            ip("link set t3 name g0");
            configure(&[NetInterface {
                name: "g0".into(),
                ..i.clone()
            }])
            .unwrap();
            let j = read_interface("g0").unwrap();
            assert_eq!((j.mac, j.mtu), (i.mac, i.mtu));
            let mut got = j.routes.clone();
            let mut want = i.routes.clone();
            got.sort_by_key(|r| format!("{r:?}"));
            want.sort_by_key(|r| format!("{r:?}"));
            let strip = |v: Vec<Route>| -> Vec<_> {
                v.into_iter()
                    .filter(|r| r.dst.is_ipv4())
                    .map(|r| (r.dst, r.prefix, r.gateway))
                    .collect()
            };
            assert_eq!(strip(got), strip(want));
        })
        .join()
        .unwrap();
    }
}
