//! Where the runtime files live (admin socket, lock, heartbeats) and whether that place is safe:
//! one resolution every command uses, so `status`/`stop`/`reload` find the directory `start`
//! chose, and one privacy check every command applies before trusting anything inside.
//!
//! `pool.runtime_dir = ""` means `$XDG_RUNTIME_DIR/gateway`, else `$TMPDIR/gateway-<uid>`: a
//! deterministic name, so the CLI finds it again. Ephemeral (sidecar) instances instead get a
//! fresh mkdtemp directory under the same base, named by their ready line.
//!
//! The check is the one tmux and ssh-agent make: the path is not followed if it is a symlink
//! (lstat), it must be a directory owned by us with mode exactly 0700. A looser directory is
//! refused, never chmodded: under a shared `/tmp` another user may have created it first, and
//! could then rewrite the snapshot config or plant an admin socket.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    /// Exists, but another user could control it (exit 2).
    #[error("runtime directory {} is not private: it is a {kind} owned by {} with mode {mode:04o}; it must be a real directory (not a symlink) owned by {} with mode 0700 (remove it, or set pool.runtime_dir / --runtime-dir)", path.display(), user(*owner), user(*expected))]
    NotPrivate {
        path: PathBuf,
        kind: &'static str,
        owner: u32,
        mode: u32,
        expected: u32,
    },
    #[error("runtime directory {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

impl RuntimeDirError {
    /// The process exit code (contract): 2 for a directory we refuse, 1 for a failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::NotPrivate { .. } => crate::exit::CONFIG,
            Self::Io { .. } => crate::exit::RUNTIME,
        }
    }
}

/// "name (uid N)", or "uid N" without a passwd entry. Only on the error path: it reads
/// the user database.
fn user(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("{} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// The runtime directory for `cfg` (pure: creates nothing).
pub fn resolve_runtime_dir(cfg: &gateway::Config) -> PathBuf {
    resolve(&cfg.pool.runtime_dir, xdg())
}

fn xdg() -> Option<PathBuf> {
    std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|p| !p.as_os_str().is_empty())
}

fn resolve(configured: &str, xdg: Option<PathBuf>) -> PathBuf {
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    match xdg.filter(|p| !p.as_os_str().is_empty()) {
        Some(x) => x.join("gateway"),
        None => std::env::temp_dir().join(format!("gateway-{}", nix::unistd::getuid())),
    }
}

/// Creates `dir` 0700 if missing (its parents as needed), then checks it is private. Returns
/// whether this call created it (then its owner removes it again on exit).
pub fn ensure_private_dir(dir: &Path) -> Result<bool, RuntimeDirError> {
    let io = |source| RuntimeDirError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(io)?;
    }
    // Not recursive: an existing entry, whatever it is, must reach the check below.
    let created = match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io(e)),
    };
    if created {
        // Ours, just made: only the umask can have narrowed it below 0700.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    check_private_dir(dir)?;
    Ok(created)
}

/// Checks, without following a symlink, that `dir` is a directory owned by this user with mode
/// 0700. An `Io` error of kind `NotFound` means it does not exist.
pub fn check_private_dir(dir: &Path) -> Result<(), RuntimeDirError> {
    let meta = std::fs::symlink_metadata(dir).map_err(|source| RuntimeDirError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let me = nix::unistd::geteuid().as_raw();
    let mode = meta.mode() & 0o777;
    let kind = if meta.file_type().is_symlink() {
        "symlink"
    } else if meta.is_dir() {
        "directory"
    } else {
        "file"
    };
    if kind != "directory" || meta.uid() != me || mode != 0o700 {
        return Err(RuntimeDirError::NotPrivate {
            path: dir.to_path_buf(),
            kind,
            owner: meta.uid(),
            mode,
            expected: me,
        });
    }
    Ok(())
}

/// A fresh private directory (mkdtemp: 0700, random name) under `$XDG_RUNTIME_DIR`, else the
/// temporary directory, for an ephemeral instance.
pub fn create_ephemeral() -> Result<PathBuf, RuntimeDirError> {
    let base = xdg().unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("gateway-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir_in(&base)
        .map_err(|source| RuntimeDirError::Io { path: base, source })?
        .keep();
    check_private_dir(&dir)?;
    Ok(dir)
}

/// The admin socket inside a runtime directory.
pub fn admin_socket(dir: &Path) -> PathBuf {
    dir.join("admin.sock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_order() {
        assert_eq!(
            resolve("/srv/gw", Some("/run/user/1".into())),
            PathBuf::from("/srv/gw")
        );
        assert_eq!(
            resolve("", Some("/run/user/1".into())),
            PathBuf::from("/run/user/1/gateway")
        );
        let fallback = resolve("", None);
        assert_eq!(fallback, resolve("", Some(PathBuf::new())));
        assert!(fallback.starts_with(std::env::temp_dir()));
        assert!(fallback
            .to_string_lossy()
            .ends_with(&format!("gateway-{}", nix::unistd::getuid())));
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn private_dir_is_created_0700_and_a_looser_one_refused_untouched() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        assert!(ensure_private_dir(&d).unwrap());
        assert_eq!(mode(&d), 0o700);
        assert!(
            !ensure_private_dir(&d).unwrap(),
            "second call created it again"
        );
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = ensure_private_dir(&d).unwrap_err();
        assert_eq!(err.exit_code(), crate::exit::CONFIG);
        let msg = err.to_string();
        assert!(
            msg.contains(&d.display().to_string()) && msg.contains("0755"),
            "{msg}"
        );
        assert_eq!(mode(&d), 0o755, "refused, so left as it was");
    }

    #[test]
    fn symlink_to_a_private_dir_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let real = t.path().join("real");
        ensure_private_dir(&real).unwrap();
        let link = t.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let msg = ensure_private_dir(&link).unwrap_err().to_string();
        assert!(msg.contains("symlink"), "{msg}");
    }

    #[test]
    fn ephemeral_dirs_are_private_and_distinct() {
        let a = create_ephemeral().unwrap();
        let b = create_ephemeral().unwrap();
        assert_ne!(a, b);
        check_private_dir(&a).unwrap();
        std::fs::remove_dir(&a).unwrap();
        std::fs::remove_dir(&b).unwrap();
    }
}
