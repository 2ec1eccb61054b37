//! A short, seeded run of the decoder fuzz driver (`cargo xtask fuzz` runs it long).

use std::process::Command;

#[test]
fn random_and_mutated_streams_never_panic_the_decoder_or_codecs() {
    let output = Command::new(env!("CARGO_BIN_EXE_fuzz-decoder"))
        .args(["--iterations", "4000", "--seed", "20261128"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("no panic in 4000 iterations"), "{stdout}");
}
