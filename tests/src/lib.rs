//! End-to-end test harness for rkt: runs the real `rkt` binary in a throw-away `--dir`, builds the
//! test images once (shared between test processes through a cache under `target/`), and starts a
//! real Docker registry on a free port.
//!
//! Failures panic with the full output of the command that failed; nothing is silently skipped.
//!
//! ```no_run
//! use rkt_tests::{images, require_root, Registry, RktEnv};
//!
//! require_root();
//! let env = RktEnv::new(); // fresh --dir, cleaned up (unmount, kill) on drop
//! let im = images(); // built once, cached under target/test-images/
//! let out = env.rkt(&[
//!     "run",
//!     "--stage1=ns",
//!     "--insecure-options=image",
//!     &im.busybox_oci_ref(),
//!     "--exec=/inspect",
//!     "--",
//!     "--print-user",
//!     "--exit-code=3",
//! ]);
//! out.assert_code(3);
//! assert_eq!(out.expect_value("UID"), "0");
//!
//! let reg = Registry::start(); // real docker-registry on 127.0.0.1:<free port>
//! reg.push(&im.busybox_oci_ref(), "busybox:latest");
//! let id = env.fetch_id(&["--insecure-options=http,image", &reg.docker_ref("busybox:latest")]);
//! assert!(!id.is_empty());
//! ```

pub mod containerd;
pub mod hostile_images;
mod https;
mod images;
mod proc;
mod registry;

pub use https::{HttpsServer, Seen, TestCa};
pub use images::{big_image, images, TestImages};
pub use proc::{run_command, run_command_with_stdin, RktChild, RktOutput};
pub use registry::{Registry, RegistryOptions};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Default timeout of one rkt invocation: generous because the kvm flavour boots a kernel in an
/// emulated nested VM (about a minute) and the machine is shared.
pub const DEFAULT_TIMEOUT_SECS: u64 = 300;

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The rkt binary under test: `$RKT_BIN` if set, else `<target>/debug/rkt`.
pub fn rkt_bin() -> PathBuf {
    let p = match std::env::var_os("RKT_BIN") {
        Some(b) if !b.is_empty() => PathBuf::from(b),
        _ => target_dir().join("debug").join("rkt"),
    };
    if !p.is_file() {
        panic!(
            "build rkt first: cargo build -p rkt (no rkt binary at {})",
            p.display()
        );
    }
    p
}

/// Panics unless running as root: pod tests need mounts and namespaces, and must fail loudly
/// rather than skip when run unprivileged.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test must run as root (it mounts, creates namespaces or cgroups); run the suite with sudo");
    }
}

/// The stage1 flavour a pod test runs on. Every pod-running test names its flavour explicitly
/// (`--stage1=…`), so a change of rkt's default stage1 never changes what a test checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flavor {
    Ns,
    Kvm,
}

impl Flavor {
    /// rkt's name for the flavour (`--stage1=NAME`, `<pod>/stage1-flavor`).
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Ns => "ns",
            Flavor::Kvm => "kvm",
        }
    }

    /// The `rkt run`/`rkt prepare` flag selecting the flavour.
    pub fn flag(self) -> &'static str {
        match self {
            Flavor::Ns => "--stage1=ns",
            Flavor::Kvm => "--stage1=kvm",
        }
    }

    /// Seconds a pod may take from `rkt run` to its apps running. A kvm pod boots a kernel whose
    /// code is emulated under this machine's nested PVM (30-50 s, more with two boots on two
    /// shared cores), so its budget is generous.
    pub fn start_secs(self) -> u64 {
        match self {
            Flavor::Ns => 60,
            Flavor::Kvm => 600,
        }
    }

    /// Checks what the flavour needs (root; `/dev/kvm` for kvm: missing, the test FAILS, it never
    /// skips) and returns a fresh [`RktEnv`]; on kvm its rkt calls may take [`Flavor::start_secs`]
    /// longer than the default timeout (a boot, two at a time on two shared cores).
    #[track_caller]
    pub fn env(self) -> RktEnv {
        require_root();
        if self == Flavor::Kvm {
            assert!(
                Path::new("/dev/kvm").exists(),
                "/dev/kvm is missing: the stage1 kvm tests cannot run on this machine"
            );
        }
        let mut env = RktEnv::new();
        if self == Flavor::Kvm {
            env.set_timeout(DEFAULT_TIMEOUT_SECS + self.start_secs());
        }
        env
    }
}

/// Generates one `#[test]` per stage1 flavour for each named function `fn NAME(f: Flavor)`:
/// `flavours!(exit_code);` makes `exit_code::ns` and `exit_code::kvm`, so
/// `cargo test -- ::kvm` runs one flavour's half of a matrix.
#[macro_export]
macro_rules! flavours {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn ns() {
                    super::$name($crate::Flavor::Ns)
                }
                #[test]
                fn kvm() {
                    super::$name($crate::Flavor::Kvm)
                }
            }
        )+
    };
}

