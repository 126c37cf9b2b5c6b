//! The `wit` binary: command-line glue over the wit crates. All printing happens here.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = webimagetext::cmd::Cli::parse();
    webimagetext::cmd::init_logging(cli.verbose);
    match webimagetext::cmd::run(cli.command) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(2)
        }
    }
}
