use std::{error, fmt, io, path::PathBuf};

/// The error type of every kill switch operation.
///
/// A kill switch file that cannot be understood is an error ([`Error::Corrupt`] or
/// [`Error::Shape`]), never "nothing disabled": callers that start shared workers must refuse to
/// start on any error, which is what [`KillSwitch::check_start`](crate::KillSwitch::check_start)
/// does.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A file system operation on the kill switch, its lock file, its temporary file or its
    /// directory failed.
    Io {
        /// The file or directory the operation was about.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// The kill switch file is not valid JSON (an empty file included).
    Corrupt {
        /// The kill switch file.
        path: PathBuf,
        /// What the JSON parser said, with line and column.
        source: serde_json::Error,
    },
    /// The kill switch file is valid JSON, but not of the kill switch's shape.
    Shape {
        /// The kill switch file.
        path: PathBuf,
        /// What is wrong with it, e.g. "`global` is not a boolean".
        what: String,
    },
    /// The shared worker may not start: it is disabled, by name or globally.
    Disabled {
        /// The worker's address, in canonical form.
        address: String,
        /// Whether shared workers are disabled globally (otherwise, this address is).
        globally: bool,
    },
    /// The kill switch's path cannot name a kill switch: it has no file name, or its file name
    /// is one that another kill switch in the same directory uses for its lock file
    /// (`<name>.lock`) or its temporary files (`.<name>.tmp.<digits>.<digits>`).
    InvalidPath {
        /// The kill switch's path.
        path: PathBuf,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An address is not one a shared worker can listen on, see
    /// [`canonical_address`](crate::canonical_address).
    InvalidAddress {
        /// The address as it was given.
        address: String,
        /// Why it was refused.
        reason: &'static str,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, .. } => write!(f, "kill switch i/o error on {}", path.display()),
            Error::Corrupt { path, .. } => {
                write!(f, "kill switch file {} is not valid json", path.display())
            }
            Error::Shape { path, what } => {
                write!(
                    f,
                    "kill switch file {} is malformed: {what}",
                    path.display()
                )
            }
            Error::Disabled {
                address,
                globally: true,
            } => write!(
                f,
                "shared worker {address} may not start: shared workers are disabled globally"
            ),
            Error::Disabled {
                address,
                globally: false,
            } => write!(f, "shared worker {address} may not start: it is disabled"),
            Error::InvalidPath { path, reason } => {
                write!(f, "invalid kill switch path {}: {reason}", path.display())
            }
            Error::InvalidAddress { address, reason } => {
                write!(f, "invalid shared worker address {address:?}: {reason}")
            }
        }
    }
}

impl error::Error for Error {
    fn source(&self) -> Option<&(dyn error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Corrupt { source, .. } => Some(source),
            _ => None,
        }
    }
}