/// `ARGS` with image signature checks off: `image` added to the first `--insecure-options=…`
/// before any `--`, else `--insecure-options=image` put first (a global flag). rkt verifies every
/// image by default (docs/trust.md); the tests' images are unsigned, and tests of trust opt back in
/// with [`RktEnv::verify_images`].
pub fn insecure_image(args: &[&str]) -> Vec<String> {
    let mut out: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let end = out.iter().position(|a| a == "--").unwrap_or(out.len());
    match out[..end]
        .iter_mut()
        .find(|a| a.starts_with("--insecure-options="))
    {
        Some(a)
            if !a
                .split(['=', ','])
                .any(|o| o == "image" || o == "all" || o == "all-fetch") =>
        {
            a.push_str(",image")
        }
        Some(_) => {}
        None => out.insert(0, "--insecure-options=image".into()),
    }
    out
}

/// A fresh rkt data directory (`--dir`) plus a scratch directory for test files, both removed on
/// drop after killing processes and unmounting anything left inside (failed pod tests leave
/// overlay mounts and running apps behind).
///
/// Set `RKT_TEST_KEEP=1` to keep the directories for debugging.
pub struct RktEnv {
    /// The directory passed as `rkt --dir=…`.
    pub dir: PathBuf,
    /// A scratch directory next to `dir` for test inputs (manifests, volumes, files).
    pub scratch: PathBuf,
    /// Empty private stand-ins for `/etc/rkt` and `/usr/lib/rkt`; passed only by
    /// [`RktEnv::rkt_isolated`] (or by hand with [`RktEnv::config_flags`]), so tests of `rkt trust`,
    /// auth or network configs never touch the host's.
    pub local_config: PathBuf,
    pub system_config: PathBuf,
    root: PathBuf,
    tmp: Option<tempfile::TempDir>,
    timeout: Duration,
    /// Whether image signatures are checked (rkt's default); see [`RktEnv::verify_images`].
    verify_images: bool,
}

impl Default for RktEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl RktEnv {
    pub fn new() -> RktEnv {
        let tmp = tempfile::Builder::new()
            .prefix("rkt-test-")
            .tempdir()
            .expect("creating the test temp dir");
        let root = tmp.path().to_path_buf();
        let dir = root.join("data");
        let scratch = root.join("scratch");
        std::fs::create_dir(&dir).expect("creating --dir");
        std::fs::create_dir(&scratch).expect("creating scratch dir");
        let local_config = root.join("etc-rkt");
        let system_config = root.join("usr-lib-rkt");
        std::fs::create_dir(&local_config).expect("creating local config dir");
        std::fs::create_dir(&system_config).expect("creating system config dir");
        let keep = std::env::var_os("RKT_TEST_KEEP").is_some_and(|v| v != "0" && !v.is_empty());
        let tmp = if keep {
            eprintln!("RKT_TEST_KEEP: keeping {}", root.display());
            let _ = tmp.keep();
            None
        } else {
            Some(tmp)
        };
        RktEnv {
            dir,
            scratch,
            local_config,
            system_config,
            root,
            tmp,
            timeout: Duration::from_secs(DEFAULT_TIMEOUT_SECS),
            verify_images: false,
        }
    }

    /// Changes the timeout of later [`RktEnv::rkt`] / [`RktEnv::rkt_with_stdin`] calls.
    pub fn set_timeout(&mut self, secs: u64) {
        self.timeout = Duration::from_secs(secs);
    }

    /// Runs `rkt fetch ARGS…`, panics unless it succeeds, and returns the image ID (the last
    /// non-empty stdout line, as rkt prints it).
    #[track_caller]
    pub fn fetch_id(&self, args: &[&str]) -> String {
        let mut full = vec!["fetch"];
        full.extend_from_slice(args);
        let out = self.rkt(&full);
        out.assert_ok();
        match out.stdout.lines().rev().find(|l| !l.trim().is_empty()) {
            Some(id) => id.trim().to_string(),
            None => panic!("rkt fetch printed no image ID\n{out}"),
        }
    }

    /// Lets rkt check image signatures, as it does by default. Without this the test images
    /// (unsigned) run as with `--insecure-options=image`: see [`insecure_image`].
    pub fn verify_images(&mut self) {
        self.verify_images = true;
    }

