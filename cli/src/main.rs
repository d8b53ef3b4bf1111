//! `rkt`: stage0. Parses the command line, then hands each command to its module.
//! Every rkt failure ends with one line on stderr and exit code 254; `rkt run` exits with the app's code.

mod cmd;
mod config;
mod global;
mod measure;
mod net;
mod pod;
mod stage1;

use clap::{CommandFactory, Parser, Subcommand};
use global::GlobalOpts;

/// Exit code for rkt's own errors (rkt v1's runWrapper).
pub use rkt_stage2::EXIT_RKT_ERROR;

#[derive(Parser, Debug)]
#[command(
    name = "rkt",
    about = "rkt, the pod-native container engine",
    disable_version_flag = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the version and exit
    Version,
    /// Print the effective configuration as JSON
    Config(cmd::config::ConfigArgs),
    /// Output shell completion code for the given shell
    Completion(cmd::completion::CompletionArgs),
    /// Fetch image(s) and store them in the local store
    Fetch(cmd::fetch::FetchArgs),
    /// Operate on image(s) in the local store
    Image(cmd::image::ImageArgs),
    /// Run image(s) in a pod
    Run(cmd::pods::RunArgs),
    /// Prepare a pod to run image(s)
    Prepare(cmd::pods::PrepareArgs),
    /// Run a prepared pod
    RunPrepared(cmd::pods::RunPreparedArgs),
    /// List pods
    List(cmd::pods::ListArgs),
    /// Check the status of a pod
    Status(cmd::pods::StatusArgs),
    /// Enter the namespaces of an app within a pod
    Enter(cmd::pods::EnterArgs),
    /// Stop pods
    Stop(cmd::pods::StopArgs),
    /// Remove exited or prepared pods
    Rm(cmd::pods::RmArgs),
    /// Garbage collect pods that have exited
    Gc(cmd::pods::GcArgs),
    /// Inspect and print the pod manifest
    CatManifest(cmd::pods::CatManifestArgs),
    /// TPM measurement: event log, verification and quotes
    Tpm(cmd::tpm::TpmArgs),
}

fn main() {
    install_panic_hook();
    let code = match Cli::try_parse() {
        Ok(cli) => match dispatch(cli) {
            Ok(code) => code,
            Err(e) if is_broken_pipe(&e) => exit_on_broken_pipe(),
            Err(e) => {
                print_error(&one_line(&e));
                EXIT_RKT_ERROR
            }
        },
        Err(e) => usage_error(e),
    };
    std::process::exit(code);
}

/// Writes `rkt: LINE` to stderr; a stderr that cannot be written to is not worth a panic.
pub fn print_error(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "rkt: {line}");
}

/// The last line of defence: a panic (a bug) still ends as one line and exit 254, not a
/// backtrace and 101; a panic from writing into a closed pipe is the reader going away. In
/// another thread (kvm's relays) the panic stays that thread's: one line, then it unwinds and
/// its joiner decides, as before.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        let main_thread = std::thread::current().name() == Some("main");
        let broken_pipe = msg.contains("Broken pipe");
        if broken_pipe && main_thread {
            exit_on_broken_pipe();
        }
        if broken_pipe {
            return;
        }
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        print_error(&sanitize(&format!("internal error: {msg}{at}")));
        if main_thread {
            std::process::exit(EXIT_RKT_ERROR);
        }
    }));
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Ends the process the way `ls | head -0` ends `ls`: killed by SIGPIPE, silently (Rust ignores
/// SIGPIPE, so the write came back as EPIPE instead).
pub fn exit_on_broken_pipe() -> ! {
    // SAFETY: restoring the default disposition and raising a signal at ourselves.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE);
}

/// Writes command output to stdout: a reader that went away ends rkt quietly
/// ([`exit_on_broken_pipe`]); any other write error is an rkt error.
pub fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            exit_on_broken_pipe();
        }
        print_error(&format!("writing to stdout: {e}"));
        std::process::exit(EXIT_RKT_ERROR);
    }
}

/// `print!` for command output, through [`write_stdout`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

