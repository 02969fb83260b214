//! Command-line subcommands, one file each.

mod client;
mod plugin;
mod scaffold;
mod schedules;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "jobhost",
    version,
    about = "A job host that runs every attempt in a sandboxed WebAssembly plugin"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the HTTP API and run jobs.
    Serve(jobhost::config::ServeConfig),
    /// Work with plugin files.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Submit a job to a running host.
    Enqueue(client::Enqueue),
    /// Look at a running host's jobs.
    #[command(subcommand)]
    Jobs(client::JobsCommand),
    /// Act on a running host's dead-letter queue.
    #[command(subcommand)]
    Dlq(client::DlqCommand),
    /// Manage a running host's schedules (cron).
    #[command(subcommand)]
    Schedules(schedules::SchedulesCommand),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(config) => serve::run(config),
        Command::Plugin(command) => plugin::run(command),
        Command::Enqueue(args) => client::enqueue(args),
        Command::Jobs(command) => client::jobs(command),
        Command::Dlq(command) => client::dlq(command),
        Command::Schedules(command) => schedules::run(command),
    }
}

/// Logs go to stderr; `JOBHOST_LOG` (or `RUST_LOG`) sets the filter.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("JOBHOST_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
