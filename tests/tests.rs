//! driftless integration tests.

mod engine;
mod storage;
