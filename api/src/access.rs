//! Who may read through the API. Pod manifests carry the apps' environment (often secrets) and the
//! data directory is private (mode 0700, docs/pods.md), so the service answers a caller only what
//! it could read with the CLI itself: root, the user the service runs as and the owner of the data
//! directory. The caller is identified by its uid: `SO_PEERCRED` on a Unix socket; on TCP, the
//! client's socket in this network namespace's `/proc/net/tcp{,6}` (a loopback client always has
//! one). A TCP peer with no socket here is on another host or network namespace: it reached a
//! listener the operator bound beyond loopback on purpose (rkt's `--listen=0.0.0.0`), so it is
//! served; a loopback peer that cannot be identified is refused.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use tonic::transport::server::{TcpConnectInfo, UdsConnectInfo};
use tonic::{Request, Status};

/// Who the caller is, as far as the connection tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    Uid(u32),
    /// A TCP peer with no socket in this network namespace.
    Remote,
    /// Loopback peer whose socket was not found (it closed, or /proc is unreadable).
    Unknown,
}

/// The uids allowed to read pods and images of `dir`.
pub fn allowed_uids(dir: &Path) -> Vec<u32> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let mut v = vec![0, unsafe { libc::geteuid() }];
    if let Ok(m) = std::fs::metadata(dir) {
        v.push(m.uid());
    }
    v.sort_unstable();
    v.dedup();
    v
}

pub fn caller<T>(req: &Request<T>) -> Caller {
    if let Some(info) = req.extensions().get::<UdsConnectInfo>() {
        return match info.peer_cred {
            Some(c) => Caller::Uid(c.uid()),
            None => Caller::Unknown,
        };
    }
    if let Some(info) = req.extensions().get::<TcpConnectInfo>() {
        if let (Some(local), Some(remote)) = (info.local_addr, info.remote_addr) {
            return tcp_caller(local, remote);
        }
    }
    Caller::Unknown
}

/// PERMISSION_DENIED unless the caller may read `dir`'s pods and images.
pub fn check<T>(req: &Request<T>, allowed: &[u32]) -> Result<(), Status> {
    match caller(req) {
        Caller::Uid(u) if allowed.contains(&u) => Ok(()),
        Caller::Remote => Ok(()),
        Caller::Uid(u) => Err(Status::permission_denied(format!(
            "uid {u} may not read rkt's pods and images (root, the service's user and the data directory's owner may)"
        ))),
        Caller::Unknown => Err(Status::permission_denied(
            "the caller could not be identified (its uid decides what it may read)",
        )),
    }
}

fn tcp_caller(local: SocketAddr, remote: SocketAddr) -> Caller {
    let (local, remote) = (canonical(local), canonical(remote));
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        // The client's own socket: its local end is our remote end and vice versa.
        if let Some(uid) = find_uid(&text, remote, local) {
            return Caller::Uid(uid);
        }
    }
    if remote.ip().is_loopback() {
        Caller::Unknown
    } else {
        Caller::Remote
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The uid of the socket in a `/proc/net/tcp{,6}` table whose local and remote addresses are
/// `local` and `remote`.
fn find_uid(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            continue;
        }
        if parse_addr(f[1]) == Some(local) && parse_addr(f[2]) == Some(remote) {
            return f[7].parse().ok();
        }
    }
    None
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): the kernel prints each 32-bit word
/// of the address as a native-endian integer, the port in host order.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |h: &str| u32::from_str_radix(h, 16).ok().map(u32::to_ne_bytes);
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(ip)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(&ip[i * 8..i * 8 + 8])?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip.to_canonical(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:C350 0100007F:3C59 01 00000000:00000000 00:00000000 00000000 65534        0 1234 1 0 20 4 30 10 -1\n";
        let local: SocketAddr = "127.0.0.1:50000".parse().unwrap();
        let remote: SocketAddr = "127.0.0.1:15449".parse().unwrap();
        assert_eq!(find_uid(table, local, remote), Some(65534));
        assert_eq!(find_uid(table, remote, local), None);
        // ::1 and a v4-mapped address, as tcp6 prints them on x86.
        assert_eq!(
            parse_addr("00000000000000000000000001000000:0050"),
            Some("[::1]:80".parse().unwrap())
        );
        assert_eq!(
            parse_addr("0000000000000000FFFF00000100007F:0050"),
            Some("127.0.0.1:80".parse().unwrap())
        );
    }

    #[test]
    fn finds_own_loopback_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, peer) = l.accept().unwrap();
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        assert_eq!(tcp_caller(l.local_addr().unwrap(), peer), Caller::Uid(me));
        drop(c);
    }
}
