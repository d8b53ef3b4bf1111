//! Running commands with a timeout and capturing their output.

use std::fmt;
use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long to keep reading output after the process exited: a daemonised grandchild (a pod app)
/// may hold the pipes open forever.
const PIPE_GRACE: Duration = Duration::from_secs(3);

/// The outcome of one command.
#[derive(Clone)]
pub struct RktOutput {
    /// Exit code; 128+N when killed by signal N.
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    cmdline: String,
}

impl RktOutput {
    /// Panics with the full output unless the exit code is 0.
    #[track_caller]
    pub fn assert_ok(&self) -> &Self {
        self.assert_code(0)
    }

    /// Panics with the full output unless the exit code is `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        if self.code != code {
            panic!("expected exit code {code}, got {}\n{self}", self.code);
        }
        self
    }

    /// Panics with the full output unless stdout contains `needle`.
    #[track_caller]
    pub fn assert_stdout_contains(&self, needle: &str) -> &Self {
        if !self.stdout.contains(needle) {
            panic!("stdout does not contain {needle:?}\n{self}");
        }
        self
    }

    /// Panics with the full output unless stderr contains `needle`.
    #[track_caller]
    pub fn assert_stderr_contains(&self, needle: &str) -> &Self {
        if !self.stderr.contains(needle) {
            panic!("stderr does not contain {needle:?}\n{self}");
        }
        self
    }

    /// The value of the last `KEY=value` line in stdout (the format the `inspect` test app
    /// prints). Leading whitespace and `\r` are ignored, so output relayed through a console works.
    pub fn value(&self, key: &str) -> Option<String> {
        self.values(key).pop()
    }

    /// Every `KEY=value` value for `key` in stdout, in order.
    pub fn values(&self, key: &str) -> Vec<String> {
        kv_values(&self.stdout, key)
    }

    /// Like [`RktOutput::value`], panicking with the full output when the key is missing.
    #[track_caller]
    pub fn expect_value(&self, key: &str) -> String {
        match self.value(key) {
            Some(v) => v,
            None => panic!("no {key}=… line in stdout\n{self}"),
        }
    }

    /// The command line that produced this output.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }
}

/// `KEY=value` values for `key` in `text`, in order.
pub(crate) fn kv_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim_start().trim_end_matches('\r');
            l.strip_prefix(key)
                .and_then(|r| r.strip_prefix('='))
                .map(str::to_string)
        })
        .collect()
}

impl fmt::Display for RktOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "command: {}", self.cmdline)?;
        writeln!(f, "exit code: {}", self.code)?;
        writeln!(f, "--- stdout ---\n{}", self.stdout)?;
        write!(f, "--- stderr ---\n{}", self.stderr)
    }
}

impl fmt::Debug for RktOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn cmdline(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn exit_code(st: ExitStatus) -> i32 {
    st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(0))
}

fn kill_group(child: &Child) {
    // The child leads its own process group, so this also reaches the pod processes it started.
    // SAFETY: plain kill(2) on a process group we created.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
}

/// Runs any command (rkt, skopeo, umoci, …) with a timeout in seconds, capturing its output.
/// Panics on timeout, with the output gathered so far.
pub fn run_command(cmd: Command, timeout_secs: u64) -> RktOutput {
    run(cmd, None, Duration::from_secs(timeout_secs))
}

/// Like [`run_command`], feeding `stdin` to the process.
pub fn run_command_with_stdin(cmd: Command, stdin: &[u8], timeout_secs: u64) -> RktOutput {
    run(cmd, Some(stdin.to_vec()), Duration::from_secs(timeout_secs))
}

pub(crate) fn run(mut cmd: Command, stdin: Option<Vec<u8>>, timeout: Duration) -> RktOutput {
    let line = cmdline(&cmd);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));

    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        std::thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
    let out = Arc::new(Mutex::new(Vec::new()));
    let err = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        reader(
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            out.clone(),
        ),
        reader(
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
            err.clone(),
        ),
    ];

    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() >= deadline => break None,
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for `{line}`: {e}"),
        }
    };
    let timed_out = status.is_none();
    if timed_out {
        kill_group(&child);
    }
    let status = match status {
        Some(s) => s,
        None => child.wait().expect("waiting for killed child"),
    };
    let grace = Instant::now() + PIPE_GRACE;
    for r in readers.into_iter().flatten() {
        while !r.is_finished() && Instant::now() < grace {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let output = RktOutput {
        code: exit_code(status),
        stdout: String::from_utf8_lossy(&out.lock().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err.lock().unwrap()).into_owned(),
        cmdline: line,
    };
    if timed_out {
        panic!("timed out after {} s (killed)\n{output}", timeout.as_secs());
    }
    output
}

fn reader(
    pipe: Option<Box<dyn Read + Send>>,
    buf: Arc<Mutex<Vec<u8>>>,
) -> Option<std::thread::JoinHandle<()>> {
    let mut pipe = pipe?;
    Some(std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    }))
}

