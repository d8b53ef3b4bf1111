//! The host<->guest protocol of stage1 kvm, version [`VERSION`].
//!
//! Transport: virtio-vsock stream connections. The guest init connects to the host
//! ([`HOST_CID`], [`CONTROL_PORT`]) once it has read the pod spec; that connection carries app
//! stdio, app start/exit events, the pod's end and the host's stop request. For `rkt enter` the host
//! connects to the guest on [`ENTER_PORT`]; each such connection is one command session.
//!
//! Framing: `u32` little-endian body length, then the body: one tag byte and the fields of that
//! message (integers little-endian, strings and byte strings as `u32` length + bytes, lists as
//! `u32` count + items). Bodies are at most [`MAX_FRAME`] bytes. Every connection starts with a
//! [`Msg::Hello`] from each side; a peer with another version is refused.
//!
//! The host must never trust the guest: decoding checks every length against what is left, rejects
//! trailing bytes, unknown tags and invalid UTF-8, and never panics.

use std::fmt;
use std::io::{self, Read, Write};

/// Bumped on any incompatible change of the messages below.
pub const VERSION: u32 = 5;
/// Largest frame body accepted or produced.
pub const MAX_FRAME: usize = 1 << 20;
/// Largest app spec (JSON) in one [`Msg::AppStart`].
pub const MAX_APP_SPEC: usize = 256 * 1024;
/// Largest sd_notify message in one [`Msg::Notify`] (systemd reads at most a page too).
pub const MAX_NOTIFY: usize = 4096;
/// Largest stdio chunk put in one [`Msg::Data`] (leaves room for the header).
pub const MAX_DATA: usize = 64 * 1024;
/// vsock CID of the host.
pub const HOST_CID: u32 = 2;
/// Host port the guest init connects to for control and app stdio.
pub const CONTROL_PORT: u32 = 1024;
/// Guest port the host connects to for `rkt enter`.
pub const ENTER_PORT: u32 = 1025;
/// Guest port the guest init listens on, before anything pod-specific, for the host's
/// [`Handover`] (only with [`HANDOVER_ARG`] on the kernel command line).
pub const POD_PORT: u32 = 1026;
/// Kernel command-line word that makes the guest init wait for a [`Handover`].
pub const HANDOVER_ARG: &str = "rkt.handover=1";
/// What the guest init prints on the console once it waits on [`POD_PORT`]: the VMM pauses the
/// VM there to make a template (docs/kvm-template.md).
pub const WAITING_MARKER: &str = "rkt-guest: waiting for the pod";

/// The host's first words to a guest that waits for its pod (cold-booted or restored from a
/// template): the wall clock and fresh entropy. Fixed size, no framing: magic, `u64` LE
/// nanoseconds since the epoch, 32 bytes of entropy. The guest answers with [`Handover::ACK`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handover {
    pub realtime_ns: u64,
    pub entropy: [u8; 32],
}

impl Handover {
    pub const MAGIC: &'static [u8; 8] = b"RKTPOD01";
    pub const LEN: usize = 8 + 8 + 32;
    pub const ACK: u8 = b'k';

    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[..8].copy_from_slice(Self::MAGIC);
        b[8..16].copy_from_slice(&self.realtime_ns.to_le_bytes());
        b[16..].copy_from_slice(&self.entropy);
        b
    }

    pub fn decode(b: &[u8; Self::LEN]) -> Option<Self> {
        if &b[..8] != Self::MAGIC {
            return None;
        }
        Some(Handover {
            realtime_ns: u64::from_le_bytes(b[8..16].try_into().ok()?),
            entropy: b[16..].try_into().ok()?,
        })
    }
}

/// virtio-fs tag of the pod's share (the host's `<pod>/stage1/rootfs`: app roots, volumes and
/// the guest spec, never the rest of the pod directory), and where the guest mounts it.
pub const SHARE_TAG: &str = "rkt";
pub const SHARE_MOUNT: &str = "/rkt";
/// Where the guest init binds the notify socket of an app that speaks sd_notify (`<dir>/<app>`,
/// in the guest's own `/run`; the app sees it only as its `/run/systemd/notify`).
pub const NOTIFY_DIR: &str = "/run/rkt/notify";
/// The guest copy of the pod spec, relative to the share (paths in it are guest paths).
pub const GUEST_SPEC_FILE: &str = "guest-spec.json";

