//! The kill switch of exsyst-worker shared workers: a JSON file, changed under file locks, that says which shared workers may not start.
//!
//! ```
//! use worker_killswitch::{Error, KillSwitch};
//!
//! let dir = tempfile::tempdir()?;
//! let switch = KillSwitch::new(dir.path().join("kill-switch.json"));
//!
//! // A missing file disables nothing.
//! switch.check_start("unix:///run/app/worker.sock")?;
//!
//! // Before deploying, disable one worker (any spelling of its address will do) ...
//! switch.disable_address("unix:///run/app//old/../worker.sock")?;
//! assert_eq!(switch.disabled_addresses()?, ["unix:///run/app/worker.sock"]);
//! assert!(matches!(
//!     switch.check_start("unix:///run/app/worker.sock"),
//!     Err(Error::Disabled { globally: false, .. })
//! ));
//!
//! // ... or all of them, then re-enable everything.
//! switch.disable_globally()?;
//! assert!(switch.is_disabled("tcp://localhost:8080")?);
//! switch.re_enable_all()?;
//! assert!(!switch.is_disabled("unix:///run/app/worker.sock")?);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Overview
//!
//! [`KillSwitch`] is the file: a global flag and a list of disabled addresses.
//! [`KillSwitch::check_start`] is what a master calls before it starts a shared worker; it fails
//! closed, refusing the start when the file cannot be understood.
//! A starter that must keep the answer true until its worker listens takes the kill switch's
//! exclusive lock, a [`KillSwitchLock`], and checks under it with
//! [`KillSwitchLock::check_start`].
//! [`Address`] is a shared worker address in canonical form, the form in which addresses are
//! stored and compared ([`canonical_address`] gives it as a string).
//! Every failure is an [`Error`].
//!
//! Disabling a worker does not stop it.
//! To take a running worker out of service, disable it first, then stop it: in the other order,
//! another master could restart it in between.
//!
//! # The file
//!
//! The format is the PHP original's, so that either implementation reads what the other wrote:
//!
//! ```json
//! {"global": false, "addresses": ["unix:///run/app/worker.sock", "tcp://localhost:8080"]}
//! ```
//!
//! - A missing file disables nothing; so does a missing key.
//! - A file that is not JSON (an empty file included) is [`Error::Corrupt`]; JSON of another
//!   shape (`global` not a boolean, `addresses` not an array of strings, not an object at all)
//!   is [`Error::Shape`].
//!   Both name the file, both make [`KillSwitch::check_start`] refuse every start, and both make
//!   every change refuse to proceed, leaving the file as it is, until [`KillSwitch::reset`]
//!   replaces it with an empty state (or someone repairs it).
//! - Keys other than `global` and `addresses` are kept, with their values, when the file is
//!   rewritten.
//! - Addresses are written in canonical form, sorted, without duplicates.
//!   Entries read from the file are canonicalised too; an entry that has no canonical form is
//!   kept verbatim (it can match no valid address) and can be removed by re-enabling it by its
//!   exact text, or with [`KillSwitch::re_enable_all`].
//! - The file is written pretty-printed with a final newline; escaped slashes (`\/`, as PHP
//!   writes them) are read like any JSON escape.
//!
//! # Concurrency and crashes
//!
//! Changes and reads are serialised by [`flock(2)`] on a lock file beside the kill switch,
//! `<name>.lock` (never on the kill switch file itself, which gets replaced).
//!
//! - A change takes the exclusive lock, reads the file, applies the change, and if that changed
//!   anything writes the new content to a temporary file in the same directory
//!   (`.<name>.tmp.<pid>.<counter>`), syncs it, renames it over the kill switch and syncs the
//!   directory.
//!   Concurrent changes, from threads or processes, are never lost; a change that changes
//!   nothing writes nothing.
//!   The new file has the old file's permission bits, or `0644` for a new file.
//!   A first change creates the missing directory.
//! - [`KillSwitch::lock`] and [`KillSwitch::try_lock`] take the exclusive lock a change takes,
//!   and hold it until the [`KillSwitchLock`] is dropped; that lock reads the file without
//!   locking again.
//! - A read takes the shared lock and writes nothing (it may create the empty lock file).
//!   If the lock file cannot be created (read-only directory), it reads without the lock,
//!   which is safe: the file is only ever replaced whole, so no reader can see it torn.
//! - A process killed at any point leaves the old content or the new one.
//!   The kernel releases its lock when it dies; a temporary file it leaves behind is ignored by
//!   readers and removed by the next change of the same kill switch.
//!   A change removes only names of the exact form `.<name>.tmp.<digits>.<digits>` for its own
//!   `<name>`, so the files of other kill switches in the directory, and their writes in
//!   progress, are left alone: read from the end, such a name has exactly one owner.
//! - Several kill switches may share a directory, but none may be named like another's own
//!   files: a kill switch whose file name is `<other>.lock` or `.<other>.tmp.<digits>.<digits>`
//!   would replace that switch's lock file or be deleted as its stale temporary file, so every
//!   call on it fails with [`Error::InvalidPath`] (and a start is refused, as for a broken file).
//!
//! The PHP original rewrites the file in place, under no lock of ours: do not let both change
//! the same file at the same time.
//! A symbolic link at the kill switch's path is replaced by a regular file on the first change.
//!
//! # Addresses
//!
//! Shared workers listen on `unix:///absolute/path` or `tcp://host:port`.
//! [`Address::parse`] (and [`canonical_address`]) normalises the spelling of an address, and
//! nothing more:
//!
//! - The scheme is matched without regard to case and written in lowercase.
//! - `unix://` paths must be absolute.
//!   They are normalised lexically: repeated slashes collapse, `.` components and a trailing
//!   slash disappear, and `..` removes the component before it (at the root, it stays at the
//!   root).
//!   The file system is not consulted: symbolic links are not resolved, so two paths that reach
//!   the same socket through different links are different workers, and `a/b/..` is `a` even
//!   when `b` is a link.
//!   Case and percent signs are kept as written.
//! - `tcp://` hosts are lowercased and lose one trailing dot (`LocalHost.` is `localhost`).
//!   Names are not resolved: `localhost`, `127.0.0.1` and `[::1]` are three different workers,
//!   and a worker disabled as one of them is not disabled as another.
//!   Host names are ASCII letters, digits, `-` and `_` in dot-separated labels (no IDNs).
//!   IPv6 literals go in brackets and are written in their RFC 5952 form (`[0:0::1]` is
//!   `[::1]`); zone identifiers are refused.
//!   The port is required, decimal, and written without leading zeros (`080` is `80`); port 0
//!   is refused.
//! - Anything else (another scheme, a relative or empty path, a missing host or port, a path or
//!   user name after a tcp address) is [`Error::InvalidAddress`].
//!
//! [`flock(2)`]: https://man7.org/linux/man-pages/man2/flock.2.html
//!
//! A start that [`KillSwitch::check_start`] or [`KillSwitchLock::check_start`] refuses is a
//! `log` record at `warn`, with the target `exsyst_worker::killswitch`; asking
//! ([`KillSwitch::is_disabled`]) logs nothing.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod address;
mod error;
mod lock;
mod state;
mod switch;

pub use address::{Address, canonical_address};
pub use error::Error;
pub use lock::LockFile;
pub use switch::{KillSwitch, KillSwitchLock, KillSwitchState};