/// A command running in the background (its own process group), stdout and stderr going to files
/// so it never blocks on a full pipe. Killed (whole group) on drop if still running.
pub struct RktChild {
    child: Child,
    cmdline: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    status: Option<ExitStatus>,
}

impl RktChild {
    /// Starts any command in the background, its output going to files in `scratch`.
    pub fn spawn_command(mut cmd: Command, scratch: &Path) -> RktChild {
        let line = cmdline(&cmd);
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let stdout_path = scratch.join(format!(".child-{n}.stdout"));
        let stderr_path = scratch.join(format!(".child-{n}.stderr"));
        let o = std::fs::File::create(&stdout_path).expect("creating stdout file");
        let e = std::fs::File::create(&stderr_path).expect("creating stderr file");
        cmd.stdin(Stdio::null())
            .stdout(o)
            .stderr(e)
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `{line}`: {e}"));
        RktChild {
            child,
            cmdline: line,
            stdout_path,
            stderr_path,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Output written so far (exit code -1 while still running).
    pub fn output_so_far(&mut self) -> RktOutput {
        let code = match self.try_status() {
            Some(st) => exit_code(st),
            None => -1,
        };
        RktOutput {
            code,
            stdout: String::from_utf8_lossy(&std::fs::read(&self.stdout_path).unwrap_or_default())
                .into_owned(),
            stderr: String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default())
                .into_owned(),
            cmdline: self.cmdline.clone(),
        }
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// Polls until stdout contains `needle` (true) or `secs` pass / the process exits without it
    /// (false).
    pub fn wait_for_stdout(&mut self, needle: &str, secs: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let running = self.is_running();
            if self.output_so_far().stdout.contains(needle) {
                return true;
            }
            if !running || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits up to `secs` for the process to exit; on timeout kills its process group and panics.
    pub fn wait_timeout(&mut self, secs: u64) -> RktOutput {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.is_running() {
            if Instant::now() >= deadline {
                kill_group(&self.child);
                let _ = self.child.wait();
                panic!(
                    "timed out after {secs} s (killed)\n{}",
                    self.output_so_far()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.output_so_far()
    }

    /// Sends `sig` to the process (not its group).
    pub fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Kills the whole process group and reaps the process.
    pub fn kill(&mut self) -> RktOutput {
        if self.is_running() {
            kill_group(&self.child);
            self.status = self.child.wait().ok();
        }
        self.output_so_far()
    }
}

impl Drop for RktChild {
    fn drop(&mut self) {
        if self.is_running() {
            kill_group(&self.child);
            let _ = self.child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_parsing() {
        let t = "A=1\n  B=two=2\r\nA=3\nAB=x\nnoise\n";
        assert_eq!(kv_values(t, "A"), vec!["1", "3"]);
        assert_eq!(kv_values(t, "B"), vec!["two=2"]);
        assert!(kv_values(t, "C").is_empty());
    }

    #[test]
    fn run_captures_code_and_streams() {
        let mut c = Command::new("sh");
        c.args(["-c", "echo out; echo err >&2; exit 7"]);
        let o = run_command(c, 10);
        assert_eq!(o.code, 7);
        assert_eq!(o.stdout, "out\n");
        assert_eq!(o.stderr, "err\n");
    }

    #[test]
    fn run_feeds_stdin() {
        let mut c = Command::new("cat");
        c.arg("-");
        let o = run(c, Some(b"hello".to_vec()), Duration::from_secs(10));
        assert_eq!(o.stdout, "hello");
    }

    #[test]
    fn signal_exit_code() {
        let mut c = Command::new("sh");
        c.args(["-c", "kill -9 $$"]);
        assert_eq!(run_command(c, 10).code, 137);
    }

    #[test]
    #[should_panic(expected = "timed out")]
    fn run_times_out() {
        let mut c = Command::new("sleep");
        c.arg("30");
        run_command(c, 1);
    }

    #[test]
    fn background_child_does_not_block_on_grandchild() {
        // A daemonised grandchild keeps stdout open; run() must still return promptly.
        let mut c = Command::new("sh");
        c.args(["-c", "echo hi; (sleep 20 &) ; exit 0"]);
        let t = Instant::now();
        let o = run_command(c, 30);
        assert_eq!(o.code, 0);
        assert_eq!(o.stdout, "hi\n");
        assert!(t.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn spawned_child_output_and_kill() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Command::new("sh");
        c.args(["-c", "echo ready; sleep 30"]);
        let mut ch = RktChild::spawn_command(c, dir.path());
        assert!(ch.wait_for_stdout("ready", 10));
        assert!(ch.is_running());
        let o = ch.kill();
        assert_eq!(o.code, 137);
        assert!(!ch.is_running());
    }
}
