//! `rkt`: stage0. Parses the command line, then hands each command to its module.
//! Every rkt failure ends with one line on stderr and exit code 254; `rkt run` exits with the app's code.

mod cmd;
mod global;
mod run_args;

// The engine's modules, under the names the commands have always used (`crate::pod::…`).
pub use rkt_engine::{limits, one_line, print_error, read_limited, read_limited_string, sanitize};
use rkt_engine::{measure, net, pod, stage1};

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use global::GlobalOpts;

pub use rkt_engine::EXIT_RKT_ERROR;

#[derive(Parser, Debug)]
#[command(
    name = "rkt",
    about = "rkt, the pod-native container engine",
    disable_version_flag = true,
    disable_help_subcommand = true
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
    #[command(disable_help_flag = true)]
    Run(cmd::pods::RunArgs),
    /// Prepare a pod to run image(s)
    #[command(disable_help_flag = true)]
    Prepare(cmd::pods::PrepareArgs),
    /// Run a prepared pod
    #[command(disable_help_flag = true)]
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
    /// stage1 housekeeping: the kvm flavour's VM templates
    Stage1(cmd::stage1::Stage1Args),
    /// TPM measurement: event log, verification and quotes
    Tpm(cmd::tpm::TpmArgs),
    /// Run the read-only gRPC API service (rkt's v1alpha API)
    ApiService(cmd::api_service::ApiServiceArgs),
    /// Trust a key for image verification (list: --list, remove: --remove FINGERPRINT)
    Trust(cmd::trust::TrustArgs),
    /// Print the logs of a pod's apps
    Logs(cmd::logs::LogsArgs),
    /// Help about any command
    Help(cmd::help::HelpArgs),
    /// Write man pages for rkt and its commands into a directory
    #[command(hide = true)]
    Man(cmd::help::ManArgs),
}

/// The command line clap parses: the derived one, with pflag's booleans (see [`pflag_bools`]).
/// `run`, `prepare` and `run-prepared` take their arguments raw (`run_args.rs`).
pub fn parse_command() -> clap::Command {
    pflag_bools(Cli::command())
}

/// The command line as `--help`, completions and man pages show it: [`parse_command`] plus the
/// flags of `run`, `prepare` and `run-prepared` from the table their parser reads.
pub fn display_command() -> clap::Command {
    use run_args::{clap_args, Mode};
    let mut cmd = parse_command();
    // Globals the table also has (--debug, --insecure-options) are shown once, as globals.
    let globals: Vec<String> = cmd
        .get_arguments()
        .filter(|a| a.is_global_set())
        .filter_map(|a| a.get_long().map(String::from))
        .collect();
    for (name, mode) in [
        ("run", Mode::Run),
        ("prepare", Mode::Prepare),
        ("run-prepared", Mode::RunPrepared),
    ] {
        cmd = cmd.mut_subcommand(name, |c| {
            // The raw argument list stays: it documents the layout.
            let mut c = c.disable_help_flag(false);
            for a in clap_args(mode) {
                if !globals.iter().any(|g| Some(g.as_str()) == a.get_long()) {
                    c = c.arg(a);
                }
            }
            c
        });
    }
    cmd
}

/// pflag's booleans, on every command: `--flag`, `--flag=true|false` (and `1|0|t|f|T|F|TRUE|
/// FALSE|True|False`), never `--flag false` (the next word stays an argument), as rkt v1's
/// scripts (Nomad's `--debug=false`, `stop --force=true`) pass them.
pub fn pflag_bools(cmd: clap::Command) -> clap::Command {
    use clap::ArgAction;
    let cmd = cmd.mut_args(|a| {
        let defaults: Vec<String> = a
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        match a.get_action() {
            ArgAction::SetTrue => a
                .action(ArgAction::Set)
                .num_args(0..=1)
                .require_equals(true)
                .value_name("BOOL")
                .default_value("false")
                .default_missing_value("true")
                .value_parser(parse_pflag_bool),
            // Booleans that default to true (`--pretty-print`): same spellings.
            ArgAction::Set if defaults == ["true"] || defaults == ["false"] => a
                .num_args(0..=1)
                .require_equals(true)
                .value_name("BOOL")
                .default_missing_value("true")
                .value_parser(parse_pflag_bool),
            _ => a,
        }
    });
    cmd.mut_subcommands(pflag_bools)
}

