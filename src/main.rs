//! The `ringmq` binary: parse the command line, load the configuration, run.

use std::io::IsTerminal;

use clap::Parser;
use ringmq::cli::{Cli, Command};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGMQ_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Some(Command::PrintConfig { default: true, .. }) => {
            print!("{}", ringmq::config::DEFAULT_TOML);
            Ok(())
        }
        Some(Command::PrintConfig { run, .. }) => run
            .config()
            .map(|c| println!("{c:#?}"))
            .map_err(|e| e.to_string()),
        Some(Command::Run(args)) => start(&args),
        None => start(&cli.run),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringmq: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(args: &ringmq::cli::RunArgs) -> Result<(), String> {
    let cfg = args.config().map_err(|e| e.to_string())?;
    ringmq::server::run(cfg).map_err(|e| e.to_string())
}
