//! The integration tests of worker-shared, in one binary.

mod cookie;
