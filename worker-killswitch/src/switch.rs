use std::{
    ffi::{OsStr, OsString},
    fs::{self, File, OpenOptions, Permissions},
    io::{self, Read, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use crate::{Address, Error, LockFile, canonical_address, state::State};

/// The mode of a kill switch file created from nothing: anyone may read it, only its owner
/// may change it.
const DEFAULT_MODE: u32 = 0o644;

/// What the lock file's name adds to the kill switch's.
const LOCK_SUFFIX: &str = ".lock";

/// Makes temporary file names unique between the threads of one process; the process id makes
/// them unique between processes.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A kill switch: the JSON file that says which shared workers may not start.
///
/// A `KillSwitch` is only a path; every call reads the file afresh, so several values, threads
/// and processes can use the same file at once.
/// Reads take a shared lock and never write.
/// Changes take an exclusive lock, and rewrite the file (atomically) only if they change it.
/// The methods that change the file return whether they did.
///
/// See the [crate documentation](crate) for the file format and the locking protocol.
#[derive(Clone, Debug)]
pub struct KillSwitch {
    path: PathBuf,
}

/// What a kill switch file says, read in one consistent snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KillSwitchState {
    /// Whether shared workers are disabled globally.
    pub global: bool,
    /// The addresses disabled by name, in canonical form, sorted, without duplicates.
    pub addresses: Vec<String>,
}

impl KillSwitch {
    /// A kill switch stored at `path`.
    ///
    /// Nothing is read or created until the first call; a missing file means nothing is
    /// disabled.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        KillSwitch { path: path.into() }
    }

    /// The path of the JSON file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of the lock file beside it (`<name>.lock`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPath`] if the kill switch path has no file name (e.g. `/` or `..`), or
    /// one that another kill switch in the same directory uses for its own files (see the
    /// [crate documentation](crate#concurrency-and-crashes)).
    /// Every other method fails the same way for such a path.
    pub fn lock_path(&self) -> Result<PathBuf, Error> {
        Ok(self.dir().join(self.sibling_name("", LOCK_SUFFIX)?))
    }

    /// Reads the global flag and the disabled addresses in one snapshot.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] or [`Error::Shape`] if the file cannot be understood, [`Error::Io`] if
    /// it cannot be read.
    pub fn state(&self) -> Result<KillSwitchState, Error> {
        self.read().map(snapshot)
    }

    /// Whether shared workers are disabled globally.
    ///
    /// # Errors
    ///
    /// As for [`state`](Self::state).
    pub fn is_disabled_globally(&self) -> Result<bool, Error> {
        Ok(self.read()?.global)
    }

    /// The addresses disabled by name, in canonical form, sorted, without duplicates.
    ///
    /// # Errors
    ///
    /// As for [`state`](Self::state).
    pub fn disabled_addresses(&self) -> Result<Vec<String>, Error> {
        Ok(self.read()?.addresses.into_iter().collect())
    }

    /// Whether the shared worker at `address` is disabled, globally or by name.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] if `address` has no canonical form, otherwise as for
    /// [`state`](Self::state).
    pub fn is_disabled(&self, address: &str) -> Result<bool, Error> {
        let address = Address::parse(address)?;
        // A question, not a start: nothing is logged.
        match check_start(&self.read()?, &address) {
            Ok(()) => Ok(false),
            Err(Error::Disabled { .. }) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Checks that the shared worker at `address` may start: call it before starting one, under
    /// the worker's start lock.
    ///
    /// It fails closed: only a missing file, or one that parses and disables neither the worker
    /// nor all workers, lets the start proceed.
    ///
    /// # Errors
    ///
    /// [`Error::Disabled`] if the worker is disabled (`globally` tells how), and every error of
    /// [`is_disabled`](Self::is_disabled).
    pub fn check_start(&self, address: &str) -> Result<(), Error> {
        let address = Address::parse(address)?;
        logged(check_start(&self.read()?, &address))
    }

    /// As [`check_start`](Self::check_start), without the shared lock, so without ever
    /// waiting: for a first look that spares a disabled worker's starter its wait for the start
    /// lock, to be confirmed under [`lock`](Self::lock) or [`try_lock`](Self::try_lock) with
    /// [`KillSwitchLock::check_start`].
    ///
    /// The file is only ever replaced by rename, so it is never seen half written; a change in
    /// progress (one that holds the exclusive lock) may not be seen yet.
    ///
    /// # Errors
    ///
    /// As for [`check_start`](Self::check_start).
    pub fn peek_start(&self, address: &str) -> Result<(), Error> {
        let address = Address::parse(address)?;
        let state = self
            .read_file()?
            .map(|(state, _)| state)
            .unwrap_or_default();
        logged(check_start(&state, &address))
    }

    /// Takes the kill switch's exclusive lock, waiting for as long as another holder keeps it.
    ///
    /// While the returned [`KillSwitchLock`] lives, no change of this kill switch can happen,
    /// from this process or any other: a shared worker's starter takes it, checks the switch
    /// with [`KillSwitchLock::check_start`], and keeps it until the worker is listening, so that
    /// a worker disabled meanwhile cannot start.
    /// Like a change, it creates the missing directory and lock file, and removes the stale
    /// temporary files of this kill switch.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the lock file cannot be opened or locked, [`Error::InvalidPath`] if the
    /// path cannot name a kill switch.
    pub fn lock(&self) -> Result<KillSwitchLock, Error> {
        self.lock_exclusive(true)
            .map(|lock| lock.expect("a blocking lock is always taken"))
    }

    /// Takes the kill switch's exclusive lock if no one holds it, without waiting.
    ///
    /// Returns `None` if another holder, in this process or another, has it (or the shared lock
    /// of a read).
    ///
    /// # Errors
    ///
    /// As for [`lock`](Self::lock).
    pub fn try_lock(&self) -> Result<Option<KillSwitchLock>, Error> {
        self.lock_exclusive(false)
    }

    /// Disables all shared workers. Returns whether the file changed.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] or [`Error::Shape`] if the file cannot be understood (it is left as it
    /// is; see [`reset`](Self::reset)), [`Error::Io`] if it cannot be read or replaced.
    pub fn disable_globally(&self) -> Result<bool, Error> {
        self.change(|state| {
            state.global = true;
            Ok(())
        })
    }

    /// Clears the global flag; workers disabled by name stay disabled. Returns whether the
    /// file changed.
    ///
    /// # Errors
    ///
    /// As for [`disable_globally`](Self::disable_globally).
    pub fn re_enable_globally(&self) -> Result<bool, Error> {
        self.change(|state| {
            state.global = false;
            Ok(())
        })
    }

    /// Disables the shared worker at `address`. Returns whether the file changed.
    ///
    /// # Errors
    ///
    /// As for [`disable_addresses`](Self::disable_addresses).
    pub fn disable_address(&self, address: &str) -> Result<bool, Error> {
        self.disable_addresses([address])
    }

    /// Disables the shared workers at `addresses`, in one transaction: either all of them or,
    /// on error, none. Returns whether the file changed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] for the first address that has no canonical form (checked
    /// before the file is touched), otherwise as for
    /// [`disable_globally`](Self::disable_globally).
    pub fn disable_addresses(
        &self,
        addresses: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<bool, Error> {
        let canonical = addresses
            .into_iter()
            .map(|a| canonical_address(a.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        self.change(|state| {
            state.addresses.extend(canonical);
            Ok(())
        })
    }

    /// Re-enables the shared worker at `address`; if all workers are disabled globally, it stays
    /// disabled until [`re_enable_globally`](Self::re_enable_globally). Returns whether the
    /// file changed.
    ///
    /// # Errors
    ///
    /// As for [`re_enable_addresses`](Self::re_enable_addresses).
    pub fn re_enable_address(&self, address: &str) -> Result<bool, Error> {
        self.re_enable_addresses([address])
    }

    /// Re-enables the shared workers at `addresses`, in one transaction. Returns whether the
    /// file changed.
    ///
    /// An address with no canonical form is accepted if the file lists it verbatim, so that a
    /// stray entry written by another program can be removed.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] for an address that has no canonical form and is not in the
    /// file, otherwise as for [`disable_globally`](Self::disable_globally).
    pub fn re_enable_addresses(
        &self,
        addresses: impl IntoIterator<Item = impl AsRef<str>>,
    ) -> Result<bool, Error> {
        let given: Vec<String> = addresses
            .into_iter()
            .map(|a| a.as_ref().to_owned())
            .collect();
        self.change(|state| {
            let mut remove = Vec::with_capacity(given.len());
            for address in given {
                match canonical_address(&address) {
                    Ok(canonical) => remove.push(canonical),
                    Err(_) if state.addresses.contains(&address) => remove.push(address),
                    Err(e) => return Err(e),
                }
            }
            for address in &remove {
                state.addresses.remove(address);
            }
            Ok(())
        })
    }

    /// Re-enables every shared worker: clears the global flag and the list of addresses.
    /// Returns whether the file changed.
    ///
    /// # Errors
    ///
    /// As for [`disable_globally`](Self::disable_globally): a broken file is not cleared by
    /// this, only by [`reset`](Self::reset).
    pub fn re_enable_all(&self) -> Result<bool, Error> {
        self.change(|state| {
            state.global = false;
            state.addresses.clear();
            Ok(())
        })
    }

    /// Replaces a kill switch file that cannot be understood ([`Error::Corrupt`] or
    /// [`Error::Shape`]) with an empty, valid one, under the exclusive lock. Returns whether it
    /// did.
    ///
    /// This re-enables every shared worker the broken file may have meant to disable; it is a
    /// separate call so that no ordinary change can do it by accident.
    /// A file that parses is left as it is (use [`re_enable_all`](Self::re_enable_all) to clear
    /// it), as is a missing one.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the file cannot be read or replaced.
    pub fn reset(&self) -> Result<bool, Error> {
        let lock = self.lock()?;
        match self.read_file() {
            Ok(_) => Ok(false),
            Err(Error::Corrupt { .. } | Error::Shape { .. }) => {
                let mode = self.current_mode()?;
                lock.replace(&State::default().to_bytes(), mode)?;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    fn read(&self) -> Result<State, Error> {
        let _lock = self.lock_shared()?;
        Ok(self
            .read_file()?
            .map(|(state, _)| state)
            .unwrap_or_default())
    }

    /// Reads, changes and, if the change changed anything, replaces the file, all under the
    /// exclusive lock so that no concurrent change is lost.
    fn change(&self, f: impl FnOnce(&mut State) -> Result<(), Error>) -> Result<bool, Error> {
        let lock = self.lock()?;
        let (before, mode) = match self.read_file()? {
            Some((state, mode)) => (state, mode),
            None => (State::default(), DEFAULT_MODE),
        };
        let mut after = before.clone();
        f(&mut after)?;
        if after == before {
            return Ok(false);
        }
        lock.replace(&after.to_bytes(), mode)?;
        Ok(true)
    }

    /// The file's state and permission bits, `None` if it does not exist.
    fn read_file(&self) -> Result<Option<(State, u32)>, Error> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let mode = file
            .metadata()
            .map_err(|e| self.io(e))?
            .permissions()
            .mode()
            & 0o777;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| self.io(e))?;
        Ok(Some((State::parse(&self.path, &bytes)?, mode)))
    }

    fn current_mode(&self) -> Result<u32, Error> {
        match fs::metadata(&self.path) {
            Ok(meta) => Ok(meta.permissions().mode() & 0o777),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(DEFAULT_MODE),
            Err(e) => Err(self.io(e)),
        }
    }

    /// Replaces the file atomically: a reader sees the old content or the new, never a mix, and
    /// a crash at any point leaves one of them in place. Only under the exclusive lock (see
    /// [`KillSwitchLock::replace`]): the cleanup of stale temporary files relies on it.
    fn replace_locked(&self, bytes: &[u8], mode: u32) -> Result<(), Error> {
        let dir = self.dir();
        let (temp_path, mut temp) = loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = self.sibling_name(".", &format!(".tmp.{}.{n}", std::process::id()))?;
            let temp_path = dir.join(name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&temp_path)
            {
                Ok(file) => break (temp_path, file),
                // Left by a killed process whose pid we now have; try the next number.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(Error::Io {
                        path: temp_path,
                        source: e,
                    });
                }
            }
        };
        let written = (|| {
            // The umask applied at creation; the file must keep the old file's mode exactly.
            temp.set_permissions(Permissions::from_mode(mode))?;
            temp.write_all(bytes)?;
            // Without this, the rename could reach the disk before the data, and a power loss
            // would leave an empty file under the kill switch's name.
            temp.sync_all()
        })();
        drop(temp);
        if let Err(source) = written {
            let _ = fs::remove_file(&temp_path);
            return Err(Error::Io {
                path: temp_path,
                source,
            });
        }
        if let Err(source) = fs::rename(&temp_path, &self.path) {
            let _ = fs::remove_file(&temp_path);
            return Err(Error::Io {
                path: self.path.clone(),
                source,
            });
        }
        // Makes the rename itself durable.
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| Error::Io {
                path: dir.to_owned(),
                source,
            })
    }

    fn lock_shared(&self) -> Result<Option<LockFile>, Error> {
        let lock_path = self.lock_path()?;
        let file = match LockFile::open(OpenOptions::new().read(true), &lock_path) {
            Ok(file) => Some(file),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match LockFile::open(
                    OpenOptions::new()
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .mode(0o644),
                    &lock_path,
                ) {
                    Ok(file) => Some(file),
                    // A reader that cannot create the lock file (read-only directory or file
                    // system, or no directory at all) can still read safely: the file is only
                    // ever replaced by rename, so it is never seen half written. The lock only
                    // orders the read after a change in progress.
                    Err(e) if can_read_unlocked(&e) => None,
                    Err(source) => {
                        return Err(Error::Io {
                            path: lock_path,
                            source,
                        });
                    }
                }
            }
            Err(e) if can_read_unlocked(&e) => None,
            Err(source) => {
                return Err(Error::Io {
                    path: lock_path,
                    source,
                });
            }
        };
        if let Some(file) = &file {
            file.lock_shared().map_err(|source| Error::Io {
                path: lock_path,
                source,
            })?;
        }
        Ok(file)
    }

    /// Takes the exclusive lock, waiting for it if `wait`; `None` if not waiting and it is held.
    fn lock_exclusive(&self, wait: bool) -> Result<Option<KillSwitchLock>, Error> {
        let lock_path = self.lock_path()?;
        let dir = self.dir();
        // As the PHP original does, a first change creates the directory.
        fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_owned(),
            source,
        })?;
        let file = LockFile::open(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644),
            &lock_path,
        )
        .or_else(|e| match e.kind() {
            // flock does not need write access: a lock file owned by another user will do.
            io::ErrorKind::PermissionDenied => {
                LockFile::open(OpenOptions::new().read(true), &lock_path)
            }
            _ => Err(e),
        })
        .map_err(|source| Error::Io {
            path: lock_path.clone(),
            source,
        })?;
        let locked = if wait {
            file.lock_exclusive().map(|()| true)
        } else {
            file.try_lock_exclusive()
        };
        match locked {
            Ok(true) => {}
            Ok(false) => return Ok(None),
            Err(source) => {
                return Err(Error::Io {
                    path: lock_path,
                    source,
                });
            }
        }
        self.remove_stale_temp_files();
        Ok(Some(KillSwitchLock {
            switch: self.clone(),
            _file: file,
        }))
    }

    /// Removes the temporary files of writers killed before their rename. Only a lock holder
    /// writes temporary files, so under the exclusive lock every one of this switch's is stale.
    ///
    /// Other switches in the same directory have their own locks, and their writers may be
    /// between write and rename right now: only names whose owner, as [`temp_file_owner`]
    /// reads it, is this switch are removed.
    fn remove_stale_temp_files(&self) {
        let (Ok(own), Ok(entries)) = (self.file_name(), fs::read_dir(self.dir())) else {
            // Best effort: a leftover temporary file is harmless, failing a change over one
            // would not be.
            return;
        };
        let own = own.as_encoded_bytes();
        for entry in entries.flatten() {
            if temp_file_owner(entry.file_name().as_encoded_bytes()) == Some(own) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    fn dir(&self) -> &Path {
        match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        }
    }

    /// The kill switch's file name, refused if it is one that another kill switch in the same
    /// directory uses for its own files: such a file would be deleted by that switch's cleanup,
    /// or replace its lock file, and in both cases disabled workers could start.
    fn file_name(&self) -> Result<&OsStr, Error> {
        let invalid = |reason| Error::InvalidPath {
            path: self.path.clone(),
            reason,
        };
        let name = self
            .path
            .file_name()
            .ok_or_else(|| invalid("the path has no file name"))?;
        let bytes = name.as_encoded_bytes();
        if temp_file_owner(bytes).is_some() {
            return Err(invalid(
                "the file name is that of another kill switch's temporary file",
            ));
        }
        if bytes.len() > LOCK_SUFFIX.len() && bytes.ends_with(LOCK_SUFFIX.as_bytes()) {
            return Err(invalid(
                "the file name is that of another kill switch's lock file",
            ));
        }
        Ok(name)
    }

    fn sibling_name(&self, prefix: &str, suffix: &str) -> Result<OsString, Error> {
        let mut name = OsString::from(prefix);
        name.push(self.file_name()?);
        name.push(suffix);
        Ok(name)
    }

    fn io(&self, source: io::Error) -> Error {
        Error::Io {
            path: self.path.clone(),
            source,
        }
    }
}

