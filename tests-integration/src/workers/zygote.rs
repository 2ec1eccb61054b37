//! A worker that reports what it inherited: for the zygote scenarios, which compare a forked
//! worker with an executed one.

use std::{io::Write, path::PathBuf, sync::Mutex};

use exsyst_worker::{BoxError, RawWorker, Registry, Worker, WorkerChannel};
use serde::{Deserialize, Serialize};

/// Registers this module's implementations.
pub fn register(registry: Registry) -> Registry {
    registry.raw::<Probe>()
}

/// A lock the master scenario holds on another thread while it spawns; the worker takes its
/// own copy of it.
pub static SHARED: Mutex<()> = Mutex::new(());

/// What [`Probe`] is asked.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Ask {
    /// Answers [`Ids`].
    Ids,
    /// Takes [`SHARED`], writes a line to standard error, allocates and touches 64 MiB, logs a
    /// record, then answers `"done"`.
    UseLocks,
    /// Takes an exclusive `flock` on the file without waiting; answers `Ok(())` or the error.
    Flock(PathBuf),
}

/// Who the worker is, and what it holds.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Ids {
    /// Its pid.
    pub pid: u32,
    /// Its parent's.
    pub ppid: u32,
    /// Its process group.
    pub pgid: u32,
    /// Its threads when its constructor ran, before the implementation started any.
    pub threads_at_start: usize,
    /// Where each of its descriptors leads.
    pub fds: Vec<String>,
    /// Whether the C library's record of its main thread's id is its own (see
    /// [`libc_thread_id_is_own`](crate::sys::libc_thread_id_is_own)).
    pub libc_tid_is_own: bool,
}

/// Reports what it inherited (see [`Ask`]).
#[derive(Debug)]
pub struct Probe {
    threads_at_start: usize,
}

impl Worker for Probe {
    const NAME: &'static str = "probe";
    type Args = ();
    fn new((): ()) -> Result<Self, BoxError> {
        Ok(Probe {
            threads_at_start: std::fs::read_dir("/proc/self/task")?.count(),
        })
    }
}

impl RawWorker for Probe {
    fn run(&mut self, channel: &mut WorkerChannel) -> Result<(), BoxError> {
        while let Some(ask) = channel.next_message::<Ask>()? {
            match ask {
                Ask::Ids => {
                    let stat = std::fs::read_to_string("/proc/self/stat")?;
                    let rest = &stat[stat.rfind(')').ok_or("no ) in stat")? + 2..];
                    let fields: Vec<&str> = rest.split(' ').collect();
                    let mut fds = Vec::new();
                    for entry in std::fs::read_dir("/proc/self/fd")? {
                        if let Ok(target) = std::fs::read_link(entry?.path()) {
                            fds.push(target.display().to_string());
                        }
                    }
                    channel.send_message(&Ids {
                        pid: std::process::id(),
                        ppid: fields[1].parse()?,
                        pgid: fields[2].parse()?,
                        threads_at_start: self.threads_at_start,
                        fds,
                        libc_tid_is_own: crate::sys::libc_thread_id_is_own()?,
                    })?;
                }
                Ask::UseLocks => {
                    let guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
                    writeln!(std::io::stderr(), "probe {} writes", std::process::id())?;
                    let mut ballast = vec![0u8; 64 << 20];
                    for page in ballast.chunks_mut(4096) {
                        page[0] = 1;
                    }
                    std::hint::black_box(&ballast);
                    log::info!("probe {} logs", std::process::id());
                    drop(guard);
                    channel.send_message("done")?;
                }
                Ask::Flock(path) => {
                    let file = std::fs::File::open(&path)?;
                    let locked = crate::sys::try_flock_exclusive(&file).map_err(|e| format!("{e}"));
                    channel.send_message(&locked)?;
                }
            }
        }
        Ok(())
    }
}
