//! Masters of shared workers, each a process of its own: `test-worker master shared-...`.
//!
//! Each prints its findings on standard output, one `key=value` per line.

use exsyst_worker::{BootstrapProfile, WorkerFactory};

use crate::workers::shared::{
    CONSTRUCTION_LOG_VAR, COUNT_CONSTRUCTIONS, MySharedWorkerImpl, SHARED_COOKIE,
};

/// Runs the shared scenario named by `args[0]`.
pub fn run(args: &[String]) -> anyhow::Result<()> {
    match args.first().map(String::as_str) {
        Some("shared-connect") => connect(&args[1..]),
        Some("shared-stop") => {
            let address = args.get(1).expect("address");
            factory(&Options::default()).stop_shared_worker(address)?;
            println!("stopped=1");
            Ok(())
        }
        other => anyhow::bail!("unknown scenario {other:?}"),
    }
}

/// What `shared-connect` was told besides the address and the name.
#[derive(Debug, Default)]
struct Options {
    log: Option<String>,
    kill_switch: Option<String>,
    hold: bool,
}

/// The seed's `MasterOfShared`: this executable as the worker executable, the shared tests'
/// admin cookie, and what the options ask for.
fn factory(options: &Options) -> WorkerFactory {
    let mut profile = BootstrapProfile::new().with_admin_cookie(SHARED_COOKIE);
    if let Some(log) = &options.log {
        profile = profile
            .with_after_hook(COUNT_CONSTRUCTIONS)
            .with_env(CONSTRUCTION_LOG_VAR, log);
    }
    if let Some(path) = &options.kill_switch {
        profile = profile.with_kill_switch_path(path);
    }
    WorkerFactory::with_profile(profile)
}

/// `shared-connect ADDRESS NAME [--log PATH] [--kill-switch PATH] [--hold]`: connects to the
/// [`MySharedWorkerImpl`] at ADDRESS, starting it if needed, sends NAME and prints `pid=` and
/// `reply=`; with `--hold`, then prints `ready` and waits for its standard input to close.
fn connect(args: &[String]) -> anyhow::Result<()> {
    let address = args.first().expect("address");
    let name = args.get(1).expect("name");
    let mut options = Options::default();
    let mut rest = args[2..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--log" => options.log = rest.next().cloned(),
            "--kill-switch" => options.kill_switch = rest.next().cloned(),
            "--hold" => options.hold = true,
            other => anyhow::bail!("unknown option {other:?}"),
        }
    }
    let mut worker = factory(&options).connect_to_shared_worker::<MySharedWorkerImpl>(address)?;
    worker.send_message(name)?;
    let reply: String = worker.receive_message()?;
    println!("pid={}", worker.pid());
    println!("reply={reply}");
    if options.hold {
        println!("ready");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    Ok(())
}
