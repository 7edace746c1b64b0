use clap::Parser;

#[derive(Parser)]
#[command(
    name = "gateway-worker",
    version,
    about = "One AI gateway process serving one port"
)]
struct Cli {
    #[command(flatten)]
    args: gateway_worker::cli::WorkerArgs,
}

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(gateway_worker::cli::run(Cli::parse().args))
}
