//! The `cauce` binary: parses the command line, sets up logging, and hands off to
//! `cauce::cli`. Errors become messages and exit codes here (0 success, 1 a failed or
//! partial run, 2 invalid input or configuration, 130 interrupted).

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cauce::cli::Cli::parse();
    // A worker says what it runs; other commands speak only of problems.
    let default_level = match cli.command {
        cauce::cli::Command::Worker(_) => "info",
        _ => "warn",
    };
    init_tracing(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let code = match runtime.block_on(cauce::cli::run(cli)) {
        Ok(code) => code,
        Err(err) if cauce::cli::is_broken_pipe(&err) => 0,
        Err(err) => {
            let code = cauce::cli::exit_code_for(&err);
            if err.downcast_ref::<cauce::spec::SpecErrors>().is_some() {
                eprintln!("{err}");
            } else {
                eprintln!("error: {err:#}");
            }
            code
        }
    };
    // Blocking threads still reading a pipe of an escaped process must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn init_tracing(format: cauce::cli::LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CAUCE_LOG")
        .unwrap_or_else(|_| default_level.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        cauce::cli::LogFormat::Json => builder.json().init(),
        cauce::cli::LogFormat::Text => builder.with_target(false).init(),
    }
}
