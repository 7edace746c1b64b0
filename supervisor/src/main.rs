use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = supervisor::cli::Cli::parse();
    std::process::ExitCode::from(supervisor::cli::dispatch(cli))
}
