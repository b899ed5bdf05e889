//! `tanvrit`: parse the command line, run the command, exit with 0 (ok), 1 (API or
//! transport error) or 2 (usage).

use std::process::ExitCode;

use clap::Parser;
use tanvrit_cli::cli::{init_logging, quiet_on_closed_stdout, report, run, Cli};

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    // clap prints its own usage errors and exits with 2.
    let cli = Cli::parse();
    init_logging(cli.command.default_log_filter(), cli.global.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return report(&anyhow::Error::new(e).context("cannot start the async runtime")),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}