/// The exclusive lock of a kill switch, held until it is dropped.
///
/// Taken with [`KillSwitch::lock`] or [`KillSwitch::try_lock`].
/// It is the lock every change of the kill switch takes, on the lock file `<name>.lock` beside
/// it: while it is held, the file cannot change, and reads in other processes wait.
/// The kernel releases it when the holding process dies, however it dies.
///
/// Under the lock, read the kill switch through the lock's own methods.
/// The methods of [`KillSwitch`] take the lock themselves, and `flock(2)` locks belong to open
/// files, not to processes: called while this lock is held, in this thread, they would wait
/// for it forever.
///
/// # Examples
///
/// ```
/// use worker_killswitch::{Address, Error, KillSwitch};
///
/// let dir = tempfile::tempdir()?;
/// let switch = KillSwitch::new(dir.path().join("kill-switch.json"));
/// switch.disable_address("unix:///run/app/old.sock")?;
///
/// let lock = switch.lock()?;
/// assert!(switch.try_lock()?.is_none());
/// lock.check_start(&Address::parse("unix:///run/app/new.sock")?)?;
/// assert!(matches!(
///     lock.check_start(&"unix:///run/app/old.sock".parse()?),
///     Err(Error::Disabled { globally: false, .. })
/// ));
/// // ... start the worker, wait until it listens ...
/// drop(lock);
/// assert!(switch.try_lock()?.is_some());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
#[must_use = "the lock is released as soon as it is dropped"]
pub struct KillSwitchLock {
    switch: KillSwitch,
    /// Holds the `flock`; closing it releases the lock.
    _file: LockFile,
}

