//! `cargo xtask`: the project's chores, one binary (see `.cargo/config.toml`).
//!
//! - `cargo xtask test-integration`: the black-box scenarios in `tests-integration`;
//! - `cargo xtask bench [--rounds N] [FILTER]`: every benchmark, unpinned and with both
//!   processes pinned to one CPU, as ratios against baselines measured in the same run;
//! - `cargo xtask fuzz [--iterations N]`: random and mutated byte streams through the frame
//!   decoder and both codecs;
//! - `cargo xtask soak shared [--minutes N] [--clients N] [--seed N] [--tcp]`: a shared worker
//!   under churn (clients connecting and disconnecting, random sizes up to 4 MiB, timed
//!   receives, clients killed mid-frame), failing on a lost reply or a daemon that grows;
//! - `cargo xtask ci`: what `.ci/run` runs;
//! - `cargo xtask package`: `cargo package` for every published crate, in dependency order,
//!   each verified by building it from its packaged sources alone;
//! - `cargo xtask msrv`: the whole workspace compiled with the toolchain of the declared
//!   `rust-version` (installed with rustup if missing).

// No `sys` module here: the OS is reached through the crates' safe APIs.
#![forbid(unsafe_code)]
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
        Some("soak") => soak(&args[1..]),
        Some("ci") => ci(),
        Some("package") => package(),
        Some("msrv") => msrv(),
        _ => bail!(
            "usage: cargo xtask <test-integration | bench [--rounds N] [FILTER] | fuzz [--iterations N] | soak shared [--minutes N] | ci | package | msrv>"
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

/// The soak runs in the dev profile, which the test suite has already built: CI pays no extra
/// compilation for its one minute.
fn soak(args: &[String]) -> anyhow::Result<()> {
    let mut command = vec![
        "run",
        "--quiet",
        "-p",
        "tests-integration",
        "--bin",
        "soak",
        "--",
    ];
    command.extend(args.iter().map(String::as_str));
    cargo(&command)
}

fn ci() -> anyhow::Result<()> {
    let root = workspace_root()?;
    run(Command::new("bash").arg(root.join(".ci/run")))
}

/// The crates a user can depend on, in dependency order (each after everything it uses).
const PUBLISHED: &[&str] = &[
    "worker-channel",
    "worker-core",
    "worker-killswitch",
    "worker-bootstrap",
    "worker-pool",
    "worker-shared",
    "exsyst-worker",
];

/// `cargo package --workspace` packages the published crates in dependency order and verifies
/// each one against the others' packaged sources (a local registry overlay), which is what
/// `cargo publish` will see; the unpublished ones (`publish = false`) are left out by name.
fn package() -> anyhow::Result<()> {
    forget_earlier_packages()?;
    let mut args = vec!["package", "--workspace", "--allow-dirty"];
    for crate_name in unpublished()? {
        args.extend(["--exclude", crate_name]);
    }
    let root = workspace_root()?;
    // Its own target directory, emptied first: cargo takes a registry crate of the same name
    // and version as unchanged, so the overlay's crates compiled by an earlier run would be
    // reused instead of today's.
    let target = root.join("target/xtask-package");
    let _ = std::fs::remove_dir_all(&target);
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(&args)
            .env("CARGO_TARGET_DIR", &target),
    )?;
    for crate_name in PUBLISHED {
        let file = target.join(format!(
            "package/{crate_name}-{}.crate",
            env!("CARGO_PKG_VERSION")
        ));
        if !file.is_file() {
            bail!("{} was not produced", file.display());
        }
        println!("packaged {}", file.display());
    }
    Ok(())
}

/// Cargo unpacks the overlay's crates under `$CARGO_HOME/registry/src/-<hash>/` and reuses what
/// it unpacked before when the version is the same, so a second run would verify against the
/// sources of the first: those copies of our own crates are removed first, with the overlay.
fn forget_earlier_packages() -> anyhow::Result<()> {
    let root = workspace_root()?;
    let _ = std::fs::remove_dir_all(root.join("target/package"));
    let _ = std::fs::remove_dir_all(root.join("target/xtask-package/package"));
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let Ok(registries) = std::fs::read_dir(cargo_home.join("registry/src")) else {
        return Ok(());
    };
    for registry in registries.flatten() {
        // Local registries (the overlay) are named `-<hash>`; crates.io's is `index.crates.io-…`.
        if !registry.file_name().to_string_lossy().starts_with('-') {
            continue;
        }
        for crate_name in PUBLISHED {
            let unpacked = registry
                .path()
                .join(format!("{crate_name}-{}", env!("CARGO_PKG_VERSION")));
            if unpacked.exists() {
                std::fs::remove_dir_all(&unpacked)
                    .with_context(|| format!("cannot remove {}", unpacked.display()))?;
            }
        }
    }
    Ok(())
}

/// The workspace members whose manifests say `publish = false`.
fn unpublished() -> anyhow::Result<Vec<&'static str>> {
    let root = workspace_root()?;
    let mut names = Vec::new();
    for member in ["tests-integration", "tests-support-demo", "xtask"] {
        let manifest = std::fs::read_to_string(root.join(member).join("Cargo.toml"))?;
        if !manifest
            .lines()
            .any(|line| line.trim() == "publish = false")
        {
            bail!("{member} is expected to say `publish = false`");
        }
        names.push(member);
    }
    Ok(names)
}

/// Compiles every crate, target and feature with the toolchain named by `rust-version`, in a
/// target directory of its own, so that the declared minimum is a fact rather than a hope.
fn msrv() -> anyhow::Result<()> {
    let root = workspace_root()?;
    let manifest = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let version = manifest
        .lines()
        .find_map(|line| {
            let value = line.trim().strip_prefix("rust-version")?.trim();
            Some(value.strip_prefix('=')?.trim().trim_matches('"').to_owned())
        })
        .context("no rust-version in the workspace manifest")?;
    let installed = Command::new("rustup")
        .args(["run", &version, "rustc", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            &version,
            "--profile",
            "minimal",
        ]))?;
    }
    println!("# cargo {version}: check --workspace --all-targets --all-features");
    run(Command::new("rustup")
        .args([
            "run",
            &version,
            "cargo",
            "check",
            "--workspace",
            "--all-targets",
            "--all-features",
        ])
        .current_dir(&root)
        .env("CARGO_TARGET_DIR", root.join("target/msrv"))
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO"))
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
