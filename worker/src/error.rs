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
    #[error("[shared]: {0}")]
    Shared(gateway::shared::StartError),
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
            | Self::Admission(_)
            | Self::Shared(_) => 1,
        }
    }
}

/// Whether a connect error was a timeout (the connector reports it as `TimedOut`).
pub(crate) fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if err.to_string().contains("timed out") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `error: cause: cause` in one line. Provider errors never contain keys: hyper reports
/// addresses and protocol problems, not request headers.
pub(crate) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let m = err.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = err.source();
    }
    s
}
