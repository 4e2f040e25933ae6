//! driftless integration tests.

mod corruption_campaign;
mod engine;
mod reliability;
mod storage;
