//! An integration test of the demo crate: the same line, at the top of the test crate.

#![forbid(unsafe_code)]

use std::time::Duration;

use exsyst_worker::WorkerFactory;
use tests_support_demo::{Doubler, Echo, Squarer};

exsyst_worker::enable_test_support!(
    registry()
        .raw::<Squarer>()
        .evented::<Echo>()
        .task::<Doubler>()
);

/// `secs` seconds, times `EXSYST_TEST_TIMEOUT_SCALE` for slow machines.
fn timeout(secs: u64) -> Duration {
    let scale = std::env::var("EXSYST_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(1.0);
    Duration::from_secs(secs).mul_f64(scale)
}

#[test]
fn an_integration_test_starts_raw_evented_and_task_workers() {
    let factory = WorkerFactory::new();
    let mut squarer = factory.create_worker::<Squarer>().unwrap();
    let mut echo = factory.create_worker::<Echo>().unwrap();
    squarer.send_message(&11i64).unwrap();
    echo.send_message("from tests/").unwrap();
    assert_eq!(
        squarer.receive_message_timeout::<i64>(timeout(10)).unwrap(),
        121
    );
    assert_eq!(
        echo.receive_message_timeout::<String>(timeout(10)).unwrap(),
        "echo: from tests/"
    );
    let pool = factory.create_task_pool::<Doubler>(Some(2)).unwrap();
    assert_eq!(pool.map([1, 2, 3]).unwrap(), [2, 4, 6]);
}
