//! `hq`: parse the command line, set up logging, run, map the result to an exit code.
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli: relaytree::cli::args::HqCli = relaytree::cli::parse();
    let quiet = matches!(cli.cmd, relaytree::cli::args::HqCmd::Demo { .. });
    relaytree::cli::init_tracing(if quiet { "warn" } else { "info" }, cli.log.log_format);
    match relaytree::cli::hq_main(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(relaytree::cli::EXIT_ERROR)
        }
    }
}
