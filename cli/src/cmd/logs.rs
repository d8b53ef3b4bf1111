//! `rkt logs UUID [--app=NAME] [--follow] [--tail=N] [--timestamps]`: what a pod's apps wrote on
//! stdout and stderr, from the logs kept in the pod directory (`rkt_engine::pod::logs`). Stdout
//! lines go to stdout, stderr lines to stderr; with several apps (or a sandbox's, whose apps
//! come and go) each line starts with `APP: `. Following a sandbox's every app takes in the apps
//! added meanwhile.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;
use rkt_engine::pod::logs::{Entry, Follower, Stream};

use crate::global::Globals;
use crate::pod::{Pod, Pods, State};

#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Pod UUID (or unambiguous prefix)
    pub uuid: String,
    /// Only this app's output (default: every app of the pod)
    #[arg(long, value_name = "NAME")]
    pub app: Option<String>,
    /// Keep printing new output until the pod exits
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Only the last N lines (-1: all)
    #[arg(long, value_name = "N", default_value_t = -1, allow_negative_numbers = true)]
    pub tail: i64,
    /// Start each line with the time it was written (RFC 3339, UTC)
    #[arg(long, short = 't')]
    pub timestamps: bool,
}

/// How often `--follow` looks for new output.
const FOLLOW_POLL: Duration = Duration::from_millis(100);

pub fn run(g: &Globals, a: LogsArgs) -> Result<i32> {
    if a.tail < -1 {
        bail!(
            "invalid --tail {}: a number of lines, or -1 for all",
            a.tail
        );
    }
    let pods = Pods::new(&g.dir);
    let pod = pods.find(&a.uuid)?;
    if !pod.state.has_run() {
        bail!(
            "pod {} has not run, it has no logs (state: {})",
            pod.uuid,
            pod.state.as_str()
        );
    }
    let names: Vec<String> = pod.manifest()?.apps.into_iter().map(|ra| ra.name).collect();
    let mutable = rkt_engine::pod::app::is_mutable(&pod.path);
    let mut apps: Vec<String> = match &a.app {
        Some(n) if names.contains(n) => vec![n.clone()],
        Some(n) => bail!("pod {} has no app named {n:?}", pod.uuid),
        None => names,
    };
    let mut out = Printer {
        prefix: a.app.is_none() && (apps.len() > 1 || mutable),
        timestamps: a.timestamps,
        at_line_start: vec![[true; 2]; apps.len()],
    };
    let mut followers: Vec<Follower> = apps.iter().map(|n| Follower::new(&pod.path, n)).collect();
    let first = poll_all(&mut followers)?;
    let skip = tail_start(&first, a.tail);
    for (i, e) in &first[skip..] {
        out.print(&apps[*i], *i, e);
    }
    if !a.follow {
        return Ok(0);
    }
    loop {
        let done = !running(&pods, &pod);
        if a.app.is_none() && mutable {
            // `rkt app add` may have added apps since: follow them too, from their start.
            let now = pod.manifest().map(|m| m.apps).unwrap_or_default();
            for ra in now {
                if !apps.contains(&ra.name) {
                    followers.push(Follower::new(&pod.path, &ra.name));
                    out.at_line_start.push([true; 2]);
                    apps.push(ra.name);
                }
            }
        }
        let next = poll_all(&mut followers)?;
        for (i, e) in &next {
            out.print(&apps[*i], *i, e);
        }
        if done {
            return Ok(0);
        }
        std::thread::sleep(FOLLOW_POLL);
    }
}

fn running(pods: &Pods, pod: &Pod) -> bool {
    matches!(
        Pod::load(pods, &pod.uuid).ok().flatten().map(|p| p.state),
        Some(State::Running)
    )
}

/// New records of every app, by app index, in time order (the time stamps have a fixed width,
/// so they sort as strings; a stable sort keeps each app's own order).
fn poll_all(followers: &mut [Follower]) -> Result<Vec<(usize, Entry)>> {
    let mut all = Vec::new();
    for (i, f) in followers.iter_mut().enumerate() {
        all.extend(f.poll()?.into_iter().map(|e| (i, e)));
    }
    all.sort_by(|a, b| a.1.time.cmp(&b.1.time));
    Ok(all)
}

/// Where the last `n` lines start (a line may be several `P` records and its `F`).
fn tail_start(records: &[(usize, Entry)], n: i64) -> usize {
    if n < 0 {
        return 0;
    }
    let mut lines = 0;
    for (idx, (_, e)) in records.iter().enumerate().rev() {
        if e.full {
            if lines == n {
                return idx + 1;
            }
            lines += 1;
        }
    }
    0
}

struct Printer {
    prefix: bool,
    timestamps: bool,
    /// Per app and stream: the next record starts a line.
    at_line_start: Vec<[bool; 2]>,
}

impl Printer {
    fn print(&mut self, app: &str, i: usize, e: &Entry) {
        let s = match e.stream {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        };
        let mut buf = Vec::new();
        if self.at_line_start[i][s] {
            if self.timestamps {
                buf.extend_from_slice(e.time.as_bytes());
                buf.push(b' ');
            }
            if self.prefix {
                buf.extend_from_slice(app.as_bytes());
                buf.extend_from_slice(b": ");
            }
        }
        buf.extend_from_slice(&e.content);
        if e.full {
            buf.push(b'\n');
        }
        self.at_line_start[i][s] = e.full;
        use std::io::Write;
        match e.stream {
            // The app's bytes as it wrote them, not made UTF-8.
            Stream::Stdout => {
                let mut o = std::io::stdout().lock();
                if let Err(e) = o.write_all(&buf).and_then(|()| o.flush()) {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        crate::exit_on_broken_pipe();
                    }
                }
            }
            Stream::Stderr => {
                let _ = std::io::stderr().write_all(&buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(full: bool) -> (usize, Entry) {
        (
            0,
            Entry {
                time: String::new(),
                stream: Stream::Stdout,
                full,
                content: vec![],
            },
        )
    }

    #[test]
    fn tail_counts_lines_not_pieces() {
        let r = vec![e(true), e(false), e(true), e(true)];
        assert_eq!(tail_start(&r, -1), 0);
        assert_eq!(tail_start(&r, 0), 4);
        assert_eq!(tail_start(&r, 1), 3);
        assert_eq!(tail_start(&r, 2), 1);
        assert_eq!(tail_start(&r, 3), 0);
        assert_eq!(tail_start(&r, 10), 0);
    }
}
