//! `flashsale-drain-agent`: the spot-termination drain agent alone, as the agent DaemonSet runs
//! it (see `flashsale_operator::agent`).

use flashsale_operator::cli;

fn main() -> std::process::ExitCode {
    cli::exit_code(cli::AgentCli::parse_and_run())
}
