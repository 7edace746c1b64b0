//! The heartbeat file protocol between a worker and its supervisor.
//!
//! The worker creates the file once it is serving and rewrites it every interval from its serving
//! runtime, so a stalled serving loop stops the heartbeat. The supervisor needs no HTTP to learn
//! health: it reads the file's mtime (age) and, when it wants the counters, its JSON content.
//! The write goes to a sibling temporary file renamed over the target, so a reader never sees a
//! half-written object.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// The file's content: one JSON object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub pid: u32,
    /// Requests in flight in the worker at the time of writing.
    pub inflight: u64,
    /// Requests completed since the worker started.
    pub served: u64,
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Writes `hb` atomically to `path`. Small enough (< 100 bytes) that the blocking write is cheap;
/// workers still call it off the request path.
pub fn write(path: &Path, hb: &Heartbeat) -> std::io::Result<()> {
    let body = serde_json::to_vec(hb).expect("heartbeat serializes");
    crate::runtime_file::replace(path, &tmp_path(path), &body)
}

/// Reads the file's content.
pub fn read(path: &Path) -> std::io::Result<Heartbeat> {
    let bytes = std::fs::read(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Age of the heartbeat: now minus the file's mtime. `None` when the file does not exist yet.
/// A clock that moved backwards gives an age of zero rather than an error.
pub fn age(path: &Path) -> Option<Duration> {
    let mtime = std::fs::metadata(path).ok()?.modified().ok()?;
    Some(SystemTime::now().duration_since(mtime).unwrap_or_default())
}

/// Removes the heartbeat and any leftover temporary file.
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(tmp_path(path));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w0.hb");
        assert_eq!(age(&p), None);
        let hb = Heartbeat {
            pid: 42,
            inflight: 3,
            served: 7,
        };
        write(&p, &hb).unwrap();
        assert_eq!(read(&p).unwrap(), hb);
        assert!(age(&p).unwrap() < Duration::from_secs(5));
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text, r#"{"pid":42,"inflight":3,"served":7}"#);
        remove(&p);
        assert_eq!(age(&p), None);
    }
}