/// `println!` for command output, through [`write_stdout`].
#[macro_export]
macro_rules! outln {
    () => { $crate::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

fn dispatch(cli: Cli) -> anyhow::Result<i32> {
    let g = cli.global.resolve()?;
    match cli.command {
        Command::Version => cmd::version::run(),
        Command::Config(a) => cmd::config::run(&g, a),
        Command::Completion(a) => cmd::completion::run(a, Cli::command()),
        Command::Fetch(a) => cmd::fetch::run(&g, a),
        Command::Image(a) => cmd::image::run(&g, a),
        Command::Run(a) => cmd::pods::run(&g, a),
        Command::Prepare(a) => cmd::pods::prepare(&g, a),
        Command::RunPrepared(a) => cmd::pods::run_prepared(&g, a),
        Command::List(a) => cmd::pods::list(&g, a),
        Command::Status(a) => cmd::pods::status(&g, a),
        Command::Enter(a) => cmd::pods::enter(&g, a),
        Command::Stop(a) => cmd::pods::stop(&g, a),
        Command::Rm(a) => cmd::pods::rm(&g, a),
        Command::Gc(a) => cmd::pods::gc(&g, a),
        Command::CatManifest(a) => cmd::pods::cat_manifest(&g, a),
        Command::Tpm(a) => cmd::tpm::run(&g, a),
    }
}

/// Help and version requests print normally and succeed; a bad command line is an rkt error: one
/// line naming the problem, exit 254.
fn usage_error(e: clap::Error) -> i32 {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                EXIT_RKT_ERROR
            } else {
                0
            }
        }
        _ => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid command line")
                .trim_start_matches("error: ");
            print_error(&sanitize(first));
            EXIT_RKT_ERROR
        }
    }
}

/// Limits on files rkt reads because a flag named them (docs/pods.md): a file larger than its
/// limit (or endless, like /dev/zero) is refused instead of read until memory runs out.
pub mod limits {
    /// `--set-env-file`: the kernel caps an exec's environment far below this anyway.
    pub const ENV_FILE: u64 = 1 << 20;
    /// `--pod-manifest`.
    pub const POD_MANIFEST: u64 = 4 << 20;
    /// `--uuid-file`: one UUID and some whitespace.
    pub const UUID_FILE: u64 = 4096;
    /// Configuration files (`*.d/*.json`) and the host's /etc/resolv.conf and /etc/hosts.
    pub const CONFIG_FILE: u64 = 1 << 20;
}

/// Reads at most `limit` bytes of `path`; more is an error naming `what` and the limit.
pub fn read_limited(path: &std::path::Path, limit: u64, what: &str) -> anyhow::Result<Vec<u8>> {
    use anyhow::Context;
    use std::io::Read;
    let f =
        std::fs::File::open(path).with_context(|| format!("reading {what} {}", path.display()))?;
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    if buf.len() as u64 > limit {
        anyhow::bail!("{what} {} is larger than {limit} bytes", path.display());
    }
    Ok(buf)
}

/// [`read_limited`] for text files.
pub fn read_limited_string(
    path: &std::path::Path,
    limit: u64,
    what: &str,
) -> anyhow::Result<String> {
    String::from_utf8(read_limited(path, limit, what)?)
        .map_err(|_| anyhow::anyhow!("{what} {} is not UTF-8 text", path.display()))
}

/// Joins an error and its causes into a single line, made safe to print ([`sanitize`]).
pub fn one_line(e: &anyhow::Error) -> String {
    sanitize(&format!("{e:#}"))
}

/// Longest error line rkt prints, in characters after escaping; longer ones keep their start
/// and end (where the context and the root cause are) around a marker.
pub const MAX_ERROR_CHARS: usize = 1024;

/// One printable line from a message that may carry bytes from images, files or the command
/// line: control characters (NUL, ESC, newlines, C1) are escaped as `\n`, `\t`, `\xNN` or
/// `\u{NNNN}` (non-UTF-8 bytes already arrive as U+FFFD), and the result is cut to
/// [`MAX_ERROR_CHARS`].
pub fn sanitize(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_ERROR_CHARS + 64));
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            // C1 controls and the bidi overrides that can make a terminal show something else.
            c if c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c) =>
            {
                out.push_str(&format!("\\u{{{:04x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    let n = out.chars().count();
    if n <= MAX_ERROR_CHARS {
        return out;
    }
    let keep = MAX_ERROR_CHARS / 2;
    let head: String = out.chars().take(keep).collect();
    let tail: String = out.chars().skip(n - keep).collect();
    format!("{head}…[{} characters cut]…{tail}", n - 2 * keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_and_cuts() {
        assert_eq!(sanitize("a\0b\nc\x1b[31m"), "a\\x00b\\nc\\x1b[31m");
        assert_eq!(
            sanitize("bad \u{fffd} \u{202e}x"),
            "bad \u{fffd} \\u{202e}x"
        );
        let long = format!("start{}end", "x".repeat(5000));
        let s = sanitize(&long);
        assert!(s.chars().count() < MAX_ERROR_CHARS + 40, "{}", s.len());
        assert!(s.starts_with("start") && s.ends_with("end") && s.contains("characters cut"));
    }
}