    /// `rkt --dir=<dir> ARGS…` as a `Command`, for callers that need to customise it (env, cwd).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(rkt_bin());
        c.arg(format!("--dir={}", self.dir.display()));
        if self.verify_images {
            c.args(args);
        } else {
            c.args(insecure_image(args));
        }
        c
    }

    /// `--local-config=<local_config>` and `--system-config=<system_config>`.
    pub fn config_flags(&self) -> [String; 2] {
        [
            format!("--local-config={}", self.local_config.display()),
            format!("--system-config={}", self.system_config.display()),
        ]
    }

    /// Runs `rkt --dir=<dir> --local-config=… --system-config=… ARGS…` (private config dirs).
    pub fn rkt_isolated(&self, args: &[&str]) -> RktOutput {
        let flags = self.config_flags();
        let mut full: Vec<&str> = flags.iter().map(String::as_str).collect();
        full.extend_from_slice(args);
        self.rkt(&full)
    }

    /// Runs `rkt --dir=<dir> ARGS…` to completion (default timeout, panics on timeout).
    pub fn rkt(&self, args: &[&str]) -> RktOutput {
        proc::run(self.command(args), None, self.timeout)
    }

    /// Like [`RktEnv::rkt`] with a timeout in seconds.
    pub fn rkt_timeout(&self, secs: u64, args: &[&str]) -> RktOutput {
        proc::run(self.command(args), None, Duration::from_secs(secs))
    }

    /// Like [`RktEnv::rkt`], feeding `stdin` to the process.
    pub fn rkt_with_stdin(&self, stdin: &[u8], args: &[&str]) -> RktOutput {
        proc::run(self.command(args), Some(stdin.to_vec()), self.timeout)
    }

    /// Starts `rkt --dir=<dir> ARGS…` in the background (own process group, output to files in
    /// the scratch dir); see [`RktChild`]. Killed on drop if still running.
    pub fn spawn(&self, args: &[&str]) -> RktChild {
        RktChild::spawn_command(self.command(args), &self.scratch)
    }
}

impl Drop for RktEnv {
    fn drop(&mut self) {
        if std::thread::panicking() {
            print_console_tails(&self.dir);
        }
        if self.tmp.is_none() {
            return;
        }
        cleanup_tree(&self.root);
        release_networks(self);
        // TempDir's own drop removes the files (errors ignored).
    }
}

/// A pod killed with its test still holds its CNI networks (namespace under /run/netns, veth,
/// host-local address, iptables rules), which live outside the test's directories: `rkt gc`
/// releases them (docs/networking.md), else every failed test would leak an address.
fn release_networks(env: &RktEnv) {
    let Ok(states) = std::fs::read_dir(env.dir.join("pods")) else {
        return;
    };
    let planned = states
        .flatten()
        .filter_map(|s| std::fs::read_dir(s.path()).ok())
        .flatten()
        .flatten()
        .any(|p| p.path().join("net-plan.json").exists());
    if planned {
        let _ = env
            .command(&["gc", "--grace-period=0s"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// For a failing test: the last lines of every kvm pod's serial console under `dir`, so a guest
/// crash, panic or an app killed by a signal (the guest init logs those) is one read away.
fn print_console_tails(dir: &Path) {
    let Ok(states) = std::fs::read_dir(dir.join("pods")) else {
        return;
    };
    for pod in states
        .flatten()
        .filter_map(|s| std::fs::read_dir(s.path()).ok())
        .flatten()
        .flatten()
    {
        let log = pod.path().join("console.log");
        let Ok(text) = std::fs::read(&log) else {
            continue;
        };
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(40)..];
        eprintln!(
            "--- last {} lines of {} ---\n{}\n--- end ---",
            tail.len(),
            log.display(),
            tail.join("\n")
        );
    }
}

/// Best effort: kill processes whose cwd or root is inside `root`, then lazily unmount every mount
/// point below it, deepest first.
pub fn cleanup_tree(root: &Path) {
    kill_processes_under(root);
    for _ in 0..3 {
        let mounts = mounts_under(root);
        if mounts.is_empty() {
            break;
        }
        for m in mounts {
            if let Ok(c) = std::ffi::CString::new(m.as_os_str().as_encoded_bytes()) {
                // SAFETY: c is a valid NUL-terminated path.
                unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

fn kill_processes_under(root: &Path) {
    let me = std::process::id();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return;
    };
    let mut killed = false;
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let inside = ["cwd", "root"].iter().any(|l| {
            std::fs::read_link(e.path().join(l))
                .map(|t| t.starts_with(root))
                .unwrap_or(false)
        });
        if inside {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            killed = true;
        }
    }
    if killed {
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Mount points at or below `root` from /proc/self/mountinfo, deepest first.
pub fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(root))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let n = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/x\\134y"), "/x\\y");
    }

    #[test]
    fn env_dirs_exist_and_are_removed() {
        let env = RktEnv::new();
        let root = env.root.clone();
        assert!(env.dir.is_dir() && env.scratch.is_dir());
        assert!(env.dir.starts_with(&root));
        drop(env);
        if std::env::var_os("RKT_TEST_KEEP").is_none() {
            assert!(!root.exists(), "{} should be removed", root.display());
        }
    }
}
