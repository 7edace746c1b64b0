//! Where the runtime files live (admin socket, lock, heartbeats): one function every command
//! uses, so `status`/`stop`/`reload` find the directory `start` chose.
//!
//! `pool.runtime_dir = ""` means `$XDG_RUNTIME_DIR/gateway`. Without `XDG_RUNTIME_DIR` (no user
//! session: containers, cron, some CI) the contract asks for "a private temporary directory";
//! a *random* one (mkdtemp) could not be found again by the CLI, so it is the deterministic
//! `std::env::temp_dir()/gateway-<uid>`, created 0700 and refused when it exists with another
//! owner or looser permissions (another user could otherwise pre-create it and sit on our socket).

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The runtime directory for `cfg` (pure: creates nothing).
pub fn resolve_runtime_dir(cfg: &gateway::Config) -> PathBuf {
    resolve(
        &cfg.pool.runtime_dir,
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
    )
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

/// Creates `dir` 0700 if missing; an existing directory must be ours and private.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    if meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} belongs to another user", dir.display()),
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
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

    #[test]
    fn private_dir_is_0700() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("a/b");
        ensure_private_dir(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
