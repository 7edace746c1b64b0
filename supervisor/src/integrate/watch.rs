//! Hot reload from disk: changes to the configuration file are applied as SIGHUP would.
//!
//! We watch the file's *directory*, not the file: editors that save by writing a new file and
//! renaming it over the old one replace the inode, and a watch on the old inode would go silent.
//! Events are filtered by file name and debounced (an editor save is often 3-4 events), then one
//! `ControlCommand::Reload` goes to the main loop, which validates before applying anything.

use crate::control::ControlCommand;
use crate::shutdown::Shutdown;
use notify::{RecommendedWatcher, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc;

/// Quiet period after the last event before reloading.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// Keeps the OS watcher alive; dropping it stops watching.
pub struct ConfigWatch {
    _watcher: RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConfigWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching `file`. Must run inside the tokio runtime.
pub fn spawn(
    file: &Path,
    control: mpsc::Sender<ControlCommand>,
    shutdown: Shutdown,
) -> notify::Result<ConfigWatch> {
    let file = std::path::absolute(file).unwrap_or_else(|_| file.to_path_buf());
    let dir = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let name = file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    // Capacity 1 with try_send: the debouncer only needs to know "something changed", so
    // excess events are dropped instead of queued, and the notify thread never blocks.
    let (tx, rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(ev) = res {
            if ev
                .paths
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str()))
                && !ev.kind.is_access()
            {
                let _ = tx.try_send(());
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    let task = tokio::spawn(debounce(rx, control, shutdown));
    Ok(ConfigWatch {
        _watcher: watcher,
        task,
    })
}

async fn debounce(
    mut rx: mpsc::Receiver<()>,
    control: mpsc::Sender<ControlCommand>,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            ev = rx.recv() => if ev.is_none() { return },
            _ = shutdown.wait() => return,
        }
        // Wait for a quiet period.
        loop {
            match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_) => break,
            }
        }
        tracing::info!("configuration file changed on disk; reloading");
        let (reply, done) = tokio::sync::oneshot::channel();
        if control.send(ControlCommand::Reload(reply)).await.is_err() {
            return;
        }
        let _ = done.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rename_over_the_file_triggers_one_debounced_reload() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gateway.toml");
        std::fs::write(&file, "a").unwrap();
        let (tx, mut rx) = crate::control::channel();
        let (_trigger, shutdown) = crate::shutdown::channel();
        let _w = spawn(&file, tx, shutdown).unwrap();
        // An editor-style save: write a sibling, rename over, plus an unrelated file.
        let tmp = dir.path().join(".gateway.toml.swp");
        std::fs::write(&tmp, "b").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        std::fs::write(dir.path().join("other.txt"), "x").unwrap();
        let cmd = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("no reload")
            .unwrap();
        let ControlCommand::Reload(reply) = cmd else {
            panic!("expected Reload")
        };
        let _ = reply.send(Ok(()));
        // Debounced: no second reload for the same save.
        assert!(tokio::time::timeout(DEBOUNCE * 3, rx.recv()).await.is_err());
    }
}