/// Which standard stream a [`Msg::Data`] / [`Msg::Eof`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdin,
    Stdout,
    Stderr,
}

impl Stream {
    fn to_u8(self) -> u8 {
        match self {
            Stream::Stdin => 0,
            Stream::Stdout => 1,
            Stream::Stderr => 2,
        }
    }

    fn from_u8(v: u8) -> Result<Stream, ProtoError> {
        Ok(match v {
            0 => Stream::Stdin,
            1 => Stream::Stdout,
            2 => Stream::Stderr,
            _ => return Err(ProtoError::Malformed(format!("unknown stream {v}"))),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// First message on every connection, both directions.
    Hello { version: u32 },
    /// guest -> host: app number `app` (index in the pod spec) runs as guest pid `pid`.
    AppStarted { app: u32, pid: u32 },
    /// guest -> host: the app ended; `code` is its exit status, or 128 + signal.
    AppExited { app: u32, code: i32 },
    /// guest -> host: every app ended; `rkt run` exits with `code`. The guest then powers off.
    PodDone { code: i32 },
    /// host -> guest: stop the apps (SIGTERM, SIGKILL after `timeout_ms`).
    Stop { timeout_ms: u32 },
    /// host -> guest on an enter connection: run `cmd` in app `app`'s namespaces.
    Enter {
        app: String,
        cmd: Vec<String>,
        env: Vec<(String, String)>,
        tty: bool,
    },
    /// Stdio bytes. `chan` is the app index on the control connection, 0 on an enter connection.
    Data {
        chan: u32,
        stream: Stream,
        data: Vec<u8>,
    },
    /// The stream ended (stdin: the host's input closed).
    Eof { chan: u32, stream: Stream },
    /// guest -> host on an enter connection: the command's exit status.
    Exited { code: i32 },
    /// Either way: a fatal problem, one line. The sender closes the connection after it.
    Error { message: String },
    /// host -> guest: the terminal of channel `chan` (an interactive app on the control
    /// connection, 0 on an enter connection with `tty`) is `rows` x `cols`.
    Resize { chan: u32, rows: u16, cols: u16 },
    /// host -> guest, mutable pods (`rkt app start`): start the app whose stage2 spec (JSON, guest
    /// paths, at most [`MAX_APP_SPEC`] bytes) is `spec` as channel `chan`, which no app of the pod
    /// has used. The guest answers with `AppStarted` or `AppExited` for `chan`. With `stdin` the
    /// app reads the host's `Data {chan, Stdin}` (until its `Eof`), else /dev/null.
    AppStart {
        chan: u32,
        spec: String,
        stdin: bool,
    },
    /// host -> guest, mutable pods (`rkt app stop`): stop the app of channel `chan` (SIGTERM,
    /// SIGKILL after the guest supervisor's stop timeout); the guest reports its `AppExited`.
    AppStop { chan: u32 },
    /// host -> guest, mutable pods (containerd's Kill): send signal `signal` (1..=64) to the
    /// app of channel `chan`.
    AppSignal { chan: u32, signal: u32 },
    /// guest -> host: the app of channel `chan`, whose image speaks sd_notify, sent `message`
    /// (newline-separated `KEY=VALUE` lines, at most [`MAX_NOTIFY`] bytes) to its
    /// `NOTIFY_SOCKET`. The host decides what reaches systemd.
    Notify { chan: u32, message: String },
}

#[derive(Debug)]
pub enum ProtoError {
    Io(io::Error),
    /// The peer sent a frame larger than [`MAX_FRAME`].
    TooLarge(usize),
    /// Bad content: unknown tag, truncated field, trailing bytes, invalid UTF-8...
    Malformed(String),
    /// The peer speaks another protocol version.
    Version(u32),
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::Io(e) => write!(f, "{e}"),
            ProtoError::TooLarge(n) => {
                write!(f, "frame of {n} bytes exceeds the {MAX_FRAME}-byte limit")
            }
            ProtoError::Malformed(m) => write!(f, "malformed message: {m}"),
            ProtoError::Version(v) => {
                write!(f, "peer speaks protocol version {v}, we speak {VERSION}")
            }
        }
    }
}

impl std::error::Error for ProtoError {}

impl From<io::Error> for ProtoError {
    fn from(e: io::Error) -> Self {
        ProtoError::Io(e)
    }
}

mod tag {
    pub const HELLO: u8 = 1;
    pub const APP_STARTED: u8 = 2;
    pub const APP_EXITED: u8 = 3;
    pub const POD_DONE: u8 = 4;
    pub const STOP: u8 = 5;
    pub const ENTER: u8 = 6;
    pub const DATA: u8 = 7;
    pub const EOF: u8 = 8;
    pub const EXITED: u8 = 9;
    pub const ERROR: u8 = 10;
    pub const RESIZE: u8 = 11;
    pub const APP_START: u8 = 12;
    pub const APP_STOP: u8 = 13;
    pub const NOTIFY: u8 = 14;
    pub const APP_SIGNAL: u8 = 15;
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(b: &mut Vec<u8>, v: &[u8]) {
    put_u32(b, v.len() as u32);
    b.extend_from_slice(v);
}

impl Msg {
    /// The frame body (tag + fields), without the length prefix.
    pub fn encode_body(&self) -> Vec<u8> {
        let mut b = Vec::new();
        match self {
            Msg::Hello { version } => {
                b.push(tag::HELLO);
                put_u32(&mut b, *version);
            }
            Msg::AppStarted { app, pid } => {
                b.push(tag::APP_STARTED);
                put_u32(&mut b, *app);
                put_u32(&mut b, *pid);
            }
            Msg::AppExited { app, code } => {
                b.push(tag::APP_EXITED);
                put_u32(&mut b, *app);
                put_u32(&mut b, *code as u32);
            }
            Msg::PodDone { code } => {
                b.push(tag::POD_DONE);
                put_u32(&mut b, *code as u32);
            }
            Msg::Stop { timeout_ms } => {
                b.push(tag::STOP);
                put_u32(&mut b, *timeout_ms);
            }
            Msg::Enter { app, cmd, env, tty } => {
                b.push(tag::ENTER);
                put_bytes(&mut b, app.as_bytes());
                put_u32(&mut b, cmd.len() as u32);
                for a in cmd {
                    put_bytes(&mut b, a.as_bytes());
                }
                put_u32(&mut b, env.len() as u32);
                for (k, v) in env {
                    put_bytes(&mut b, k.as_bytes());
                    put_bytes(&mut b, v.as_bytes());
                }
                b.push(*tty as u8);
            }
            Msg::Data { chan, stream, data } => {
                b.push(tag::DATA);
                put_u32(&mut b, *chan);
                b.push(stream.to_u8());
                put_bytes(&mut b, data);
            }
            Msg::Eof { chan, stream } => {
                b.push(tag::EOF);
                put_u32(&mut b, *chan);
                b.push(stream.to_u8());
            }
            Msg::Exited { code } => {
                b.push(tag::EXITED);
                put_u32(&mut b, *code as u32);
            }
            Msg::Error { message } => {
                b.push(tag::ERROR);
                put_bytes(&mut b, message.as_bytes());
            }
            Msg::Resize { chan, rows, cols } => {
                b.push(tag::RESIZE);
                put_u32(&mut b, *chan);
                b.extend_from_slice(&rows.to_le_bytes());
                b.extend_from_slice(&cols.to_le_bytes());
            }
            Msg::AppStart { chan, spec, stdin } => {
                b.push(tag::APP_START);
                put_u32(&mut b, *chan);
                put_bytes(&mut b, spec.as_bytes());
                b.push(*stdin as u8);
            }
            Msg::AppSignal { chan, signal } => {
                b.push(tag::APP_SIGNAL);
                put_u32(&mut b, *chan);
                put_u32(&mut b, *signal);
            }
            Msg::AppStop { chan } => {
                b.push(tag::APP_STOP);
                put_u32(&mut b, *chan);
            }
            Msg::Notify { chan, message } => {
                b.push(tag::NOTIFY);
                put_u32(&mut b, *chan);
                put_bytes(&mut b, message.as_bytes());
            }
        }
        b
    }

