//! The configuration: schema, loading with the contract's lookup order, and validation that
//! reports every error with its file, line, column and key.

mod error;
mod load;
mod locate;
mod schema;
mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use load::{
    load, parse_str, resolve_source, sets_key, ConfigSource, LoadedConfig, BUILTIN_CONFIG,
};
pub use schema::*;
pub use validate::{validate, Violation};

#[cfg(test)]
mod tests;
