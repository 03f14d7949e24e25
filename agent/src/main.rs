use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vtguard_agent::cli::Cli::parse();
    vtguard_agent::telemetry::init(cli.log_format);
    vtguard_agent::cli::run(cli)
}