    /// Length prefix + body. Fails (instead of producing a frame the peer would refuse) when the
    /// body would exceed [`MAX_FRAME`].
    pub fn encode(&self) -> Result<Vec<u8>, ProtoError> {
        let body = self.encode_body();
        if body.len() > MAX_FRAME {
            return Err(ProtoError::TooLarge(body.len()));
        }
        let mut out = Vec::with_capacity(4 + body.len());
        put_u32(&mut out, body.len() as u32);
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Parses one frame body. Never panics; the whole body must be consumed.
    pub fn decode_body(body: &[u8]) -> Result<Msg, ProtoError> {
        let mut r = Cursor { buf: body, pos: 0 };
        let t = r.u8()?;
        let m = match t {
            tag::HELLO => Msg::Hello { version: r.u32()? },
            tag::APP_STARTED => Msg::AppStarted {
                app: r.u32()?,
                pid: r.u32()?,
            },
            tag::APP_EXITED => Msg::AppExited {
                app: r.u32()?,
                code: r.u32()? as i32,
            },
            tag::POD_DONE => Msg::PodDone {
                code: r.u32()? as i32,
            },
            tag::STOP => Msg::Stop {
                timeout_ms: r.u32()?,
            },
            tag::ENTER => {
                let app = r.string()?;
                let n = r.count(4)?;
                let mut cmd = Vec::with_capacity(n);
                for _ in 0..n {
                    cmd.push(r.string()?);
                }
                let n = r.count(8)?;
                let mut env = Vec::with_capacity(n);
                for _ in 0..n {
                    env.push((r.string()?, r.string()?));
                }
                let tty = match r.u8()? {
                    0 => false,
                    1 => true,
                    v => return Err(ProtoError::Malformed(format!("bad tty flag {v}"))),
                };
                Msg::Enter { app, cmd, env, tty }
            }
            tag::DATA => Msg::Data {
                chan: r.u32()?,
                stream: Stream::from_u8(r.u8()?)?,
                data: r.bytes()?.to_vec(),
            },
            tag::EOF => Msg::Eof {
                chan: r.u32()?,
                stream: Stream::from_u8(r.u8()?)?,
            },
            tag::EXITED => Msg::Exited {
                code: r.u32()? as i32,
            },
            tag::ERROR => Msg::Error {
                message: r.string()?,
            },
            tag::RESIZE => Msg::Resize {
                chan: r.u32()?,
                rows: r.u16()?,
                cols: r.u16()?,
            },
            tag::APP_START => {
                let chan = r.u32()?;
                let spec = r.string()?;
                if spec.len() > MAX_APP_SPEC {
                    return Err(ProtoError::Malformed(format!(
                        "app spec of {} bytes exceeds {MAX_APP_SPEC}",
                        spec.len()
                    )));
                }
                let stdin = match r.u8()? {
                    0 => false,
                    1 => true,
                    v => return Err(ProtoError::Malformed(format!("bad stdin flag {v}"))),
                };
                Msg::AppStart { chan, spec, stdin }
            }
            tag::APP_SIGNAL => {
                let chan = r.u32()?;
                let signal = r.u32()?;
                if !(1..=64).contains(&signal) {
                    return Err(ProtoError::Malformed(format!("bad signal {signal}")));
                }
                Msg::AppSignal { chan, signal }
            }
            tag::APP_STOP => Msg::AppStop { chan: r.u32()? },
            tag::NOTIFY => {
                let chan = r.u32()?;
                let message = r.string()?;
                if message.len() > MAX_NOTIFY {
                    return Err(ProtoError::Malformed(format!(
                        "notify message of {} bytes exceeds {MAX_NOTIFY}",
                        message.len()
                    )));
                }
                Msg::Notify { chan, message }
            }
            t => return Err(ProtoError::Malformed(format!("unknown message tag {t}"))),
        };
        if r.pos != body.len() {
            return Err(ProtoError::Malformed(format!(
                "{} trailing bytes after message tag {t}",
                body.len() - r.pos
            )));
        }
        Ok(m)
    }
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        let left = self.buf.len() - self.pos;
        if n > left {
            return Err(ProtoError::Malformed(format!(
                "field of {n} bytes but only {left} left"
            )));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, ProtoError> {
        let s = self.take(2)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }

    fn u32(&mut self) -> Result<u32, ProtoError> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn bytes(&mut self) -> Result<&'a [u8], ProtoError> {
        let n = self.u32()? as usize;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, ProtoError> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| ProtoError::Malformed("string is not UTF-8".into()))
    }

