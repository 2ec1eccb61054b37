//! What `check_shared_worker` and `worker-ctl` share: where the admin cookie comes from, one
//! status query bounded by a deadline, and errors told on one line.

use std::{
    error::Error as StdError,
    ffi::OsString,
    os::unix::ffi::OsStringExt,
    path::Path,
    time::{Duration, Instant},
};

use exsyst_worker::shared::{AdminCookie, Error, SharedWorker, StatusReply};

/// The environment variable that may hold the admin cookie itself, for a privileged query or a
/// stop: unlike an argument, the environment of a process is readable by its owner only.
pub(crate) const COOKIE_ENV: &str = "EXSYST_WORKER_ADMIN_COOKIE";

/// The longest timeout either program waits, in seconds: a longer one (`1e19`, say) means "no
/// deadline to speak of" and is taken as this, so that every deadline stays an instant the
/// clock can hold.
pub(crate) const MAX_TIMEOUT_SECS: f64 = 100.0 * 365.0 * 86_400.0;

/// Seconds from the command line as a timeout: a positive number, at most
/// [`MAX_TIMEOUT_SECS`].
pub(crate) fn timeout_seconds(text: &str) -> Option<Duration> {
    text.parse::<f64>()
        .ok()
        .filter(|s| *s > 0.0)
        .map(|s| Duration::from_secs_f64(s.min(MAX_TIMEOUT_SECS)))
}

/// The instant `timeout` from now, saturating: a timeout past what the clock holds is taken as
/// [`MAX_TIMEOUT_SECS`], never a panic.
pub(crate) fn deadline(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs_f64(MAX_TIMEOUT_SECS)))
        .unwrap_or(now)
}

/// The admin cookie: from `file` when given, else `value` (an argument), else
/// [`$EXSYST_WORKER_ADMIN_COOKIE`](COOKIE_ENV) when set and not empty; `None` without one.
pub(crate) fn admin_cookie(
    file: Option<&Path>,
    value: Option<&str>,
) -> Result<Option<AdminCookie>, Error> {
    if let Some(file) = file {
        return AdminCookie::from_file(file).map(Some);
    }
    if let Some(value) = value {
        return AdminCookie::new(value).map(Some);
    }
    match std::env::var_os(COOKIE_ENV).map(OsString::into_vec) {
        Some(secret) if !secret.is_empty() => AdminCookie::new(secret).map(Some),
        _ => Ok(None),
    }
}

/// Time left until `deadline`, zero once it passed.
pub(crate) fn left(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// Connects to the worker at `address` and reads its hello, by `deadline`.
pub(crate) fn connect(address: &str, deadline: Instant) -> Result<SharedWorker, Error> {
    SharedWorker::connect_timeout(address, left(deadline))
}

/// Connects and queries the worker at `address`, privileged when a cookie is given, the whole
/// exchange (connection, hello, authentication, query) done by `deadline`.
pub(crate) fn query(
    address: &str,
    cookie: Option<&AdminCookie>,
    deadline: Instant,
) -> Result<(SharedWorker, StatusReply), Error> {
    let mut worker = connect(address, deadline)?;
    worker.set_control_timeout(left(deadline));
    let reply = match cookie {
        Some(cookie) => worker.query_privileged(cookie)?,
        None => worker.query()?,
    };
    Ok((worker, reply))
}

/// An error and its causes on one line, `outer: inner: innermost`.
pub(crate) fn one_line(error: &(dyn StdError + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some errors repeat their cause in their own words already.
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = cause.source();
    }
    line.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_follow_on_one_line() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no\nsuch file");
        let error = Error::Connect {
            address: "unix:///x".to_owned(),
            source: io,
        };
        assert_eq!(
            one_line(&error),
            "cannot connect to shared worker at unix:///x: no such file"
        );
    }
}
