//! `worker-ctl query --format openmetrics`, read back by a real OpenMetrics parser: Python
//! `prometheus-client`'s, which the test installs with pip into a virtual environment of its
//! own under the target directory (its setup step): nothing is installed into the user's
//! Python. Without python3 (with its `venv` module) or the package index this test fails: it is
//! not skipped.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    sync::OnceLock,
};

use exsyst_worker::worker::{Counter, WorkerStatus};
use serde_json::json;

use crate::support::{Program, address_in, serve};

/// Prints the families the parser finds, as JSON.
const PARSE: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
families = []
for family in text_string_to_metric_families(sys.stdin.read()):
    families.append({
        "name": family.name,
        "type": family.type,
        "unit": family.unit,
        "help": family.documentation,
        "samples": [[s.name, s.labels, float(s.value)] for s in family.samples],
    })
print(json.dumps(families))
"#;

/// The python3 of a virtual environment under the target directory with `prometheus-client`
/// in it, made on first use: the user's own Python is left as it is.
fn parser_python() -> &'static PathBuf {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openmetrics-venv");
        let python = venv.join("bin/python3");
        let importable = || {
            Command::new(&python)
                .args(["-c", "import prometheus_client.openmetrics.parser"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        };
        if importable() {
            return python;
        }
        let made = Command::new("python3")
            .args(["-m", "venv", "--clear"])
            .arg(&venv)
            .status()
            .expect("python3 makes a virtual environment");
        assert!(made.success(), "python3 -m venv failed");
        let installed = Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "prometheus-client",
            ])
            .status()
            .expect("the virtual environment's pip runs");
        assert!(
            installed.success(),
            "pip could not install prometheus-client into {}",
            venv.display()
        );
        assert!(importable());
        python
    })
}

fn parse(text: &str) -> serde_json::Value {
    let mut python = Command::new(parser_python())
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs the OpenMetrics parser");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "the parser refused the text:\n{}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn openmetrics_output_parses_with_a_real_parser_and_the_values_match() {
    let dir = tempfile::tempdir().unwrap();
    let address = address_in(dir.path(), "worker");
    let status = WorkerStatus::new("serving")
        .with_counter(Counter::new("jobs", 3.0).with_max(8.0))
        .with_counter(Counter::new("latency", 250.0).with_unit("ms"))
        .with_counter(Counter::new("served", 42.0).with_unit("c"))
        .with_counter(Counter::new("queue size", 1.5e6).with_unit("B"))
        .with_counter(Counter::new("9 \"lives\"", -1.5))
        .with_counter(Counter::undetermined("last run").with_unit("s"));
    let _server = serve(&address, status.clone(), status);
    let run = Program::ctl()
        .args(["query", &address, "--format", "openmetrics"])
        .run();
    assert_eq!((run.code, run.stderr.as_str()), (0, ""), "{run:?}");
    assert!(run.stdout.ends_with("\n# EOF\n"), "{}", run.stdout);

    let labels = json!({"address": address, "implementation": "reporter"});
    let help = |name: &str| format!("counter \"{name}\" of the shared worker");
    assert_eq!(
        parse(&run.stdout),
        json!([
            {"name": "shared_worker_jobs", "type": "gauge", "unit": "", "help": help("jobs"),
             "samples": [["shared_worker_jobs", labels, 3.0]]},
            {"name": "shared_worker_latency_seconds", "type": "gauge", "unit": "seconds",
             "help": help("latency"),
             "samples": [["shared_worker_latency_seconds", labels, 0.25]]},
            {"name": "shared_worker_served", "type": "counter", "unit": "",
             "help": help("served"),
             "samples": [["shared_worker_served_total", labels, 42.0]]},
            {"name": "shared_worker_queue_size_bytes", "type": "gauge", "unit": "bytes",
             "help": help("queue size"),
             "samples": [["shared_worker_queue_size_bytes", labels, 1.5e6]]},
            {"name": "shared_worker_9__lives_", "type": "gauge", "unit": "",
             "help": help("9 \"lives\""),
             "samples": [["shared_worker_9__lives_", labels, -1.5]]},
            {"name": "shared_worker_last_run_seconds", "type": "gauge", "unit": "seconds",
             "help": help("last run"), "samples": []},
        ])
    );

    // Without a prefix, a name that would start with a digit still follows the grammar.
    let bare = Program::ctl()
        .args([
            "query",
            &address,
            "--format",
            "openmetrics",
            "--metric-prefix",
            "",
        ])
        .run();
    assert_eq!(bare.code, 0, "{bare:?}");
    let families = parse(&bare.stdout);
    assert_eq!(families[4]["name"], "_9__lives_");
}
