//! `rkt`: stage0. Parses the command line, then hands each command to its module.
//! Every rkt failure ends with one line on stderr and exit code 254; `rkt run` exits with the app's code.

mod cmd;
mod config;
mod global;
mod measure;
mod pod;
mod stage1;

use clap::{CommandFactory, Parser, Subcommand};
use global::GlobalOpts;

/// Exit code for rkt's own errors (rkt v1's runWrapper).
pub const EXIT_RKT_ERROR: i32 = 254;

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
    let code = match Cli::try_parse() {
        Ok(cli) => match dispatch(cli) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("rkt: {}", one_line(&e));
                EXIT_RKT_ERROR
            }
        },
        Err(e) => usage_error(e),
    };
    std::process::exit(code);
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
            eprintln!("rkt: {first}");
            EXIT_RKT_ERROR
        }
    }
}

/// Joins an error and its causes into a single line.
pub fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}
