//! Integration tests of the storage crate, through its public API only.

mod corruption;
mod disk;
mod faults;
mod feed;
mod model;
mod open;
mod replay;
mod snapshot;
mod support;