/// pflag's `strconv.ParseBool` spellings.
pub fn parse_pflag_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(format!("{v:?} is not a boolean (true or false)")),
    }
}

fn main() {
    install_panic_hook();
    let parsed = parse_command()
        .try_get_matches()
        .and_then(|m| Cli::from_arg_matches(&m));
    let code = match parsed {
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
        Command::Completion(a) => cmd::completion::run(a, display_command()),
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
        Command::Stage1(a) => cmd::stage1::run(&g, a),
        Command::Tpm(a) => cmd::tpm::run(&g, a),
        Command::ApiService(a) => cmd::api_service::run(&g, &cli.global, a),
        Command::Trust(a) => cmd::trust::run(&g, a),
        Command::Logs(a) => cmd::logs::run(&g, a),
        Command::Help(a) => cmd::help::help(a),
        Command::Man(a) => cmd::help::man(a),
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
            print_error(&sanitize(&usage_line(&e.render().to_string())));
            EXIT_RKT_ERROR
        }
    }
}

/// clap's error as one line: its first paragraph, whose continuation lines (the missing
/// arguments, the possible values) are joined to it; the usage and "try --help" are dropped.
fn usage_line(text: &str) -> String {
    let mut paragraph = text
        .lines()
        .skip_while(|l| l.trim().is_empty())
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim);
    let first = paragraph
        .next()
        .unwrap_or("invalid command line")
        .trim_start_matches("error: ")
        .to_string();
    let rest: Vec<&str> = paragraph.collect();
    if rest.is_empty() {
        first
    } else if first.ends_with(':') {
        format!("{first} {}", rest.join(", "))
    } else {
        format!("{first} ({})", rest.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let argv = std::iter::once("rkt").chain(args.iter().copied());
        parse_command()
            .try_get_matches_from(argv)
            .and_then(|m| Cli::from_arg_matches(&m))
    }

    #[test]
    fn every_boolean_takes_pflag_values() {
        let c = parse(&["--debug=false", "list", "--no-legend=true"]).unwrap();
        assert!(!c.global.debug);
        let Command::List(l) = c.command else {
            panic!()
        };
        assert!(l.no_legend && !l.full);
        let c = parse(&["stop", "--force=1", "abc"]).unwrap();
        let Command::Stop(s) = c.command else {
            panic!()
        };
        assert!(s.force);
        assert_eq!(s.uuids, vec!["abc"]);
        // A bare boolean never takes the next word: "abc" stays the UUID.
        let c = parse(&["--debug", "stop", "--force", "abc"]).unwrap();
        assert!(c.global.debug);
        let Command::Stop(s) = c.command else {
            panic!()
        };
        assert!(s.force && s.uuids == vec!["abc"]);
        let e = parse(&["stop", "--force=maybe", "abc"]).unwrap_err();
        assert!(usage_line(&e.render().to_string()).contains("maybe"));
        // Every SetTrue flag of every command was converted.
        fn walk(c: &clap::Command) {
            for a in c.get_arguments() {
                assert!(
                    !matches!(a.get_action(), clap::ArgAction::SetTrue),
                    "{} --{}",
                    c.get_name(),
                    a.get_id()
                );
            }
            c.get_subcommands().for_each(walk);
        }
        walk(&parse_command());
    }

    #[test]
    fn usage_errors_name_what_is_missing() {
        let e = parse(&["enter"]).unwrap_err();
        let l = usage_line(&e.render().to_string());
        assert!(l.contains("not provided:") && l.contains("<UUID>"), "{l}");
        assert!(!l.contains('\n'));
    }

    #[test]
    fn the_displayed_command_lists_the_run_flags() {
        let mut c = display_command();
        c.build();
        let run = c.find_subcommand("run").unwrap();
        for f in ["exec", "mount", "net", "uuid-file-save", "memory"] {
            assert!(run.get_arguments().any(|a| a.get_id() == f), "--{f}");
        }
        let prepare = c.find_subcommand("prepare").unwrap();
        assert!(prepare.get_arguments().any(|a| a.get_id() == "quiet"));
        assert!(!prepare.get_arguments().any(|a| a.get_id() == "hostname"));
    }
}
