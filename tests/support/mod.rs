//! Shared support for the end-to-end tests: finding the built binaries, a child-process guard,
//! the ready-line reader, temporary configs, a small blocking HTTP client and the scriptable
//! mock upstream. Every test file includes it with `mod support;`, so not every item is used by
//! every file.
#![allow(dead_code)]

pub mod front;
pub mod http;
pub mod process;
pub mod upstream;
