//! Runs the test implementations as a worker, or a bootstrap hardening scenario as a master
//! (`hardening-master <scenario> [args]`).

// No `sys` module here: the OS is reached through the crates' safe APIs.
#![forbid(unsafe_code)]

fn main() -> anyhow::Result<()> {
    if std::env::var_os("EXSYST_TEST_THREAD_BEFORE_RUN_IF_WORKER").is_some() {
        // A main that breaks the registry's contract, for the zygote's refusal.
        std::thread::spawn(|| {
            loop {
                std::thread::park();
            }
        });
    }
    tests_integration::registry().run_if_worker();
    let args: Vec<String> = std::env::args().skip(1).collect();
    tests_integration::hardening_scenarios::run(&args)
}
