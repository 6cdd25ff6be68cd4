use std::process::ExitCode;

fn main() -> ExitCode {
    match flashsale_operator::cli::Cli::parse_and_run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