    /// A list count, checked against the bytes left (each item needs at least `min_item` bytes)
    /// so a hostile count cannot make us reserve gigabytes.
    fn count(&mut self, min_item: usize) -> Result<usize, ProtoError> {
        let n = self.u32()? as usize;
        let left = self.buf.len() - self.pos;
        if n.saturating_mul(min_item) > left {
            return Err(ProtoError::Malformed(format!(
                "list of {n} items does not fit in {left} bytes"
            )));
        }
        Ok(n)
    }
}

/// Writes one frame.
pub fn write_msg<W: Write + ?Sized>(w: &mut W, m: &Msg) -> Result<(), ProtoError> {
    w.write_all(&m.encode()?)?;
    Ok(())
}

/// Reads one frame. `Ok(None)`: the peer closed the connection between frames.
pub fn read_msg<R: Read + ?Sized>(r: &mut R) -> Result<Option<Msg>, ProtoError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => {
                return Err(ProtoError::Malformed(
                    "connection closed inside a frame header".into(),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(ProtoError::TooLarge(n));
    }
    if n == 0 {
        return Err(ProtoError::Malformed("empty frame".into()));
    }
    let mut body = vec![0u8; n];
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ProtoError::Malformed("connection closed inside a frame".into())
        } else {
            e.into()
        }
    })?;
    Msg::decode_body(&body).map(Some)
}

