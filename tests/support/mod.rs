//! Shared support for the end-to-end tests: finding the built binaries, a child-process guard,
//! the ready-line reader and temporary configs (`process`), a small blocking HTTP client (`http`),
//! the scriptable mock upstream (`upstream`) and the provider APIs it can speak (`dialects`), and helpers for tests that drive one worker
//! (`worker`) or the front listener (`front`). Every test file includes it with `mod support;`,
//! so not every item is used by every file.
#![allow(dead_code)]

pub mod dialects;
pub mod front;
pub mod http;
pub mod process;
pub mod redis;
pub mod upstream;
pub mod worker;
