//! The admin cookie: the secret that proves a right to stop a shared worker.

use std::{
    fmt,
    fs::File,
    io::{self, Read},
    os::unix::fs::PermissionsExt,
    path::Path,
};

use zeroize::Zeroizing;

use crate::Error;

/// The most a cookie file may hold: the longest cookie and a line end (`\r\n`); a larger file
/// is refused without being read, so a path that names something huge by mistake cannot fill
/// memory.
const MAX_COOKIE_FILE_LEN: u64 = AdminCookie::MAX_LEN as u64 + 2;

/// The one rule for a cookie's length, wherever it comes from (text, bytes, a file, a profile,
/// the environment of the operators' programs, a daemon's settings): 1 to
/// [`AdminCookie::MAX_LEN`] bytes.
fn check_len(len: usize) -> Result<(), Error> {
    if len == 0 {
        return Err(Error::InvalidCookie {
            reason: "the cookie is empty",
        });
    }
    if len > AdminCookie::MAX_LEN {
        return Err(too_long());
    }
    Ok(())
}

fn too_long() -> Error {
    Error::InvalidCookie {
        reason: "the cookie is longer than 4096 bytes",
    }
}

/// The secret that proves a right to stop a shared worker and to see its privileged status
/// (the seed's "admin cookie").
///
/// It never crosses the wire: both sides prove they know it (see [`protocol`](crate::protocol)).
/// It never shows in logs either: `Debug` and `Display` print `<redacted>`, and its bytes are
/// wiped when it is dropped.
///
/// ```
/// use worker_shared::AdminCookie;
///
/// let cookie = AdminCookie::new("change me in your app")?;
/// assert_eq!(format!("{cookie:?}"), "AdminCookie(<redacted>)");
/// assert!(AdminCookie::new("").is_err());
/// # Ok::<(), worker_shared::Error>(())
/// ```
#[derive(Clone)]
pub struct AdminCookie {
    secret: Zeroizing<Vec<u8>>,
}

impl AdminCookie {
    /// The longest cookie, in bytes, from any source: a cookie is a short secret (32 random
    /// bytes are plenty; HMAC-SHA256 hashes a key longer than 64 bytes down to 32 anyway).
    pub const MAX_LEN: usize = 4096;

    /// A cookie from its bytes or its text, taken as they are (text as its UTF-8 bytes, with
    /// no trimming); an empty one, or one longer than [`MAX_LEN`](Self::MAX_LEN), is refused
    /// ([`Error::InvalidCookie`]).
    ///
    /// A `String` or a `Vec<u8>` is taken over without a copy, so no second copy of the secret
    /// is left behind unwiped.
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<Self, Error> {
        let secret = Zeroizing::new(secret.into());
        check_len(secret.len())?;
        Ok(AdminCookie { secret })
    }

    /// Reads a cookie from a file that only its owner may access.
    ///
    /// Line ends at the end of the file are not part of the cookie, so a file written with
    /// `echo secret > file` holds `secret`.
    ///
    /// # Errors
    ///
    /// - [`Error::CookieFileMode`] when the group or others have any permission on the file;
    /// - [`Error::CookieFile`] when it cannot be read, or is not a regular file;
    /// - [`Error::InvalidCookie`] when it holds nothing but line ends, or a cookie longer than
    ///   [`MAX_LEN`](Self::MAX_LEN) (the rule of [`new`](Self::new)).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let fail = |source| Error::CookieFile {
            path: path.to_owned(),
            source,
        };
        // Checked before opening too, as opening a FIFO would block.
        let meta = std::fs::metadata(path).map_err(fail)?;
        if !meta.is_file() {
            return Err(fail(not_a_file()));
        }
        let mut file = File::open(path).map_err(fail)?;
        // Checked again on what was opened, in case the path changed in between.
        let meta = file.metadata().map_err(fail)?;
        if !meta.is_file() {
            return Err(fail(not_a_file()));
        }
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(Error::CookieFileMode {
                path: path.to_owned(),
                mode,
            });
        }
        if meta.len() > MAX_COOKIE_FILE_LEN {
            return Err(too_long());
        }
        // Read into a buffer that is wiped, and never grown (which would leave copies behind).
        let mut secret = Zeroizing::new(Vec::with_capacity(MAX_COOKIE_FILE_LEN as usize + 1));
        (&mut file)
            .take(MAX_COOKIE_FILE_LEN + 1)
            .read_to_end(&mut secret)
            .map_err(fail)?;
        // It grew since the check above.
        if secret.len() as u64 > MAX_COOKIE_FILE_LEN {
            return Err(too_long());
        }
        while matches!(secret.last(), Some(b'\n' | b'\r')) {
            secret.pop();
        }
        check_len(secret.len())?;
        Ok(AdminCookie { secret })
    }

    /// The admin cookie a bootstrap profile holds: given by value
    /// ([`with_admin_cookie`](worker_bootstrap::BootstrapProfile::with_admin_cookie)), or read
    /// from its file ([`with_admin_cookie_file`](worker_bootstrap::BootstrapProfile::with_admin_cookie_file),
    /// with the checks of [`from_file`](Self::from_file)); `None` when it has none.
    ///
    /// # Errors
    ///
    /// As for [`new`](Self::new) and [`from_file`](Self::from_file).
    pub fn from_profile(
        profile: &worker_bootstrap::BootstrapProfile,
    ) -> Result<Option<Self>, Error> {
        if let Some(secret) = profile.admin_cookie() {
            return AdminCookie::new(secret.to_vec()).map(Some);
        }
        profile
            .admin_cookie_file()
            .map(AdminCookie::from_file)
            .transpose()
    }

    /// The secret, for the HMAC key; never for display.
    pub(crate) fn expose(&self) -> &[u8] {
        &self.secret
    }
}

fn not_a_file() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "not a regular file")
}

impl TryFrom<String> for AdminCookie {
    type Error = Error;

    fn try_from(secret: String) -> Result<Self, Error> {
        AdminCookie::new(secret)
    }
}

impl TryFrom<&str> for AdminCookie {
    type Error = Error;

    fn try_from(secret: &str) -> Result<Self, Error> {
        AdminCookie::new(secret)
    }
}

impl TryFrom<Vec<u8>> for AdminCookie {
    type Error = Error;

    fn try_from(secret: Vec<u8>) -> Result<Self, Error> {
        AdminCookie::new(secret)
    }
}

impl TryFrom<&[u8]> for AdminCookie {
    type Error = Error;

    fn try_from(secret: &[u8]) -> Result<Self, Error> {
        AdminCookie::new(secret)
    }
}

impl fmt::Debug for AdminCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminCookie(<redacted>)")
    }
}

impl fmt::Display for AdminCookie {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}
