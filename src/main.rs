//! The `uplosi` binary: parse arguments, run, map errors to exit codes. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use uplosi::cli::{Cli, normalize_args};

fn main() -> ExitCode {
    let cli = match Cli::try_parse_from(normalize_args(std::env::args_os())) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    uplosi::progress::set_quiet(cli.quiet);
    uplosi::logging::init(level);

    match uplosi::app::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", uplosi::logging::redact(&e.to_string()));
            ExitCode::from(e.exit_code())
        }
    }
}
