use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vtguard_agent::cli::Cli::parse();
    vtguard_agent::telemetry::init(cli.log_format);
    match vtguard_agent::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what failed, on which input, and the fix (the error chain joined).
            eprintln!("vtguard: error: {}", vtguard_agent::telemetry::one_line(&e));
            ExitCode::FAILURE
        }
    }
}
