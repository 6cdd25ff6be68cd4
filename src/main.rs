use flashsale_operator::cli;

fn main() -> std::process::ExitCode {
    cli::exit_code(cli::Cli::parse_and_run())
}
