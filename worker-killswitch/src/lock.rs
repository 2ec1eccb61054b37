//! The one `flock(2)` of the workspace: a lock file opened safely in a directory others may
//! write to, locked shared or exclusive. The kill switch's lock and worker-shared's start lock
//! both take theirs through it.

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

/// An open lock file, to take a `flock(2)` on. The lock belongs to this open file (not to the
/// process): another opening of the same file, in this process too, is excluded; closing it
/// (dropping the `LockFile`) releases it, as does the death of its holder, however it dies.
///
/// It is opened without following a link at its last component (`O_NOFOLLOW`: in a directory
/// others may write to, another user's link would make it create, or lock, a file of their
/// choosing), without blocking on a FIFO put at its path (`O_NONBLOCK`), and used only when it
/// is a regular file.
/// Who owns it is the caller's to check, through [`file`](Self::file) (a lock file in a shared
/// directory may be another user's).
///
/// ```
/// use std::fs::OpenOptions;
/// use worker_killswitch::LockFile;
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("app.lock");
/// let mut options = OpenOptions::new();
/// options.read(true).write(true).create(true).truncate(false);
/// let first = LockFile::open(&options, &path)?;
/// let second = LockFile::open(&options, &path)?;
/// assert!(first.try_lock_exclusive()?);
/// assert!(!second.try_lock_exclusive()?);
/// drop(first);
/// assert!(second.try_lock_exclusive()?);
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
pub struct LockFile {
    file: File,
}

impl LockFile {
    /// Opens the lock file at `path` with `options` (to which `O_NOFOLLOW` and `O_NONBLOCK`
    /// are added).
    ///
    /// # Errors
    ///
    /// Those of `open(2)` (`ELOOP`, [`io::ErrorKind::FilesystemLoop`], for a link),
    /// [`io::ErrorKind::InvalidInput`] when the file is not a regular one.
    pub fn open(options: &OpenOptions, path: &Path) -> io::Result<LockFile> {
        let file = options
            .clone()
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)?;
        if !file.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the lock file is not a regular file",
            ));
        }
        Ok(LockFile { file })
    }

    /// The open file, to check who owns it.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Takes the shared lock, waiting for it (an interrupted wait is resumed).
    ///
    /// # Errors
    ///
    /// Those of `flock(2)`.
    pub fn lock_shared(&self) -> io::Result<()> {
        // Called through the trait: std's inherent `File::lock_shared` (Rust 1.89) would
        // otherwise shadow it, above this workspace's minimum Rust version.
        retry_interrupted(|| fs2::FileExt::lock_shared(&self.file))
    }

    /// Takes the exclusive lock, waiting for it (an interrupted wait is resumed).
    ///
    /// # Errors
    ///
    /// Those of `flock(2)`.
    pub fn lock_exclusive(&self) -> io::Result<()> {
        retry_interrupted(|| fs2::FileExt::lock_exclusive(&self.file))
    }

    /// Takes the exclusive lock if nobody holds it: whether it was taken (`false`: held by
    /// another open file, or the call was interrupted; ask again).
    ///
    /// # Errors
    ///
    /// Those of `flock(2)` other than contention.
    pub fn try_lock_exclusive(&self) -> io::Result<bool> {
        match fs2::FileExt::try_lock_exclusive(&self.file) {
            Ok(()) => Ok(true),
            Err(e)
                if e.kind() == fs2::lock_contended_error().kind()
                    || e.kind() == io::ErrorKind::Interrupted =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }
}

fn retry_interrupted(mut lock: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    loop {
        match lock() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            result => return result,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::{fs::symlink, net::UnixListener};

    use super::*;

    fn rw() -> OpenOptions {
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        options
    }

    #[test]
    fn only_a_regular_file_is_a_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.lock");
        std::fs::write(&target, b"").unwrap();
        let link = dir.path().join("link.lock");
        symlink(&target, &link).unwrap();
        let socket = dir.path().join("socket.lock");
        let _listener = UnixListener::bind(&socket).unwrap();
        // `Some(0)`: refused as no regular file; `Some(errno)`: refused by `open(2)`. A FIFO
        // (refused at once, not waited on for a writer) is tried in `tests/lock.rs` and in
        // worker-shared's trust tests, made by another user.
        let cases: &[(&Path, Option<i32>)] = &[
            (&target, None),
            (&link, Some(libc::ELOOP)),
            (&socket, Some(libc::ENXIO)),
            (dir.path(), Some(libc::EISDIR)),
        ];
        for (path, expected) in cases {
            let refused = LockFile::open(&rw(), path).err().map(|e| {
                e.raw_os_error().unwrap_or_else(|| {
                    assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{path:?}");
                    0
                })
            });
            assert_eq!(refused, *expected, "{path:?}");
        }
        // Read-only opening of a directory: opened, then refused as no regular file.
        let e = LockFile::open(OpenOptions::new().read(true), dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn exclusive_excludes_everything_and_shared_only_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.lock");
        let a = LockFile::open(&rw(), &path).unwrap();
        let b = LockFile::open(&rw(), &path).unwrap();
        let c = LockFile::open(&rw(), &path).unwrap();
        a.lock_shared().unwrap();
        b.lock_shared().unwrap();
        assert!(
            !c.try_lock_exclusive().unwrap(),
            "shared holders exclude it"
        );
        drop((a, b));
        assert!(c.try_lock_exclusive().unwrap());
        assert!(c.try_lock_exclusive().unwrap(), "taken again by its holder");
        let d = LockFile::open(&rw(), &path).unwrap();
        assert!(
            !d.try_lock_exclusive().unwrap(),
            "the holder's excludes another"
        );
        drop(c);
        d.lock_exclusive().unwrap();
    }
}
