//! One instance per runtime directory: `start` creates the directory (mode 0700) or checks that
//! an existing one is private (`runtime_dir::ensure_private_dir`), holds an
//! advisory `flock` on `supervisor.lock` for its lifetime, and removes the runtime files when it
//! stops. A second `start` on the same directory fails with the holder's pid (exit 3).
//!
//! The lock is `flock`, not the file's existence, so a supervisor killed with SIGKILL leaves a
//! stale file that the next start simply locks again.

use nix::fcntl::{Flock, FlockArg};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("another supervisor (pid {pid}) already holds {path}")]
    Locked { pid: String, path: PathBuf },
    /// The directory exists but is not private (exit 2).
    #[error(transparent)]
    Unsafe(crate::runtime_dir::RuntimeDirError),
    #[error("runtime directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The held lock; dropping it cleans the runtime directory and releases the lock.
#[derive(Debug)]
pub struct Instance {
    dir: PathBuf,
    lock: Option<Flock<File>>,
    /// Whether this process created the directory (then it removes it on exit).
    created: bool,
}

impl Instance {
    pub fn acquire(dir: &Path) -> Result<Self, InstanceError> {
        let io = |source| InstanceError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let created = crate::runtime_dir::ensure_private_dir(dir).map_err(|e| match e {
            crate::runtime_dir::RuntimeDirError::Io { source, .. } => io(source),
            unsafe_dir => InstanceError::Unsafe(unsafe_dir),
        })?;
        Self::lock(dir, created)
    }

    /// For a directory this process just made private (an ephemeral instance's mkdtemp): it is
    /// removed on drop like one `acquire` created.
    pub fn acquire_fresh(dir: &Path) -> Result<Self, InstanceError> {
        Self::lock(dir, true)
    }

    /// Takes the lock; a directory we created does not outlive a failure here.
    fn lock(dir: &Path, created: bool) -> Result<Self, InstanceError> {
        Self::try_lock(dir, created).inspect_err(|e| {
            if created && matches!(e, InstanceError::Io { .. }) {
                let _ = std::fs::remove_file(dir.join("supervisor.lock"));
                let _ = std::fs::remove_dir(dir);
            }
        })
    }

    /// Takes the lock in a checked directory. The lock file is reused, not recreated: a new
    /// inode would not be the one a running holder has locked.
    fn try_lock(dir: &Path, created: bool) -> Result<Self, InstanceError> {
        let io = |source| InstanceError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let path = dir.join("supervisor.lock");
        let file = gateway::runtime_file::open_or_create(&path).map_err(io)?;
        let mut lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(l) => l,
            Err((mut file, _)) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim().to_string();
                let pid = if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid
                };
                return Err(InstanceError::Locked { pid, path });
            }
        };
        lock.set_len(0).map_err(io)?;
        lock.rewind().map_err(io)?;
        write!(lock, "{}", std::process::id()).map_err(io)?;
        lock.flush().map_err(io)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            lock: Some(lock),
            created,
        })
    }

    /// Takes over the lock an upgrading image handed over (`upgrade::Handoff`): `fd` is its
    /// open `supervisor.lock`, already locked by this process; locking it again keeps the lock.
    pub fn adopt(dir: &Path, fd: std::os::fd::RawFd, created: bool) -> Result<Self, InstanceError> {
        use std::os::fd::FromRawFd;
        let io = |source| InstanceError::Io {
            path: dir.join("supervisor.lock"),
            source,
        };
        crate::upgrade::reclaim(fd).map_err(|e| io(std::io::Error::other(e)))?;
        // SAFETY: the handoff names this fd as the lock file the previous image held open
        // for us; nothing else in this image owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| io(std::io::Error::from_raw_os_error(e as i32)))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            lock: Some(lock),
            created,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock's descriptor, handed to the next image by an upgrade.
    pub fn lock_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        self.lock.as_ref().map(|l| l.as_raw_fd())
    }

    /// Whether this instance removes the directory at the end.
    pub fn created(&self) -> bool {
        self.created
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        // Remove only what the supervisor and its workers put here: `runtime_dir` may name a
        // directory that holds other files too.
        if let Ok(rd) = std::fs::read_dir(&self.dir) {
            for e in rd.flatten() {
                if is_runtime_file(&e.file_name().to_string_lossy()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_file(self.dir.join("supervisor.lock"));
        drop(self.lock.take());
        if self.created {
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Files `start` creates in the runtime directory (the lock is removed last, separately).
fn is_runtime_file(name: &str) -> bool {
    matches!(
        name,
        "admin.sock" | "gateway.toml" | "gateway.toml.tmp" | "providers.shm"
    ) || (name.starts_with("worker-")
        && (name.ends_with(".hb") || name.ends_with(".hb.tmp") || name.ends_with(".sock")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn second_acquire_names_the_holder_and_drop_cleans() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rt");
        let first = Instance::acquire(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::write(dir.join("worker-0-1.hb"), "{}").unwrap();
        match Instance::acquire(&dir) {
            Err(InstanceError::Locked { pid, .. }) => {
                assert_eq!(pid, std::process::id().to_string())
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        assert!(!dir.exists(), "runtime dir left behind");
        let again = Instance::acquire(&dir).unwrap();
        drop(again);
    }

    /// What an upgraded image does with the handed lock fd: the lock stays held throughout.
    #[test]
    fn an_adopted_lock_stays_held_and_cleans_like_the_original() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("rt");
        let first = Instance::acquire(&dir).unwrap();
        let fd = first.lock_fd().unwrap();
        let created = first.created();
        // The exec ends the old image without running its destructors.
        std::mem::forget(first);
        let adopted = Instance::adopt(&dir, fd, created).unwrap();
        assert!(matches!(
            Instance::acquire(&dir),
            Err(InstanceError::Locked { .. })
        ));
        let flags = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & nix::libc::FD_CLOEXEC,
            0,
            "workers must not inherit it"
        );
        drop(adopted);
        assert!(!dir.exists(), "runtime dir left behind");
    }

    #[test]
    fn drop_leaves_files_it_did_not_create() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("shared");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(dir.join("notes.txt"), "mine").unwrap();
        let inst = Instance::acquire(&dir).unwrap();
        for f in [
            "admin.sock",
            "gateway.toml",
            "providers.shm",
            "worker-2-7.hb",
            "worker-2.sock",
        ] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        drop(inst);
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(left, ["notes.txt"], "only the user's file may remain");
    }
}
