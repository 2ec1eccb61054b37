use serde::{Serialize, de::DeserializeOwned};

/// The error type worker code returns: anything that is an error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What every worker implementation has: a stable name and a constructor.
///
/// The name is how a master asks for an implementation across a process boundary, so it must be
/// unique within an executable and must not change between the master's build and the worker's.
pub trait Worker: Sized + 'static {
    /// The implementation's stable name.
    const NAME: &'static str;

    /// The constructor's arguments, serialized by the master and decoded in the worker.
    type Args: Serialize + DeserializeOwned;

    /// Builds the implementation inside the worker process.
    ///
    /// An error ends the worker before it handles any message; its master sees the worker's exit
    /// and the error text in the tail of its standard error.
    fn new(args: Self::Args) -> Result<Self, BoxError>;
}

/// An error followed by each of its sources, `": "` between them: the whole story in one line,
/// for standard error and for error messages that cross a process boundary.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
