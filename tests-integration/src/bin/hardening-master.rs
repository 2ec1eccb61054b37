//! Runs the test implementations as a worker, or a bootstrap hardening scenario as a master
//! (`hardening-master <scenario> [args]`).

fn main() -> anyhow::Result<()> {
    tests_integration::registry().run_if_worker();
    let args: Vec<String> = std::env::args().skip(1).collect();
    tests_integration::hardening_scenarios::run(&args)
}
