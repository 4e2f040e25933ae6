//! driftless integration tests.
