//! The worker's start-up and run-time errors, and the exit code each one maps to (contract:
//! 1 runtime failure, 2 usage or configuration error, 4 address in use or cannot be bound).

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0}")]
    Config(#[from] gateway::ConfigErrors),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("inherited listening socket (LISTEN_FDS): {0}")]
    Inherited(String),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot map the provider slot table (GATEWAY_PROVIDER_TABLE): {0}")]
    ProviderTable(std::io::Error),
    #[error("cannot read the token set the supervisor passed: {0}")]
    Admission(std::io::Error),
}

impl WorkerError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config(_) => 2,
            Self::Bind { .. } => 4,
            Self::Inherited(_)
            | Self::Runtime(_)
            | Self::Signals(_)
            | Self::ProviderTable(_)
            | Self::Admission(_) => 1,
        }
    }
}
