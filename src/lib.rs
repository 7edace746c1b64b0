//! `gateway`: the vocabulary the supervisor and its workers share. Configuration schema and
//! loading, the heartbeat file protocol, API error bodies in both client dialects, the model list,
//! SSE parsing and frames (`sse`), the relay layer both compose to pass a response body on
//! (`relay`), admission (Host, Origin, CORS, tokens: `admission`), header hygiene towards
//! providers (`headers`), how long a client may take to send a request (`read_timeouts`), how a
//! request body is read with a bound (`upload`), and the pool of keep-alive connections both send
//! through (`conn_pool`; the caller makes the connections).

pub mod admission;
pub mod api_error;
pub mod calendar;
pub mod config;
pub mod conn_pool;
pub mod endpoint;
pub mod headers;
pub mod heartbeat;
pub mod model_list;
pub mod net;
pub mod provider_health;
pub mod provider_permits;
pub mod read_timeouts;
pub mod relay;
pub mod request;
pub mod runtime_file;
pub mod shared;
pub mod sse;
pub mod telemetry;
pub mod upload;
pub mod usage;

pub use api_error::{ApiError, Dialect, ErrorKind};

/// A hash map for a table built once from the configuration and then only read on the request
/// path (the worker's routes by model, its usage series by provider, client and model). Hashed
/// with foldhash rather than std's SipHash, which cost the worker about 1,100 instructions a
/// request in these lookups (`bench/path_instr.sh`). This is safe for these tables: flooding a
/// map takes inserts, and a request's keys (a model name, a client) are only looked up.
pub type ConfigMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
pub use config::{Config, ConfigErrors, ConfigSource, LoadedConfig};
