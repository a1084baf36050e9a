//! `relay`: parse the command line, set up logging, run, map the result to an exit code.
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli: relaytree::cli::args::RelayCli = relaytree::cli::parse();
    relaytree::cli::init_tracing("info", cli.log.log_format);
    match relaytree::cli::relay_main(cli).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(relaytree::cli::EXIT_ERROR)
        }
    }
}
