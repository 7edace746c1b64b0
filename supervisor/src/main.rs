use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = supervisor::cli::Cli::parse();
    let code = supervisor::cli::dispatch(cli);
    // Whatever is still queued for stderr goes out before the process ends.
    supervisor::logging::flush();
    std::process::ExitCode::from(code)
}
