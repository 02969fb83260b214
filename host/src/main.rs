//! The `jobhost` binary: parses the command line and hands over to the
//! subcommand. Everything else lives in the library.

mod cli;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    cli::init_tracing();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("jobhost: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
