//! App logs kept in the pod directory: `<pod>/logs/<app>.log`, one record per line in the CRI log
//! format rktlet and the kubelet read (`2016-10-06T00:17:09.669794202Z stdout F text`: time,
//! stream, `F` for a full line or `P` for a piece of a longer one, the text without its newline).
//! Each file is bounded: past [`max_bytes`] it is renamed to `<app>.log.1` (replacing the older
//! one) and a new file starts, so an app keeps at most twice that. The files live as long as the
//! pod directory, i.e. until `rkt gc`/`rkt rm`.
//!
//! The writer is the `rkt run` process (the relay of ns and fly, the control connection of kvm);
//! `rkt logs` (and later the api-service) reads them.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Directory, in the pod directory, of the apps' logs.
pub const LOGS_DIR: &str = "logs";
/// Default bound of one log file.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 20;
/// A line longer than this is recorded in `P` pieces of this size (containerd's CRI default).
pub const MAX_LINE: usize = 16 << 10;

/// The current log file of `app`.
pub fn log_path(pod_dir: &Path, app: &str) -> PathBuf {
    pod_dir.join(LOGS_DIR).join(format!("{app}.log"))
}

/// The rotated (older) log file of `app`.
pub fn rotated_path(pod_dir: &Path, app: &str) -> PathBuf {
    pod_dir.join(LOGS_DIR).join(format!("{app}.log.1"))
}

/// The bound of one log file: `RKT_LOG_MAX_SIZE` (bytes, at least 4096) in `rkt run`'s
/// environment, else [`DEFAULT_MAX_BYTES`].
pub fn max_bytes() -> u64 {
    std::env::var("RKT_LOG_MAX_SIZE")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|n| n.max(4096))
        .unwrap_or(DEFAULT_MAX_BYTES)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// The CRI time stamp: RFC 3339, UTC, nanoseconds.
fn now() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.9fZ")
        .to_string()
}

/// The log of one app, being written. Output arrives in arbitrary chunks; complete lines are
/// recorded as they arrive, a line without its newline yet waits (up to [`MAX_LINE`]).
pub struct AppLog {
    path: PathBuf,
    rotated: PathBuf,
    file: Option<File>,
    size: u64,
    max: u64,
    pending: [Vec<u8>; 2],
}

impl AppLog {
    /// Opens (appends to) the log of `app` in `pod_dir`.
    pub fn open(pod_dir: &Path, app: &str, max: u64) -> Result<AppLog> {
        let dir = pod_dir.join(LOGS_DIR);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = log_path(pod_dir, app);
        let file = open_append(&path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(AppLog {
            path,
            rotated: rotated_path(pod_dir, app),
            file: Some(file),
            size,
            max,
            pending: [Vec::new(), Vec::new()],
        })
    }

    /// Records what the app wrote on `stream`.
    pub fn write(&mut self, stream: Stream, mut data: &[u8]) {
        let i = stream.index();
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            let mut line = std::mem::take(&mut self.pending[i]);
            line.extend_from_slice(&data[..nl]);
            data = &data[nl + 1..];
            self.line(stream, line, true);
        }
        self.pending[i].extend_from_slice(data);
        while self.pending[i].len() >= MAX_LINE {
            let rest = self.pending[i].split_off(MAX_LINE);
            let piece = std::mem::replace(&mut self.pending[i], rest);
            self.record(stream, false, &piece);
        }
    }

    /// The stream ended: a last line without a newline is recorded as a full one.
    pub fn finish(&mut self, stream: Stream) {
        let line = std::mem::take(&mut self.pending[stream.index()]);
        if !line.is_empty() {
            self.record(stream, true, &line);
        }
    }

    fn line(&mut self, stream: Stream, line: Vec<u8>, full: bool) {
        // A long line's earlier pieces went out as P; this is its end.
        let mut rest = &line[..];
        while rest.len() > MAX_LINE {
            self.record(stream, false, &rest[..MAX_LINE]);
            rest = &rest[MAX_LINE..];
        }
        self.record(stream, full, rest);
    }

    fn record(&mut self, stream: Stream, full: bool, content: &[u8]) {
        let head = format!(
            "{} {} {} ",
            now(),
            stream.as_str(),
            if full { 'F' } else { 'P' }
        );
        let len = (head.len() + content.len() + 1) as u64;
        if self.size > 0 && self.size + len > self.max {
            self.rotate();
        }
        let Some(f) = self.file.as_mut() else {
            return;
        };
        let mut rec = Vec::with_capacity(len as usize);
        rec.extend_from_slice(head.as_bytes());
        rec.extend_from_slice(content);
        rec.push(b'\n');
        // One write per record: a reader following the file never sees half of one.
        if f.write_all(&rec).is_ok() {
            self.size += len;
        }
    }