impl KillSwitchLock {
    /// The kill switch this lock belongs to.
    pub fn kill_switch(&self) -> &KillSwitch {
        &self.switch
    }

    /// As [`KillSwitch::state`], read under this lock.
    ///
    /// # Errors
    ///
    /// As for [`KillSwitch::state`].
    pub fn state(&self) -> Result<KillSwitchState, Error> {
        self.read().map(snapshot)
    }

    /// As [`KillSwitch::check_start`], under this lock: the answer holds for as long as the
    /// lock is kept.
    ///
    /// # Errors
    ///
    /// [`Error::Disabled`] if the worker is disabled (`globally` tells how),
    /// [`Error::Corrupt`] or [`Error::Shape`] if the file cannot be understood, [`Error::Io`] if
    /// it cannot be read.
    pub fn check_start(&self, address: &Address) -> Result<(), Error> {
        logged(check_start(&self.read()?, address))
    }

    fn read(&self) -> Result<State, Error> {
        Ok(self
            .switch
            .read_file()?
            .map(|(state, _)| state)
            .unwrap_or_default())
    }

    fn replace(&self, bytes: &[u8], mode: u32) -> Result<(), Error> {
        self.switch.replace_locked(bytes, mode)
    }
}

fn snapshot(state: State) -> KillSwitchState {
    KillSwitchState {
        global: state.global,
        addresses: state.addresses.into_iter().collect(),
    }
}

