//! `cargo xtask`: the project's chores, one binary (see `.cargo/config.toml`).
//!
//! - `cargo xtask test-integration`: the black-box scenarios in `tests-integration`;
//! - `cargo xtask bench [--rounds N] [FILTER]`: every benchmark, unpinned and with both
//!   processes pinned to one CPU, as ratios against baselines measured in the same run;
//! - `cargo xtask fuzz [--iterations N]`: random and mutated byte streams through the frame
//!   decoder and both codecs;
//! - `cargo xtask ci`: what `.ci/run` runs.

// Test harnesses and chores start their helper processes directly (see clippy.toml).
#![allow(clippy::disallowed_methods)]

use std::process::Command;

use anyhow::{Context, bail};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test-integration") => cargo(&["test", "-p", "tests-integration", "--test", "tests"]),
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("ci") => ci(),
        _ => bail!(
            "usage: cargo xtask <test-integration | bench [--rounds N] [FILTER] | fuzz [--iterations N] | ci>"
        ),
    }
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    run(Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())).args(args))
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn bench(args: &[String]) -> anyhow::Result<()> {
    cargo(&[
        "build",
        "--release",
        "-p",
        "tests-integration",
        "--bin",
        "bench",
    ])?;
    let bin = workspace_root()?.join("target/release/bench");
    let mut rest: Vec<&str> = args.iter().map(String::as_str).collect();
    if !rest.contains(&"--rounds") {
        rest.extend(["--rounds", "9"]);
    }
    println!("# unpinned: the scheduler places the processes on the two CPUs");
    run(Command::new(&bin).args(&rest))?;
    if which("taskset") {
        println!("# pinned: every process on CPU 0 (taskset -c 0)");
        run(Command::new("taskset")
            .args(["-c", "0"])
            .arg(&bin)
            .args(&rest)
            .args(["--suffix", " pinned"]))?;
    } else {
        println!("# pinned: skipped, taskset is not installed");
    }
    Ok(())
}

fn fuzz(args: &[String]) -> anyhow::Result<()> {
    let mut command = vec![
        "run",
        "--release",
        "-p",
        "tests-integration",
        "--bin",
        "fuzz-decoder",
        "--",
    ];
    command.extend(args.iter().map(String::as_str));
    cargo(&command)
}

fn ci() -> anyhow::Result<()> {
    let root = workspace_root()?;
    run(Command::new("bash").arg(root.join(".ci/run")))
}

fn workspace_root() -> anyhow::Result<std::path::PathBuf> {
    let manifest = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    Ok(manifest
        .parent()
        .context("xtask lives in the workspace")?
        .to_path_buf())
}

fn which(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok()
}