    /// The current file becomes `<app>.log.1`; a fresh one starts. A failure stops the logging
    /// (the output still reaches `rkt run`'s stdout/stderr), it never stops the app.
    fn rotate(&mut self) {
        self.file = None;
        if std::fs::rename(&self.path, &self.rotated).is_err() {
            return;
        }
        if let Ok(f) = open_append(&self.path) {
            self.file = Some(f);
            self.size = 0;
        }
    }
}

fn open_append(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// The logs of a pod's apps, by app index (the order of the pod's spec).
pub struct PodLogs {
    apps: Vec<Option<AppLog>>,
}

impl PodLogs {
    /// Opens the log of every app; an app whose log cannot be opened is not logged (one warning).
    pub fn open(pod_dir: &Path, apps: &[&str]) -> PodLogs {
        let max = max_bytes();
        PodLogs {
            apps: apps
                .iter()
                .map(|a| match AppLog::open(pod_dir, a, max) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        crate::print_error(&format!(
                            "warning: app {a:?} is not logged: {}",
                            crate::one_line(&e)
                        ));
                        None
                    }
                })
                .collect(),
        }
    }

    /// Opens the log of an app added while the pod runs (`rkt app start`); returns its index.
    /// An app whose log cannot be opened is not logged, as in [`PodLogs::open`].
    pub fn add(&mut self, pod_dir: &Path, app: &str) -> usize {
        let l = match AppLog::open(pod_dir, app, max_bytes()) {
            Ok(l) => Some(l),
            Err(e) => {
                crate::print_error(&format!(
                    "warning: app {app:?} is not logged: {}",
                    crate::one_line(&e)
                ));
                None
            }
        };
        self.apps.push(l);
        self.apps.len() - 1
    }

    /// App `app`'s output ended: its file is closed (an app removed with `rkt app rm` and added
    /// again under its name opens it anew).
    pub fn close(&mut self, app: usize) {
        if let Some(slot) = self.apps.get_mut(app) {
            if let Some(l) = slot.as_mut() {
                l.finish(Stream::Stdout);
                l.finish(Stream::Stderr);
            }
            *slot = None;
        }
    }

    pub fn write(&mut self, app: usize, stream: Stream, data: &[u8]) {
        if let Some(Some(l)) = self.apps.get_mut(app) {
            l.write(stream, data);
        }
    }

    pub fn finish(&mut self, app: usize, stream: Stream) {
        if let Some(Some(l)) = self.apps.get_mut(app) {
            l.finish(stream);
        }
    }
}

/// One record of a log file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub time: String,
    pub stream: Stream,
    /// `F`: the content ends a line; `P`: the line goes on in the next record.
    pub full: bool,
    pub content: Vec<u8>,
}

/// Parses one record (without its newline); None for a line that is not one.
pub fn parse_record(line: &[u8]) -> Option<Entry> {
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let full = match parts.next()? {
        b"F" => true,
        b"P" => false,
        _ => return None,
    };
    let content = parts.next().unwrap_or_default().to_vec();
    Some(Entry {
        time,
        stream,
        full,
        content,
    })
}