/// Logs a start the kill switch refuses, at `warn` with the target `exsyst_worker::killswitch`.
fn logged(result: Result<(), Error>) -> Result<(), Error> {
    if let Err(Error::Disabled { address, globally }) = &result {
        let how = if *globally {
            "all workers"
        } else {
            "this worker"
        };
        log::warn!(
            target: "exsyst_worker::killswitch",
            "kill switch refused to start the shared worker at {address}: {how} disabled"
        );
    }
    result
}

/// Whether `state` lets the worker at `address` start.
fn check_start(state: &State, address: &Address) -> Result<(), Error> {
    if state.global || state.addresses.contains(address.as_str()) {
        return Err(Error::Disabled {
            address: address.to_string(),
            globally: state.global,
        });
    }
    Ok(())
}

/// Retries a blocking lock that a signal handler interrupted (one installed without
/// `SA_RESTART`): the caller asked to wait for the lock, not for the next signal.
/// The file name of the switch whose temporary file `name` is, if it is one.
///
/// A temporary file is named `.<switch>.tmp.<pid>.<counter>`, with `<pid>` and `<counter>` in
/// decimal digits. Digits contain no dot, so the last two dots of a temporary file's name are
/// the ones before `<pid>` and `<counter>`: reading from the end, the owner is found without
/// ambiguity. Each temporary file therefore belongs to exactly one switch, even when a
/// switch's own name ends like a temporary file (the temporary files of `ks.tmp.1` are
/// `.ks.tmp.1.tmp.<pid>.<counter>`, whose owner is `ks.tmp.1`, never `ks`).
fn temp_file_owner(name: &[u8]) -> Option<&[u8]> {
    fn digits_after_last_dot(name: &[u8]) -> Option<&[u8]> {
        let dot = name.iter().rposition(|&b| b == b'.')?;
        let digits = &name[dot + 1..];
        (!digits.is_empty() && digits.iter().all(u8::is_ascii_digit)).then_some(&name[..dot])
    }
    let rest = digits_after_last_dot(name)?;
    let rest = digits_after_last_dot(rest)?;
    let owner = rest.strip_suffix(b".tmp")?.strip_prefix(b".")?;
    (!owner.is_empty()).then_some(owner)
}

fn can_read_unlocked(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied
            | io::ErrorKind::ReadOnlyFilesystem
            | io::ErrorKind::NotFound
    )
}
