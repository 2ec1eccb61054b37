//! Worker implementations, one module per topic.

pub mod dedicated;
pub mod evented;
pub mod hardening;
pub mod hostile;
pub mod hostile_tasks;
pub mod pool;
pub mod shared;
pub mod zygote;