/// Every record of `app`'s logs, oldest first (the rotated file, then the current one).
pub fn read(pod_dir: &Path, app: &str) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for p in [rotated_path(pod_dir, app), log_path(pod_dir, app)] {
        match std::fs::read(&p) {
            Ok(b) => out.extend(b.split(|&c| c == b'\n').filter_map(parse_record)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }
    Ok(out)
}

/// Reads an app's log as it grows, across rotations: `rkt logs --follow`.
pub struct Follower {
    pod_dir: PathBuf,
    app: String,
    file: Option<File>,
    ino: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Starts at the beginning of the app's logs; the first [`Follower::poll`] returns every
    /// record kept so far (the rotated file's too).
    pub fn new(pod_dir: &Path, app: &str) -> Follower {
        Follower {
            pod_dir: pod_dir.to_path_buf(),
            app: app.to_string(),
            file: None,
            ino: 0,
            partial: Vec::new(),
        }
    }

    /// The records written since the last call.
    pub fn poll(&mut self) -> Result<Vec<Entry>> {
        use std::io::Read;
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        if self.file.is_none() {
            // First call: the rotated file, then the current one from its start.
            if let Ok(b) = std::fs::read(rotated_path(&self.pod_dir, &self.app)) {
                out.extend(b.split(|&c| c == b'\n').filter_map(parse_record));
            }
            self.reopen();
        }
        loop {
            let Some(f) = self.file.as_mut() else {
                self.reopen();
                return Ok(out);
            };
            let mut b = Vec::new();
            f.read_to_end(&mut b)
                .with_context(|| format!("reading the log of {}", self.app))?;
            self.partial.extend_from_slice(&b);
            if let Some(end) = self.partial.iter().rposition(|&c| c == b'\n') {
                let rest = self.partial.split_off(end + 1);
                let done = std::mem::replace(&mut self.partial, rest);
                out.extend(done.split(|&c| c == b'\n').filter_map(parse_record));
            }
            // Rotated under us: what we hold is now `.log.1`, read to its end above; go on
            // with the new file.
            let cur = std::fs::metadata(log_path(&self.pod_dir, &self.app))
                .map(|m| m.ino())
                .ok();
            match cur {
                Some(ino) if ino != self.ino => {
                    self.partial.clear();
                    self.reopen();
                }
                _ => return Ok(out),
            }
        }
    }

    fn reopen(&mut self) {
        use std::os::unix::fs::MetadataExt;
        self.file = File::open(log_path(&self.pod_dir, &self.app)).ok();
        self.ino = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.ino())
            .unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(dir: &Path) -> Vec<Entry> {
        read(dir, "a").unwrap()
    }

    #[test]
    fn lines_pieces_and_the_last_line() {
        let d = tempfile::tempdir().unwrap();
        let mut l = AppLog::open(d.path(), "a", 1 << 20).unwrap();
        l.write(Stream::Stdout, b"one\ntw");
        l.write(Stream::Stderr, b"err\n");
        l.write(Stream::Stdout, b"o\nthree");
        l.write(Stream::Stdout, &vec![b'x'; MAX_LINE + 10]);
        l.write(Stream::Stdout, b"\n");
        l.write(Stream::Stdout, b"tail");
        l.finish(Stream::Stdout);
        let r = records(d.path());
        let text: Vec<(Stream, bool, String)> = r
            .iter()
            .map(|e| {
                let c = String::from_utf8_lossy(&e.content);
                let c = if c.len() > 20 {
                    format!("{}..", &c[..8])
                } else {
                    c.into()
                };
                (e.stream, e.full, c)
            })
            .collect();
        assert_eq!(
            text,
            vec![
                (Stream::Stdout, true, "one".into()),
                (Stream::Stderr, true, "err".into()),
                (Stream::Stdout, true, "two".into()),
                (Stream::Stdout, false, "threexxx..".into()),
                (Stream::Stdout, true, "xxxxxxxxxxxxxxx".into()),
                (Stream::Stdout, true, "tail".into()),
            ]
        );
        // The CRI shape: RFC 3339 nanoseconds in UTC.
        let raw = std::fs::read_to_string(log_path(d.path(), "a")).unwrap();
        let first = raw.lines().next().unwrap();
        let (t, rest) = first.split_once(' ').unwrap();
        assert_eq!(rest, "stdout F one");
        assert!(
            t.len() == 30 && t.ends_with('Z') && t.as_bytes()[19] == b'.',
            "{t}"
        );
        assert!(chrono::DateTime::parse_from_rfc3339(t).is_ok());
    }

    #[test]
    fn rotation_bounds_the_files() {
        let d = tempfile::tempdir().unwrap();
        let mut l = AppLog::open(d.path(), "a", 4096).unwrap();
        for i in 0..1000 {
            l.write(Stream::Stdout, format!("line {i}\n").as_bytes());
        }
        let cur = std::fs::metadata(log_path(d.path(), "a")).unwrap().len();
        let old = std::fs::metadata(rotated_path(d.path(), "a"))
            .unwrap()
            .len();
        assert!(cur <= 4096 && old <= 4096, "{cur} {old}");
        let r = records(d.path());
        // The newest lines are kept, in order, without a gap.
        assert_eq!(r.last().unwrap().content, b"line 999");
        let n: Vec<u32> = r
            .iter()
            .map(|e| String::from_utf8_lossy(&e.content)[5..].parse().unwrap())
            .collect();
        assert!(n.windows(2).all(|w| w[1] == w[0] + 1));
        assert!(n.len() >= 80, "{}", n.len());
    }

    #[test]
    fn a_follower_sees_new_records_across_rotations() {
        let d = tempfile::tempdir().unwrap();
        let mut f = Follower::new(d.path(), "a");
        assert!(f.poll().unwrap().is_empty());
        let mut l = AppLog::open(d.path(), "a", 4096).unwrap();
        l.write(Stream::Stdout, b"first\n");
        let got = f.poll().unwrap();
        assert_eq!(got.len(), 1);
        let mut seen = 1;
        for i in 0..300 {
            l.write(Stream::Stdout, format!("line {i}\n").as_bytes());
            if i % 40 == 0 {
                seen += f.poll().unwrap().len();
            }
        }
        seen += f.poll().unwrap().len();
        assert_eq!(seen, 301);
    }

    #[test]
    fn hostile_records_are_skipped() {
        assert!(parse_record(b"garbage").is_none());
        assert!(parse_record(b"t stdin F x").is_none());
        assert!(parse_record(b"t stdout X x").is_none());
        let e = parse_record(b"t stderr P a b c").unwrap();
        assert_eq!(
            (e.stream, e.full, &e.content[..]),
            (Stream::Stderr, false, &b"a b c"[..])
        );
        let e = parse_record(b"t stdout F ").unwrap();
        assert!(e.content.is_empty());
    }
}
