//! Opening files inside the runtime directory so that nothing planted there (a symlink, a file
//! left by someone else) is ever followed or reused: every file is created fresh, exclusively,
//! mode 0600, with `O_NOFOLLOW`.
//!
//! The directory itself is checked private before any of this runs (`supervisor::runtime_dir`);
//! this is the second wall, and it also handles a stale file of our own from a crashed run
//! (removed, then created exclusively, under the supervisor's lock).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW);
    o
}

/// Removes whatever is at `path` (a stale file, or a link: never followed) and creates a new
/// empty file there with `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600.
pub fn create_fresh(path: &Path) -> io::Result<File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    options().create_new(true).open(path)
}

/// Opens `path`, creating it if missing, refusing a symlink (`O_NOFOLLOW`). For the lock file,
/// which must not be replaced: a new inode would not be the one a running holder has locked.
pub fn open_or_create(path: &Path) -> io::Result<File> {
    options().create(true).truncate(false).open(path)
}

/// Writes `bytes` to a fresh `tmp` and renames it over `path`, so a reader sees the old or the
/// new content, never a half-written file, and a link planted at `tmp` is not followed.
pub fn replace(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = create_fresh(tmp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn create_fresh_replaces_a_planted_link_without_following_it() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let p = dir.path().join("f");
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        let f = create_fresh(&p).unwrap();
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!std::fs::symlink_metadata(&p).unwrap().is_symlink());
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }

    #[test]
    fn open_or_create_refuses_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lock");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), &p).unwrap();
        assert!(open_or_create(&p).is_err());
        assert!(!dir.path().join("elsewhere").exists());
    }

    #[test]
    fn replace_writes_through_a_fresh_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let (p, tmp) = (dir.path().join("a"), dir.path().join("a.tmp"));
        std::fs::write(&tmp, "stale").unwrap();
        replace(&p, &tmp, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "new");
        assert!(!tmp.exists());
    }
}
