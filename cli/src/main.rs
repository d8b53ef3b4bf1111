//! `rkt`: stage0. Parses the command line, then hands each command to its module.
//! Every rkt failure ends with one line on stderr and exit code 254; `rkt run` exits with the app's code.

mod cmd;
mod global;
mod run_args;

// The engine's modules, under the names the commands have always used (`crate::pod::…`).
pub use rkt_engine::{limits, one_line, print_error, read_limited, read_limited_string, sanitize};
use rkt_engine::{measure, net, pod, stage1};

use clap::{CommandFactory, Parser, Subcommand};
use global::GlobalOpts;

pub use rkt_engine::EXIT_RKT_ERROR;

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
    /// Create and drive pods whose apps come and go (rkt v1's app API, as rktlet uses it)
    App(cmd::app::AppArgs),
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
        Command::App(a) => cmd::app::run(&g, a),
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
