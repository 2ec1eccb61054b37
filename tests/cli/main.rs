//! The operators' programs, run against real shared workers.