/// Sends our Hello and checks the peer's. Both sides call it first on a new connection.
pub fn handshake<S: Read + Write + ?Sized>(s: &mut S) -> Result<(), ProtoError> {
    write_msg(s, &Msg::Hello { version: VERSION })?;
    match read_msg(s)? {
        Some(Msg::Hello { version }) if version == VERSION => Ok(()),
        Some(Msg::Hello { version }) => Err(ProtoError::Version(version)),
        Some(other) => Err(ProtoError::Malformed(format!(
            "expected Hello, got {other:?}"
        ))),
        None => Err(ProtoError::Malformed(
            "connection closed before Hello".into(),
        )),
    }
}

/// Splits stdio bytes into [`Msg::Data`] frames of at most [`MAX_DATA`] bytes.
pub fn data_frames(chan: u32, stream: Stream, data: &[u8]) -> impl Iterator<Item = Msg> + '_ {
    data.chunks(MAX_DATA).map(move |c| Msg::Data {
        chan,
        stream,
        data: c.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<Msg> {
        vec![
            Msg::Hello { version: VERSION },
            Msg::AppStarted { app: 3, pid: 42 },
            Msg::AppExited { app: 0, code: -1 },
            Msg::AppExited { app: 1, code: 137 },
            Msg::PodDone { code: 7 },
            Msg::Stop { timeout_ms: 10_000 },
            Msg::Enter {
                app: "web".into(),
                cmd: vec!["/bin/sh".into(), "-c".into(), "echo ü".into()],
                env: vec![("A".into(), "b=c".into()), ("EMPTY".into(), String::new())],
                tty: true,
            },
            Msg::Enter {
                app: String::new(),
                cmd: vec![],
                env: vec![],
                tty: false,
            },
            Msg::Data {
                chan: 2,
                stream: Stream::Stderr,
                data: (0..=255).collect(),
            },
            Msg::Data {
                chan: 0,
                stream: Stream::Stdin,
                data: vec![],
            },
            Msg::Eof {
                chan: 1,
                stream: Stream::Stdout,
            },
            Msg::Resize {
                chan: 0,
                rows: 50,
                cols: u16::MAX,
            },
            Msg::Exited { code: 255 },
            Msg::AppStart {
                chan: 4,
                spec: "{\"name\":\"web\"}".into(),
                stdin: true,
            },
            Msg::AppStop { chan: 4 },
            Msg::AppSignal { chan: 4, signal: 9 },
            Msg::Notify {
                chan: 1,
                message: "READY=1\nSTATUS=up".into(),
            },
            Msg::Error {
                message: "no such app \"x\"".into(),
            },
        ]
    }

    #[test]
    fn every_message_round_trips_through_a_stream() {
        let mut wire = Vec::new();
        for m in all() {
            write_msg(&mut wire, &m).unwrap();
        }
        let mut r = &wire[..];
        for m in all() {
            assert_eq!(read_msg(&mut r).unwrap(), Some(m));
        }
        assert_eq!(read_msg(&mut r).unwrap(), None);
    }

    #[test]
    fn oversized_frames_are_refused_both_ways() {
        let mut wire = ((MAX_FRAME + 1) as u32).to_le_bytes().to_vec();
        wire.extend_from_slice(&[tag::HELLO, 1, 0, 0, 0]);
        assert!(
            matches!(read_msg(&mut &wire[..]), Err(ProtoError::TooLarge(n)) if n == MAX_FRAME + 1)
        );
        let huge = Msg::Data {
            chan: 0,
            stream: Stream::Stdout,
            data: vec![0; MAX_FRAME],
        };
        assert!(matches!(huge.encode(), Err(ProtoError::TooLarge(_))));
        let mut sink = Vec::new();
        assert!(write_msg(&mut sink, &huge).is_err());
        assert!(sink.is_empty(), "nothing half-written");
    }

    #[test]
    fn malformed_bodies_are_errors_not_panics() {
        let bad: Vec<Vec<u8>> = vec![
            vec![],                                     // no tag
            vec![0],                                    // unknown tag
            vec![200, 1, 2],                            // unknown tag
            vec![tag::HELLO, 1, 0],                     // truncated u32
            vec![tag::HELLO, 1, 0, 0, 0, 9],            // trailing byte
            vec![tag::ERROR, 5, 0, 0, 0, b'a'],         // string longer than the body
            vec![tag::ERROR, 2, 0, 0, 0, 0xff, 0xfe],   // invalid UTF-8
            vec![tag::DATA, 0, 0, 0, 0, 3, 0, 0, 0, 0], // unknown stream 3
            vec![tag::EOF, 0, 0, 0, 0],                 // missing stream
            // Enter with a huge command count: must not try to allocate for it.
            vec![tag::ENTER, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
            // Enter with a bad tty flag.
            vec![tag::ENTER, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            // Resize missing its column count.
            vec![tag::RESIZE, 0, 0, 0, 0, 24, 0],
            // AppStart whose spec is longer than the body, or not UTF-8.
            vec![tag::APP_START, 1, 0, 0, 0, 9, 0, 0, 0, b'{'],
            vec![tag::APP_START, 1, 0, 0, 0, 1, 0, 0, 0, 0xff, 0],
            // AppStart without its stdin flag, or with a bad one.
            vec![tag::APP_START, 1, 0, 0, 0, 1, 0, 0, 0, b'{'],
            vec![tag::APP_START, 1, 0, 0, 0, 1, 0, 0, 0, b'{', 2],
            // AppSignal with no signal, signal 0 or one past the last.
            vec![tag::APP_SIGNAL, 1, 0, 0, 0],
            vec![tag::APP_SIGNAL, 1, 0, 0, 0, 0, 0, 0, 0],
            vec![tag::APP_SIGNAL, 1, 0, 0, 0, 65, 0, 0, 0],
            // AppStop with a truncated channel.
            vec![tag::APP_STOP, 1, 0, 0],
            // Notify whose message is longer than the body, or not UTF-8.
            vec![tag::NOTIFY, 1, 0, 0, 0, 4, 0, 0, 0, b'R'],
            vec![tag::NOTIFY, 1, 0, 0, 0, 1, 0, 0, 0, 0xc3],
        ];
        // A notify message over its own bound.
        let big = Msg::Notify {
            chan: 0,
            message: "x".repeat(MAX_NOTIFY + 1),
        };
        assert!(matches!(
            Msg::decode_body(&big.encode_body()),
            Err(ProtoError::Malformed(_))
        ));
        // An app spec over its own bound, in a frame under MAX_FRAME.
        let big = Msg::AppStart {
            chan: 0,
            spec: "x".repeat(MAX_APP_SPEC + 1),
            stdin: false,
        };
        assert!(matches!(
            Msg::decode_body(&big.encode_body()),
            Err(ProtoError::Malformed(_))
        ));
        for b in bad {
            assert!(
                matches!(Msg::decode_body(&b), Err(ProtoError::Malformed(_))),
                "accepted {b:?}"
            );
        }
        // Every truncation of every valid body is rejected too.
        for m in all() {
            let body = m.encode_body();
            for cut in 0..body.len() {
                assert!(
                    Msg::decode_body(&body[..cut]).is_err(),
                    "accepted {m:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn truncated_streams_and_empty_frames_are_errors() {
        let wire = Msg::Stop { timeout_ms: 5 }.encode().unwrap();
        for cut in 1..wire.len() {
            assert!(
                read_msg(&mut &wire[..cut]).is_err(),
                "accepted a frame cut at {cut}"
            );
        }
        assert!(matches!(
            read_msg(&mut &[0u8, 0, 0, 0][..]),
            Err(ProtoError::Malformed(_))
        ));
    }

    #[test]
    fn handshake_checks_the_version() {
        struct Duplex {
            input: std::io::Cursor<Vec<u8>>,
            output: Vec<u8>,
        }
        impl Read for Duplex {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                self.input.read(b)
            }
        }
        impl Write for Duplex {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.output.write(b)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let peer = |m: Msg| Duplex {
            input: std::io::Cursor::new(m.encode().unwrap()),
            output: Vec::new(),
        };
        let mut ok = peer(Msg::Hello { version: VERSION });
        handshake(&mut ok).unwrap();
        assert_eq!(
            read_msg(&mut &ok.output[..]).unwrap(),
            Some(Msg::Hello { version: VERSION })
        );
        assert!(matches!(
            handshake(&mut peer(Msg::Hello { version: 99 })),
            Err(ProtoError::Version(99))
        ));
        assert!(matches!(
            handshake(&mut peer(Msg::PodDone { code: 0 })),
            Err(ProtoError::Malformed(_))
        ));
    }

    #[test]
    fn stdio_is_chunked() {
        let data = vec![7u8; MAX_DATA * 2 + 1];
        let frames: Vec<Msg> = data_frames(4, Stream::Stdout, &data).collect();
        assert_eq!(frames.len(), 3);
        for f in &frames {
            assert!(f.encode().is_ok());
        }
        assert!(matches!(&frames[2], Msg::Data { data, chan: 4, .. } if data.len() == 1));
    }

    #[test]
    fn handover_round_trips_and_refuses_other_magic() {
        let h = Handover {
            realtime_ns: 1_796_000_000_123_456_789,
            entropy: [7; 32],
        };
        let mut b = h.encode();
        assert_eq!(Handover::decode(&b), Some(h));
        b[0] = b'X';
        assert_eq!(Handover::decode(&b), None);
    }
}
